using System.Data;
using System.Globalization;
using Dapper;
using Metering.Engine.Audit;
using Metering.Engine.Ledger;
using Metering.Engine.Registry;
using Metering.Engine.Time;
using Metering.Engine.Vouchers;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Metering.Engine.Settlement;

// A closed day read back; with verify, every statement and the whole are re-hashed against what was recorded.
public sealed partial class DailySettlement
{
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
}
