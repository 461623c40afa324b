using System.Diagnostics;
using System.Globalization;
using Dapper;
using Grpc.Net.Client;
using Metering.Client.Simulation;
using Metering.Client.Streaming;
using Metering.Engine.Audit;
using Metering.Engine.Ingest;
using Metering.Engine.Signing;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Server.Hosting;
using Metering.Fixtures;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Metering.Bench.Load;

/// <summary>
/// Chain verification against raw SHA-256, in one run on a fresh embedded PostgreSQL:
/// (1) streams at least the asked canonical bytes (1 GiB by default) of chained records through
/// the real gRPC ingest; (2) verifies every chain from the stored rows, timed; (3) exports the
/// same canonical encodings to a file and times sha256sum over it; (4) changes one row by SQL
/// and verifies again. The last line of stdout is the RESULT line. MB are 10^6 bytes of
/// canonical encoding (the 32-byte previous hash each link also hashes is not counted).
/// </summary>
internal static class VerifyLoad
{
    private const string Provider = TestRecords.OtherProvider;
    private const int IntervalsPerDay = 288;
    private const int SampleRecords = 20_000;

    public static async Task<int> RunAsync(string[] args)
    {
        Dictionary<string, string>? values = BenchArguments.Pairs(args, out string? error);
        if (values is null || !values.TryGetValue("data-dir", out string? dataDirectoryArgument))
        {
            Console.Error.WriteLine($"error: {error ?? "--data-dir is required"}");
            Console.Error.WriteLine("usage: Metering.Bench verify --data-dir DIR [--canonical-mib 1024] [--streams 4]");
            return 2;
        }

        long canonicalTarget = BenchArguments.Long(values, "canonical-mib", 1024) * 1024 * 1024;
        int streamCount = (int)BenchArguments.Long(values, "streams", 4);
        if (canonicalTarget is < 1024 * 1024 or > 64L * 1024 * 1024 * 1024 || streamCount is < 1 or > 64)
        {
            Console.Error.WriteLine("error: --canonical-mib must be 1 to 65536 and --streams 1 to 64");
            return 2;
        }

        using ILoggerFactory logging = LoggerFactory.Create(builder => builder
            .AddConsole(console => console.LogToStandardErrorThreshold = LogLevel.Trace)
            .SetMinimumLevel(LogLevel.Warning));
        ILogger logger = logging.CreateLogger("metering.bench.verify");
        string dataDirectory = Path.GetFullPath(dataDirectoryArgument);
        IngestLoad.DeleteCluster(dataDirectory);
        string canonicalFile = Path.Combine(Path.GetDirectoryName(dataDirectory)!, "verify-canonical.bin");

        // A day 30 days back in Shanghai, as the ingest load uses: every record lies in the past.
        DateOnly today = DateOnly.FromDateTime(DateTime.UtcNow.AddHours(8));
        var dayStart = new DateTimeOffset(today.AddDays(-30).ToDateTime(TimeOnly.MinValue), TimeSpan.FromHours(8));
        long records = RecordsFor(canonicalTarget, streamCount, dayStart);
        long perStream = (records + streamCount - 1) / streamCount;
        int jobsPerInterval = (int)((perStream + IntervalsPerDay - 1) / IntervalsPerDay);
        Console.WriteLine($"verify: writing {perStream * streamCount:N0} records over {streamCount} streams (about {canonicalTarget / (1024 * 1024):N0} MiB of canonical encoding) into a fresh cluster in {dataDirectory}");

        double verifySeconds, shaSeconds;
        long verifiedBytes, fileBytes;
        bool tamperCaught;
        await using (EmbeddedPostgres postgres = await EmbeddedPostgres.StartAsync(new EmbeddedPostgresOptions { DataDirectory = dataDirectory, Durable = false }, logger))
        {
            await using NpgsqlDataSource dataSource = Database.CreateDataSource(postgres.ConnectionString);
            await new Migrator(dataSource, logger).MigrateAsync();
            string apiKey = (await Admissions.SeedAsync(dataSource)).OtherProvider;

            // (1) Through ingest.
            var clock = Stopwatch.StartNew();
            StreamResult[] streamed;
            await using (MeteringServer server = await MeteringServer.StartAsync(new ServerSettings
            {
                SigningKey = ServerSigningKey.CreateNew(),
                Listen = new Uri("http://127.0.0.1:0"),
                ConnectionString = postgres.RuntimeConnectionString,
                ConfigureLogging = builder => builder.AddConsole(console => console.LogToStandardErrorThreshold = LogLevel.Trace).SetMinimumLevel(LogLevel.Warning),
            }))
            {
                streamed = await StreamAsync(server.Address, apiKey, streamCount, perStream, jobsPerInterval, dayStart);
            }

            Console.WriteLine($"ingest: {perStream * streamCount:N0} records committed through gRPC in {clock.Elapsed.TotalSeconds:0.0} s");

            // Hint bits and the visibility map are set once here, so that neither timed pass pays
            // for the first read of freshly copied pages; this also warms the page cache, as the
            // file sha256sum reads is warm.
            clock.Restart();
            await using (NpgsqlConnection connection = await dataSource.OpenConnectionAsync())
            {
                await connection.ExecuteAsync("VACUUM (ANALYZE) usage_records", commandTimeout: 3_600);
            }

            Console.WriteLine($"vacuum: {clock.Elapsed.TotalSeconds:0.0} s (not timed)");

            // (2) Verify, timed, through Npgsql as the verifier always reads; then PostgreSQL
            // writing the same rows to /dev/null itself, as a baseline of the same run (not in
            // the RESULT line).
            var verifier = new ChainVerifier(dataSource);
            clock.Restart();
            IReadOnlyList<ChainVerification> results = await verifier.VerifyProviderAsync(Provider, VerificationRange.Whole);
            verifySeconds = clock.Elapsed.TotalSeconds;
            var usage = results.Where(r => !ProofStreams.Is(r.StreamId)).ToList();
            verifiedBytes = results.Sum(r => r.CanonicalBytes);
            if (usage.Count != streamCount || results.Any(r => !r.Intact) || usage.Any(r => !r.ComputedHead.AsSpan().SequenceEqual(streamed.Single(s => s.StreamId == r.StreamId).ChainHead)))
            {
                throw new InvalidOperationException("The freshly written chains do not verify to their acknowledged heads.");
            }

            if (verifiedBytes < canonicalTarget)
            {
                throw new InvalidOperationException($"Only {verifiedBytes:N0} canonical bytes were written; {canonicalTarget:N0} were asked for.");
            }

            long verifiedRecords = results.Sum(r => (long)r.RecordsChecked);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"verify: {verifiedRecords:N0} records, {verifiedBytes:N0} canonical bytes in {verifySeconds:0.00} s = {verifiedBytes / 1e6 / verifySeconds:0.0} MB/s ({Environment.ProcessorCount} cores, {results.Count} streams, Npgsql binary COPY)"));

            double floorSeconds = await ServerCopyFloorAsync(dataSource, usage.Select(r => r.StreamId).ToList());
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"server floor: PostgreSQL writing the same rows to /dev/null itself, {Math.Min(Environment.ProcessorCount, usage.Count)} at once: {floorSeconds:0.00} s = {verifiedBytes / 1e6 / floorSeconds:0.0} MB/s of canonical encoding ({floorSeconds * 1e6 / verifiedRecords * Math.Min(Environment.ProcessorCount, usage.Count):0.00} µs per row per backend)"));

            // (3) The same bytes to a file, then sha256sum over it.
            clock.Restart();
            await using (var file = new FileStream(canonicalFile, FileMode.Create, FileAccess.Write, FileShare.None, 1024 * 1024))
            {
                var sink = new FileSink(file);
                foreach (ChainVerification result in results)
                {
                    await verifier.VerifyStreamAsync(Provider, result.StreamId, VerificationRange.Whole, sink);
                }
            }

            fileBytes = new FileInfo(canonicalFile).Length;
            Console.WriteLine($"export: {fileBytes:N0} canonical bytes to {canonicalFile} in {clock.Elapsed.TotalSeconds:0.0} s (not timed)");
            if (fileBytes != verifiedBytes)
            {
                throw new InvalidOperationException($"The export holds {fileBytes:N0} bytes; verification hashed {verifiedBytes:N0}.");
            }

            shaSeconds = await Sha256SumAsync(canonicalFile);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"sha256sum: {fileBytes:N0} bytes in {shaSeconds:0.00} s = {fileBytes / 1e6 / shaSeconds:0.0} MB/s"));
            File.Delete(canonicalFile);

            // (4) Tamper one row in the middle of one stream and verify again.
            string stream = usage[usage.Count / 2].StreamId;
            long sequence = (long)usage[usage.Count / 2].CommittedSequence / 2 + 1;
            await using (NpgsqlConnection connection = await dataSource.OpenConnectionAsync())
            {
                await connection.ExecuteAsync("ALTER TABLE usage_records DISABLE TRIGGER USER");
                int changed = await connection.ExecuteAsync(
                    "UPDATE usage_records SET device_count = device_count + 1 WHERE provider_id = @Provider AND stream_id = @stream AND sequence = @sequence",
                    new { Provider, stream, sequence });
                await connection.ExecuteAsync("ALTER TABLE usage_records ENABLE TRIGGER USER");
                Console.WriteLine($"tamper: {changed} row changed by SQL: {stream} record {sequence}, device_count + 1");
            }

            clock.Restart();
            IReadOnlyList<ChainVerification> again = await verifier.VerifyProviderAsync(Provider, VerificationRange.Whole);
            var broken = again.Where(r => !r.Intact).ToList();
            tamperCaught = broken.Count == 1 && broken[0].StreamId == stream && broken[0].FirstBrokenSequence == (ulong)sequence && broken[0].Break!.Kind == Engine.Audit.ChainBreakKind.HashMismatch;
            Console.WriteLine(broken.Count == 0
                ? $"verify again: every chain intact in {clock.Elapsed.TotalSeconds:0.00} s: the change was NOT caught"
                : $"verify again in {clock.Elapsed.TotalSeconds:0.00} s: {string.Join("; ", broken.Select(b => $"{b.StreamId} broken at {b.FirstBrokenSequence}: {b.Break!.Detail}"))}");
        }

        double verifyRate = verifiedBytes / 1e6 / verifySeconds;
        double shaRate = fileBytes / 1e6 / shaSeconds;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"RESULT verify_mb_per_s={verifyRate:0.0} sha256sum_mb_per_s={shaRate:0.0} ratio={verifyRate / shaRate:0.00} tamper_caught={(tamperCaught ? "true" : "false")}"));
        return tamperCaught ? 0 : 1;
    }

    /// <summary>Records needed for the canonical target, from the mean encoded length of a sample of the simulated records (plus 2%).</summary>
    private static long RecordsFor(long canonicalTarget, int streams, DateTimeOffset dayStart)
    {
        SimulatedCluster[] sites = SimulatedCluster.DemoSites(dayStart, 1_000, seed: 2025);
        long bytes = 0;
        for (int i = 0; i < SampleRecords; i++)
        {
            SimulatedCluster site = sites[i % sites.Length];
            UsageRecord record = site.RecordAt((ulong)(i / sites.Length) + 1);
            bytes += CanonicalEncoding.Length(RecordFields.From(Provider, $"verify-{i % streams}-{site.Site}", EngineRecords.Of(record)));
        }

        return canonicalTarget * SampleRecords / bytes * 102 / 100;
    }

    private static async Task<StreamResult[]> StreamAsync(Uri address, string apiKey, int streamCount, long perStream, int jobsPerInterval, DateTimeOffset dayStart)
    {
        using var channel = GrpcChannel.ForAddress(address, new GrpcChannelOptions { MaxSendMessageSize = null });
        var committed = new ulong[streamCount];
        var runs = new Task<StreamResult>[streamCount];
        for (int i = 0; i < streamCount; i++)
        {
            int index = i;
            SimulatedCluster[] sites = SimulatedCluster.DemoSites(dayStart, jobsPerInterval, seed: 2025 + (ulong)(10 * i));
            SimulatedCluster site = sites[i % sites.Length];
            var streamer = new UsageStreamer(channel, apiKey, new StreamerOptions
            {
                BatchRecords = 5_000,
                WindowBatches = 4,
                Committed = mark => Volatile.Write(ref committed[index], mark),
                Reconnecting = reason => Console.Error.WriteLine($"verify: stream {index} reconnecting: {reason}"),
            });
            runs[i] = streamer.RunAsync($"verify-{i}-{site.Site}", site.RecordAt, (ulong)perStream, CancellationToken.None);
        }

        Task<StreamResult[]> all = Task.WhenAll(runs);
        var clock = Stopwatch.StartNew();
        while (await Task.WhenAny(all, Task.Delay(5_000)) != all)
        {
            ulong done = 0;
            for (int i = 0; i < committed.Length; i++)
            {
                done += Volatile.Read(ref committed[i]);
            }

            Console.WriteLine($"  {clock.Elapsed.TotalSeconds,6:0} s  committed {done,12:N0} / {perStream * streamCount:N0}");
        }

        return await all;
    }

    /// <summary>
    /// How long PostgreSQL takes just to produce the rows the verifier reads, with the same
    /// query and settings, into /dev/null on the server: no client, no hashing. The verifier
    /// cannot go faster than this on the same cores.
    /// </summary>
    private static async Task<double> ServerCopyFloorAsync(NpgsqlDataSource dataSource, List<string> streams)
    {
        var clock = Stopwatch.StartNew();
        await Parallel.ForEachAsync(streams, new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount }, async (stream, ct) =>
        {
            await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(ct);
            await connection.ExecuteAsync(new CommandDefinition(
                $"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {ChainRows.ReadSettings}", cancellationToken: ct));
            // The verifier's own query, with the server's /dev/null in place of the client.
            string copy = $"COPY ({ChainRows.RangeSelect(Provider, stream, 1, long.MaxValue)}) TO '/dev/null' (FORMAT BINARY)";
            await connection.ExecuteAsync(new CommandDefinition(copy + "; COMMIT", commandTimeout: 3_600, cancellationToken: ct));
        });
        return clock.Elapsed.TotalSeconds;
    }

    /// <summary>Runs sha256sum over the file and returns its wall time in seconds.</summary>
    private static async Task<double> Sha256SumAsync(string path)
    {
        var start = new ProcessStartInfo("sha256sum") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        start.ArgumentList.Add(path);
        var clock = Stopwatch.StartNew();
        using Process process = Process.Start(start) ?? throw new InvalidOperationException("sha256sum did not start.");
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        double seconds = clock.Elapsed.TotalSeconds;
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"sha256sum failed with exit code {process.ExitCode}: {await error}");
        }

        Console.WriteLine($"sha256sum: {(await output).Split(' ')[0]}");
        return seconds;
    }

    /// <summary>Writes each canonical encoding to the file, in sequence order.</summary>
    private sealed class FileSink(Stream file) : ICanonicalSink
    {
        public void Write(ReadOnlySpan<byte> canonical) => file.Write(canonical);
    }
}
