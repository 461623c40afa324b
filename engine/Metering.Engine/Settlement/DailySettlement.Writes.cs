using System.Data;
using System.Globalization;
using Dapper;
using Metering.Engine.Audit;
using Metering.Engine.Ledger;
using Metering.Engine.Time;
using Metering.Engine.Vouchers;
using Npgsql;
using NpgsqlTypes;

namespace Metering.Engine.Settlement;

// Stage 7 of a run: the run's lines, statements and balanced ledger entries.
public sealed partial class DailySettlement
{
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
}
