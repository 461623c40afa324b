using System.Globalization;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Registry;

/// <summary>
/// Admission batches and the versions of their rules. A batch's rules are data: each change is
/// a new version, written once to admission_batch_versions and to the registry history. Until
/// the filing window opens they change freely; from then on only a correction, which states its
/// reason, changes them, so that no applicant is judged by a rule that was quietly moved.
/// </summary>
public sealed partial class ProviderRegistry
{
    /// <summary>
    /// Creates a batch or changes it. A put that changes nothing returns the batch as it is and
    /// records nothing. A change of the rules after the window opened (by this server's clock)
    /// needs <paramref name="correctionReason"/>, else BATCH_RULES_FROZEN; with it, the change is
    /// a new version recorded as a correction. The four-eyes setting and the reconsideration days
    /// (0: the programme's default) are settings: a change is recorded in the history, not as a version.
    /// </summary>
    public async Task<BatchRow> PutBatchAsync(Actor actor, BatchRules rules, bool singleOperatorDecisions, int reconsiderationDays, string? correctionReason,
        CancellationToken cancellationToken)
    {
        rules = rules.Checked();
        if (reconsiderationDays is < 0 or > ReconsiderationRules.DaysMax)
        {
            throw FilingRules.Invalid($"reconsideration_days must be 1 to {ReconsiderationRules.DaysMax}, or 0 for the programme's {ReconsiderationRules.DaysDefault}");
        }

        int days = reconsiderationDays == 0 ? ReconsiderationRules.DaysDefault : reconsiderationDays;
        string? reason = correctionReason?.Trim() is { Length: > 0 } trimmed ? trimmed : null;
        if (reason is { Length: > ReasonsMax })
        {
            throw FilingRules.Invalid($"correction_reason is at most {ReasonsMax} characters");
        }

        return await InTransactionAsync(async (connection, transaction) =>
        {
            DateTimeOffset now = time.GetUtcNow();
            if (!await connection.ExecuteScalarAsync<bool>("SELECT EXISTS (SELECT FROM programme_parameters WHERE programme_year = @year)",
                new { year = rules.VoucherProgrammeYear }, transaction))
            {
                throw BatchRules.Invalid("voucher_programme_year",
                    $"voucher_programme_year {rules.VoucherProgrammeYear} has no programme parameters; put them first (VoucherService PutProgrammeParameters)");
            }

            var key = new { id = rules.BatchId };
            BatchRow? current = (await ReadBatchesAsync(connection, transaction, rules.BatchId, lockRow: true)).SingleOrDefault();
            if (current is null)
            {
                int inserted = await connection.ExecuteAsync("""
                    INSERT INTO admission_batches (batch_id, window_opens_at, window_closes_at, validity_ends_at, public_notice_days, audit_report_year,
                        single_operator_decisions, capacity_minimum_gflops, materials_required, audit_report_prior_year_with_reason,
                        capital_verification_for_new_entities, voucher_programme_year, rules_version, reconsideration_days)
                    VALUES (@id, @opens, @closes, @ends, @days, @year, @singleOperator, @bar, @materials, @priorYear, @capitalVerification, @programmeYear, 1, @reconsiderationDays)
                    ON CONFLICT (batch_id) DO NOTHING
                    """, Parameters(rules, singleOperatorDecisions, days, 1), transaction);
                if (inserted == 1)
                {
                    await RecordVersionAsync(connection, transaction, actor, now, rules.BatchId, reason);
                    await RecordAsync(connection, transaction, actor, now, null, "batch", rules.BatchId, "create", null, await BatchJsonAsync(connection, transaction, rules.BatchId, reason));
                    return (await ReadBatchesAsync(connection, transaction, rules.BatchId)).Single();
                }

                // Created by another put at the same moment: that one is now the batch this changes.
                current = (await ReadBatchesAsync(connection, transaction, rules.BatchId, lockRow: true)).Single();
            }

            IReadOnlyList<string> changed = current.Rules.DifferencesFrom(rules);
            if (changed.Count == 0 && current.SingleOperatorDecisions == singleOperatorDecisions && current.ReconsiderationDays == days)
            {
                return current;
            }

            // The window has opened once any version's opening came while that version was in
            // force: a correction that moves the opening later does not thaw the rules for quiet
            // changes, while a change made before any opening came stays free.
            DateTime? openedAt = await connection.ExecuteScalarAsync<DateTime?>("""
                SELECT min(opens) FROM (
                    SELECT (rules ->> 'window_opens_at')::timestamptz AS opens, coalesce(lead(recorded_at) OVER (ORDER BY version), @now) AS superseded
                    FROM admission_batch_versions WHERE batch_id = @id) v
                WHERE opens <= superseded
                """, new { id = rules.BatchId, now = now.UtcDateTime }, transaction);
            DateTimeOffset firstOpens = openedAt is { } at ? ShanghaiTime.Instant(at) : current.WindowOpensAt;
            bool opened = openedAt is not null;
            if (changed.Count > 0 && opened && reason is null)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.BatchRulesFrozen,
                    $"batch {rules.BatchId}'s filing window opened at {firstOpens.ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm} Asia/Shanghai; its rules ({string.Join(", ", changed)}) change only by a correction that states its reason (correction_reason), recorded as version {current.RulesVersion + 1}",
                    new Dictionary<string, string> { ["fields"] = string.Join(",", changed), ["rules_version"] = current.RulesVersion.ToString(CultureInfo.InvariantCulture) });
            }

            if (changed.Contains("validity_ends") && await connection.ExecuteScalarAsync<bool>("SELECT EXISTS (SELECT 1 FROM applications WHERE batch_id = @id)", key, transaction))
            {
                throw new RegistryRefusedException(RegistryRefusalReason.PeriodInvalid, $"batch {rules.BatchId} has applications; its validity end stays as it is");
            }

            string before = (await BatchJsonAsync(connection, transaction, rules.BatchId, current.CorrectionReason))!;
            int version = changed.Count > 0 ? current.RulesVersion + 1 : current.RulesVersion;
            await connection.ExecuteAsync("""
                UPDATE admission_batches SET window_opens_at = @opens, window_closes_at = @closes, validity_ends_at = @ends, public_notice_days = @days,
                    audit_report_year = @year, single_operator_decisions = @singleOperator, capacity_minimum_gflops = @bar, materials_required = @materials,
                    audit_report_prior_year_with_reason = @priorYear, capital_verification_for_new_entities = @capitalVerification,
                    voucher_programme_year = @programmeYear, rules_version = @version, reconsideration_days = @reconsiderationDays
                WHERE batch_id = @id
                """, Parameters(rules, singleOperatorDecisions, days, version), transaction);
            if (changed.Count > 0)
            {
                await RecordVersionAsync(connection, transaction, actor, now, rules.BatchId, reason);
            }

            string action = changed.Count == 0 ? "change_setting" : opened ? "correct" : "change";
            await RecordAsync(connection, transaction, actor, now, null, "batch", rules.BatchId, action, before,
                await BatchJsonAsync(connection, transaction, rules.BatchId, changed.Count > 0 ? reason : current.CorrectionReason));
            return (await ReadBatchesAsync(connection, transaction, rules.BatchId)).Single();
        }, cancellationToken);
    }

    /// <summary>Every batch with its rules in force, by window start.</summary>
    public async Task<IReadOnlyList<BatchRow>> ListBatchesAsync(CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await ReadBatchesAsync(connection, null, null);
    }

    private static object Parameters(BatchRules rules, bool singleOperatorDecisions, int reconsiderationDays, int version) => new
    {
        id = rules.BatchId,
        opens = rules.WindowOpensAt.UtcDateTime,
        closes = rules.WindowClosesAt.UtcDateTime,
        ends = rules.ValidityEndsAt.UtcDateTime,
        days = rules.PublicNoticeDays,
        year = rules.AuditReportYear,
        singleOperator = singleOperatorDecisions,
        reconsiderationDays,
        bar = rules.CapacityMinimumGflops,
        materials = rules.MaterialsRequired.ToArray(),
        priorYear = rules.AuditReportPriorYearWithReason,
        capitalVerification = rules.CapitalVerificationForNewEntities,
        programmeYear = rules.VoucherProgrammeYear,
        version,
    };

    /// <summary>Writes the batch's row as it now stands as its version in force, once.</summary>
    private static Task RecordVersionAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, Actor actor, DateTimeOffset now, string batchId, string? reason) =>
        connection.ExecuteAsync("""
            INSERT INTO admission_batch_versions (batch_id, version, rules, recorded_by, recorded_at, reason)
            SELECT batch_id, rules_version, to_jsonb(b) - 'rules_version' - 'single_operator_decisions' - 'reconsideration_days', @by, @now, @reason FROM admission_batches b WHERE batch_id = @id
            """, new { id = batchId, by = actor.Subject, now = now.UtcDateTime, reason }, transaction);

    /// <summary>A batch as the history shows it: its row, with the reason recorded for its version in force.</summary>
    private static Task<string?> BatchJsonAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string batchId, string? reason) =>
        connection.ExecuteScalarAsync<string?>("""
            SELECT (to_jsonb(b) || jsonb_build_object('correction_reason', @reason::text))::text FROM admission_batches b WHERE batch_id = @id
            """, new { id = batchId, reason }, transaction);

    private sealed class BatchRecord
    {
        public string Id { get; init; } = "";
        public DateTime Opens { get; init; }
        public DateTime Closes { get; init; }
        public DateTime Ends { get; init; }
        public int Days { get; init; }
        public int Year { get; init; }
        public bool SingleOperator { get; init; }
        public long Bar { get; init; }
        public string[] Materials { get; init; } = [];
        public bool PriorYear { get; init; }
        public bool CapitalVerification { get; init; }
        public int ProgrammeYear { get; init; }
        public int Version { get; init; }
        public string RecordedBy { get; init; } = "";
        public DateTime RecordedAt { get; init; }
        public string? Reason { get; init; }
        public long? MinRentalFen { get; init; }
        public int ReconsiderationDays { get; init; }
    }

    private static async Task<IReadOnlyList<BatchRow>> ReadBatchesAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string? batchId, bool lockRow = false) =>
        (await connection.QueryAsync<BatchRecord>($"""
            SELECT b.batch_id AS Id, b.window_opens_at AS Opens, b.window_closes_at AS Closes, b.validity_ends_at AS Ends, b.public_notice_days AS Days,
                   b.audit_report_year AS Year, b.single_operator_decisions AS SingleOperator, b.capacity_minimum_gflops AS Bar, b.materials_required AS Materials,
                   b.audit_report_prior_year_with_reason AS PriorYear, b.capital_verification_for_new_entities AS CapitalVerification,
                   b.voucher_programme_year AS ProgrammeYear, b.rules_version AS Version, b.reconsideration_days AS ReconsiderationDays, v.recorded_by AS RecordedBy, v.recorded_at AS RecordedAt, v.reason AS Reason,
                   (SELECT p.min_annual_rental_fen FROM programme_parameters p WHERE p.programme_year = b.voucher_programme_year ORDER BY p.version DESC LIMIT 1) AS MinRentalFen
            FROM admission_batches b
            JOIN admission_batch_versions v ON v.batch_id = b.batch_id AND v.version = b.rules_version
            WHERE @id::text IS NULL OR b.batch_id = @id ORDER BY b.window_opens_at, b.batch_id{(lockRow ? " FOR UPDATE OF b" : "")}
            """, new { id = batchId }, transaction))
        .Select(r => new BatchRow(
            new BatchRules(r.Id, ShanghaiTime.Instant(r.Opens), ShanghaiTime.Instant(r.Closes), ShanghaiTime.Instant(r.Ends), r.Days, r.Bar, r.Materials, r.Year, r.PriorYear, r.CapitalVerification, r.ProgrammeYear),
            r.SingleOperator, r.Version, r.RecordedBy, ShanghaiTime.Instant(r.RecordedAt), r.Reason, r.MinRentalFen, r.ReconsiderationDays)).ToList();
}
