using System.Data;
using System.Diagnostics;
using System.Globalization;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Audit;
using Metering.Engine.Ledger;
using Metering.Engine.Telemetry;
using Metering.Engine.Time;
using Metering.Engine.Transparency;
using Metering.Engine.Vouchers;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Metering.Engine.Settlement;

/// <summary>
/// Nightly settlement of one Asia/Shanghai day. A run, in one REPEATABLE READ transaction and
/// under a session advisory lock that orders runs:
/// <list type="number">
/// <item>reads every usage stream's committed mark in its snapshot;</item>
/// <item>reads the day's usage records (proof streams excluded) once, in one binary COPY, and
///   from that one read both aggregates them per provider, holder and model and folds each
///   provider's daily Merkle root, counting the leaves' usage for the reconciliation;</item>
/// <item>aggregates, as adjustments, records of earlier closed days committed after the
///   previous run's marks (late data);</item>
/// <item>prices each group under the contract that covers it, with the contract's fee-schedule
///   version and unit, rounding down once per line;</item>
/// <item>posts the holds of claims whose usage days are now all closed, and expires the
///   reserved holds whose expiry falls before the end of the day;</item>
/// <item>writes the run, its marks, lines, statements and balanced ledger entries;</item>
/// <item>reconciles (debits = credits; usage settled = usage metered; every voucher's balance
///   = issued − posted − held, in its row, its holds and the ledger; statement totals = ledger
///   movements; each provider's Merkle root has one leaf per record it was priced for);</item>
/// <item>appends each provider statement's root to the transparency log (Transparency folder),
///   and commits, or throws and leaves nothing.</item>
/// </list>
/// The result depends only on the database's content at the snapshot and the day: the same
/// inputs give byte-identical statements. A closed day is never settled again: a second run of
/// it re-verifies and returns what is stored.
/// </summary>
public sealed partial class DailySettlement(NpgsqlDataSource dataSource, TimeProvider time, ILogger logger, SettlementOptions? options = null)
{
    /// <summary>Days before this are outside the programme.</summary>
    public static readonly DateOnly FirstDay = new(2024, 1, 1);

    /// <summary>Most priced lines one run may hold in memory and write.</summary>
    public const int LinesMax = 5_000_000;

    // Orders settlement runs across processes: any constant distinct from the migrator's.
    private const long RunLockKey = 0x5345_5454_4c45_0001;

    private readonly SettlementOptions _options = Checked(options ?? new SettlementOptions());

    /// <summary>
    /// The data source's connection string with no command timeout, for the run's connections.
    /// Npgsql waits for a raw COPY's first message under the connection string's command timeout
    /// (30 s unless set): the COPY is started without a command, so no per-command timeout
    /// reaches it. PostgreSQL sends nothing of a range of the day's grouped runs until it has
    /// scanned the range, so on a large day a legitimate read would time out while PostgreSQL is
    /// still working on it. The run's statements are bounded instead by
    /// <see cref="SettlementOptions.StatementTimeout"/>, which PostgreSQL enforces, and the run
    /// stops when its cancellation token fires, which Npgsql honours while it waits.
    /// The connections also read with a buffer of <see cref="RunReadBufferBytes"/>, not Npgsql's
    /// 8 KiB: the day's read is about 100 bytes a record, a gigabyte on a day of ten million.
    /// </summary>
    private readonly string _untimedConnectionString = new NpgsqlConnectionStringBuilder(dataSource.ConnectionString) { CommandTimeout = 0, ReadBufferSize = RunReadBufferBytes }.ConnectionString;

    /// <summary>
    /// Npgsql's read buffer on the run's connections: each refill of it is a receive from the
    /// socket, so a larger one takes the day in fewer system calls and wake-ups (bench/RESULTS.md,
    /// issue 17). Npgsql pools these connections apart from the data source's others.
    /// </summary>
    private const int RunReadBufferBytes = 1024 * 1024;

    /// <summary>The data source's own command timeout, in seconds, which still bounds the wait for the run lock.</summary>
    private readonly int _lockTimeoutSeconds = new NpgsqlConnectionStringBuilder(dataSource.ConnectionString).CommandTimeout;

    /// <summary>One aggregated group of usage.</summary>
    private sealed record Group(string Kind, DateOnly UsageDay, string Provider, string Holder, string Model, long Records, long UsageNpfh, long CardMs);

    /// <summary>A group priced (or left unpriced, with why).</summary>
    private sealed record PricedLine(Group Group, long? ContractId, string FeeUnit, long? PriceFen, long FeeFen, string? Unpriced);

    /// <summary>A hold this run posts or expires.</summary>
    private sealed record HoldAction(long ClaimId, string Provider, string Holder, long ContractId, long VoucherId, long AmountFen, string PayeeMode, bool Post);

    private sealed record ContractTerms(long ContractId, string Provider, string Holder, DateOnly StartsOn, DateOnly EndsOn, string ServiceItem, int Version, string FeeUnit);

    public async Task<SettlementOutcome> SettleAsync(DateOnly day, Actor actor, Action<SettlementProgress>? progress, CancellationToken cancellationToken)
    {
        var clock = Stopwatch.StartNew();
        DateTimeOffset dayEnd = ShanghaiTime.StartOf(day.AddDays(1));
        DateTimeOffset startedAt = time.GetUtcNow();
        if (day < FirstDay || dayEnd > startedAt)
        {
            throw new SettlementRefusedException(SettlementRefusalReason.DayNotEnded,
                day < FirstDay ? $"{ShanghaiTime.IsoDate(day)} is before the programme's first day {ShanghaiTime.IsoDate(FirstDay)}" : $"{ShanghaiTime.IsoDate(day)} has not ended in Asia/Shanghai; it can be settled from {ShanghaiTime.Describe(dayEnd)}");
        }

        using MeteringTelemetry.SettlementRun run = MeteringTelemetry.StartSettlement(day);
        void Report(string stage, string message)
        {
            var step = new SettlementProgress(day, stage, message, clock.Elapsed);
            LogProgress(logger, ShanghaiTime.IsoDate(day), stage, message, clock.Elapsed.TotalSeconds);
            progress?.Invoke(step);
            cancellationToken.ThrowIfCancellationRequested();
        }

        await using NpgsqlConnection connection = await OpenRunConnectionAsync(cancellationToken);
        // A session lock, taken before the transaction starts, so that the run's snapshot is
        // taken after the previous run committed: the second of two runs of a day sees it closed.
        // Outside the transaction no statement timeout applies: the data source's command timeout
        // bounds the wait, as for any other statement of the engine.
        await connection.ExecuteAsync(new CommandDefinition("SELECT pg_advisory_lock(@key)", new { key = RunLockKey }, commandTimeout: _lockTimeoutSeconds, cancellationToken: cancellationToken));
        try
        {
            await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(IsolationLevel.RepeatableRead, cancellationToken);
            await connection.ExecuteAsync(new CommandDefinition($"SET LOCAL statement_timeout = {(long)_options.StatementTimeout.TotalMilliseconds}", transaction: transaction, cancellationToken: cancellationToken));
            // On Citus, a run that has read the distributed usage tables over several connections
            // may not then write the coordinator's voucher and ledger tables in the same
            // transaction; one connection per worker lets it. Plain PostgreSQL keeps the setting
            // as an unused placeholder.
            await connection.ExecuteAsync(new CommandDefinition("SET LOCAL citus.multi_shard_modify_mode = 'sequential'", transaction: transaction, cancellationToken: cancellationToken));
            SettlementOutcome? closed = await ReadClosedAsync(connection, transaction, day, verify: true, cancellationToken);
            if (closed is not null)
            {
                Report("closed", $"already closed; settlement hash {closed.SettlementHex}; nothing written");
                await transaction.CommitAsync(cancellationToken);
                run.Result = "already_closed";
                return closed;
            }

            SettlementOutcome outcome = await RunAsync(connection, transaction, day, dayEnd, actor, startedAt, Report, cancellationToken);
            if (_options.PauseBeforeCommit > TimeSpan.Zero)
            {
                Report("drill", $"pausing {_options.PauseBeforeCommit.TotalSeconds:0.#} s before commit (fault drill)");
                await Task.Delay(_options.PauseBeforeCommit, cancellationToken);
            }

            await transaction.CommitAsync(cancellationToken);
            Report("committed", $"day closed; settlement hash {outcome.SettlementHex}");
            run.Result = "closed";
            return outcome;
        }
        catch (LedgerInvariantException failure)
        {
            LogReconciliationFailed(logger, ShanghaiTime.IsoDate(day), failure.Message);
            throw new SettlementRefusedException(SettlementRefusalReason.ReconciliationFailed, $"settlement of {ShanghaiTime.IsoDate(day)} failed its reconciliation and was rolled back: {failure.Message}");
        }
        finally
        {
            // The connection returns to the pool; its session lock must not go with it. A killed
            // process releases the lock with its connection.
            if (connection.State == ConnectionState.Open)
            {
                try
                {
                    await connection.ExecuteAsync("SELECT pg_advisory_unlock(@key)", new { key = RunLockKey });
                }
                catch (NpgsqlException unlockFailure)
                {
                    // A broken connection is closed by the pool, which ends the session and its lock.
                    LogUnlockFailed(logger, ShanghaiTime.IsoDate(day), unlockFailure.Message);
                }
            }
        }
    }

    /// <summary>
    /// A connection of the run, opened with no command timeout (<see cref="_untimedConnectionString"/>):
    /// a clone of one of the data source's, which carries over its password and TLS callbacks;
    /// Npgsql pools it under that connection string.
    /// </summary>
    private async Task<NpgsqlConnection> OpenRunConnectionAsync(CancellationToken cancellationToken)
    {
        await using NpgsqlConnection template = dataSource.CreateConnection();
        NpgsqlConnection connection = await template.CloneWithAsync(_untimedConnectionString, cancellationToken);
        try
        {
            await connection.OpenAsync(cancellationToken);
            return connection;
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }
    }

    private static SettlementOptions Checked(SettlementOptions options) =>
        options.DaySegments is < 1 or > SettlementOptions.DaySegmentsMax
            ? throw new ArgumentOutOfRangeException(nameof(options), $"DaySegments is {options.DaySegments}; a day is read in 1 to {SettlementOptions.DaySegmentsMax} segments")
            : options.DayRangesPerSegment is < 1 or > SettlementOptions.DayRangesPerSegmentMax
            ? throw new ArgumentOutOfRangeException(nameof(options), $"DayRangesPerSegment is {options.DayRangesPerSegment}; a connection reads 1 to {SettlementOptions.DayRangesPerSegmentMax} block ranges")
            : options.DayChunkBlocks is < 1 or > SettlementOptions.DayChunkBlocksMax
            ? throw new ArgumentOutOfRangeException(nameof(options), $"DayChunkBlocks is {options.DayChunkBlocks}; a range is grouped in chunks of 1 to {SettlementOptions.DayChunkBlocksMax} blocks")
            : options;

    /// <summary>A closed day's settlement, or null when the day is not closed.</summary>
    public async Task<SettlementOutcome?> GetAsync(DateOnly day, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await ReadClosedAsync(connection, null, day, verify: true, cancellationToken);
    }

    /// <summary>Closed days, newest first, without their statements.</summary>
    public async Task<IReadOnlyList<SettlementOutcome>> ListAsync(int limit, CancellationToken cancellationToken)
    {
        limit = limit == 0 ? 100 : Math.Clamp(limit, 1, 1_000);
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var rows = await connection.QueryAsync<RunRecord>(RunSelect + " ORDER BY day DESC LIMIT @limit", new { limit });
        return rows.Select(r => r.ToOutcome([], alreadyClosed: true)).ToList();
    }

    // ---------------------------------------------------------------- the run

    private async Task<SettlementOutcome> RunAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, DateOnly day, DateTimeOffset dayEnd,
        Actor actor, DateTimeOffset startedAt, Action<string, string> report, CancellationToken cancellationToken)
    {
        // 1. Marks and the previous run. The day-of-usage arithmetic in SQL adds eight hours to
        // UTC: Asia/Shanghai has had no daylight saving since 1991.
        long? previousRun = await connection.ExecuteScalarAsync<long?>(new CommandDefinition("SELECT max(run_id) FROM settlement_runs", transaction: transaction, cancellationToken: cancellationToken));
        DateOnly[] closedDays = (await connection.QueryAsync<DateTime>(new CommandDefinition("SELECT day FROM settlement_runs ORDER BY day", transaction: transaction, cancellationToken: cancellationToken)))
            .Select(DateOnly.FromDateTime).ToArray();
        int streams = await connection.ExecuteScalarAsync<int>(new CommandDefinition(
            "SELECT count(*) FROM ingest_streams WHERE stream_id NOT LIKE 'proof:%'", transaction: transaction, cancellationToken: cancellationToken));
        report("marks", $"{streams:N0} usage streams; {closedDays.Length:N0} days closed before; previous run {(previousRun?.ToString(CultureInfo.InvariantCulture) ?? "none")}");

        // 2. The day: one read of its records in the run's snapshot gives both the groups the run
        // prices and each provider's Merkle leaves, so the roots cover exactly the records this
        // run counts, no more (a record committed after the snapshot, even one whose ingest
        // transaction began before it) and no fewer. The roots are folded on the thread pool
        // while the run prices.
        DayRead read = await ReadDayAsync(connection, transaction, day, cancellationToken);
        List<Group> groups = read.Groups;
        Task<Dictionary<string, (DailyRoot Root, long UsageNpfh)>> metered = Task.Run(() => FoldRoots(day, read.Leaves, cancellationToken), cancellationToken);
        try
        {
            string segments = read.RangeRecords.Length == 1 ? "one segment"
                : $"{read.Connections} block-range segment{(read.Connections == 1 ? "" : "s")}, {read.RangeRecords.Length} ranges of {string.Join(", ", read.RangeRecords.Select(r => r.ToString("N0", CultureInfo.InvariantCulture)))}";
            return await ContinueAsync(connection, transaction, day, dayEnd, actor, startedAt, report, previousRun, closedDays, groups, segments, metered, cancellationToken);
        }
        catch
        {
            // The fold must not outlive the run, nor fail unobserved.
            await Task.WhenAny(metered);
            throw;
        }
    }

    private async Task<SettlementOutcome> ContinueAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, DateOnly day, DateTimeOffset dayEnd, Actor actor,
        DateTimeOffset startedAt, Action<string, string> report, long? previousRun, DateOnly[] closedDays, List<Group> groups, string segments,
        Task<Dictionary<string, (DailyRoot Root, long UsageNpfh)>> metered, CancellationToken cancellationToken)
    {
        report("aggregate", $"{groups.Sum(g => g.Records):N0} records of the day in {groups.Count:N0} provider/holder/model groups, read in {segments}");

        // 3. Late data for days already closed.
        List<Group> adjustments = previousRun is { } prior && closedDays.Length > 0
            ? await AggregateLateAsync(connection, transaction, prior, day, closedDays, cancellationToken)
            : [];
        report("adjustments", adjustments.Count == 0 ? "no late records for closed days" : $"{adjustments.Sum(g => g.Records):N0} late records of {adjustments.Select(g => g.UsageDay).Distinct().Count()} closed day(s)");
        if (groups.Count + adjustments.Count > LinesMax)
        {
            throw new LedgerInvariantException($"the run would price {groups.Count + adjustments.Count} lines; at most {LinesMax} are allowed");
        }

        // 4. Prices.
        List<PricedLine> lines = await PriceAsync(connection, transaction, groups.Concat(adjustments).ToList(), cancellationToken);
        report("price", $"{lines.Count(l => l.Unpriced is null):N0} lines priced under contracts ({Pricing.Yuan(lines.Sum(l => l.FeeFen))} CNY); {lines.Count(l => l.Unpriced is not null):N0} outside any contract or price");

        // 5. Holds to post and to expire.
        var closedAfter = closedDays.Append(day).ToHashSet();
        List<HoldAction> holds = await DecideHoldsAsync(connection, transaction, closedAfter, dayEnd, cancellationToken);
        report("holds", $"{holds.Count(h => h.Post):N0} claim hold(s) to post ({Pricing.Yuan(holds.Where(h => h.Post).Sum(h => h.AmountFen))} CNY), {holds.Count(h => !h.Post):N0} to expire");

        // 6. Statements, with each provider's Merkle root of the day, and the hash.
        Dictionary<string, (DailyRoot Root, long UsageNpfh)> meteredByProvider = await metered;
        var roots = meteredByProvider.ToDictionary(m => m.Key, m => m.Value.Root, StringComparer.Ordinal);
        (long Records, long UsageNpfh) meteredDay = (roots.Values.Sum(r => (long)r.LeafCount), meteredByProvider.Values.Sum(m => m.UsageNpfh));
        report("merkle", $"{roots.Count:N0} provider roots over {meteredDay.Records:N0} leaves");
        List<PartyStatement> statements = BuildStatements(day, lines, holds, roots);
        var canonical = statements.Select(s => (Statement: s, Csv: StatementFormats.CanonicalCsv(s))).ToList();
        byte[] settlementHash = StatementFormats.SettlementHash(canonical.Select(c => c.Csv));
        report("statements", $"{statements.Count:N0} statements; settlement hash {Convert.ToHexStringLower(settlementHash)}");

        // 7. Writes.
        long dayRecords = groups.Sum(g => g.Records);
        long dayUsage = groups.Sum(g => g.UsageNpfh);
        long feeFen = lines.Sum(l => l.FeeFen);
        long subsidyFen = holds.Where(h => h.Post).Sum(h => h.AmountFen);
        DateTimeOffset finishedAt = time.GetUtcNow();
        long runId = await connection.ExecuteScalarAsync<long>(new CommandDefinition("""
            INSERT INTO settlement_runs (day, statement_format, settled_by, started_at, finished_at, day_records, day_usage_npfh, adjustment_records, fee_fen, subsidy_fen, settlement_sha256)
            VALUES (@day, @format, @by, @started, @finished, @dayRecords, @dayUsage, @adjustmentRecords, @feeFen, @subsidyFen, @hash)
            RETURNING run_id
            """, new
        {
            day,
            format = StatementFormats.CanonicalFormat,
            by = actor.Subject,
            started = startedAt.UtcDateTime,
            finished = finishedAt.UtcDateTime,
            dayRecords,
            dayUsage,
            adjustmentRecords = adjustments.Sum(g => g.Records),
            feeFen,
            subsidyFen,
            hash = settlementHash,
        }, transaction, cancellationToken: cancellationToken));
        await connection.ExecuteAsync(new CommandDefinition("""
            INSERT INTO settlement_stream_marks (provider_id, stream_id, run_id, committed_sequence)
            SELECT provider_id, stream_id, @runId, committed_sequence FROM ingest_streams WHERE stream_id NOT LIKE 'proof:%'
            """, new { runId }, transaction, cancellationToken: cancellationToken));
        await WriteLinesAsync(connection, runId, lines, cancellationToken);
        // All statements in one statement: a day has hundreds of parties, and a round trip each cost more than writing them.
        await using (var statementsInsert = new NpgsqlCommand("""
            INSERT INTO settlement_statements (run_id, party_kind, party_code, ordinal, canonical_csv, sha256)
            SELECT $1, s.kind, s.party, s.ordinal, s.csv, s.sha FROM unnest($2::text[], $3::text[], $4::integer[], $5::bytea[], $6::bytea[]) AS s(kind, party, ordinal, csv, sha)
            """, connection, transaction)
        {
            Parameters =
            {
                new() { Value = runId },
                new() { Value = canonical.Select(c => c.Statement.PartyKind).ToArray() },
                new() { Value = canonical.Select(c => c.Statement.Party).ToArray() },
                new() { Value = Enumerable.Range(0, canonical.Count).ToArray() },
                new() { Value = canonical.Select(c => c.Csv).ToArray() },
                new() { Value = canonical.Select(c => StatementFormats.Sha256(c.Csv)).ToArray() },
            },
        })
        {
            await statementsInsert.ExecuteNonQueryAsync(cancellationToken);
        }

        report("write", $"run {runId}: {lines.Count:N0} lines and {canonical.Count:N0} statements written; writing the ledger");
        int entries = await WriteLedgerAsync(connection, transaction, runId, day, lines, holds, finishedAt, cancellationToken);
        report("ledger", $"{entries:N0} ledger entries written");

        // 8. Reconciliation, inside the transaction: a mismatch rolls everything back.
        await ReconcileAsync(connection, transaction, runId, day, meteredDay, statements, roots, cancellationToken);
        report("reconcile", $"balanced; {meteredDay.Records:N0} records settled = metered = Merkle leaves; every voucher's balance = issued − posted − held; statements = ledger");

        // 9. The roots the provider statements publish become leaves of the transparency log, in
        // this transaction: they are logged exactly when the day closes, and never for a day that
        // did not close. The server signs the log's heads; the run needs no key.
        List<LogLeaf> logLeaves = LogLeaves(day, statements, settlementHash);
        long firstLeaf = await TransparencyLog.AppendAsync(connection, transaction, new LogAppend(runId, finishedAt, logLeaves), cancellationToken);
        report("log", logLeaves.Count == 0 ? "no provider statements; nothing appended to the transparency log"
            : $"{logLeaves.Count:N0} provider root(s) appended to the transparency log as leaves {firstLeaf:N0} to {firstLeaf + logLeaves.Count - 1:N0}");

        return new SettlementOutcome(day, false, settlementHash, dayRecords, dayUsage, adjustments.Sum(g => g.Records), feeFen, subsidyFen, actor.Subject, finishedAt,
            canonical.Select(c => new StoredStatement(c.Statement.PartyKind, c.Statement.Party, c.Csv, StatementFormats.Sha256(c.Csv))).ToList());
    }

    /// <summary>One log leaf per provider statement, from its merkle_root row, in ordinal order of the providers.</summary>
    private static List<LogLeaf> LogLeaves(DateOnly day, List<PartyStatement> statements, byte[] settlementHash) =>
        statements.Where(s => s.PartyKind == StatementFormats.ProviderKind)
            .OrderBy(s => s.Party, StringComparer.Ordinal)
            .Select(s => s.Rows.Single(r => r.Record == StatementFormats.MerkleRootRecord))
            .Select(r => new LogLeaf(day, r.Provider, r.Records ?? 0, Convert.FromHexString(r.Note), settlementHash))
            .ToList();

    [LoggerMessage(EventId = 5001, Level = LogLevel.Information, Message = "Settlement {Day}: {Stage}: {Detail} ({ElapsedSeconds:0.0} s)")]
    private static partial void LogProgress(ILogger logger, string day, string stage, string detail, double elapsedSeconds);

    [LoggerMessage(EventId = 5003, Level = LogLevel.Warning, Message = "Settlement {Day}: releasing the run lock failed ({Detail}); the pool closes the connection, which releases it")]
    private static partial void LogUnlockFailed(ILogger logger, string day, string detail);

    [LoggerMessage(EventId = 5002, Level = LogLevel.Critical, Message = "Settlement {Day} failed its reconciliation and was rolled back: {Detail}")]
    private static partial void LogReconciliationFailed(ILogger logger, string day, string detail);
}
