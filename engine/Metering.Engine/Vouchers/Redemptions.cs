using Npgsql;

namespace Metering.Engine.Vouchers;

/// <summary>
/// Redemption claims: the metered usage of a contract's holder at its provider, priced with the
/// contract's fee schedule, and the subsidy reserved for it on the contract's voucher for the
/// usage's year, with
/// subsidy = min(ratio × eligible fee, voucher remaining, annual cap remaining, stacking room).
///
/// A claim runs in one transaction under the holder's row lock and then the voucher's, so that
/// concurrent claims of one holder are decided one after the other against exact balances; the
/// voucher's CHECK and the unique key on redeemed usage are the database's last word on "never
/// negative" and "redeemed at most once". The checks run in the order the refusals are listed in
/// vouchers.proto's FileClaim comment; the first that fails is reported.
/// </summary>
public sealed partial class Redemptions(NpgsqlDataSource dataSource, TimeProvider time)
{
    /// <summary>Most usage records one claim may cover.</summary>
    public const int ClaimRecordsMax = 100_000;

    /// <summary>Most job ids one claim may name.</summary>
    public const int JobIdsMax = 1_000;

    public const int JobIdLengthMax = 128;

    public const int ReasonLengthMax = 4_000;

    /// <summary>A claimed record, as the claim reads it.</summary>
    private sealed record ClaimedRecord(string StreamId, long Sequence, string JobId, string DeviceModel, uint DeviceCount, uint ShareNumerator, uint ShareDenominator,
        long StartMs, long EndMs, long UsageNpfh);
}
