using Dapper;
using Grpc.Core;
using Grpc.Net.Client;
using Metering.Client.Channels;
using Metering.Client.Simulation;
using Metering.Client.Streaming;
using Metering.Engine.Audit;
using Metering.Engine.Fixtures;
using Metering.Engine.Storage;
using Metering.Fixtures;
using Metering.Protocol.V1;
using Metering.Server.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>
/// Several `metering serve` processes on one database: a stream is single-writer because the
/// database says so, not because one process holds it, and a client that names every server
/// moves its stream to another when its server dies.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class SeveralServersCliTests(PostgresFixture postgres)
{
    private static readonly DateTimeOffset Day = new(2026, 11, 1, 0, 0, 0, TimeSpan.FromHours(8));

    [Fact]
    public async Task Two_serve_processes_racing_for_one_stream_commit_exactly_one_writer_and_abort_the_other_with_stream_taken_over()
    {
        string database = await postgres.CreateDatabaseAsync();
        ServerProcess[] servers = await Task.WhenAll(
            ServerProcess.StartAsync(database, ServerProcess.FreePort()),
            ServerProcess.StartAsync(database, ServerProcess.FreePort()));
        await using ServerProcess first = servers[0];
        await using ServerProcess second = servers[1];
        using GrpcChannel toFirst = TestCertificates.Channel(first.Address);
        using GrpcChannel toSecond = TestCertificates.Channel(second.Address);
        var clients = new[] { new IngestService.IngestServiceClient(toFirst), new IngestService.IngestServiceClient(toSecond) };
        const string streamId = "race";
        const ulong batchRecords = 40;
        var acknowledged = new List<BatchAck>();

        // Three rounds, each a fresh race from the stream's current head: the two writers send the
        // same sequence numbers with different content, so a second commit would show as a
        // duplicate or a broken chain, and only the database can pick the winner.
        for (ulong round = 0; round < 3; round++)
        {
            ulong from = round * batchRecords + 1;
            await using IngestCall onFirst = await IngestCall.OpenAsync(clients[0], streamId);
            await using IngestCall onSecond = await IngestCall.OpenAsync(clients[1], streamId);
            Assert.Equal((from - 1, from - 1), (onFirst.Opened.CommittedSequence, onSecond.Opened.CommittedSequence));

            object[] outcomes = await Task.WhenAll(
                TrySendAsync(onFirst, Batch(from, batchRecords, "first")),
                TrySendAsync(onSecond, Batch(from, batchRecords, "second")));

            BatchAck won = Assert.Single(outcomes.OfType<BatchAck>());
            RpcException lost = Assert.Single(outcomes.OfType<RpcException>());
            Assert.Equal((StatusCode.Aborted, "STREAM_TAKEN_OVER"), (lost.StatusCode, IngestCall.Reason(lost)));
            Assert.Equal(from + batchRecords - 1, won.CommittedSequence);
            acknowledged.Add(won);
        }

        // The loser of the last round, reconnecting to either server, resumes at the winner's head.
        await using IngestCall resumed = await IngestCall.OpenAsync(clients[1], streamId);
        Assert.Equal(acknowledged[^1].CommittedSequence, resumed.Opened.CommittedSequence);
        Assert.Equal(acknowledged[^1].ChainHead, resumed.Opened.ChainHead);
        await StoredStream.AssertExactlyOnceAsync(database, streamId, 3 * batchRecords, acknowledged[^1].ChainHead.ToByteArray());
    }

    [Fact]
    public async Task A_stream_through_a_channel_naming_two_servers_moves_to_the_other_when_its_server_is_killed()
    {
        string database = await postgres.CreateDatabaseAsync();
        ServerProcess[] servers = await Task.WhenAll(
            ServerProcess.StartAsync(database, ServerProcess.FreePort()),
            ServerProcess.StartAsync(database, ServerProcess.FreePort()));
        await using ServerProcess first = servers[0];
        await using ServerProcess second = servers[1];
        Assert.True(ServerList.TryParse($"{first.Address},{second.Address}", "--server", out ServerList? both, out string? problem), problem);
        using GrpcChannel channel = MeteringChannel.Open(new ChannelSettings(both!, TestCertificates.CaPemPath));
        SimulatedCluster site = SimulatedCluster.DemoSites(Day, jobsPerInterval: 20, seed: 19)[2];
        ulong total = site.RecordsPerDay;
        var midway = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var streamer = new UsageStreamer(channel, TestServer.ProviderKey, new StreamerOptions
        {
            BatchRecords = 100,
            WindowBatches = 4,
            ReconnectAttemptsMax = 100,
            Committed = mark =>
            {
                if (mark >= total / 2)
                {
                    midway.TrySetResult();
                }
            },
        });
        string opened = $"Stream {TestRecords.Provider}/roaming opened at ";

        Task<StreamResult> run = streamer.RunAsync("roaming", site.RecordAt, total, CancellationToken.None);
        await midway.Task.WaitAsync(TimeSpan.FromSeconds(90));
        ServerProcess holder = Opens(first, opened).Count > 0 ? first : second;
        ServerProcess other = holder == first ? second : first;
        await holder.KillAsync();
        StreamResult result = await run.WaitAsync(TimeSpan.FromSeconds(120));

        Assert.Single(Opens(holder, opened));
        Assert.True(result.Connections >= 2, $"{result.Connections} connection(s): the kill should have cut the stream");
        // The other server reopened the stream where the killed one had committed it, not at 0.
        Assert.Contains(Opens(other, opened), line => !line.Contains(opened + "0 by", StringComparison.Ordinal));
        await StoredStream.AssertExactlyOnceAsync(database, "roaming", total, result.ChainHead);
    }

    [Fact]
    public async Task The_cli_calls_through_a_list_of_servers_and_refuses_a_list_that_mixes_schemes_before_calling()
    {
        string database = await postgres.CreateDatabaseAsync();
        await using TestServer first = await TestServer.StartAsync(postgres, database: database);
        await using TestServer second = await TestServer.StartAsync(postgres, database: database);
        string both = $"{first.Address.ToString().TrimEnd('/')},{second.Address.ToString().TrimEnd('/')}";

        var (listExit, listed) = await CliProcess.RunAsync("settle", "list", "--server", both, "--ca", TestCertificates.CaPemPath, "--api-key", TestServer.OperatorKey);
        var (mixedExit, mixed) = await CliProcess.RunAsync("settle", "list", "--server", $"{first.Address.ToString().TrimEnd('/')},http://127.0.0.1:9",
            "--ca", TestCertificates.CaPemPath, "--api-key", TestServer.OperatorKey);

        Assert.True(listExit == 0, listed);
        Assert.Equal(2, mixedExit);
        Assert.Contains("mixes http:// and https://", mixed, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("https://a:7390,https://a:7390", "names https://a:7390 twice")]
    [InlineData("https://a:7390,http://b:7390", "mixes http:// and https://")]
    [InlineData("https://a:7390/metering,https://b:7390", "has a path")]
    [InlineData("https://a:7390,ftp://b", "is not an https:// or http:// address")]
    [InlineData(" , ", "names no server")]
    public void A_server_list_that_a_balanced_channel_could_not_honour_is_refused_with_why(string text, string why)
    {
        Assert.False(ServerList.TryParse(text, "--server", out ServerList? servers, out string? problem));
        Assert.Null(servers);
        Assert.Contains(why, problem, StringComparison.Ordinal);
    }

    [Fact]
    public void A_server_list_longer_than_its_limit_is_refused_and_one_at_the_limit_is_taken()
    {
        string Servers(int count) => string.Join(',', Enumerable.Range(1, count).Select(i => $"https://10.0.0.{i}:7390"));

        Assert.True(ServerList.TryParse(Servers(ServerList.ServersMax), "--server", out ServerList? atLimit, out _));
        Assert.False(ServerList.TryParse(Servers(ServerList.ServersMax + 1), "--server", out _, out string? problem));
        Assert.Equal(ServerList.ServersMax, atLimit!.Addresses.Count);
        Assert.Contains($"at most {ServerList.ServersMax}", problem, StringComparison.Ordinal);
    }

    private static List<string> Opens(ServerProcess server, string opened) =>
        [.. server.Output.Where(line => line.Contains(opened, StringComparison.Ordinal))];

    private static List<UsageRecord> Batch(ulong from, ulong count, string writer)
    {
        List<UsageRecord> records = TestRecords.Range(from, from + count - 1);
        foreach (UsageRecord record in records)
        {
            record.JobId = $"{writer}-{record.Sequence:D6}";
        }

        return records;
    }

    private static async Task<object> TrySendAsync(IngestCall call, List<UsageRecord> records)
    {
        try
        {
            return await call.SendAsync(records);
        }
        catch (RpcException refused)
        {
            return refused;
        }
    }
}
