using Dapper;
using Metering.Engine.Registry;
using Npgsql;

namespace Metering.Engine.Vouchers;

// Claims as redemptions return them.
public sealed partial class Redemptions
{
    public async Task<Claim?> GetClaimAsync(long claimId, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await ReadClaimAsync(connection, null, claimId);
    }

    /// <summary>Claims, newest first; of one contract when given.</summary>
    public async Task<IReadOnlyList<Claim>> ListClaimsAsync(long? contractId, int limit, CancellationToken cancellationToken)
    {
        limit = limit == 0 ? VoucherBook.ListLimitDefault : Math.Clamp(limit, 1, VoucherBook.ListLimitMax);
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var ids = await connection.QueryAsync<long>(
            "SELECT claim_id FROM claims WHERE @contractId::bigint IS NULL OR contract_id = @contractId ORDER BY claim_id DESC LIMIT @limit", new { contractId, limit });
        var claims = new List<Claim>();
        foreach (long id in ids)
        {
            claims.Add((await ReadClaimAsync(connection, null, id))!);
        }

        return claims;
    }

    internal static async Task<Claim?> ReadClaimAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, long claimId)
    {
        var row = await connection.QueryFirstOrDefaultAsync<ClaimRecord>("""
            SELECT c.claim_id AS Id, c.contract_id AS Contract, c.voucher_id AS Voucher, c.holder_code AS Holder, c.provider_id AS Provider, c.programme_year AS Year,
                   c.parameters_version AS Version, c.payee_mode AS Mode, c.ratio_bp AS Ratio, c.records AS Records, c.eligible_fee_fen AS Eligible,
                   c.ratio_subsidy_fen AS RatioSubsidy, c.voucher_remaining_fen AS VoucherRemaining, c.annual_cap_remaining_fen AS CapRemaining,
                   c.stacking_room_fen AS StackingRoom, c.subsidy_fen AS Subsidy, c.limited_by AS LimitedBy, h.state AS HoldState,
                   (extract(epoch FROM h.expires_at) * 1000)::bigint AS ExpiresMs, (extract(epoch FROM c.filed_at) * 1000)::bigint AS FiledMs,
                   array_to_string(c.usage_days, ',') AS Days
            FROM claims c JOIN voucher_holds h ON h.provider_id = c.provider_id AND h.claim_id = c.claim_id
            WHERE c.claim_id = @claimId
            """, new { claimId }, transaction);
        if (row is null)
        {
            return null;
        }

        var lines = await connection.QueryAsync<(string Model, string Unit, long Records, long Npfh, long CardMs, long Price, long Fee)>("""
            SELECT device_model, fee_unit, records, usage_npfh, card_ms, price_fen, fee_fen FROM claim_lines WHERE provider_id = @provider AND claim_id = @claimId ORDER BY device_model
            """, new { provider = row.Provider, claimId }, transaction);
        return new Claim
        {
            ClaimId = row.Id,
            ContractId = row.Contract,
            VoucherId = row.Voucher,
            HolderCode = row.Holder,
            ProviderId = row.Provider,
            ProgrammeYear = (uint)row.Year,
            ParametersVersion = (uint)row.Version,
            PayeeMode = VoucherNames.PayeeModeOf(row.Mode),
            RatioBp = (uint)row.Ratio,
            Records = row.Records,
            EligibleFeeFen = row.Eligible,
            RatioSubsidyFen = row.RatioSubsidy,
            VoucherRemainingFen = row.VoucherRemaining,
            AnnualCapRemainingFen = row.CapRemaining,
            StackingRoomFen = row.StackingRoom,
            SubsidyFen = row.Subsidy,
            LimitedBy = VoucherNames.SubsidyLimitOf(row.LimitedBy),
            HoldState = VoucherNames.HoldStateOf(row.HoldState),
            HoldExpiresUnixMs = row.ExpiresMs,
            FiledUnixMs = row.FiledMs,
            UsageDays = row.Days.Split(',', StringSplitOptions.RemoveEmptyEntries),
            Lines = lines.Select(l => new ClaimLine
            {
                DeviceModel = l.Model,
                FeeUnit = Names.FeeUnitOf(l.Unit),
                Records = l.Records,
                UsageNpfh = l.Npfh,
                CardMs = l.CardMs,
                PriceFen = l.Price,
                FeeFen = l.Fee,
            }).ToList(),
        };
    }

    private sealed class ClaimRecord
    {
        public long Id { get; init; }
        public long Contract { get; init; }
        public long Voucher { get; init; }
        public string Holder { get; init; } = "";
        public string Provider { get; init; } = "";
        public int Year { get; init; }
        public int Version { get; init; }
        public string Mode { get; init; } = "";
        public int Ratio { get; init; }
        public long Records { get; init; }
        public long Eligible { get; init; }
        public long RatioSubsidy { get; init; }
        public long VoucherRemaining { get; init; }
        public long CapRemaining { get; init; }
        public long StackingRoom { get; init; }
        public long Subsidy { get; init; }
        public string LimitedBy { get; init; } = "";
        public string HoldState { get; init; } = "";
        public long ExpiresMs { get; init; }
        public long FiledMs { get; init; }
        public string Days { get; init; } = "";
    }
}
