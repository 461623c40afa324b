using System.Diagnostics;
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

// Stage 5 of a run: the holds whose usage days are all closed are posted, the lapsed ones expired.
public sealed partial class DailySettlement
{
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
}
