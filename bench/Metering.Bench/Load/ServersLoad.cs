using System.Globalization;
using System.Runtime.InteropServices;
using Grpc.Net.Client;
using Metering.Client.Channels;
using Metering.Engine.Storage;
using Metering.Fixtures;
using Metering.Server.Fixtures;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Metering.Bench.Load;

/// <summary>
/// `load --servers N`: the same streams through one `metering serve` process and then through N
/// of them on one PostgreSQL, in one run. Each server is the CLI built beside the bench, started as
/// its own OS process (the tests' <see cref="ServerProcess"/>) on its own loopback port, logged in
/// as the runtime role, with one receipt key shared by all; the agents reach them through the
/// client library's balanced channel (round-robin over a static list), as a provider naming
/// several servers does. So each phase pays what a deployment pays: a process per server, each
/// with its own thread pool, connection pool and HTTP/2 connection, all on this machine's cores.
/// Each phase gets its own freshly migrated database in the one cluster, so neither writes into a
/// table the other has grown; the psql and binary COPY baselines are left to the plain run. The
/// one-server phase's database also gives the bytes a stored record takes
/// (<see cref="StorageFootprint"/>). The last line of stdout is the RESULT line.
/// </summary>
internal static class ServersLoad
{
    public static async Task<int> RunAsync(LoadOptions options, ILogger logger)
    {
        string dataDirectory = Path.GetFullPath(options.DataDirectory);
        IngestLoad.DeleteCluster(dataDirectory);
        Console.WriteLine($"load: {options.Records:N0} records over {options.Streams} streams, batches of {options.BatchRecords:N0}, window {options.WindowBatches}, "
            + $"through 1 `metering serve` process, then {options.Servers} on one PostgreSQL ({(options.Tls ? "TLS" : "cleartext HTTP/2 on loopback")}); fresh cluster in {dataDirectory}");

        await using EmbeddedPostgres postgres = await EmbeddedPostgres.StartAsync(new EmbeddedPostgresOptions { DataDirectory = dataDirectory, Durable = true }, logger);

        // Stopped from outside (SIGTERM, or Ctrl+C in a terminal), the bench never reaches its
        // finally blocks and disposals: the runtime ends it from the signal. So the signal first
        // stops the running servers and the cluster here, and then ends the bench as it would have,
        // so that no `metering serve` and no PostgreSQL outlives it.
        var running = new List<ServerProcess>();
        void StopOnSignal(PosixSignalContext _)
        {
            StopAllAsync(running).GetAwaiter().GetResult();
            postgres.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }

        using PosixSignalRegistration onTerminate = PosixSignalRegistration.Create(PosixSignal.SIGTERM, StopOnSignal);
        using PosixSignalRegistration onInterrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, StopOnSignal);
        (Phase one, StorageFootprint footprint) = await RunPhaseAsync(postgres, running, "metering_one_server", 1, options, logger);
        (Phase many, _) = await RunPhaseAsync(postgres, running, "metering_servers", options.Servers, options, logger);

        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"RESULT servers={options.Servers} one_server_records_per_s={one.RecordsPerSecond:0} servers_records_per_s={many.RecordsPerSecond:0} "
            + $"ratio_servers={many.RecordsPerSecond / one.RecordsPerSecond:0.00} p99_ack_ms_one={one.P99Ms:0.0} p99_ack_ms_servers={many.P99Ms:0.0} "
            + $"bytes_per_record={footprint.BytesPerRecord} hosts=processes tls={(options.Tls ? "true" : "false")} client={options.ClientName}"));
        return 0;
    }

    private sealed record Phase(double RecordsPerSecond, double P99Ms);

    private static async Task<(Phase Phase, StorageFootprint Footprint)> RunPhaseAsync(EmbeddedPostgres postgres, List<ServerProcess> processes, string database, int servers,
        LoadOptions options, ILogger logger)
    {
        await using (NpgsqlDataSource cluster = Database.CreateDataSource(postgres.ConnectionString))
        await using (NpgsqlConnection connection = await cluster.OpenConnectionAsync())
        await using (var create = new NpgsqlCommand($"CREATE DATABASE {database}", connection))
        {
            await create.ExecuteNonQueryAsync();
        }

        string owner = new NpgsqlConnectionStringBuilder(postgres.ConnectionString) { Database = database }.ConnectionString;
        string runtime = new NpgsqlConnectionStringBuilder(postgres.RuntimeConnectionString) { Database = database }.ConnectionString;
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(owner);
        await new Migrator(dataSource, logger).MigrateAsync();
        string apiKey = (await Admissions.SeedAsync(dataSource)).OtherProvider;

        try
        {
            // One after the other: on two cores, N processes starting at once mostly wait for each other.
            for (int i = 0; i < servers; i++)
            {
                ServerProcess started = await StartServerAsync(owner, runtime, options.Tls);
                lock (processes)
                {
                    processes.Add(started);
                }
            }

            ServerList list = Parse(string.Join(',', processes.Select(p => p.Address.ToString().TrimEnd('/'))));
            await IngestLoad.CheckpointAsync(dataSource);
            using GrpcChannel channel = MeteringChannel.Open(new ChannelSettings(list, options.Tls ? TestCertificates.CaPemPath : null));
            Console.WriteLine($"load: {database}: {servers} `metering serve` process(es) at {list}");
            IngestLoad.Streamed streamed = await IngestLoad.StreamAsync(channel, apiKey, options);

            long stored = await IngestLoad.CountAsync(dataSource);
            if (stored != options.Records)
            {
                throw new InvalidOperationException($"{database} holds {stored} records after streaming {options.Records}.");
            }

            await IngestLoad.VerifyAsync(dataSource, streamed);
            StorageFootprint footprint = await StorageFootprint.MeasureAsync(dataSource);
            streamed.LatenciesMs.Sort();
            var phase = new Phase(options.Records / streamed.Seconds, IngestLoad.Percentile(streamed.LatenciesMs, 0.99));
            Console.WriteLine($"ingest: {servers} process(es): {options.Records:N0} records in {streamed.Seconds:0.00} s = {phase.RecordsPerSecond:N0} records/s; ack p99 {phase.P99Ms:0.0} ms");
            return (phase, footprint);
        }
        finally
        {
            await StopAllAsync(processes);
        }
    }

    /// <summary>
    /// SIGTERM to each server and a wait for it, as a service manager stops them; a process that
    /// will not stop is killed by its disposal, so none outlives the bench, whatever failed. Each
    /// leaves the list before it is stopped, so that a signal during the phase's own stop does
    /// not stop it twice.
    /// </summary>
    private static async Task StopAllAsync(List<ServerProcess> processes)
    {
        ServerProcess[] stopping;
        lock (processes)
        {
            stopping = [.. processes];
            processes.Clear();
        }

        foreach (ServerProcess process in stopping)
        {
            try
            {
                await process.StopAsync();
            }
            finally
            {
                await process.DisposeAsync();
            }
        }
    }

    /// <summary>
    /// One `metering serve` on a free loopback port, logged in as the runtime role: with TLS the
    /// tests' certificate and receipt key (<see cref="ServerProcess.StartAsync(string, int)"/>),
    /// cleartext otherwise, which serve allows on loopback.
    /// </summary>
    private static Task<ServerProcess> StartServerAsync(string ownerConnectionString, string runtimeConnectionString, bool tls)
    {
        int port = ServerProcess.FreePort();
        if (tls)
        {
            return ServerProcess.StartAsync(ownerConnectionString, port);
        }

        var address = new Uri($"http://127.0.0.1:{port}");
        return ServerProcess.StartAsync(address, "serve", "--connection", runtimeConnectionString,
            "--listen", address.ToString(), "--signing-key", ServerProcess.SigningKeyPath);
    }

    private static ServerList Parse(string text) =>
        ServerList.TryParse(text, "--servers", out ServerList? list, out string? problem) ? list! : throw new InvalidOperationException(problem);
}
