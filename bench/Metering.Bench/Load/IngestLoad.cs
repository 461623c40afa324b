using System.Diagnostics;
using System.Globalization;
using Dapper;
using Grpc.Net.Client;
using Metering.Client.Simulation;
using Metering.Client.Streaming;
using Metering.Engine.Audit;
using Metering.Engine.Catalog;
using Metering.Engine.Ingest;
using Metering.Engine.Signing;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Server.Hosting;
using Metering.Fixtures;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Metering.Bench.Load;

/// <summary>
/// End-to-end durable ingest against its baseline, in one process and one run:
/// a fresh embedded PostgreSQL with fsync on, the gRPC server on loopback, and S sample agents
/// streaming N records; then the same rows exported to CSV and loaded back into the same table
/// by psql's \copy (what a user might try), and the limit: the same rows, already encoded in binary
/// COPY format, loaded by S parallel COPY sessions (<see cref="BinaryCopyBaseline"/>). The last line
/// of stdout is the machine-readable RESULT line.
/// </summary>
internal static class IngestLoad
{
    // Admitted by Admissions.SeedAsync, which issues its key as OtherProvider.
    private const string Provider = TestRecords.OtherProvider;

    private const string Columns =
        "provider_id, stream_id, sequence, job_id, holder_code, device_model, device_count, share_numerator, share_denominator, "
        + "start_at, end_at, site, device_uuids, energy_mwh, catalog_version, usage_npfh, chain_hash";

    // The copied rows get a stream id prefix so that they do not collide with the streamed rows'
    // primary keys in the same table.
    private const string ExportColumns =
        "provider_id, 'copy-' || stream_id, sequence, job_id, holder_code, device_model, device_count, share_numerator, share_denominator, "
        + "start_at, end_at, site, device_uuids, energy_mwh, catalog_version, usage_npfh, chain_hash";

    private const int IntervalsPerDay = 288;

    // The seed writes each admitted provider's metering-log proof stream (two records each); the
    // load counts, verifies and copies only the usage streams.
    private const string UsageStreams = "stream_id NOT LIKE 'proof:%'";

    public static async Task<int> RunAsync(string[] args)
    {
        LoadOptions? options = LoadOptions.Parse(args, out string? error);
        if (options is null)
        {
            Console.Error.WriteLine($"error: {error}");
            Console.Error.WriteLine("usage: Metering.Bench load --records N --streams S --data-dir DIR [--batch B --window W --tls true|false --log-statements true|false --servers N --group-commit N --in-flight N --group-commits-in-flight N --client prepared|agent]");
            return 2;
        }

        // Log lines go to stderr: stdout carries the progress and ends with the RESULT line.
        using ILoggerFactory logging = LoggerFactory.Create(builder => builder
            .AddConsole(console => console.LogToStandardErrorThreshold = LogLevel.Trace)
            .SetMinimumLevel(LogLevel.Warning));
        ILogger logger = logging.CreateLogger("metering.bench.load");
        if (options.Servers > 1)
        {
            return await ServersLoad.RunAsync(options, logger);
        }

        string dataDirectory = Path.GetFullPath(options.DataDirectory);
        DeleteCluster(dataDirectory);
        Console.WriteLine($"load: {options.Records:N0} records over {options.Streams} streams, batches of {options.BatchRecords:N0}, window {options.WindowBatches}, "
            + $"{(options.Tls ? "TLS (a CA and certificate made at run time)" : "cleartext HTTP/2 on loopback")}, a signed receipt on every acknowledgement; fresh cluster in {dataDirectory}");
        Console.WriteLine(options.Client == LoadClient.Prepared
            ? "load: client prepared: every batch generated and serialised before the clock starts, as the binary baseline's rows are (--client agent: the agent's streamer, inside the clock)"
            : "load: client agent: the client library's streamer generates and serialises each batch inside the clock (--client prepared: before it, as the binary baseline's rows are)");

        double ingestPerSecond;
        double copyPerSecond;
        double binaryPerSecond;
        double p50Ms;
        double p99Ms;
        double cpuUsPerRecord;
        await using (EmbeddedPostgres postgres = await EmbeddedPostgres.StartAsync(new EmbeddedPostgresOptions { DataDirectory = dataDirectory, Durable = true }, logger))
        {
            await using NpgsqlDataSource dataSource = Database.CreateDataSource(postgres.ConnectionString);
            await new Migrator(dataSource, logger).MigrateAsync();
            Console.WriteLine($"load: PostgreSQL {await ServerVersionAsync(dataSource)} in {postgres.DataDirectory} (fsync on, synchronous_commit on)");

            string apiKey = (await Admissions.SeedAsync(dataSource)).OtherProvider;
            if (options.LogStatements)
            {
                // Where a commit's time goes: every statement with its duration in the cluster's
                // log (DIR.log), at the cost of some throughput, so the figures of such a run are
                // for the breakdown, not for the record.
                await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync();
                await connection.ExecuteAsync("ALTER SYSTEM SET log_min_duration_statement = 0");
                await connection.ExecuteAsync("ALTER SYSTEM SET log_line_prefix = '%m [%p] '");
                await connection.ExecuteAsync("SELECT pg_reload_conf()");
            }

            Streamed streamed;
            using BenchCertificates? certificates = options.Tls ? BenchCertificates.Make() : null;
            using ServerSigningKey signingKey = ServerSigningKey.CreateNew();
            await using (MeteringServer server = await MeteringServer.StartAsync(new ServerSettings
            {
                SigningKey = signingKey,
                Listen = new Uri(certificates is null ? "http://127.0.0.1:0" : "https://127.0.0.1:0"),
                Certificate = certificates?.Server,
                ConnectionString = postgres.RuntimeConnectionString,
                // The server's default unless a run compares group commit sizes (1: a transaction per batch).
                Limits = LimitsOf(options),
                ConfigureLogging = builder => builder.AddConsole(console => console.LogToStandardErrorThreshold = LogLevel.Trace).SetMinimumLevel(LogLevel.Warning),
            }))
            {
                // Both phases start right after a checkpoint, so that each pays the same
                // full-page writes for the pages it touches first.
                await CheckpointAsync(dataSource);
                using GrpcChannel channel = certificates is null
                    ? GrpcChannel.ForAddress(server.Address, new GrpcChannelOptions { MaxSendMessageSize = null })
                    : BenchCertificates.Channel(server.Address, certificates.Ca);
                streamed = await StreamAsync(channel, apiKey, options);
                var (transactions, batches) = server.Services.GetRequiredService<GroupCommitter>().Committed;
                Console.WriteLine($"group commit: {batches:N0} stream batches in {transactions:N0} transactions, {(double)batches / Math.Max(1, transactions):0.00} per transaction");
            }

            long stored = await CountAsync(dataSource);
            if (stored != options.Records)
            {
                throw new InvalidOperationException($"The table holds {stored} records after streaming {options.Records}.");
            }

            await VerifyAsync(dataSource, streamed);

            ingestPerSecond = options.Records / streamed.Seconds;
            streamed.LatenciesMs.Sort();
            p50Ms = Percentile(streamed.LatenciesMs, 0.50);
            p99Ms = Percentile(streamed.LatenciesMs, 0.99);
            cpuUsPerRecord = streamed.ProcessCpuSeconds * 1e6 / options.Records;
            Console.WriteLine($"ingest: {options.Records:N0} records in {streamed.Seconds:0.00} s = {ingestPerSecond:N0} records/s; ack latency p50 {p50Ms:0.0} ms, p99 {p99Ms:0.0} ms over {streamed.LatenciesMs.Count:N0} batches; "
                + $"this process (client {options.ClientName} and server) {cpuUsPerRecord:0.00} CPU µs per record");

            string csv = Path.Combine(Path.GetDirectoryName(dataDirectory)!, "ingest-copy.csv");
            string psql = FindPsql(postgres.BinDirectory);
            await RunPsqlAsync(psql, postgres, $"\\copy (SELECT {ExportColumns} FROM usage_records WHERE {UsageStreams}) TO '{csv}' CSV");
            Console.WriteLine($"copy: exported {stored:N0} rows to {csv} ({new FileInfo(csv).Length / (1024.0 * 1024.0):N0} MiB)");

            await CheckpointAsync(dataSource);
            double copySeconds = await RunPsqlAsync(psql, postgres, $"\\copy usage_records ({Columns}) FROM '{csv}' CSV");
            long copied = await CountAsync(dataSource) - stored;
            if (copied != stored)
            {
                throw new InvalidOperationException($"psql \\copy loaded {copied} rows, not {stored}.");
            }

            copyPerSecond = copied / copySeconds;
            Console.WriteLine($"copy: {copied:N0} rows in {copySeconds:0.00} s = {copyPerSecond:N0} records/s");
            File.Delete(csv);

            binaryPerSecond = await BinaryCopyBaseline.RunAsync(dataSource, Provider, streamed.Results.Select(r => r.StreamId).ToArray());
        }

        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"RESULT ingest_records_per_s={ingestPerSecond:0} copy_records_per_s={copyPerSecond:0} ratio={ingestPerSecond / copyPerSecond:0.00} "
            + $"binary_copy_records_per_s={binaryPerSecond:0} ratio_vs_binary={ingestPerSecond / binaryPerSecond:0.00} p50_ack_ms={p50Ms:0.0} p99_ack_ms={p99Ms:0.0} tls={(options.Tls ? "true" : "false")} client={options.ClientName} "
            + $"process_cpu_us_per_record={cpuUsPerRecord:0.00}"));
        return 0;
    }

    /// <summary>The server's ingest limits: its defaults, unless a run compares group commit sizes, batches in flight per stream or group commits in flight per provider.</summary>
    internal static IngestLimits LimitsOf(LoadOptions options)
    {
        var limits = new IngestLimits();
        if (options.GroupCommit is int groupCommit)
        {
            // 1: a transaction per batch.
            limits.GroupCommitBatchesMax = groupCommit;
        }

        if (options.InFlight is int inFlight)
        {
            // 1: a stream's batches one at a time.
            limits.StreamBatchesInFlightMax = inFlight;
        }

        if (options.GroupCommitsInFlight is int groupsInFlight)
        {
            // 1: a provider's group commits one after another, none copying while another commits.
            limits.GroupCommitsInFlightMax = groupsInFlight;
        }

        return limits;
    }

    /// <summary>
    /// Streams the records over one HTTP/2 connection, one gRPC call per stream, and returns the
    /// wall time from the first send to the last acknowledgement and every batch's ack latency.
    /// </summary>
    internal static async Task<Streamed> StreamAsync(GrpcChannel channel, string apiKey, LoadOptions options)
    {
        // A day 30 days back in Shanghai: every record lies in the past, whatever the run time.
        DateOnly today = DateOnly.FromDateTime(DateTime.UtcNow.AddHours(8));
        var dayStart = new DateTimeOffset(today.AddDays(-30).ToDateTime(TimeOnly.MinValue), TimeSpan.FromHours(8));
        long perStream = options.Records / options.Streams;
        int jobsPerInterval = (int)((perStream + IntervalsPerDay - 1) / IntervalsPerDay);

        var streams = new (string StreamId, SimulatedCluster Site)[options.Streams];
        for (int i = 0; i < streams.Length; i++)
        {
            // 32 devices per lane, the largest job, so that no job is cut to fit its pool: the
            // records are the same whatever the load, and the seeded fleet holds them all.
            SimulatedCluster[] sites = SimulatedCluster.DemoSites(dayStart, jobsPerInterval, seed: 2025 + (ulong)(10 * i), devicesPerLaneMin: 32);
            SimulatedCluster site = sites[i % sites.Length];
            streams[i] = ($"load-{i}-{site.Site}", site);
        }

        LoadStream[] loadStreams = streams.Select((s, i) => new LoadStream(s.StreamId, s.Site.RecordAt, (ulong)(perStream + (i < options.Records % options.Streams ? 1 : 0)))).ToArray();
        PreparedStreams.Prepared[]? prepared = null;
        if (options.Client == LoadClient.Prepared)
        {
            var preparing = Stopwatch.StartNew();
            prepared = PreparedStreams.Prepare(loadStreams, options.BatchRecords);
            Console.WriteLine($"load: client prepared: {prepared.Sum(p => p.Messages.Length):N0} batch messages of {loadStreams.Length} streams serialised in memory "
                + $"({prepared.Sum(p => p.Bytes) / (1024.0 * 1024.0):N0} MiB) in {preparing.Elapsed.TotalSeconds:0.0} s, not timed");
        }

        // This process's CPU time (client and server together) over the timed part only.
        TimeSpan cpuBefore = Process.GetCurrentProcess().TotalProcessorTime;
        var (elapsed, latencies, results) = prepared is not null
            ? await StreamPreparedAsync(channel, apiKey, prepared, options.BatchRecords, options.WindowBatches)
            : await StreamRecordsAsync(channel, apiKey, loadStreams, options.BatchRecords, options.WindowBatches);
        TimeSpan cpu = Process.GetCurrentProcess().TotalProcessorTime - cpuBefore;
        return new Streamed(elapsed, latencies, streams.Select(s => s.Site).ToArray(), results, cpu.TotalSeconds);
    }

    /// <summary>
    /// `--client prepared`: streams the batches that <see cref="PreparedStreams.Prepare"/> generated
    /// and serialised before the clock starts (as the binary baseline encodes its rows) as they
    /// are, one gRPC call per stream over the one channel; returns what
    /// <see cref="StreamRecordsAsync"/> returns.
    /// </summary>
    internal static async Task<(double Seconds, List<double> LatenciesMs, StreamResult[] Results)> StreamPreparedAsync(
        GrpcChannel channel, string apiKey, PreparedStreams.Prepared[] prepared, int batchRecords, int windowBatches)
    {
        ulong total = (ulong)prepared.Sum(p => (decimal)p.Records);
        var committed = new ulong[prepared.Length];
        var latencies = new List<double>[prepared.Length];
        var clock = Stopwatch.StartNew();
        var runs = new Task<StreamResult>[prepared.Length];
        for (int i = 0; i < prepared.Length; i++)
        {
            int index = i;
            latencies[index] = [];
            runs[i] = PreparedStreams.RunAsync(channel, apiKey, prepared[i], batchRecords, windowBatches,
                mark => Volatile.Write(ref committed[index], mark),
                latency => latencies[index].Add(latency.TotalMilliseconds));
        }

        StreamResult[] results = await AwaitWithProgressAsync(runs, committed, total, clock);
        return (clock.Elapsed.TotalSeconds, latencies.SelectMany(l => l).ToList(), results);
    }

    /// <summary>
    /// Streams each stream's records with the client library's <see cref="UsageStreamer"/>, one gRPC
    /// call per stream over the one channel, printing progress each second; returns the wall time
    /// from the first send to the last acknowledgement and every batch's ack latency. The raw log
    /// bench uses it too, so that both benches measure the stream path the same way.
    /// </summary>
    internal static async Task<(double Seconds, List<double> LatenciesMs, StreamResult[] Results)> StreamRecordsAsync(
        GrpcChannel channel, string apiKey, LoadStream[] streams, int batchRecords, int windowBatches)
    {
        ulong total = (ulong)streams.Sum(s => (decimal)s.Records);
        var committed = new ulong[streams.Length];
        var latencies = new List<double>[streams.Length];
        var clock = Stopwatch.StartNew();
        var runs = new Task<StreamResult>[streams.Length];
        for (int i = 0; i < streams.Length; i++)
        {
            int index = i;
            latencies[index] = [];
            var streamer = new UsageStreamer(channel, apiKey, new StreamerOptions
            {
                BatchRecords = batchRecords,
                WindowBatches = windowBatches,
                Committed = mark => Volatile.Write(ref committed[index], mark),
                AckLatency = latency => latencies[index].Add(latency.TotalMilliseconds),
                Reconnecting = reason => Console.Error.WriteLine($"load: {streams[index].StreamId} reconnecting: {reason}"),
            });
            runs[i] = streamer.RunAsync(streams[i].StreamId, streams[i].RecordAt, streams[i].Records, CancellationToken.None);
        }

        StreamResult[] results = await AwaitWithProgressAsync(runs, committed, total, clock);
        double elapsed = clock.Elapsed.TotalSeconds;
        if (results.Any(r => r.Connections != 1))
        {
            Console.WriteLine($"load: {results.Sum(r => r.Connections - 1)} reconnect(s) during the run");
        }

        return (elapsed, latencies.SelectMany(l => l).ToList(), results);
    }

    /// <summary>Waits for the streams' runs, printing the committed records each second.</summary>
    private static async Task<StreamResult[]> AwaitWithProgressAsync(Task<StreamResult>[] runs, ulong[] committed, ulong total, Stopwatch clock)
    {
        Task<StreamResult[]> all = Task.WhenAll(runs);
        ulong previous = 0;
        double previousSeconds = 0;
        while (await Task.WhenAny(all, Task.Delay(1_000)) != all)
        {
            ulong done = 0;
            for (int i = 0; i < committed.Length; i++)
            {
                done += Volatile.Read(ref committed[i]);
            }

            double seconds = clock.Elapsed.TotalSeconds;
            Console.WriteLine($"  {seconds,6:0.0} s  committed {done,12:N0} / {total:N0}  now {(done - previous) / (seconds - previousSeconds),9:N0} records/s  mean {done / seconds,9:N0} records/s");
            previous = done;
            previousSeconds = seconds;
        }

        return await all;
    }

    /// <summary>
    /// Checks what was stored, outside the timed part: every chain re-verifies from the rows and
    /// ends at the acknowledged head, and the stored usage adds up to the usage of the records
    /// sent, normalised again here with the catalog in force.
    /// </summary>
    internal static async Task VerifyAsync(NpgsqlDataSource dataSource, Streamed streamed)
    {
        var clock = Stopwatch.StartNew();
        var verifier = new ChainVerifier(dataSource);
        DeviceCatalog catalog = DeviceCatalog.LoadEmbedded();
        decimal expectedUsageNpfh = 0;
        for (int i = 0; i < streamed.Results.Length; i++)
        {
            StreamResult result = streamed.Results[i];
            ChainVerification verification = await verifier.VerifyStreamAsync(Provider, result.StreamId);
            if (!verification.Intact || !verification.ComputedHead.AsSpan().SequenceEqual(result.ChainHead))
            {
                throw new InvalidOperationException($"Stream {result.StreamId} does not re-verify: {verification.Evidence ?? "its recomputed head differs from the acknowledged one"}");
            }

            for (ulong sequence = 1; sequence <= result.CommittedSequence; sequence++)
            {
                UsageRecord record = streamed.Sites[i].RecordAt(sequence);
                catalog.VersionAt(record.StartUnixMs).TryGet(record.DeviceModel, out DeviceModel model);
                expectedUsageNpfh += UsageNormaliser.UsageNanoPflopsHours(
                    record.DeviceCount, record.ShareNumerator, record.ShareDenominator, record.EndUnixMs - record.StartUnixMs, model.Fp16DenseGflops);
            }
        }

        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync();
        decimal storedUsageNpfh = await connection.ExecuteScalarAsync<decimal>($"SELECT sum(usage_npfh) FROM usage_records WHERE {UsageStreams}");
        if (storedUsageNpfh != expectedUsageNpfh)
        {
            throw new InvalidOperationException($"The stored usage is {storedUsageNpfh} nPFh; the records sent normalise to {expectedUsageNpfh} nPFh.");
        }

        Console.WriteLine($"verify: {streamed.Results.Length} chains intact and equal to the acknowledged heads; usage {storedUsageNpfh:N0} nPFh as expected ({clock.Elapsed.TotalSeconds:0.0} s, not timed)");
    }

    internal sealed record Streamed(double Seconds, List<double> LatenciesMs, SimulatedCluster[] Sites, StreamResult[] Results, double ProcessCpuSeconds);

    internal static double Percentile(List<double> sorted, double quantile) =>
        sorted.Count == 0 ? 0 : sorted[Math.Clamp((int)Math.Ceiling(quantile * sorted.Count) - 1, 0, sorted.Count - 1)];

    /// <summary>Removes an earlier run's cluster with its lock and log files, so each run starts fresh.</summary>
    internal static void DeleteCluster(string dataDirectory)
    {
        if (Directory.Exists(dataDirectory))
        {
            Directory.Delete(dataDirectory, recursive: true);
        }

        if (File.Exists(dataDirectory + ".log"))
        {
            File.Delete(dataDirectory + ".log");
        }
    }

    private static string FindPsql(string binDirectory)
    {
        foreach (string directory in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries).Append(binDirectory))
        {
            string candidate = Path.Combine(directory, "psql");
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        throw new InvalidOperationException($"psql is neither on PATH nor in {binDirectory}.");
    }

    /// <summary>Runs one psql meta-command and returns its wall time in seconds.</summary>
    private static async Task<double> RunPsqlAsync(string psql, EmbeddedPostgres postgres, string command)
    {
        var start = new ProcessStartInfo(psql) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string argument in postgres.PsqlArguments)
        {
            start.ArgumentList.Add(argument);
        }

        start.ArgumentList.Add("-v");
        start.ArgumentList.Add("ON_ERROR_STOP=1");
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add(command);
        var clock = Stopwatch.StartNew();
        using Process process = Process.Start(start) ?? throw new InvalidOperationException("psql did not start.");
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        double seconds = clock.Elapsed.TotalSeconds;
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"psql {command} failed with exit code {process.ExitCode}: {await output}{await error}");
        }

        return seconds;
    }

    internal static async Task CheckpointAsync(NpgsqlDataSource dataSource)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync();
        await using var checkpoint = new NpgsqlCommand("CHECKPOINT", connection);
        await checkpoint.ExecuteNonQueryAsync();
    }

    internal static async Task<long> CountAsync(NpgsqlDataSource dataSource)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync();
        return await connection.ExecuteScalarAsync<long>($"SELECT count(*) FROM usage_records WHERE {UsageStreams}");
    }

    private static async Task<string> ServerVersionAsync(NpgsqlDataSource dataSource)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync();
        return await connection.ExecuteScalarAsync<string>("SHOW server_version") ?? "?";
    }
}

/// <summary>One stream of a load: its id, its records by sequence (1-based) and how many.</summary>
internal sealed record LoadStream(string StreamId, Func<ulong, UsageRecord> RecordAt, ulong Records);

/// <summary>
/// How the load's client makes what it sends. Prepared: every batch generated and serialised before
/// the clock starts, as the binary baseline's rows are encoded before its clock starts. Agent: the
/// client library's streamer, which generates each record and serialises each batch inside the
/// clock, on the same cores as the server and PostgreSQL, as a provider's agent does.
/// </summary>
internal enum LoadClient
{
    Prepared,
    Agent,
}

/// <summary>The load tool's command line.</summary>
internal sealed record LoadOptions(long Records, int Streams, string DataDirectory, int BatchRecords, int WindowBatches, bool Tls, bool LogStatements = false, int Servers = 1, int? GroupCommit = null, int? InFlight = null,
    int? GroupCommitsInFlight = null, LoadClient Client = LoadClient.Prepared)
{
    /// <summary>The mode's name as `--client` takes it and the RESULT line prints it.</summary>
    public string ClientName => Client == LoadClient.Prepared ? "prepared" : "agent";

    public const long RecordsMax = 100_000_000;
    public const int StreamsMax = 64;
    public const int WindowBatchesMax = 64;

    /// <summary>The most server hosts `--servers` starts: a few, as a deployment runs behind one name.</summary>
    public const int ServersMax = 8;

    public static LoadOptions? Parse(string[] args, out string? error)
    {
        Dictionary<string, string>? values = BenchArguments.Pairs(args, out error);
        if (values is null)
        {
            return null;
        }

        if (!values.TryGetValue("data-dir", out string? dataDirectory))
        {
            error = "--data-dir is required";
            return null;
        }

        long records = long.Parse(values.GetValueOrDefault("records", "2000000"), CultureInfo.InvariantCulture);
        int streams = int.Parse(values.GetValueOrDefault("streams", "4"), CultureInfo.InvariantCulture);
        int batch = int.Parse(values.GetValueOrDefault("batch", "5000"), CultureInfo.InvariantCulture);
        int window = int.Parse(values.GetValueOrDefault("window", "4"), CultureInfo.InvariantCulture);
        bool tls = bool.Parse(values.GetValueOrDefault("tls", "false"));
        bool logStatements = bool.Parse(values.GetValueOrDefault("log-statements", "false"));
        int servers = int.Parse(values.GetValueOrDefault("servers", "1"), CultureInfo.InvariantCulture);
        int? groupCommit = values.TryGetValue("group-commit", out string? group) ? int.Parse(group, CultureInfo.InvariantCulture) : null;
        int? inFlight = values.TryGetValue("in-flight", out string? ahead) ? int.Parse(ahead, CultureInfo.InvariantCulture) : null;
        int? groupsInFlight = values.TryGetValue("group-commits-in-flight", out string? groups) ? int.Parse(groups, CultureInfo.InvariantCulture) : null;
        string clientName = values.GetValueOrDefault("client", "prepared");
        LoadClient client = clientName == "agent" ? LoadClient.Agent : LoadClient.Prepared;
        error = records is < 1 or > RecordsMax ? $"--records must be 1 to {RecordsMax}"
            : streams < 1 || streams > StreamsMax || streams > records ? $"--streams must be 1 to {StreamsMax} and at most --records"
            : batch is < 1 or > 100_000 ? "--batch must be 1 to 100000"
            : window is < 1 or > WindowBatchesMax ? $"--window must be 1 to {WindowBatchesMax}"
            : servers is < 1 or > ServersMax ? $"--servers must be 1 to {ServersMax}"
            : servers > 1 && logStatements ? "--log-statements is for the one-server run; leave it out with --servers"
            : groupCommit is < 1 or > 256 ? "--group-commit must be 1 to 256"
            : inFlight is < 1 or > 8 ? "--in-flight must be 1 to 8"
            : groupsInFlight is < 1 or > 4 ? "--group-commits-in-flight must be 1 to 4"
            : clientName is not ("prepared" or "agent") ? "--client must be prepared or agent"
            : null;
        return error is null ? new LoadOptions(records, streams, dataDirectory, batch, window, tls, logStatements, servers, groupCommit, inFlight, groupsInFlight, client) : null;
    }
}
