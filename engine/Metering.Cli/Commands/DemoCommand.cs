using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Dapper;
using Grpc.Net.Client;
using Metering.Client.Simulation;
using Metering.Client.Streaming;
using Metering.Engine.Audit;
using Metering.Engine.Signing;
using Metering.Engine.Storage;
using Metering.Server.Hosting;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Metering.Cli.Commands;

/// <summary>
/// `metering demo`: the main job end to end on the embedded default. Starts PostgreSQL and the
/// server, streams a simulated provider's day of usage from three sites with the sample agent,
/// cuts one stream's connection midway and resumes it, then verifies every chain and prints a
/// summary from the database.
/// </summary>
internal static class DemoCommand
{
    public const string DemoProvider = "91440300MA5F00001A";
    private const string DemoDatabase = "metering_demo";

    public static Command Create()
    {
        var dataDirectory = CommonOptions.DataDirectory();
        var jobs = new Option<int>("--jobs-per-interval")
        {
            Description = "Jobs running at each site in every 5-minute interval; a day has 288 intervals.",
            DefaultValueFactory = _ => 100,
        };
        var day = new Option<string?>("--day")
        {
            Description = "The day to simulate (yyyy-MM-dd, Asia/Shanghai). Defaults to yesterday.",
        };
        var logFormat = CommonOptions.LogFormat();
        var logLevel = CommonOptions.LogLevelOption(LogLevel.Warning);
        logLevel.Description += " --verbose alone means Information.";
        var command = new Command("demo", "Run the main job on the embedded PostgreSQL: a provider streams a day of usage from three sites, one connection drops and resumes, and the chains are verified.")
        {
            dataDirectory,
            jobs,
            day,
            logLevel,
            logFormat,
        };
        command.SetAction(async (parse, cancellationToken) =>
        {
            int jobsPerInterval = parse.GetValue(jobs);
            if (jobsPerInterval is < 1 or > 10_000)
            {
                Console.Error.WriteLine("error: --jobs-per-interval must be between 1 and 10000.");
                return 2;
            }

            DateOnly yesterday = DateOnly.FromDateTime(DateTime.UtcNow.AddHours(8)).AddDays(-1);
            string? dayText = parse.GetValue(day);
            if (!DateOnly.TryParseExact(dayText ?? yesterday.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture), "yyyy-MM-dd", CultureInfo.InvariantCulture, DateTimeStyles.None, out DateOnly simulated)
                || simulated > yesterday)
            {
                Console.Error.WriteLine($"error: --day must be a yyyy-MM-dd date no later than {yesterday:yyyy-MM-dd} (a whole past day).");
                return 2;
            }

            return await RunAsync(parse.GetValue(dataDirectory)!, jobsPerInterval, simulated, Level(parse, logLevel), parse.GetValue(logFormat)!, cancellationToken);
        });
        return command;
    }

    /// <summary>An explicit --log-level wins; otherwise --verbose, as before, means Information.</summary>
    private static LogLevel Level(ParseResult parse, Option<LogLevel> logLevel) =>
        parse.GetResult(logLevel) is { Implicit: false } ? parse.GetValue(logLevel)
            : parse.GetValue<bool>(CommonOptions.VerboseName) ? LogLevel.Information : LogLevel.Warning;

    private static async Task<int> RunAsync(string dataDirectory, int jobsPerInterval, DateOnly day, LogLevel logLevel, string logFormat, CancellationToken cancellationToken)
    {
        using ILoggerFactory logging = CommonOptions.Logging(logLevel, logFormat);
        ILogger logger = logging.CreateLogger("metering.demo");
        var total = Stopwatch.StartNew();

        Step($"Starting the embedded PostgreSQL in {Path.GetFullPath(dataDirectory)}");
        await using EmbeddedPostgres postgres = await EmbeddedPostgres.StartAsync(new EmbeddedPostgresOptions { DataDirectory = dataDirectory }, logger, cancellationToken);
        string connectionString = await RecreateDemoDatabaseAsync(postgres.ConnectionString, cancellationToken);
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(connectionString);
        var applied = await new Migrator(dataSource, logger).MigrateAsync(cancellationToken);
        Step($"Database {DemoDatabase} created afresh; {applied.Count} migration(s) applied");

        using ServerSigningKey signing = CommonOptions.ResolveSigningKey(null, dataDirectory, logger);
        var clock = new DemoClock();
        await using MeteringServer server = await MeteringServer.StartAsync(new ServerSettings
        {
            Listen = new Uri("http://127.0.0.1:0"),
            // Serving logs in as the runtime role the migration created, as `serve` does.
            ConnectionString = new NpgsqlConnectionStringBuilder(connectionString) { Username = SchemaGuard.DefaultRuntimeRole }.ConnectionString,
            SigningKey = signing,
            Time = clock,
            ConfigureLogging = builder => CommonOptions.ConsoleLines(builder, logFormat).SetMinimumLevel(logLevel),
        }, cancellationToken);
        Step($"gRPC server listening on {server.Address}");

        DateTimeOffset dayStart = new(day.ToDateTime(TimeOnly.MinValue), TimeSpan.FromHours(8));
        SimulatedCluster[] sites = SimulatedCluster.DemoSites(dayStart, jobsPerInterval, seed: 2025);
        using var channel = GrpcChannel.ForAddress(server.Address);
        Step("Admission: the provider is taken through the registry workflow, on simulated dates before the day it will stream");
        string apiKey = await DemoOnboarding.AdmitAsync(dataSource, channel, clock, DemoProvider, sites, dayStart, cancellationToken);
        Step($"{DemoProvider} is admitted; ingest now takes its usage");
        ulong perSite = sites[0].RecordsPerDay;
        ulong expected = perSite * (ulong)sites.Length;
        Step($"Streaming {day:yyyy-MM-dd} from {sites.Length} sites: {expected:N0} records in 5-minute intervals; the first site's connection will drop at {perSite / 2:N0}");

        var committed = new ulong[sites.Length];
        int reconnects = 0;
        var streaming = Stopwatch.StartNew();
        Task<StreamResult>[] runs = sites.Select((site, i) => new UsageStreamer(channel, apiKey, new StreamerOptions
        {
            DropOnceAfterRecords = i == 0 ? perSite / 2 : null,
            Committed = mark => Volatile.Write(ref committed[i], mark),
            Reconnecting = reason =>
            {
                Interlocked.Increment(ref reconnects);
                Console.WriteLine($"  {site.Site}: connection lost ({reason}); reconnecting and resuming from the server's mark");
            },
        }).RunAsync(site.Site, site.RecordAt, perSite, cancellationToken)).ToArray();

        Task<StreamResult[]> all = Task.WhenAll(runs);
        while (await Task.WhenAny(all, Task.Delay(1000, cancellationToken)) != all)
        {
            ulong done = (ulong)committed.Sum(c => (decimal)Volatile.Read(ref c));
            Console.WriteLine($"  committed {done,10:N0} / {expected:N0} ({100m * done / expected,5:0.0}%)  {done / streaming.Elapsed.TotalSeconds,9:N0} records/s");
        }

        StreamResult[] results = await all;
        streaming.Stop();
        Step($"All streams committed in {streaming.Elapsed.TotalSeconds:0.00} s ({expected / streaming.Elapsed.TotalSeconds:N0} records/s), {reconnects} reconnect(s)");

        var verifier = new ChainVerifier(dataSource);
        var verifications = new List<ChainVerification>();
        foreach (StreamResult result in results)
        {
            verifications.Add(await verifier.VerifyStreamAsync(DemoProvider, result.StreamId, cancellationToken));
        }

        await PrintSummaryAsync(dataSource, results, verifications, cancellationToken);
        bool intact = verifications.All(v => v.Intact)
            && results.Zip(verifications).All(p => p.First.ChainHead.AsSpan().SequenceEqual(p.Second.ComputedHead));
        ulong stored = await CountAsync(dataSource, cancellationToken);
        Console.WriteLine();
        Console.WriteLine($"Records stored: {stored:N0} of {expected:N0} sent (nothing lost, nothing duplicated: {(stored == expected ? "yes" : "NO")}).");
        Console.WriteLine($"Every chain re-verified from the stored rows and equal to the acknowledged head: {(intact ? "yes" : "NO")}.");
        Console.WriteLine($"Total {total.Elapsed.TotalSeconds:0.0} s.");
        Console.WriteLine($"The demo's data is in the scratch database {DemoDatabase} of the embedded PostgreSQL, which the next demo recreates; "
            + "`metering serve` and the walk-throughs in README.md use the default database beside it, which the demo leaves alone.");
        return stored == expected && intact ? 0 : 1;
    }

    private static void Step(string text) => Console.WriteLine($"[{DateTime.Now:HH:mm:ss}] {text}");

    private static async Task<string> RecreateDemoDatabaseAsync(string connectionString, CancellationToken cancellationToken)
    {
        var admin = new NpgsqlConnectionStringBuilder(connectionString) { Database = "postgres", Pooling = false };
        await using (var connection = new NpgsqlConnection(admin.ConnectionString))
        {
            await connection.OpenAsync(cancellationToken);
            await connection.ExecuteAsync($"DROP DATABASE IF EXISTS {DemoDatabase} WITH (FORCE)");
            await connection.ExecuteAsync($"CREATE DATABASE {DemoDatabase}");
        }

        return new NpgsqlConnectionStringBuilder(connectionString) { Database = DemoDatabase }.ConnectionString;
    }

    private static async Task<ulong> CountAsync(NpgsqlDataSource dataSource, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return (ulong)await connection.ExecuteScalarAsync<long>("SELECT count(*) FROM usage_records WHERE provider_id = @p AND stream_id NOT LIKE 'proof:%'", new { p = DemoProvider });
    }

    private static async Task PrintSummaryAsync(NpgsqlDataSource dataSource, StreamResult[] results, List<ChainVerification> verifications, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var byModel = (await connection.QueryAsync<(string Model, long Records, long Devices, decimal UsageNpfh, string Catalog)>("""
            SELECT device_model, count(*), sum(device_count), sum(usage_npfh), min(catalog_version)
            FROM usage_records WHERE provider_id = @p AND stream_id NOT LIKE 'proof:%' GROUP BY device_model ORDER BY sum(usage_npfh) DESC
            """, new { p = DemoProvider })).ToList();

        Console.WriteLine();
        var models = new TextTable("model", "records", "device-records", "FP16 PFLOPS·h", "catalog");
        foreach (var row in byModel)
        {
            models.Add(row.Model, row.Records.ToString("N0", CultureInfo.InvariantCulture), row.Devices.ToString("N0", CultureInfo.InvariantCulture), PflopsHours(row.UsageNpfh), row.Catalog);
        }

        models.Add("total", byModel.Sum(r => r.Records).ToString("N0", CultureInfo.InvariantCulture), byModel.Sum(r => r.Devices).ToString("N0", CultureInfo.InvariantCulture), PflopsHours(byModel.Sum(r => r.UsageNpfh)), "");
        models.Write(Console.Out);

        Console.WriteLine();
        var streams = new TextTable("stream", "committed", "connections", "chain head (SHA-256)", "verified");
        for (int i = 0; i < results.Length; i++)
        {
            streams.Add(results[i].StreamId, results[i].CommittedSequence.ToString("N0", CultureInfo.InvariantCulture), results[i].Connections.ToString(CultureInfo.InvariantCulture),
                Convert.ToHexStringLower(results[i].ChainHead), verifications[i].Intact ? "intact" : $"BROKEN at {verifications[i].FirstBrokenSequence}");
        }

        streams.Write(Console.Out);
    }

    /// <summary>nPFh as PFLOPS·h with nine decimals, by integer arithmetic.</summary>
    internal static string PflopsHours(decimal nanoPflopsHours)
    {
        decimal whole = decimal.Truncate(nanoPflopsHours / 1_000_000_000m);
        decimal fraction = nanoPflopsHours - whole * 1_000_000_000m;
        return string.Create(CultureInfo.InvariantCulture, $"{whole:N0}.{fraction:000000000}");
    }
}
