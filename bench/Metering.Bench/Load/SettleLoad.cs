using System.Diagnostics;
using System.Globalization;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Audit;
using Metering.Engine.Capacity;
using Metering.Engine.Catalog;
using Metering.Engine.Identity;
using Metering.Engine.Ingest;
using Metering.Engine.Registry;
using Metering.Engine.Settlement;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Metering.Engine.Vouchers;
using Metering.Protocol.V1;
using Metering.Fixtures;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;
using Contract = Metering.Engine.Vouchers.Contract;
using FeeUnit = Metering.Engine.Registry.FeeUnit;
using Holder = Metering.Engine.Vouchers.Holder;
using HolderType = Metering.Engine.Vouchers.HolderType;

namespace Metering.Bench.Load;

/// <summary>
/// Nightly settlement of one large day against its floor, in one process and one run: a fresh
/// embedded PostgreSQL (fsync on); P admitted providers, H approved holders with contracts and
/// vouchers; N usage records of 2026-11-20 over two streams per provider, generated with a fixed
/// seed, chained with the engine's CanonicalEncoding and loaded by binary COPY straight into
/// usage_records (past ingest, with each stream's head written in the same transaction); some
/// claims; then the day is settled, settled again (the hash must match and nothing may be
/// written), and the one set-based SQL aggregation settlement is built on is timed alone over the
/// same rows. The last line of stdout is the machine-readable RESULT line.
/// </summary>
internal static class SettleLoad
{
    private static readonly DateOnly Day = new(2026, 11, 20);
    private static readonly Actor Operator = new(Role.Operator, "bench-operator");

    /// <param name="DayRanges">
    /// Block ranges each of the run's reading connections takes in turn
    /// (<see cref="SettlementOptions.DayRangesPerSegment"/>), or 0 for the engine's default: a
    /// knob of the bench for A/B runs of the day's read, not a setting of the engine.
    /// </param>
    /// <param name="DaySegments">
    /// Connections that read the day side by side (<see cref="SettlementOptions.DaySegments"/>,
    /// the setting <c>Settlement:DaySegments</c>), or 0 for the engine's default.
    /// </param>
    /// <param name="DayChunkBlocks">
    /// Blocks of a range PostgreSQL groups at a time (<see cref="SettlementOptions.DayChunkBlocks"/>),
    /// or 0 for the engine's default: a knob of the bench for A/B runs of the day's read.
    /// </param>
    private sealed record Options(long Records, int Providers, int Holders, int ContractsPerHolder, int Claims, int Loaders, int DayRanges, int DaySegments, int DayChunkBlocks, string DataDirectory)
    {
        public static Options? Parse(string[] args, out string? error)
        {
            Dictionary<string, string>? values = BenchArguments.Pairs(args, out error);
            if (values is null)
            {
                return null;
            }

            var options = new Options(
                BenchArguments.Long(values, "records", 10_000_000),
                (int)BenchArguments.Long(values, "providers", 40),
                (int)BenchArguments.Long(values, "holders", 600),
                (int)BenchArguments.Long(values, "contracts-per-holder", 3),
                (int)BenchArguments.Long(values, "claims", 30),
                (int)BenchArguments.Long(values, "loaders", 2),
                (int)BenchArguments.Long(values, "day-ranges", 0),
                (int)BenchArguments.Long(values, "day-segments", 0),
                (int)BenchArguments.Long(values, "day-chunk-blocks", 0),
                values.TryGetValue("data-dir", out string? directory) ? directory : Path.Combine("bench", "out", "settle-pg"));
            if (options.Records < 1 || options.Providers is < 2 or > 10_000 || options.Holders < 1 || options.ContractsPerHolder < 1
                || options.ContractsPerHolder > options.Providers || options.Loaders is < 1 or > 16 || options.Claims < 0
                || options.DayRanges is < 0 or > SettlementOptions.DayRangesPerSegmentMax || options.DaySegments is < 0 or > SettlementOptions.DaySegmentsMax
                || options.DayChunkBlocks is < 0 or > SettlementOptions.DayChunkBlocksMax)
            {
                error = $"records ≥ 1, providers 2 to 10000, holders ≥ 1, contracts-per-holder 1 to providers, loaders 1 to 16, claims ≥ 0, day-ranges 0 (default) to {SettlementOptions.DayRangesPerSegmentMax}, day-segments 0 (default) to {SettlementOptions.DaySegmentsMax}, day-chunk-blocks 0 (default) to {SettlementOptions.DayChunkBlocksMax}";
                return null;
            }

            return options;
        }
    }

    private sealed record Stream(string Provider, string StreamId, int Seed, long Records, string[] Holders);

    public static async Task<int> RunAsync(string[] args)
    {
        Options? options = Options.Parse(args, out string? error);
        if (options is null)
        {
            Console.Error.WriteLine($"error: {error}");
            Console.Error.WriteLine("usage: Metering.Bench settle --records N --providers P --holders H --contracts-per-holder K --claims C --loaders L --day-ranges R --day-segments S --day-chunk-blocks B --data-dir DIR");
            return 2;
        }

        using ILoggerFactory logging = LoggerFactory.Create(builder => builder
            .AddConsole(console => console.LogToStandardErrorThreshold = LogLevel.Trace)
            .SetMinimumLevel(LogLevel.Warning));
        ILogger logger = logging.CreateLogger("metering.bench.settle");
        string dataDirectory = Path.GetFullPath(options.DataDirectory);
        if (Directory.Exists(dataDirectory))
        {
            Directory.Delete(dataDirectory, recursive: true);
        }

        Console.WriteLine($"settle: {options.Records:N0} records of {Day:yyyy-MM-dd} over {options.Providers} providers × 2 streams, {options.Holders} holders × {options.ContractsPerHolder} contracts; fresh cluster in {dataDirectory}");
        await using EmbeddedPostgres postgres = await EmbeddedPostgres.StartAsync(new EmbeddedPostgresOptions { DataDirectory = dataDirectory, Durable = true }, logger);
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(postgres.ConnectionString);
        await new Migrator(dataSource, logger).MigrateAsync();

        var clock = Stopwatch.StartNew();
        string[] providers = await AdmitProvidersAsync(dataSource, options.Providers);
        Console.WriteLine($"settle: {providers.Length} providers admitted in {clock.Elapsed.TotalSeconds:0.0} s");

        clock.Restart();
        var bookClock = new ManualClock(new DateTimeOffset(2026, 11, 21, 10, 0, 0, TimeSpan.FromHours(8)));
        var (holdersByProvider, vouchered) = await SignHoldersAsync(dataSource, bookClock, providers, options);
        Console.WriteLine($"settle: {options.Holders} holders, {holdersByProvider.Values.Sum(h => h.Count):N0} contracts and {vouchered.Count:N0} vouchers recorded in {clock.Elapsed.TotalSeconds:0.0} s");

        clock.Restart();
        List<Stream> streams = Plan(providers, holdersByProvider, options.Records);
        await LoadAsync(dataSource, streams, options.Loaders);
        double loadSeconds = clock.Elapsed.TotalSeconds;
        Console.WriteLine($"settle: loaded {options.Records:N0} records by binary COPY in {loadSeconds:0.0} s = {options.Records / loadSeconds:N0} records/s (chain hashes by CanonicalEncoding)");

        clock.Restart();
        int claims = await FileClaimsAsync(dataSource, bookClock, vouchered, options.Claims);
        Console.WriteLine($"settle: {claims} claims filed in {clock.Elapsed.TotalSeconds:0.0} s");

        clock.Restart();
        await using (NpgsqlConnection connection = await dataSource.OpenConnectionAsync())
        {
            await connection.ExecuteAsync("VACUUM ANALYZE usage_records", commandTimeout: 0);
            // A plain command: Dapper would take a one-word text for a stored procedure's name.
            await using var checkpoint = new NpgsqlCommand("CHECKPOINT", connection) { CommandTimeout = 0 };
            await checkpoint.ExecuteNonQueryAsync();
        }

        Console.WriteLine($"settle: VACUUM ANALYZE and CHECKPOINT in {clock.Elapsed.TotalSeconds:0.0} s");

        double floorBefore = await TimeFloorAsync(dataSource, options.Records);
        var defaults = new SettlementOptions();
        var settlementOptions = new SettlementOptions
        {
            DayRangesPerSegment = options.DayRanges == 0 ? defaults.DayRangesPerSegment : options.DayRanges,
            DaySegments = options.DaySegments == 0 ? defaults.DaySegments : options.DaySegments,
            DayChunkBlocks = options.DayChunkBlocks == 0 ? defaults.DayChunkBlocks : options.DayChunkBlocks,
        };
        Console.WriteLine($"settle: the day read by {settlementOptions.DaySegments} connection(s), {settlementOptions.DayRangesPerSegment} block range(s) each, grouped {settlementOptions.DayChunkBlocks} blocks at a time; load average {LoadAverage()}");
        var settlement = new DailySettlement(dataSource, TimeProvider.System, NullLogger.Instance, settlementOptions);
        var batch = new Actor(Role.Settlement, "bench-settlement");
        // The engine's CPU time in this process (the run's own work: parsing, totals, hashing,
        // pricing), which on a shared box says more about a change to it than the wall clock.
        TimeSpan cpuBefore = Process.GetCurrentProcess().TotalProcessorTime;
        long faultsBefore = MinorFaults();
        clock.Restart();
        SettlementOutcome first = await settlement.SettleAsync(Day, batch, step => Console.WriteLine($"  [{step.Elapsed.TotalSeconds,6:0.0} s] {step.Stage}: {step.Message}"), CancellationToken.None);
        double settleSeconds = clock.Elapsed.TotalSeconds;
        double engineCpuSeconds = (Process.GetCurrentProcess().TotalProcessorTime - cpuBefore).TotalSeconds;
        long faults = MinorFaults() - faultsBefore;
        Console.WriteLine($"settle: first run {settleSeconds:0.00} s, {engineCpuSeconds:0.00} s of CPU in the engine's process, {faults:N0} page faults, hash {first.SettlementHex}; load average {LoadAverage()}");

        string before = await CountsAsync(dataSource);
        clock.Restart();
        SettlementOutcome second = await settlement.SettleAsync(Day, batch, null, CancellationToken.None);
        double rerunSeconds = clock.Elapsed.TotalSeconds;
        bool idempotent = second.AlreadyClosed && second.SettlementHex == first.SettlementHex && before == await CountsAsync(dataSource);
        Console.WriteLine($"settle: second run {rerunSeconds:0.00} s, already closed {second.AlreadyClosed}, hash {second.SettlementHex}");

        double floorAfter = await TimeFloorAsync(dataSource, options.Records);
        double floor = Math.Min(floorBefore, floorAfter);
        bool balanced;
        await using (NpgsqlConnection connection = await dataSource.OpenConnectionAsync())
        {
            balanced = await connection.ExecuteScalarAsync<bool>("""
                SELECT (SELECT sum(debit_fen) = sum(credit_fen) FROM ledger_lines)
                   AND NOT EXISTS (SELECT 1 FROM ledger_lines GROUP BY entry_id HAVING sum(debit_fen) <> sum(credit_fen))
                """);
        }

        if (first.DayRecords != options.Records)
        {
            throw new InvalidOperationException($"The run settled {first.DayRecords} records of the day; {options.Records} were loaded.");
        }

        Console.WriteLine($"settle: {first.Statements.Count:N0} statements, fees {Pricing.Yuan(first.FeeFen)} CNY, subsidies posted {Pricing.Yuan(first.SubsidyFen)} CNY; floor {floorBefore:0.00} s before, {floorAfter:0.00} s after");
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"RESULT settle_records={first.DayRecords} settle_s={settleSeconds:0.00} sql_floor_s={floor:0.00} ratio_vs_sql={settleSeconds / floor:0.00} balanced={(balanced ? "true" : "false")} idempotent={(idempotent ? "true" : "false")} day_ranges={settlementOptions.DayRangesPerSegment}"));
        return 0;
    }

    /// <summary>The two test providers and as many more as asked, each through the whole admission workflow.</summary>
    private static async Task<string[]> AdmitProvidersAsync(NpgsqlDataSource dataSource, int count)
    {
        await Admissions.SeedAsync(dataSource);
        var clock = new ManualClock(Admissions.AdmittedAt);
        var registry = new ProviderRegistry(dataSource, DeviceCatalog.LoadEmbedded(), clock, new RegistryFleetEvidence(), new RegistryProofEvidence(dataSource));
        var codes = new List<string> { TestRecords.Provider, TestRecords.OtherProvider };
        for (int i = 0; codes.Count < count; i++)
        {
            string code = CreditCode.Complete($"91440300MA5B{i:D5}");
            await Admissions.AdmitAsync(dataSource, registry, clock, code, $"Bench provider {i}");
            codes.Add(code);
        }

        return [.. codes];
    }

    /// <summary>Holders with contracts at K providers each (alternating units); every fourth contract gets a voucher.</summary>
    private static async Task<(Dictionary<string, List<string>> HoldersByProvider, List<Contract> Vouchered)> SignHoldersAsync(NpgsqlDataSource dataSource, ManualClock clock,
        string[] providers, Options options)
    {
        var book = new VoucherBook(dataSource, clock);
        var byProvider = providers.ToDictionary(p => p, _ => new List<string>());
        var vouchered = new List<Contract>();
        for (int h = 0; h < options.Holders; h++)
        {
            string code = CreditCode.Complete($"91440300MA5C{h:D5}");
            await book.RegisterHolderAsync(Operator, new Holder
            {
                CreditCode = code,
                Name = $"Bench holder {h}",
                Type = (HolderType)(1 + h % 3),
                District = Districts.Keys.ElementAt(h % 10),
                EstablishedOn = h % 10 == 0 ? "2025-12-01" : "2012-05-01",
            }, CancellationToken.None);
            await book.ApproveHolderAsync(Operator, code, CancellationToken.None);
            for (int k = 0; k < options.ContractsPerHolder; k++)
            {
                string provider = providers[(h + k * 7) % providers.Length];
                if (byProvider[provider].Contains(code))
                {
                    continue;
                }

                Contract contract = await book.RecordContractAsync(Operator, new Contract
                {
                    HolderCode = code,
                    ProviderId = provider,
                    ServiceItem = Admissions.ServiceItem,
                    ContractNumber = $"B-{h}-{k}",
                    SignedOn = "2026-01-01",
                    StartsOn = "2026-01-01",
                    EndsOn = "2026-12-31",
                    AmountFen = 200_000_000,
                    FeeUnit = (h + k) % 2 == 0 ? FeeUnit.PerCardHour : FeeUnit.PerPflopsHour,
                    NonRelatedParty = true,
                    DeclarationRef = $"declarations/B-{h}-{k}.pdf",
                }, CancellationToken.None);
                byProvider[provider].Add(code);
                if ((h + k) % 4 == 0)
                {
                    await book.IssueVoucherAsync(Operator, new VoucherIssue(contract.ContractId, 2026, 50_000_000), CancellationToken.None);
                    vouchered.Add(contract);
                }
            }
        }

        return (byProvider, vouchered);
    }

    /// <summary>Two streams per provider, records shared out evenly; one in twenty records is of a holder without a contract.</summary>
    private static List<Stream> Plan(string[] providers, Dictionary<string, List<string>> holdersByProvider, long records)
    {
        string[] strangers = Enumerable.Range(0, 50).Select(i => CreditCode.Complete($"91440300MA5D{i:D5}")).ToArray();
        var streams = new List<Stream>();
        int count = providers.Length * 2;
        for (int i = 0; i < count; i++)
        {
            string provider = providers[i / 2];
            long share = records / count + (i < records % count ? 1 : 0);
            string[] holders = holdersByProvider[provider].Count == 0 ? strangers : [.. holdersByProvider[provider]];
            streams.Add(new Stream(provider, $"site-{i % 2}", 2026_1120 + i, share, holders));
        }

        return streams;
    }

    private static readonly string[] Models = ["H100-SXM", "H100-SXM", "H100-SXM", "H100-SXM", "H100-SXM", "H100-SXM", "H100-SXM", "H100-SXM", "H100-SXM", "A100-SXM"];

    /// <summary>Loads the streams with the given number of parallel COPY connections, each stream in its own transaction with its head.</summary>
    private static async Task LoadAsync(NpgsqlDataSource dataSource, List<Stream> streams, int loaders)
    {
        long loaded = 0;
        long total = streams.Sum(s => s.Records);
        var clock = Stopwatch.StartNew();
        var queue = new Queue<Stream>(streams);
        var progress = Task.Run(async () =>
        {
            while (Interlocked.Read(ref loaded) < total)
            {
                await Task.Delay(5_000);
                long done = Interlocked.Read(ref loaded);
                Console.WriteLine($"  {clock.Elapsed.TotalSeconds,6:0.0} s  loaded {done,12:N0} / {total:N0}  mean {done / clock.Elapsed.TotalSeconds,9:N0} records/s");
            }
        });
        await Task.WhenAll(Enumerable.Range(0, loaders).Select(_ => Task.Run(async () =>
        {
            while (true)
            {
                Stream? stream;
                lock (queue)
                {
                    stream = queue.Count == 0 ? null : queue.Dequeue();
                }

                if (stream is null)
                {
                    return;
                }

                await LoadStreamAsync(dataSource, stream, count => Interlocked.Add(ref loaded, count));
            }
        })));
        await progress;
    }

    private const string CopyCommand =
        "COPY usage_records (provider_id, stream_id, sequence, job_id, holder_code, device_model, device_count, share_numerator, share_denominator, "
        + "start_at, end_at, site, catalog_version, usage_npfh, chain_hash) FROM STDIN (FORMAT BINARY)";

    private static async Task LoadStreamAsync(NpgsqlDataSource dataSource, Stream stream, Action<long> loaded)
    {
        DeviceCatalog catalog = DeviceCatalog.LoadEmbedded();
        var random = new Random(stream.Seed);
        long dayStartMs = ShanghaiTime.StartOf(Day).ToUnixTimeMilliseconds();
        string site = $"sz-dc-{stream.Provider[^4..]}-{stream.StreamId}";
        byte[] previous = new byte[CanonicalEncoding.HashBytes];
        byte[] hash = new byte[CanonicalEncoding.HashBytes];
        byte[] scratch = new byte[CanonicalEncoding.HashBytes + 1024];
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync();
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync();
        await using (NpgsqlRawCopyStream copy = await connection.BeginRawBinaryCopyAsync(CopyCommand))
        {
            using var rows = new BinaryCopyWriter();
            rows.WriteHeader();
            long sent = 0;
            for (long sequence = 1; sequence <= stream.Records; sequence++)
            {
                string model = Models[random.Next(Models.Length)];
                DeviceModel device = catalog.Find(model)!;
                bool slice = model == "A100-SXM" && random.Next(2) == 0;
                uint devices = slice ? 1u : (uint)random.Next(1, 9);
                uint numerator = slice ? (uint)random.Next(1, 4) : 1u;
                uint denominator = slice ? 7u : 1u;
                long durationMs = random.Next(60, 7_200) * 1_000L + random.Next(1_000);
                long startMs = dayStartMs + random.NextInt64(86_400_000 - durationMs);
                string holder = random.Next(20) == 0 ? CreditCode.Complete($"91440300MA5D{random.Next(50):D5}") : stream.Holders[random.Next(stream.Holders.Length)];
                var fields = new RecordFields
                {
                    ProviderId = stream.Provider,
                    StreamId = stream.StreamId,
                    Sequence = (ulong)sequence,
                    JobId = $"{stream.StreamId}-j{sequence:D7}",
                    HolderCode = holder,
                    DeviceModel = model,
                    DeviceCount = devices,
                    ShareNumerator = numerator,
                    ShareDenominator = denominator,
                    StartUnixMs = startMs,
                    EndUnixMs = startMs + durationMs,
                    Site = site,
                    DeviceUuids = [],
                    EnergyMwh = null,
                    SmActiveBp = null,
                };
                CanonicalEncoding.ChainHash(previous, fields, scratch, hash);
                (previous, hash) = (hash, previous);
                rows.StartRow(15);
                rows.WriteTextField(stream.Provider);
                rows.WriteTextField(stream.StreamId);
                rows.WriteInt64Field(sequence);
                rows.WriteTextField(fields.JobId);
                rows.WriteTextField(holder);
                rows.WriteTextField(model);
                rows.WriteInt32Field((int)devices);
                rows.WriteInt32Field((int)numerator);
                rows.WriteInt32Field((int)denominator);
                rows.WriteTimestampField(startMs);
                rows.WriteTimestampField(startMs + durationMs);
                rows.WriteTextField(site);
                rows.WriteTextField(device.CatalogVersion);
                rows.WriteInt64Field(UsageNormaliser.UsageNanoPflopsHours(devices, numerator, denominator, durationMs, device.Fp16DenseGflops));
                rows.WriteByteaField(previous);
                if (rows.Length >= BinaryCopyWriter.ChunkBytes)
                {
                    await copy.WriteAsync(rows.Written);
                    rows.Clear();
                    loaded(sequence - sent);
                    sent = sequence;
                }
            }

            rows.WriteTrailer();
            await copy.WriteAsync(rows.Written);
            loaded(stream.Records - sent);
        }

        await connection.ExecuteAsync("""
            INSERT INTO ingest_streams (provider_id, stream_id, committed_sequence, chain_head) VALUES (@provider, @stream, @records, @head)
            """, new { provider = stream.Provider, stream = stream.StreamId, records = stream.Records, head = previous }, transaction);
        await transaction.CommitAsync();
    }

    /// <summary>Claims of twenty H100 jobs (the model the test fee schedule prices) of a vouchered holder at its provider.</summary>
    private static async Task<int> FileClaimsAsync(NpgsqlDataSource dataSource, ManualClock clock, List<Contract> vouchered, int count)
    {
        var redemptions = new Redemptions(dataSource, clock);
        int filed = 0;
        for (int i = 0; i < count && vouchered.Count > 0; i++)
        {
            Contract contract = vouchered[i * 7919 % vouchered.Count];
            string[] jobs;
            await using (NpgsqlConnection connection = await dataSource.OpenConnectionAsync())
            {
                jobs = (await connection.QueryAsync<string>("""
                    SELECT job_id FROM usage_records WHERE provider_id = @provider AND holder_code = @holder AND device_model = 'H100-SXM'
                      AND start_at >= @from AND start_at < @until ORDER BY stream_id, sequence OFFSET @skip LIMIT 20
                    """, new
                {
                    provider = contract.ProviderId,
                    holder = contract.HolderCode,
                    from = ShanghaiTime.StartOf(Day).UtcDateTime,
                    until = ShanghaiTime.StartOf(Day.AddDays(1)).UtcDateTime,
                    skip = i / vouchered.Count * 20,
                })).ToArray();
            }

            if (jobs.Length == 0)
            {
                continue;
            }

            try
            {
                await redemptions.FileClaimAsync(Operator, new ClaimFiling(contract.ContractId, jobs, ProgrammeYear: 2026), CancellationToken.None);
                filed++;
            }
            catch (VoucherRefusedException refused) when (refused.Reason is VoucherRefusalReason.UsageAlreadyRedeemed)
            {
                // The same contract drawn again before its next twenty jobs: not a fault of the run.
            }
        }

        return filed;
    }

    /// <summary>The floor: the day's one set-based aggregation, alone, on its own connection.</summary>
    private static async Task<double> TimeFloorAsync(NpgsqlDataSource dataSource, long expected)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync();
        var clock = Stopwatch.StartNew();
        await using var command = new NpgsqlCommand(DailySettlement.DayAggregationSql, connection)
        {
            Parameters = { new() { Value = ShanghaiTime.StartOf(Day).UtcDateTime }, new() { Value = ShanghaiTime.StartOf(Day.AddDays(1)).UtcDateTime } },
            CommandTimeout = 0,
        };
        long records = 0;
        int groups = 0;
        await using (NpgsqlDataReader reader = await command.ExecuteReaderAsync())
        {
            while (await reader.ReadAsync())
            {
                records += reader.GetInt64(3);
                groups++;
            }
        }

        double seconds = clock.Elapsed.TotalSeconds;
        if (records != expected)
        {
            throw new InvalidOperationException($"The floor query counted {records} records, not {expected}.");
        }

        Console.WriteLine($"settle: SQL floor {seconds:0.00} s ({records:N0} records into {groups:N0} groups)");
        return seconds;
    }

    /// <summary>
    /// The process's minor page faults so far (/proc/self/stat), or 0 where there is none: each is
    /// a page of memory the process touched for the first time, which the kernel zeroes, and the
    /// run's leaves are most of them.
    /// </summary>
    private static long MinorFaults()
    {
        if (!File.Exists("/proc/self/stat"))
        {
            return 0;
        }

        // After the command name, in parentheses (which may hold spaces), come the state and then fields 4 to 9; minflt is field 10.
        string stat = File.ReadAllText("/proc/self/stat");
        return long.Parse(stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[7], CultureInfo.InvariantCulture);
    }

    /// <summary>The host's load averages over 1, 5 and 15 minutes, where Linux shows them: a loaded host's figures compare only as ratios.</summary>
    private static string LoadAverage() =>
        File.Exists("/proc/loadavg") ? string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "unknown";

    private static async Task<string> CountsAsync(NpgsqlDataSource dataSource)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync();
        return await connection.ExecuteScalarAsync<string>("""
            SELECT concat_ws(',', (SELECT count(*) FROM settlement_runs), (SELECT count(*) FROM settlement_lines), (SELECT count(*) FROM settlement_statements),
                                  (SELECT count(*) FROM ledger_entries), (SELECT count(*) FROM ledger_lines), (SELECT count(*) FROM settlement_stream_marks))
            """) ?? "";
    }
}
