using System.Globalization;
using Grpc.Net.Client;
using Metering.Client.Channels;
using Metering.Engine.Signing;
using Metering.Engine.Storage;
using Metering.Fixtures;
using Metering.Server.Hosting;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Metering.Bench.Load;

/// <summary>
/// `load --servers N`: the same streams through one server and through N stateless servers on one
/// PostgreSQL, in one run. The N servers are N Kestrel hosts of <see cref="MeteringServer"/> in this
/// process, each on its own port with its own connection pool, and the agents reach them through
/// the client library's balanced channel (round-robin over a static list), as a provider naming
/// several servers does. That measures what statelessness costs or gains on the database (each
/// host commits on its own), not process separation: the hosts share this process's CPU and
/// thread pool. Each phase gets its own freshly migrated database in the one cluster, so neither
/// writes into a table the other has grown; the psql and binary COPY baselines are left to the
/// plain run. The last line of stdout is the RESULT line.
/// </summary>
internal static class ServersLoad
{
    public static async Task<int> RunAsync(LoadOptions options, ILogger logger)
    {
        string dataDirectory = Path.GetFullPath(options.DataDirectory);
        IngestLoad.DeleteCluster(dataDirectory);
        Console.WriteLine($"load: {options.Records:N0} records over {options.Streams} streams, batches of {options.BatchRecords:N0}, window {options.WindowBatches}, "
            + $"through 1 server, then {options.Servers} server hosts in this process on one PostgreSQL ({(options.Tls ? "TLS" : "cleartext HTTP/2 on loopback")}); fresh cluster in {dataDirectory}");

        using BenchCertificates? certificates = options.Tls ? BenchCertificates.Make() : null;
        string? caPath = null;
        if (certificates is not null)
        {
            // The balanced channel reads its CA from a file, as a client's --ca does.
            caPath = Path.Combine(Path.GetDirectoryName(dataDirectory)!, "servers-ca.pem");
            await File.WriteAllTextAsync(caPath, certificates.Ca.ExportCertificatePem());
        }

        await using EmbeddedPostgres postgres = await EmbeddedPostgres.StartAsync(new EmbeddedPostgresOptions { DataDirectory = dataDirectory, Durable = true }, logger);
        Phase one = await RunPhaseAsync(postgres, "metering_one_server", 1, options, certificates, caPath, logger);
        Phase many = await RunPhaseAsync(postgres, "metering_servers", options.Servers, options, certificates, caPath, logger);

        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"RESULT servers={options.Servers} one_server_records_per_s={one.RecordsPerSecond:0} servers_records_per_s={many.RecordsPerSecond:0} "
            + $"ratio_servers={many.RecordsPerSecond / one.RecordsPerSecond:0.00} p99_ack_ms_one={one.P99Ms:0.0} p99_ack_ms_servers={many.P99Ms:0.0} "
            + $"hosts=in_process tls={(options.Tls ? "true" : "false")}"));
        return 0;
    }

    private sealed record Phase(double RecordsPerSecond, double P99Ms);

    private static async Task<Phase> RunPhaseAsync(EmbeddedPostgres postgres, string database, int servers, LoadOptions options,
        BenchCertificates? certificates, string? caPath, ILogger logger)
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

        using ServerSigningKey signingKey = ServerSigningKey.CreateNew();
        var hosts = new List<MeteringServer>();
        try
        {
            for (int i = 0; i < servers; i++)
            {
                hosts.Add(await MeteringServer.StartAsync(new ServerSettings
                {
                    SigningKey = signingKey,
                    Listen = new Uri(certificates is null ? "http://127.0.0.1:0" : "https://127.0.0.1:0"),
                    Certificate = certificates?.Server,
                    ConnectionString = runtime,
                    ConfigureLogging = builder => builder.AddConsole(console => console.LogToStandardErrorThreshold = LogLevel.Trace).SetMinimumLevel(LogLevel.Warning),
                }));
            }

            ServerList list = Parse(string.Join(',', hosts.Select(h => h.Address.ToString().TrimEnd('/'))));
            await IngestLoad.CheckpointAsync(dataSource);
            using GrpcChannel channel = MeteringChannel.Open(new ChannelSettings(list, caPath));
            Console.WriteLine($"load: {database}: {servers} server host(s) at {list}");
            IngestLoad.Streamed streamed = await IngestLoad.StreamAsync(channel, apiKey, options);

            long stored = await IngestLoad.CountAsync(dataSource);
            if (stored != options.Records)
            {
                throw new InvalidOperationException($"{database} holds {stored} records after streaming {options.Records}.");
            }

            await IngestLoad.VerifyAsync(dataSource, streamed);
            streamed.LatenciesMs.Sort();
            var phase = new Phase(options.Records / streamed.Seconds, IngestLoad.Percentile(streamed.LatenciesMs, 0.99));
            Console.WriteLine($"ingest: {servers} server host(s): {options.Records:N0} records in {streamed.Seconds:0.00} s = {phase.RecordsPerSecond:N0} records/s; ack p99 {phase.P99Ms:0.0} ms");
            return phase;
        }
        finally
        {
            foreach (MeteringServer host in hosts)
            {
                await host.DisposeAsync();
            }
        }
    }

    private static ServerList Parse(string text) =>
        ServerList.TryParse(text, "--servers", out ServerList? list, out string? problem) ? list! : throw new InvalidOperationException(problem);
}
