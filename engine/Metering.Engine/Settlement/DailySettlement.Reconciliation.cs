using System.Data;
using System.Globalization;
using Dapper;
using Metering.Engine.Audit;
using Metering.Engine.Ledger;
using Metering.Engine.Time;
using Metering.Engine.Vouchers;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Metering.Engine.Settlement;

// Stage 8 of a run: the reconciliation inside the transaction, so that a mismatch rolls everything back.
public sealed partial class DailySettlement
{
    private static async Task ReconcileAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, long runId, DateOnly day, (long Records, long UsageNpfh) metered,
        List<PartyStatement> statements, Dictionary<string, DailyRoot> roots, CancellationToken cancellationToken)
    {
        var failures = new List<string>();

        // Each provider's published root has one leaf per record of the day it was priced for:
        // the leaves and the totals come from the same read but are counted apart, so this
        // checks that the root covers exactly what the aggregation settled.
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

        // The usage settled, as written to the lines, against the usage metered, as counted by the Merkle leaves of the same read.
        var settled = await connection.QuerySingleAsync<(long Records, long UsageNpfh)>(new CommandDefinition("""
            SELECT coalesce(sum(records), 0)::bigint, coalesce(sum(usage_npfh), 0)::bigint FROM settlement_lines WHERE run_id = @runId AND kind = 'usage'
            """, new { runId }, transaction, cancellationToken: cancellationToken));
        if (settled != metered)
        {
            failures.Add($"usage settled for {ShanghaiTime.IsoDate(day)} ({settled.Records} records, {settled.UsageNpfh} nPFh) ≠ usage metered ({metered.Records} records, {metered.UsageNpfh} nPFh)");
        }

        // Every voucher: its row, its holds and its two ledger accounts tell the same story. The
        // ledger's balances are read by a statement of their own and joined here: on Citus the
        // voucher tables are Citus tables on the coordinator and the ledger a plain table; Citus
        // sends a statement joining both to the coordinator's shards as a task, and in a run that
        // task was answered without the ledger lines the run had just written.
        var ledgerBalances = (await connection.QueryAsync<(string Account, long CreditBalance)>(new CommandDefinition("""
            SELECT account, sum(credit_fen - debit_fen)::bigint FROM ledger_lines
            WHERE account LIKE 'voucher_available:%' OR account LIKE 'voucher_held:%' GROUP BY account
            """, transaction: transaction, cancellationToken: cancellationToken))).ToDictionary(b => b.Account, b => b.CreditBalance, StringComparer.Ordinal);
        var voucherRows = await connection.QueryAsync<(long Id, long Face, long Held, long Posted, long Released, long HoldsReserved, long HoldsPosted)>(new CommandDefinition("""
            WITH holds AS (
                SELECT provider_id, voucher_id, coalesce(sum(amount_fen) FILTER (WHERE state = 'reserved'), 0)::bigint AS reserved,
                       coalesce(sum(amount_fen) FILTER (WHERE state = 'posted'), 0)::bigint AS posted
                FROM voucher_holds GROUP BY provider_id, voucher_id)
            SELECT v.voucher_id, v.face_value_fen, v.held_fen, v.posted_fen, v.released_fen, coalesce(h.reserved, 0), coalesce(h.posted, 0)
            FROM vouchers v
            LEFT JOIN holds h ON h.provider_id = v.provider_id AND h.voucher_id = v.voucher_id
            ORDER BY v.voucher_id
            """, transaction: transaction, cancellationToken: cancellationToken));
        var vouchers = voucherRows.Select(v => (v.Id, v.Face, v.Held, v.Posted, v.Released, v.HoldsReserved, v.HoldsPosted,
            LedgerAvailable: ledgerBalances.GetValueOrDefault(Accounts.VoucherAvailable(v.Id)), LedgerHeld: ledgerBalances.GetValueOrDefault(Accounts.VoucherHeld(v.Id))));
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
}
