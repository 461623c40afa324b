using Dapper;
using Grpc.Core;
using Metering.Client.Simulation;
using Metering.Client.Streaming;
using Metering.Engine.Audit;
using Metering.Engine.Storage;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Ingest;

[Collection(PostgresCollection.Name)]
public sealed class IngestResilienceTests(PostgresFixture postgres)
{
    private static readonly DateTimeOffset Day = new(2026, 11, 1, 0, 0, 0, TimeSpan.FromHours(8));

    [Fact]
    public async Task Client_dropped_mid_stream_resumes_with_nothing_lost_and_nothing_duplicated()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        SimulatedCluster site = SimulatedCluster.DemoSites(Day, jobsPerInterval: 20, seed: 7)[1];
        ulong total = site.RecordsPerDay;
        int reconnects = 0;
        var streamer = new UsageStreamer(server.Channel, TestServer.ProviderKey, new StreamerOptions
        {
            BatchRecords = 250,
            WindowBatches = 4,
            DropOnceAfterRecords = total / 2,
            Reconnecting = _ => Interlocked.Increment(ref reconnects),
        });

        StreamResult result = await streamer.RunAsync("qianhai", site.RecordAt, total, CancellationToken.None);

        Assert.Equal(1, reconnects);
        Assert.Equal(2, result.Connections);
        await StoredStream.AssertExactlyOnceAsync(server.ConnectionString, "qianhai", total, result.ChainHead);
    }

    [Fact]
    public async Task Server_restarted_mid_stream_loses_no_acknowledged_record()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        SimulatedCluster site = SimulatedCluster.DemoSites(Day, jobsPerInterval: 20, seed: 11)[0];
        ulong total = site.RecordsPerDay;
        ulong acknowledged = 0;
        var midway = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var streamer = new UsageStreamer(server.Channel, TestServer.ProviderKey, new StreamerOptions
        {
            BatchRecords = 100,
            WindowBatches = 2,
            Committed = mark =>
            {
                Volatile.Write(ref acknowledged, mark);
                if (mark >= total / 3)
                {
                    midway.TrySetResult();
                }
            },
        });

        Task<StreamResult> run = streamer.RunAsync("nanshan", site.RecordAt, total, CancellationToken.None);
        await midway.Task.WaitAsync(TimeSpan.FromSeconds(60));
        await server.StopAsync();
        ulong acknowledgedBeforeStop = Volatile.Read(ref acknowledged);
        long storedWhileDown = await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id NOT LIKE 'proof:%'");
        Assert.True((ulong)storedWhileDown >= acknowledgedBeforeStop, $"{storedWhileDown} stored but {acknowledgedBeforeStop} acknowledged");
        await server.StartAgainAsync();

        StreamResult result = await run.WaitAsync(TimeSpan.FromSeconds(120));

        Assert.True(result.Connections >= 2);
        await StoredStream.AssertExactlyOnceAsync(server.ConnectionString, "nanshan", total, result.ChainHead);
    }

    [Fact]
    public async Task Killed_server_process_loses_no_acknowledged_record_and_duplicates_none()
    {
        string connectionString = await postgres.CreateDatabaseAsync();
        int port = ServerProcess.FreePort();
        SimulatedCluster site = SimulatedCluster.DemoSites(Day, jobsPerInterval: 20, seed: 13)[2];
        ulong total = site.RecordsPerDay;
        ulong acknowledged = 0;
        var midway = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        ServerProcess server = await ServerProcess.StartAsync(connectionString, port);
        using var channel = TestCertificates.Channel(server.Address);
        var streamer = new UsageStreamer(channel, TestServer.ProviderKey, new StreamerOptions
        {
            BatchRecords = 100,
            WindowBatches = 4,
            ReconnectAttemptsMax = 100,
            Committed = mark =>
            {
                Volatile.Write(ref acknowledged, mark);
                if (mark >= total / 2)
                {
                    midway.TrySetResult();
                }
            },
        });
        Task<StreamResult> run = streamer.RunAsync("shenshan", site.RecordAt, total, CancellationToken.None);
        await midway.Task.WaitAsync(TimeSpan.FromSeconds(60));
        await server.KillAsync();
        ulong acknowledgedBeforeKill = Volatile.Read(ref acknowledged);

        await using (var connection = new Npgsql.NpgsqlConnection(connectionString))
        {
            long stored = await connection.ExecuteScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id NOT LIKE 'proof:%'");
            Assert.True((ulong)stored >= acknowledgedBeforeKill, $"{stored} stored but {acknowledgedBeforeKill} acknowledged before the kill");
        }

        await using ServerProcess restarted = await ServerProcess.StartAsync(connectionString, port);
        StreamResult result = await run.WaitAsync(TimeSpan.FromSeconds(120));
        await server.DisposeAsync();

        Assert.True(result.Connections >= 2);
        await StoredStream.AssertExactlyOnceAsync(connectionString, "shenshan", total, result.ChainHead);
    }

    [Fact]
    public async Task Database_restarted_mid_stream_loses_no_acknowledged_record_and_duplicates_none()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        SimulatedCluster site = SimulatedCluster.DemoSites(Day, jobsPerInterval: 20, seed: 17)[1];
        ulong total = site.RecordsPerDay;
        var midway = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        int reconnects = 0;
        var streamer = new UsageStreamer(server.Channel, TestServer.ProviderKey, new StreamerOptions
        {
            BatchRecords = 100,
            WindowBatches = 2,
            ReconnectAttemptsMax = 100,
            Committed = mark =>
            {
                if (mark >= total / 3)
                {
                    midway.TrySetResult();
                }
            },
            Reconnecting = _ => Interlocked.Increment(ref reconnects),
        });

        Task<StreamResult> run = streamer.RunAsync("qianhai", site.RecordAt, total, CancellationToken.None);
        await midway.Task.WaitAsync(TimeSpan.FromSeconds(60));
        await postgres.Server.RestartAsync();
        StreamResult result = await run.WaitAsync(TimeSpan.FromSeconds(120));

        Assert.True(reconnects >= 1, "the restart should have cut the stream at least once");
        await StoredStream.AssertExactlyOnceAsync(server.ConnectionString, "qianhai", total, result.ChainHead);
    }

    [Fact]
    public async Task Non_transient_refusal_is_not_retried()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        var streamer = new UsageStreamer(server.Channel, "wrong-key", new StreamerOptions());

        RpcException error = await Assert.ThrowsAsync<RpcException>(() => streamer.RunAsync("x", TestRecords.Valid, 10, CancellationToken.None));

        Assert.Equal(StatusCode.Unauthenticated, error.StatusCode);
        Assert.Equal("UNAUTHENTICATED", UsageStreamer.ReasonOf(error));
    }
}
