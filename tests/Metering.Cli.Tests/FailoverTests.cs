using System.Collections.Concurrent;
using System.Diagnostics;
using Dapper;
using Grpc.Net.Client;
using Metering.Client.Simulation;
using Metering.Client.Streaming;
using Metering.Engine.Audit;
using Metering.Engine.Storage;
using Metering.Fixtures;
using Metering.Server.Fixtures;
using Npgsql;
using Xunit.Abstractions;

namespace Metering.Cli.Tests;

/// <summary>
/// The failover suite: `metering serve` over a pg_auto_failover formation (a monitor and two data
/// nodes on loopback), streams running through it, and the primary SIGKILLed mid-stream. The
/// standby is promoted, the killed node comes back as its synchronous standby, and the streams
/// resume through the same server. Every acknowledged record is stored exactly once and every
/// chain verifies. The test reports, and bench/run-failover prints, the time from the kill to the
/// first acknowledgement committed on the new primary.
/// </summary>
public sealed class FailoverTests(ITestOutputHelper output)
{
    private static readonly DateTimeOffset Day = new(2026, 11, 1, 0, 0, 0, TimeSpan.FromHours(8));

    [Fact]
    public async Task Acknowledged_records_survive_a_primary_killed_mid_stream_exactly_once_and_every_chain_verifies()
    {
        await using AutoFailoverCluster cluster = await AutoFailoverCluster.StartAsync();
        // pg_autoctl installs pg_stat_statements into the database it creates; migrate refuses
        // relations it has not classified in the schema it guards, so the extension goes first.
        await using (var connection = new NpgsqlConnection(cluster.OwnerConnection(1)))
        {
            await connection.OpenAsync();
            await connection.ExecuteAsync("DROP EXTENSION IF EXISTS pg_stat_statements");
        }

        var (migrated, migrateOutput) = await CliProcess.RunAsync("db", "migrate", "--connection", cluster.OwnerConnection(1));
        Assert.True(migrated == 0, migrateOutput);
        SeededKeys keys;
        await using (NpgsqlDataSource owner = Database.CreateDataSource(cluster.OwnerConnection(1)))
        {
            keys = await Admissions.SeedAsync(owner);
        }

        int port = ServerProcess.FreePort();
        var address = new Uri($"http://127.0.0.1:{port}");
        // Two hosts: the server requires durable replication by default, so every acknowledgement
        // below was held by a synchronous standby when it was sent.
        await using ServerProcess server = await ServerProcess.StartAsync(address,
            "serve", "--connection", cluster.ServingConnection(SchemaGuard.DefaultRuntimeRole), "--listen", address.ToString(), "--signing-key", ServerProcess.SigningKeyPath);
        using GrpcChannel channel = GrpcChannel.ForAddress(address);

        SimulatedCluster[] sites = [.. SimulatedCluster.DemoSites(Day, jobsPerInterval: 10, seed: 18).Take(3)];
        var acknowledged = new ConcurrentDictionary<string, ulong>();
        long killedAt = 0;
        long firstAckAfterFailover = 0;
        var reconnectedAfterKill = new ConcurrentDictionary<string, bool>();
        var quarter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task<StreamResult>[] streams = [.. sites.Select((site, i) =>
        {
            string streamId = $"failover-{i}";
            var streamer = new UsageStreamer(channel, keys.Provider, new StreamerOptions
            {
                BatchRecords = 40,
                WindowBatches = 1,
                ReconnectAttemptsMax = 60,
                ReconnectDelay = TimeSpan.FromMilliseconds(100),
                Reconnecting = _ =>
                {
                    if (Interlocked.Read(ref killedAt) != 0)
                    {
                        reconnectedAfterKill[streamId] = true;
                    }
                },
                Committed = mark =>
                {
                    acknowledged[streamId] = mark;
                    if (reconnectedAfterKill.ContainsKey(streamId))
                    {
                        Interlocked.CompareExchange(ref firstAckAfterFailover, Stopwatch.GetTimestamp(), 0);
                    }

                    if (mark >= site.RecordsPerDay / 4)
                    {
                        quarter.TrySetResult();
                    }
                },
            });
            return Task.Run(() => streamer.RunAsync(streamId, site.RecordAt, site.RecordsPerDay, CancellationToken.None));
        })];

        await quarter.Task.WaitAsync(TimeSpan.FromSeconds(120));
        Assert.All(streams, s => Assert.False(s.IsCompleted, "a stream finished before the kill; give it more records"));
        ulong acknowledgedBeforeKill = (ulong)acknowledged.Values.Sum(v => (decimal)v);
        Interlocked.Exchange(ref killedAt, Stopwatch.GetTimestamp());
        await cluster.KillAsync("node1");

        // Once the standby is promoted, the killed node comes back, as a restarted machine would,
        // and rejoins as the synchronous standby the server waits for.
        await AutoFailoverCluster.WaitAsync(() => cluster.IsPrimaryAsync(2), TimeSpan.FromSeconds(90), "node2 was not promoted\n" + cluster.Logs());
        double promotedS = Stopwatch.GetElapsedTime(killedAt).TotalSeconds;
        await cluster.RestartAsync("node1");

        StreamResult[] results = await Task.WhenAll(streams).WaitAsync(TimeSpan.FromSeconds(240));
        Assert.NotEqual(0, Interlocked.Read(ref firstAckAfterFailover));
        double failoverS = Stopwatch.GetElapsedTime(killedAt, firstAckAfterFailover).TotalSeconds;

        long stored = 0, lost = 0, duplicated = 0;
        await using (NpgsqlDataSource primary = Database.CreateDataSource(cluster.OwnerConnection(2)))
        {
            await using NpgsqlConnection connection = await primary.OpenConnectionAsync();
            for (int i = 0; i < sites.Length; i++)
            {
                string streamId = $"failover-{i}";
                var counts = await connection.QuerySingleAsync<(long Rows, long Distinct, long UpToAck)>(
                    "SELECT count(*), count(DISTINCT sequence), count(DISTINCT sequence) FILTER (WHERE sequence <= @acked) FROM usage_records WHERE stream_id = @streamId",
                    new { streamId, acked = (long)acknowledged[streamId] });
                stored += counts.Rows;
                duplicated += counts.Rows - counts.Distinct;
                lost += (long)acknowledged[streamId] - counts.UpToAck;
                Assert.Equal(sites[i].RecordsPerDay, results[i].CommittedSequence);

                ChainVerification verification = await new ChainVerifier(primary).VerifyStreamAsync(TestRecords.Provider, streamId);
                Assert.True(verification.Intact, verification.Evidence);
                Assert.Equal(results[i].ChainHead, verification.ComputedHead);
            }
        }

        long acked = (long)acknowledged.Values.Sum(v => (decimal)v);
        string result = FormattableString.Invariant(
            $"RESULT acked={acked} stored={stored} lost={lost} duplicated={duplicated} failover_s={failoverS:0.0} settlement_hash_equal=not_run");
        output.WriteLine(FormattableString.Invariant($"acknowledged before the kill: {acknowledgedBeforeKill}; node2 promoted {promotedS:0.0} s after the kill; first acknowledgement on it {failoverS:0.0} s after"));
        output.WriteLine("settlement: not rerun across the failover by this suite yet, so settlement_hash_equal reads not_run");
        output.WriteLine(result);
        if (Environment.GetEnvironmentVariable("METERING_FAILOVER_RESULT") is { Length: > 0 } path)
        {
            await File.WriteAllTextAsync(path, $"acknowledged before the kill: {acknowledgedBeforeKill}; promoted after {promotedS:0.0} s\n{result}\n");
        }

        Assert.Equal((0L, 0L), (lost, duplicated));
        Assert.Equal(acked, stored);
        Assert.Contains(server.Output, line => line.Contains("DATABASE_UNAVAILABLE", StringComparison.Ordinal) || line.Contains("lost the database", StringComparison.Ordinal));
    }
}
