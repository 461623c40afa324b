using System.Data;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Ledger;
using Metering.Engine.Storage;
using Npgsql;

namespace Metering.Engine.Vouchers;

// Ending a reserved hold without posting it: voided by an operator, or expired by settlement.
public sealed partial class Redemptions
{
    /// <summary>Voids a claim whose hold is reserved: the subsidy returns to the voucher and its usage can be claimed again.</summary>
    public async Task<Claim> VoidClaimAsync(Actor actor, ClaimVoid request, CancellationToken cancellationToken)
    {
        string reason = request.Reason.Trim();
        if (reason.Length is 0 or > ReasonLengthMax)
        {
            throw VoucherBook.Invalid($"a void needs its reason, 1 to {ReasonLengthMax} characters");
        }

        DateTimeOffset now = time.GetUtcNow();
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(IsolationLevel.ReadCommitted, cancellationToken);
        await Transactions.SequentialOnCitusAsync(connection, transaction, cancellationToken);
        var claim = await connection.QueryFirstOrDefaultAsync<(string Provider, string Holder)?>(
            "SELECT provider_id, holder_code FROM claims WHERE claim_id = @id", new { id = request.ClaimId }, transaction)
            ?? throw new VoucherRefusedException(VoucherRefusalReason.ClaimUnknown, $"there is no claim {request.ClaimId}");
        await VoucherBook.LockHolderAsync(connection, transaction, claim.Holder);
        var hold = await connection.QuerySingleAsync<(long Voucher, long Amount, string State)>(
            "SELECT voucher_id, amount_fen, state FROM voucher_holds WHERE provider_id = @provider AND claim_id = @id FOR UPDATE",
            new { provider = claim.Provider, id = request.ClaimId }, transaction);
        if (hold.State != "reserved")
        {
            throw new VoucherRefusedException(VoucherRefusalReason.ClaimNotReserved, $"claim {request.ClaimId}'s hold is {hold.State}; only a reserved hold can be voided");
        }

        await ReleaseHoldAsync(connection, transaction, claim.Provider, request.ClaimId, hold.Voucher, hold.Amount, "voided", $"voided by {actor.Subject}: {reason}", null, now, cancellationToken);
        Claim result = (await ReadClaimAsync(connection, transaction, request.ClaimId))!;
        await transaction.CommitAsync(cancellationToken);
        return result;
    }

    /// <summary>
    /// Ends a reserved hold without posting it (voided or expired): the amount returns from held
    /// to available, and the claim's records are released for another claim.
    /// </summary>
    internal static async Task ReleaseHoldAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string providerId, long claimId, long voucherId, long amountFen,
        string state, string reason, long? runId, DateTimeOffset at, CancellationToken cancellationToken)
    {
        await connection.ExecuteAsync("""
            UPDATE voucher_holds SET state = @state, closed_at = @at, closed_by_run = @runId, close_reason = @reason WHERE provider_id = @provider AND claim_id = @claimId
            """, new { state, at = at.UtcDateTime, runId, reason, provider = providerId, claimId }, transaction);
        int moved = await connection.ExecuteAsync(
            "UPDATE vouchers SET held_fen = held_fen - @amount WHERE provider_id = @provider AND voucher_id = @voucherId AND held_fen >= @amount",
            new { amount = amountFen, provider = providerId, voucherId }, transaction);
        if (moved != 1)
        {
            throw new LedgerInvariantException($"voucher {voucherId} holds less than claim {claimId}'s {amountFen} fen");
        }

        await connection.ExecuteAsync("DELETE FROM redeemed_usage WHERE provider_id = @provider AND claim_id = @claimId", new { provider = providerId, claimId }, transaction);
        var entry = new LedgerEntry(state == "voided" ? "hold_void" : "hold_expire", $"claim:{claimId}", $"claim {claimId} {state}: {amountFen} fen back to voucher {voucherId}")
            .Debit(Accounts.VoucherHeld(voucherId), amountFen)
            .Credit(Accounts.VoucherAvailable(voucherId), amountFen);
        await LedgerWriter.WriteAsync(connection, transaction, entry, runId, at, cancellationToken);
    }
}
