using System.Data;
using System.Diagnostics;
using System.Globalization;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Audit;
using Metering.Engine.Ledger;
using Metering.Engine.Registry;
using Metering.Engine.Time;
using Metering.Engine.Transparency;
using Metering.Engine.Vouchers;
using Microsoft.Extensions.Logging;
using Npgsql;
using NpgsqlTypes;

namespace Metering.Engine.Settlement;

/// <summary>A step of a run, for progress output.</summary>
public sealed record SettlementProgress(DateOnly Day, string Stage, string Message, TimeSpan Elapsed);

/// <summary>One statement as stored: its canonical CSV and hash.</summary>
public sealed record StoredStatement(string PartyKind, string Party, byte[] CanonicalCsv, byte[] Sha256)
{
    public PartyStatement Parse() => StatementFormats.ParseCanonicalCsv(CanonicalCsv);
}

/// <summary>A closed day, as the run that closed it recorded it.</summary>
public sealed record SettlementOutcome(DateOnly Day, bool AlreadyClosed, byte[] SettlementSha256, long DayRecords, long DayUsageNpfh, long AdjustmentRecords,
    long FeeFen, long SubsidyFen, string SettledBy, DateTimeOffset FinishedAt, IReadOnlyList<StoredStatement> Statements)
{
    public string SettlementHex => Convert.ToHexStringLower(SettlementSha256);
}

/// <summary>Knobs of a run that do not change its result.</summary>
public sealed class SettlementOptions
{
    /// <summary>
    /// For fault drills: how long a run waits, all its work done and checked, before it commits,
    /// so that an operator can kill it and watch the rerun. Zero in normal runs.
    /// </summary>
    public TimeSpan PauseBeforeCommit { get; init; } = TimeSpan.Zero;

    /// <summary>Longest a run may take before PostgreSQL cancels its statements.</summary>
    public TimeSpan StatementTimeout { get; init; } = TimeSpan.FromMinutes(30);
}

/// <summary>
/// Nightly settlement of one Asia/Shanghai day. A run, in one REPEATABLE READ transaction and
/// under a session advisory lock that orders runs:
/// <list type="number">
/// <item>reads every usage stream's committed mark in its snapshot;</item>
/// <item>aggregates the day's usage (proof streams excluded) per provider, holder and model in
///   one set-based query, while a second connection on the same exported snapshot reads the
///   day's records once more, on their own, to fold each provider's daily Merkle root and to
///   count the day's metered usage for the reconciliation;</item>
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

    private readonly SettlementOptions _options = options ?? new SettlementOptions();

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

        void Report(string stage, string message)
        {
            var step = new SettlementProgress(day, stage, message, clock.Elapsed);
            LogProgress(logger, ShanghaiTime.IsoDate(day), stage, message, clock.Elapsed.TotalSeconds);
            progress?.Invoke(step);
            cancellationToken.ThrowIfCancellationRequested();
        }

        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        // A session lock, taken before the transaction starts, so that the run's snapshot is
        // taken after the previous run committed: the second of two runs of a day sees it closed.
        await connection.ExecuteAsync(new CommandDefinition("SELECT pg_advisory_lock(@key)", new { key = RunLockKey }, cancellationToken: cancellationToken));
        try
        {
            await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(IsolationLevel.RepeatableRead, cancellationToken);
            await connection.ExecuteAsync(new CommandDefinition($"SET LOCAL statement_timeout = {(long)_options.StatementTimeout.TotalMilliseconds}", transaction: transaction, cancellationToken: cancellationToken));
            SettlementOutcome? closed = await ReadClosedAsync(connection, transaction, day, verify: true, cancellationToken);
            if (closed is not null)
            {
                Report("closed", $"already closed; settlement hash {closed.SettlementHex}; nothing written");
                await transaction.CommitAsync(cancellationToken);
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

        // 2. The day, with the independent count and the Merkle roots running beside it on the
        // same snapshot: the roots cover exactly the records this run counts, no more (a record
        // committed after the snapshot, even one whose ingest transaction began before it) and
        // no fewer.
        string snapshot = await connection.ExecuteScalarAsync<string>(new CommandDefinition("SELECT pg_export_snapshot()", transaction: transaction, cancellationToken: cancellationToken))
            ?? throw new InvalidOperationException("PostgreSQL exported no snapshot.");
        Task<Dictionary<string, (DailyRoot Root, long UsageNpfh)>> metered = MeterAsync(snapshot, day, cancellationToken);
        try
        {
            return await ContinueAsync(connection, transaction, day, dayEnd, actor, startedAt, report, previousRun, closedDays, metered, cancellationToken);
        }
        catch
        {
            // The side pass must not outlive the run that exported its snapshot, nor fail unobserved.
            await Task.WhenAny(metered);
            throw;
        }
    }

    private async Task<SettlementOutcome> ContinueAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, DateOnly day, DateTimeOffset dayEnd, Actor actor,
        DateTimeOffset startedAt, Action<string, string> report, long? previousRun, DateOnly[] closedDays, Task<Dictionary<string, (DailyRoot Root, long UsageNpfh)>> metered,
        CancellationToken cancellationToken)
    {
        DateTimeOffset dayStart = ShanghaiTime.StartOf(day);
        List<Group> groups = await AggregateDayAsync(connection, transaction, day, dayStart, dayEnd, cancellationToken);
        report("aggregate", $"{groups.Sum(g => g.Records):N0} records of the day in {groups.Count:N0} provider/holder/model groups");

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
        for (int i = 0; i < canonical.Count; i++)
        {
            await connection.ExecuteAsync(new CommandDefinition("""
                INSERT INTO settlement_statements (run_id, party_kind, party_code, ordinal, canonical_csv, sha256) VALUES (@runId, @kind, @party, @ordinal, @csv, @sha)
                """, new { runId, kind = canonical[i].Statement.PartyKind, party = canonical[i].Statement.Party, ordinal = i, csv = canonical[i].Csv, sha = StatementFormats.Sha256(canonical[i].Csv) },
                transaction, cancellationToken: cancellationToken));
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

    /// <summary>Per-record card time in SQL, the same rule as <see cref="Pricing.CardMilliseconds"/>: devices × share × duration in ms, rounded down once.</summary>
    private const string CardMsSql = "div(u.device_count::numeric * u.share_numerator * (extract(epoch FROM u.end_at - u.start_at) * 1000), u.share_denominator)";

    /// <summary>The one set-based pass over the day's usage that settlement is built on; the bench times it alone as the floor.</summary>
    public const string DayAggregationSql = $"""
        SELECT u.provider_id, u.holder_code, u.device_model, count(*)::bigint, sum(u.usage_npfh)::bigint, sum({CardMsSql})::bigint
        FROM usage_records u
        WHERE u.start_at >= $1 AND u.start_at < $2 AND u.stream_id NOT LIKE 'proof:%'
        GROUP BY u.provider_id, u.holder_code, u.device_model
        """;

    private static async Task<List<Group>> AggregateDayAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, DateOnly day, DateTimeOffset dayStart, DateTimeOffset dayEnd,
        CancellationToken cancellationToken)
    {
        await using var command = new NpgsqlCommand(DayAggregationSql, connection, transaction)
        {
            Parameters = { new() { Value = dayStart.UtcDateTime }, new() { Value = dayEnd.UtcDateTime } },
            CommandTimeout = 0,
        };
        var groups = new List<Group>();
        await using NpgsqlDataReader reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            groups.Add(new Group("usage", day, reader.GetString(0), reader.GetString(1), reader.GetString(2), reader.GetInt64(3), reader.GetInt64(4), reader.GetInt64(5)));
        }

        return groups;
    }

    /// <summary>
    /// Records of closed days (other than this run's day) above the previous run's marks and up
    /// to this run's, which is where the snapshot's stream heads stand. Each stream's range is
    /// read along its primary key.
    /// </summary>
    private static async Task<List<Group>> AggregateLateAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, long previousRun, DateOnly day, DateOnly[] closedDays,
        CancellationToken cancellationToken)
    {
        DateOnly[] candidates = closedDays.Where(d => d != day).ToArray();
        if (candidates.Length == 0)
        {
            return [];
        }

        await using var command = new NpgsqlCommand($"""
            SELECT u.provider_id, u.holder_code, u.device_model, ((u.start_at AT TIME ZONE 'UTC') + interval '8 hours')::date AS usage_day,
                   count(*)::bigint, sum(u.usage_npfh)::bigint, sum({CardMsSql})::bigint
            FROM ingest_streams m
            LEFT JOIN settlement_stream_marks p ON p.provider_id = m.provider_id AND p.stream_id = m.stream_id AND p.run_id = $1
            JOIN LATERAL (
                SELECT * FROM usage_records r
                WHERE r.provider_id = m.provider_id AND r.stream_id = m.stream_id
                  AND r.sequence > coalesce(p.committed_sequence, 0) AND r.sequence <= m.committed_sequence
                  AND r.start_at >= $2 AND r.start_at < $3
            ) u ON true
            WHERE m.stream_id NOT LIKE 'proof:%' AND m.committed_sequence > coalesce(p.committed_sequence, 0)
              AND ((u.start_at AT TIME ZONE 'UTC') + interval '8 hours')::date = ANY($4)
            GROUP BY 1, 2, 3, 4
            """, connection, transaction)
        {
            Parameters =
            {
                new() { Value = previousRun },
                new() { Value = ShanghaiTime.StartOf(candidates.Min()).UtcDateTime },
                new() { Value = ShanghaiTime.StartOf(candidates.Max().AddDays(1)).UtcDateTime },
                new() { Value = candidates, NpgsqlDbType = NpgsqlDbType.Array | NpgsqlDbType.Date },
            },
            CommandTimeout = 0,
        };
        var groups = new List<Group>();
        await using NpgsqlDataReader reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            groups.Add(new Group("adjustment", reader.GetFieldValue<DateOnly>(3), reader.GetString(0), reader.GetString(1), reader.GetString(2), reader.GetInt64(4), reader.GetInt64(5), reader.GetInt64(6)));
        }

        return groups;
    }

    /// <summary>
    /// The day's metered usage, read on its own on a second connection in the run's snapshot:
    /// one pass over the day's records (proof streams excluded) that counts them and their usage
    /// for the reconciliation and folds each provider's Merkle root of the day (merkle-proofs.md)
    /// from their chain hashes. These are the roots as settled, which the statements publish.
    /// </summary>
    private async Task<Dictionary<string, (DailyRoot Root, long UsageNpfh)>> MeterAsync(string snapshot, DateOnly day, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection side = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await side.BeginTransactionAsync(IsolationLevel.RepeatableRead, cancellationToken);
        await side.ExecuteAsync(new CommandDefinition($"SET TRANSACTION SNAPSHOT '{snapshot}'", transaction: transaction, cancellationToken: cancellationToken));
        var metered = await DailyMerkle.RootsInSnapshotAsync(side, transaction, day, cancellationToken);
        await transaction.CommitAsync(cancellationToken);
        return metered;
    }

    private static async Task<List<PricedLine>> PriceAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, List<Group> groups, CancellationToken cancellationToken)
    {
        if (groups.Count == 0)
        {
            return [];
        }

        DateOnly first = groups.Min(g => g.UsageDay);
        DateOnly last = groups.Max(g => g.UsageDay);
        var contracts = (await connection.QueryAsync<(long Id, string Provider, string Holder, DateTime Starts, DateTime Ends, string Item, int Version, string Unit)>(new CommandDefinition("""
            SELECT contract_id, provider_id, holder_code, starts_on, ends_on, service_item, fee_schedule_version, fee_unit FROM contracts
            WHERE starts_on <= @last AND ends_on >= @first
            """, new { first, last }, transaction, cancellationToken: cancellationToken)))
            .Select(c => new ContractTerms(c.Id, c.Provider, c.Holder, DateOnly.FromDateTime(c.Starts), DateOnly.FromDateTime(c.Ends), c.Item, c.Version, c.Unit))
            .ToLookup(c => (c.Provider, c.Holder));
        var prices = new Dictionary<(string Provider, string Item, int Version), Dictionary<(string Model, string Unit), long>>();
        foreach (var key in contracts.SelectMany(c => c).Select(c => (c.Provider, c.ServiceItem, c.Version)).Distinct())
        {
            string json = await connection.ExecuteScalarAsync<string>(new CommandDefinition(
                "SELECT lines::text FROM fee_schedules WHERE provider_id = @provider AND service_item = @item AND version = @version",
                new { provider = key.Provider, item = key.ServiceItem, version = key.Version }, transaction, cancellationToken: cancellationToken)) ?? "[]";
            prices[key] = ProviderRegistry.ParseFees(json).ToDictionary(l => (l.DeviceModel, Names.Of(l.Unit)), l => l.PriceFen);
        }

        var lines = new List<PricedLine>(groups.Count);
        foreach (Group group in groups)
        {
            // Contracts of one holder with one provider never overlap, so at most one covers a day.
            ContractTerms? contract = contracts[(group.Provider, group.Holder)].FirstOrDefault(c => c.StartsOn <= group.UsageDay && group.UsageDay <= c.EndsOn);
            if (contract is null)
            {
                lines.Add(new PricedLine(group, null, "", null, 0, "no_contract"));
            }
            else if (!prices[(contract.Provider, contract.ServiceItem, contract.Version)].TryGetValue((group.Model, contract.FeeUnit), out long price))
            {
                lines.Add(new PricedLine(group, contract.ContractId, contract.FeeUnit, null, 0, "no_filed_price"));
            }
            else
            {
                long fee = Pricing.FeeFen(Names.FeeUnitOf(contract.FeeUnit), group.UsageNpfh, group.CardMs, price);
                lines.Add(new PricedLine(group, contract.ContractId, contract.FeeUnit, price, fee, null));
            }
        }

        return lines;
    }

    /// <summary>
    /// Reserved holds whose claim's usage days are all closed once this run commits are posted;
    /// of the rest, those whose expiry falls before the end of the day expire. The end of the
    /// day, not the wall clock, decides, so that a rerun decides the same.
    /// </summary>
    private static async Task<List<HoldAction>> DecideHoldsAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, HashSet<DateOnly> closedAfter, DateTimeOffset dayEnd,
        CancellationToken cancellationToken)
    {
        var reserved = await connection.QueryAsync<(long Claim, string Provider, string Holder, long Contract, long Voucher, long Amount, string Mode, DateTime Expires, string Days)>(new CommandDefinition("""
            SELECT c.claim_id, c.provider_id, c.holder_code, c.contract_id, c.voucher_id, h.amount_fen, c.payee_mode, h.expires_at, array_to_string(c.usage_days, ',')
            FROM voucher_holds h JOIN claims c ON c.provider_id = h.provider_id AND c.claim_id = h.claim_id
            WHERE h.state = 'reserved' ORDER BY c.claim_id
            """, transaction: transaction, cancellationToken: cancellationToken));
        var actions = new List<HoldAction>();
        foreach (var r in reserved)
        {
            bool settled = r.Days.Split(',').All(d => closedAfter.Contains(DateOnly.ParseExact(d, "yyyy-MM-dd", CultureInfo.InvariantCulture)));
            if (settled)
            {
                actions.Add(new HoldAction(r.Claim, r.Provider, r.Holder, r.Contract, r.Voucher, r.Amount, r.Mode, Post: true));
            }
            else if (ShanghaiTime.Instant(r.Expires) <= dayEnd)
            {
                actions.Add(new HoldAction(r.Claim, r.Provider, r.Holder, r.Contract, r.Voucher, r.Amount, r.Mode, Post: false));
            }
        }

        return actions;
    }

    // ---------------------------------------------------------------- statements

    private static List<PartyStatement> BuildStatements(DateOnly day, List<PricedLine> lines, List<HoldAction> holds, Dictionary<string, DailyRoot> roots)
    {
        var providers = new SortedDictionary<string, List<StatementRow>>(StringComparer.Ordinal);
        var holders = new SortedDictionary<string, List<StatementRow>>(StringComparer.Ordinal);
        var programme = new List<StatementRow>();
        static List<StatementRow> Of(SortedDictionary<string, List<StatementRow>> parties, string code) =>
            parties.TryGetValue(code, out var rows) ? rows : parties[code] = [];

        foreach (PricedLine line in lines)
        {
            var row = new StatementRow
            {
                Record = line.Group.Kind,
                UsageDay = line.Group.UsageDay,
                Provider = line.Group.Provider,
                Holder = line.Group.Holder,
                Contract = line.ContractId,
                DeviceModel = line.Group.Model,
                FeeUnit = line.FeeUnit,
                Records = line.Group.Records,
                UsageNpfh = line.Group.UsageNpfh,
                CardMs = line.Group.CardMs,
                PriceFen = line.PriceFen,
                FeeFen = line.FeeFen,
                Note = line.Unpriced ?? "",
            };
            Of(providers, line.Group.Provider).Add(row);
            Of(holders, line.Group.Holder).Add(row);
        }

        foreach (HoldAction hold in holds)
        {
            bool deduction = hold.PayeeMode == "provider_deduction";
            var row = new StatementRow
            {
                Record = hold.Post ? "subsidy" : "hold_expired",
                Provider = hold.Provider,
                Holder = hold.Holder,
                Contract = hold.ContractId,
                Claim = hold.ClaimId,
                Voucher = hold.VoucherId,
                Payee = hold.Post ? (deduction ? hold.Provider : hold.Holder) : "",
                SubsidyFen = hold.AmountFen,
                Note = hold.PayeeMode,
            };
            programme.Add(row);
            Of(holders, hold.Holder).Add(row);
            if (hold.Post)
            {
                Of(providers, hold.Provider).Add(row);
            }
        }

        var statements = new List<PartyStatement> { Close(day, StatementFormats.Programme, StatementFormats.Programme, programme, lines.Select(l => l.Group), lines, holds) };
        foreach (var (code, rows) in providers)
        {
            // Every provider statement publishes the provider's root of the day; one with no
            // record that day (only adjustments or subsidies) publishes the empty root.
            DailyRoot root = roots.TryGetValue(code, out DailyRoot? found) ? found : DailyRoot.Empty(code, day, MerkleCutOff.AsSettled);
            rows.Add(StatementFormats.MerkleRootRow(day, code, root.LeafCount, root.Root));
            statements.Add(Close(day, StatementFormats.ProviderKind, code, rows, null, null, null));
        }

        foreach (var (code, rows) in holders)
        {
            statements.Add(Close(day, StatementFormats.HolderKind, code, rows, null, null, null));
        }

        return statements;
    }

    /// <summary>
    /// Orders a party's rows and adds its total: usage and fees of its lines; subsidies posted;
    /// what holders pay (fees less subsidies providers deducted) and what the programme pays
    /// (deducted subsidies to a provider, reimbursed ones to a holder, all of them in the
    /// programme's statement).
    /// </summary>
    private static PartyStatement Close(DateOnly day, string kind, string party, List<StatementRow> rows, IEnumerable<Group>? allGroups, List<PricedLine>? allLines, List<HoldAction>? allHolds)
    {
        var usage = rows.Where(r => r.Record is "usage" or "adjustment").ToList();
        var posted = rows.Where(r => r.Record == "subsidy").ToList();
        long records = allGroups?.Sum(g => g.Records) ?? usage.Sum(r => r.Records ?? 0);
        long npfh = allGroups?.Sum(g => g.UsageNpfh) ?? usage.Sum(r => r.UsageNpfh ?? 0);
        long cardMs = allLines?.Sum(l => l.Group.CardMs) ?? usage.Sum(r => r.CardMs ?? 0);
        long fee = allLines?.Sum(l => l.FeeFen) ?? usage.Sum(r => r.FeeFen ?? 0);
        long subsidy = posted.Sum(r => r.SubsidyFen ?? 0);
        long deducted = posted.Where(r => r.Note == "provider_deduction").Sum(r => r.SubsidyFen ?? 0);
        long programmePays = kind switch
        {
            StatementFormats.ProviderKind => deducted,
            StatementFormats.HolderKind => subsidy - deducted,
            _ => subsidy,
        };
        Debug.Assert(allHolds is null || allHolds.Where(h => h.Post).Sum(h => h.AmountFen) == subsidy);
        var total = new StatementRow
        {
            Record = "total",
            Records = records,
            UsageNpfh = npfh,
            CardMs = cardMs,
            FeeFen = fee,
            SubsidyFen = subsidy,
            HolderPaysFen = fee - deducted,
            ProgrammePaysFen = programmePays,
        };
        return new PartyStatement(day, kind, party, StatementFormats.Order(rows.Append(total)));
    }

    // ---------------------------------------------------------------- writes

    private static async Task WriteLinesAsync(NpgsqlConnection connection, long runId, List<PricedLine> lines, CancellationToken cancellationToken)
    {
        // Lines are written in canonical order so that line numbers are as deterministic as the statements.
        var ordered = lines.OrderBy(l => l.Group.Kind, StringComparer.Ordinal).ThenBy(l => l.Group.UsageDay).ThenBy(l => l.Group.Provider, StringComparer.Ordinal)
            .ThenBy(l => l.Group.Holder, StringComparer.Ordinal).ThenBy(l => l.Group.Model, StringComparer.Ordinal).ToList();
        await using NpgsqlBinaryImporter copy = await connection.BeginBinaryImportAsync("""
            COPY settlement_lines (provider_id, run_id, line_no, kind, usage_day, holder_code, contract_id, device_model, fee_unit, records, usage_npfh, card_ms, price_fen, fee_fen, unpriced)
            FROM STDIN (FORMAT BINARY)
            """, cancellationToken);
        for (int i = 0; i < ordered.Count; i++)
        {
            PricedLine line = ordered[i];
            await copy.StartRowAsync(cancellationToken);
            await copy.WriteAsync(line.Group.Provider, NpgsqlDbType.Text, cancellationToken);
            await copy.WriteAsync(runId, NpgsqlDbType.Bigint, cancellationToken);
            await copy.WriteAsync(i + 1, NpgsqlDbType.Integer, cancellationToken);
            await copy.WriteAsync(line.Group.Kind, NpgsqlDbType.Text, cancellationToken);
            await copy.WriteAsync(line.Group.UsageDay, NpgsqlDbType.Date, cancellationToken);
            await copy.WriteAsync(line.Group.Holder, NpgsqlDbType.Text, cancellationToken);
            await WriteNullableAsync(copy, line.ContractId, NpgsqlDbType.Bigint, cancellationToken);
            await copy.WriteAsync(line.Group.Model, NpgsqlDbType.Text, cancellationToken);
            await WriteNullableAsync(copy, line.FeeUnit.Length == 0 ? null : line.FeeUnit, NpgsqlDbType.Text, cancellationToken);
            await copy.WriteAsync(line.Group.Records, NpgsqlDbType.Bigint, cancellationToken);
            await copy.WriteAsync(line.Group.UsageNpfh, NpgsqlDbType.Bigint, cancellationToken);
            await copy.WriteAsync(line.Group.CardMs, NpgsqlDbType.Bigint, cancellationToken);
            await WriteNullableAsync(copy, line.PriceFen, NpgsqlDbType.Bigint, cancellationToken);
            await copy.WriteAsync(line.FeeFen, NpgsqlDbType.Bigint, cancellationToken);
            await WriteNullableAsync(copy, line.Unpriced, NpgsqlDbType.Text, cancellationToken);
        }

        await copy.CompleteAsync(cancellationToken);
    }

    private static Task WriteNullableAsync<T>(NpgsqlBinaryImporter copy, T? value, NpgsqlDbType type, CancellationToken cancellationToken) =>
        value is null ? copy.WriteNullAsync(cancellationToken) : copy.WriteAsync(value, type, cancellationToken);

    /// <summary>
    /// The run's entries: one billing entry per provider (its receivable against each holder's
    /// due), then per claim in claim order the posting (to the payee, and for a provider
    /// deduction the transfer of the deducted part from the holder's due to the provider's
    /// receivable) or the expiry. Also moves each hold and voucher.
    /// </summary>
    private static async Task<int> WriteLedgerAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, long runId, DateOnly day, List<PricedLine> lines,
        List<HoldAction> holds, DateTimeOffset at, CancellationToken cancellationToken)
    {
        int entries = 0;
        foreach (var provider in lines.Where(l => l.FeeFen > 0).GroupBy(l => l.Group.Provider, StringComparer.Ordinal).OrderBy(g => g.Key, StringComparer.Ordinal))
        {
            var entry = new LedgerEntry("usage_billing", $"day:{ShanghaiTime.IsoDate(day)}/provider:{provider.Key}", $"usage settled on {ShanghaiTime.IsoDate(day)} under contracts of {provider.Key}");
            foreach (var holder in provider.GroupBy(l => l.Group.Holder, StringComparer.Ordinal).OrderBy(g => g.Key, StringComparer.Ordinal))
            {
                entry.Debit(Accounts.HolderDue(holder.Key), holder.Sum(l => l.FeeFen));
            }

            entry.Credit(Accounts.ProviderReceivable(provider.Key), provider.Sum(l => l.FeeFen));
            entries += await LedgerWriter.WriteAsync(connection, transaction, entry, runId, at, cancellationToken) is null ? 0 : 1;
        }

        foreach (HoldAction hold in holds)
        {
            if (!hold.Post)
            {
                await Redemptions.ReleaseHoldAsync(connection, transaction, hold.Provider, hold.ClaimId, hold.VoucherId, hold.AmountFen, "expired",
                    $"expired by the settlement of {ShanghaiTime.IsoDate(day)} before its usage was settled", runId, at, cancellationToken);
                entries++;
                continue;
            }

            await connection.ExecuteAsync(new CommandDefinition("""
                UPDATE voucher_holds SET state = 'posted', closed_at = @at, closed_by_run = @runId, close_reason = @reason WHERE provider_id = @provider AND claim_id = @claim AND state = 'reserved'
                """, new { at = at.UtcDateTime, runId, reason = $"posted by the settlement of {ShanghaiTime.IsoDate(day)}", provider = hold.Provider, claim = hold.ClaimId }, transaction, cancellationToken: cancellationToken));
            int moved = await connection.ExecuteAsync(new CommandDefinition("""
                UPDATE vouchers SET held_fen = held_fen - @amount, posted_fen = posted_fen + @amount WHERE provider_id = @provider AND voucher_id = @voucher AND held_fen >= @amount
                """, new { amount = hold.AmountFen, provider = hold.Provider, voucher = hold.VoucherId }, transaction, cancellationToken: cancellationToken));
            if (moved != 1)
            {
                throw new LedgerInvariantException($"voucher {hold.VoucherId} holds less than claim {hold.ClaimId}'s {hold.AmountFen} fen");
            }

            bool deduction = hold.PayeeMode == "provider_deduction";
            string payee = deduction ? hold.Provider : hold.Holder;
            var entry = new LedgerEntry("hold_post", $"claim:{hold.ClaimId}", $"claim {hold.ClaimId} posted by the settlement of {ShanghaiTime.IsoDate(day)}: {hold.AmountFen} fen to {payee} ({hold.PayeeMode})")
                .Debit(Accounts.VoucherHeld(hold.VoucherId), hold.AmountFen)
                .Credit(Accounts.PayeePayable(payee), hold.AmountFen);
            if (deduction)
            {
                // The provider deducted the subsidy from the holder's bill: the holder owes that
                // much less, and the provider collects it from the programme instead.
                entry.Debit(Accounts.ProviderReceivable(hold.Provider), hold.AmountFen).Credit(Accounts.HolderDue(hold.Holder), hold.AmountFen);
            }

            await LedgerWriter.WriteAsync(connection, transaction, entry, runId, at, cancellationToken);
            entries++;
        }

        return entries;
    }

    // ---------------------------------------------------------------- reconciliation

    private static async Task ReconcileAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, long runId, DateOnly day, (long Records, long UsageNpfh) metered,
        List<PartyStatement> statements, Dictionary<string, DailyRoot> roots, CancellationToken cancellationToken)
    {
        var failures = new List<string>();

        // Each provider's published root has one leaf per record of the day it was priced for:
        // the leaves were read by their own pass, so this checks that the root covers exactly
        // what the aggregation settled.
        var providerStatements = statements.Where(s => s.PartyKind == StatementFormats.ProviderKind).ToDictionary(s => s.Party, StringComparer.Ordinal);
        foreach (PartyStatement statement in providerStatements.Values)
        {
            long leaves = statement.Rows.Single(r => r.Record == StatementFormats.MerkleRootRecord).Records ?? -1;
            long priced = statement.Rows.Where(r => r.Record == "usage").Sum(r => r.Records ?? 0);
            if (leaves != priced)
            {
                failures.Add($"provider {statement.Party}: its Merkle root of {ShanghaiTime.IsoDate(day)} has {leaves} leaves but {priced} records of the day were settled");
            }
        }

        foreach (DailyRoot root in roots.Values.Where(r => !providerStatements.ContainsKey(r.ProviderId)))
        {
            failures.Add($"provider {root.ProviderId} has {root.LeafCount} Merkle leaves on {ShanghaiTime.IsoDate(day)} but no statement");
        }

        // Debits equal credits: in every entry of the run, in the run, and in the whole ledger.
        var balance = await connection.QuerySingleAsync<(long RunDebits, long RunCredits, long Unbalanced, long AllDebits, long AllCredits)>(new CommandDefinition("""
            SELECT (SELECT coalesce(sum(l.debit_fen), 0)::bigint FROM ledger_lines l JOIN ledger_entries e USING (entry_id) WHERE e.run_id = @runId),
                   (SELECT coalesce(sum(l.credit_fen), 0)::bigint FROM ledger_lines l JOIN ledger_entries e USING (entry_id) WHERE e.run_id = @runId),
                   (SELECT count(*) FROM (SELECT l.entry_id FROM ledger_lines l JOIN ledger_entries e USING (entry_id) WHERE e.run_id = @runId
                                          GROUP BY l.entry_id HAVING sum(l.debit_fen) <> sum(l.credit_fen)) x),
                   (SELECT coalesce(sum(debit_fen), 0)::bigint FROM ledger_lines),
                   (SELECT coalesce(sum(credit_fen), 0)::bigint FROM ledger_lines)
            """, new { runId }, transaction, cancellationToken: cancellationToken));
        if (balance.RunDebits != balance.RunCredits || balance.Unbalanced != 0 || balance.AllDebits != balance.AllCredits)
        {
            failures.Add($"debits ≠ credits: run {balance.RunDebits} vs {balance.RunCredits} fen ({balance.Unbalanced} unbalanced entries); ledger {balance.AllDebits} vs {balance.AllCredits} fen");
        }

        // The usage settled, as written, against the usage metered, as counted on the side by the pass that read the Merkle leaves.
        var settled = await connection.QuerySingleAsync<(long Records, long UsageNpfh)>(new CommandDefinition("""
            SELECT coalesce(sum(records), 0)::bigint, coalesce(sum(usage_npfh), 0)::bigint FROM settlement_lines WHERE run_id = @runId AND kind = 'usage'
            """, new { runId }, transaction, cancellationToken: cancellationToken));
        if (settled != metered)
        {
            failures.Add($"usage settled for {ShanghaiTime.IsoDate(day)} ({settled.Records} records, {settled.UsageNpfh} nPFh) ≠ usage metered ({metered.Records} records, {metered.UsageNpfh} nPFh)");
        }

        // Every voucher: its row, its holds and its two ledger accounts tell the same story.
        var vouchers = await connection.QueryAsync<(long Id, long Face, long Held, long Posted, long Released, long HoldsReserved, long HoldsPosted, long LedgerAvailable, long LedgerHeld)>(new CommandDefinition("""
            WITH ledger AS (
                SELECT account, sum(credit_fen - debit_fen)::bigint AS credit_balance FROM ledger_lines
                WHERE account LIKE 'voucher_available:%' OR account LIKE 'voucher_held:%' GROUP BY account),
            holds AS (
                SELECT voucher_id, coalesce(sum(amount_fen) FILTER (WHERE state = 'reserved'), 0)::bigint AS reserved,
                       coalesce(sum(amount_fen) FILTER (WHERE state = 'posted'), 0)::bigint AS posted
                FROM voucher_holds GROUP BY voucher_id)
            SELECT v.voucher_id, v.face_value_fen, v.held_fen, v.posted_fen, v.released_fen, coalesce(h.reserved, 0), coalesce(h.posted, 0),
                   coalesce(a.credit_balance, 0), coalesce(d.credit_balance, 0)
            FROM vouchers v
            LEFT JOIN holds h ON h.voucher_id = v.voucher_id
            LEFT JOIN ledger a ON a.account = 'voucher_available:' || v.voucher_id
            LEFT JOIN ledger d ON d.account = 'voucher_held:' || v.voucher_id
            ORDER BY v.voucher_id
            """, transaction: transaction, cancellationToken: cancellationToken));
        foreach (var v in vouchers)
        {
            long balanceFen = v.Face - v.Posted - v.Held - v.Released;
            if (balanceFen < 0 || v.Held != v.HoldsReserved || v.Posted != v.HoldsPosted || v.LedgerAvailable != balanceFen || v.LedgerHeld != v.Held)
            {
                failures.Add($"voucher {v.Id}: issued {v.Face} − posted {v.Posted} − held {v.Held} − released {v.Released} = {balanceFen} fen, but holds say held {v.HoldsReserved} / posted {v.HoldsPosted} and the ledger says available {v.LedgerAvailable} / held {v.LedgerHeld}");
            }
        }

        // Each party's statement total against the run's ledger movements on its accounts.
        var movements = (await connection.QueryAsync<(string Account, long CreditBalance)>(new CommandDefinition("""
            SELECT l.account, sum(l.credit_fen - l.debit_fen)::bigint FROM ledger_lines l JOIN ledger_entries e USING (entry_id)
            WHERE e.run_id = @runId AND e.kind IN ('usage_billing', 'hold_post') GROUP BY l.account
            """, new { runId }, transaction, cancellationToken: cancellationToken))).ToDictionary(m => m.Account, m => m.CreditBalance, StringComparer.Ordinal);
        long Movement(string account) => movements.TryGetValue(account, out long fen) ? fen : 0;
        var expectedPayable = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (PartyStatement statement in statements.Where(s => s.PartyKind != StatementFormats.Programme))
        {
            StatementRow total = statement.Rows.Single(r => r.Record == "total");
            string receivable = statement.PartyKind == StatementFormats.ProviderKind ? Accounts.ProviderReceivable(statement.Party) : Accounts.HolderDue(statement.Party);
            long expected = statement.PartyKind == StatementFormats.ProviderKind ? total.HolderPaysFen ?? 0 : -(total.HolderPaysFen ?? 0);
            if (Movement(receivable) != expected)
            {
                failures.Add($"{statement.PartyKind} {statement.Party}: the statement says holders pay {total.HolderPaysFen} fen but {receivable} moved {Movement(receivable)} fen");
            }

            expectedPayable[statement.Party] = expectedPayable.GetValueOrDefault(statement.Party) + (total.ProgrammePaysFen ?? 0);
        }

        foreach (var (party, expected) in expectedPayable)
        {
            if (Movement(Accounts.PayeePayable(party)) != expected)
            {
                failures.Add($"{party}: the statements say the programme pays {expected} fen but {Accounts.PayeePayable(party)} moved {Movement(Accounts.PayeePayable(party))} fen");
            }
        }

        if (failures.Count > 0)
        {
            throw new LedgerInvariantException(string.Join("; ", failures.Take(20)) + (failures.Count > 20 ? $"; and {failures.Count - 20} more" : ""));
        }
    }

    // ---------------------------------------------------------------- closed days

    private const string RunSelect = """
        SELECT run_id AS RunId, day AS Day, settled_by AS SettledBy, finished_at AS FinishedAt, day_records AS DayRecords, day_usage_npfh AS DayUsageNpfh,
               adjustment_records AS AdjustmentRecords, fee_fen AS FeeFen, subsidy_fen AS SubsidyFen, settlement_sha256 AS Sha256
        FROM settlement_runs
        """;

    private sealed class RunRecord
    {
        public long RunId { get; init; }
        public DateTime Day { get; init; }
        public string SettledBy { get; init; } = "";
        public DateTime FinishedAt { get; init; }
        public long DayRecords { get; init; }
        public long DayUsageNpfh { get; init; }
        public long AdjustmentRecords { get; init; }
        public long FeeFen { get; init; }
        public long SubsidyFen { get; init; }
        public byte[] Sha256 { get; init; } = [];

        public SettlementOutcome ToOutcome(IReadOnlyList<StoredStatement> statements, bool alreadyClosed) =>
            new(DateOnly.FromDateTime(Day), alreadyClosed, Sha256, DayRecords, DayUsageNpfh, AdjustmentRecords, FeeFen, SubsidyFen, SettledBy, ShanghaiTime.Instant(FinishedAt), statements);
    }

    /// <summary>A closed day with its statements; with verify, each statement and the whole are re-hashed and must match what was recorded.</summary>
    private static async Task<SettlementOutcome?> ReadClosedAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, DateOnly day, bool verify, CancellationToken cancellationToken)
    {
        RunRecord? run = await connection.QueryFirstOrDefaultAsync<RunRecord>(new CommandDefinition(RunSelect + " WHERE day = @day", new { day }, transaction, cancellationToken: cancellationToken));
        if (run is null)
        {
            return null;
        }

        var statements = (await connection.QueryAsync<(string Kind, string Party, byte[] Csv, byte[] Sha)>(new CommandDefinition(
            "SELECT party_kind, party_code, canonical_csv, sha256 FROM settlement_statements WHERE run_id = @runId ORDER BY ordinal",
            new { runId = run.RunId }, transaction, cancellationToken: cancellationToken)))
            .Select(s => new StoredStatement(s.Kind, s.Party, s.Csv, s.Sha)).ToList();
        if (verify)
        {
            StoredStatement? altered = statements.FirstOrDefault(s => !StatementFormats.Sha256(s.CanonicalCsv).AsSpan().SequenceEqual(s.Sha256));
            byte[] whole = StatementFormats.SettlementHash(statements.Select(s => s.CanonicalCsv));
            if (altered is not null || !whole.AsSpan().SequenceEqual(run.Sha256))
            {
                throw new SettlementRefusedException(SettlementRefusalReason.SettlementTampered,
                    $"the stored settlement of {ShanghaiTime.IsoDate(day)} no longer hashes to its recorded settlement hash {Convert.ToHexStringLower(run.Sha256)}"
                    + (altered is null ? "" : $" (statement of {altered.PartyKind} {altered.Party} changed)"));
            }
        }

        return run.ToOutcome(statements, alreadyClosed: true);
    }

    [LoggerMessage(EventId = 5001, Level = LogLevel.Information, Message = "Settlement {Day}: {Stage}: {Detail} ({ElapsedSeconds:0.0} s)")]
    private static partial void LogProgress(ILogger logger, string day, string stage, string detail, double elapsedSeconds);

    [LoggerMessage(EventId = 5003, Level = LogLevel.Warning, Message = "Settlement {Day}: releasing the run lock failed ({Detail}); the pool closes the connection, which releases it")]
    private static partial void LogUnlockFailed(ILogger logger, string day, string detail);

    [LoggerMessage(EventId = 5002, Level = LogLevel.Critical, Message = "Settlement {Day} failed its reconciliation and was rolled back: {Detail}")]
    private static partial void LogReconciliationFailed(ILogger logger, string day, string detail);
}
