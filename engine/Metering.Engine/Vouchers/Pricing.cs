using System.Diagnostics;
using Metering.Engine.Registry;

namespace Metering.Engine.Vouchers;

/// <summary>A subsidy and the cap that decided it.</summary>
public readonly record struct SubsidyDecision(long SubsidyFen, long RatioSubsidyFen, SubsidyLimit LimitedBy);

/// <summary>
/// The money arithmetic of the programme, pure and exact. Quantities come in whole nano-units
/// that were rounded down once per record when the usage was normalised (nano-PFLOPS·h at
/// ingest, card-milliseconds here); money is rounded down, toward zero, to a whole fen exactly
/// once per priced line, and once more for a ratio. Nothing is a float: products are formed in
/// 128-bit integers and the result must fit a long, or the call throws.
/// </summary>
public static class Pricing
{
    /// <summary>nPFh in one PFLOPS·h: per-PFLOPS·h prices divide by this.</summary>
    public const long NanoPflopsHoursPerPflopsHour = 1_000_000_000;

    /// <summary>Card-milliseconds in one card-hour: per-card-hour prices divide by this.</summary>
    public const long CardMillisecondsPerCardHour = 3_600_000;

    /// <summary>Basis points in a whole: ratios are given in basis points (5000 = 50%).</summary>
    public const int BasisPointsWhole = 10_000;

    /// <summary>
    /// A record's card time: devices × (share numerator / denominator) × duration in
    /// milliseconds, rounded down once. Whole-device records are exact.
    /// </summary>
    public static long CardMilliseconds(uint deviceCount, uint shareNumerator, uint shareDenominator, long durationMs)
    {
        Debug.Assert(shareDenominator > 0 && durationMs > 0);
        UInt128 product = (UInt128)deviceCount * shareNumerator * (ulong)durationMs;
        return checked((long)(ulong)(product / shareDenominator));
    }

    /// <summary>
    /// The fee of one priced line: quantity × unit price, divided by the unit's nano-units, and
    /// rounded down once. A per-PFLOPS·h line prices nPFh; a per-card-hour line card-milliseconds.
    /// </summary>
    public static long FeeFen(FeeUnit unit, long usageNanoPflopsHours, long cardMilliseconds, long priceFen)
    {
        if (usageNanoPflopsHours < 0 || cardMilliseconds < 0 || priceFen <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(priceFen), "quantities must not be negative and the price must be positive");
        }

        (long quantity, long perUnit) = unit switch
        {
            FeeUnit.PerPflopsHour => (usageNanoPflopsHours, NanoPflopsHoursPerPflopsHour),
            FeeUnit.PerCardHour => (cardMilliseconds, CardMillisecondsPerCardHour),
            _ => throw new ArgumentOutOfRangeException(nameof(unit), $"fee unit {unit} prices nothing"),
        };
        UInt128 product = (UInt128)(ulong)quantity * (ulong)priceFen;
        return checked((long)(ulong)(product / (ulong)perUnit));
    }

    /// <summary>A ratio in basis points of an amount, rounded down.</summary>
    public static long ShareFen(long amountFen, int ratioBp)
    {
        if (amountFen < 0 || ratioBp is < 0 or > BasisPointsWhole)
        {
            throw new ArgumentOutOfRangeException(nameof(ratioBp), "the amount must not be negative and the ratio must be 0 to 10000 basis points");
        }

        return checked((long)((UInt128)(ulong)amountFen * (uint)ratioBp / BasisPointsWhole));
    }

    /// <summary>
    /// What is left for vouchers under a contract's stacking cap: the cap's share of the contract
    /// amount, less other public support and the voucher subsidies already held or posted. Never
    /// negative.
    /// </summary>
    public static long StackingRoomFen(long contractAmountFen, int stackingCapBp, long otherSupportFen, long voucherSupportFen) =>
        Math.Max(0, ShareFen(contractAmountFen, stackingCapBp) - otherSupportFen - voucherSupportFen);

    /// <summary>
    /// subsidy = min(ratio × eligible fee, voucher remaining, annual cap remaining, stacking room).
    /// On a tie the earlier cap in that order is named, so the ratio is named whenever it alone
    /// suffices.
    /// </summary>
    public static SubsidyDecision Subsidy(long eligibleFeeFen, int ratioBp, long voucherRemainingFen, long annualCapRemainingFen, long stackingRoomFen)
    {
        long ratio = ShareFen(eligibleFeeFen, ratioBp);
        var decision = new SubsidyDecision(ratio, ratio, SubsidyLimit.LimitedByRatio);
        if (voucherRemainingFen < decision.SubsidyFen)
        {
            decision = decision with { SubsidyFen = Math.Max(0, voucherRemainingFen), LimitedBy = SubsidyLimit.LimitedByVoucherRemaining };
        }

        if (annualCapRemainingFen < decision.SubsidyFen)
        {
            decision = decision with { SubsidyFen = Math.Max(0, annualCapRemainingFen), LimitedBy = SubsidyLimit.LimitedByAnnualCap };
        }

        if (stackingRoomFen < decision.SubsidyFen)
        {
            decision = decision with { SubsidyFen = Math.Max(0, stackingRoomFen), LimitedBy = SubsidyLimit.LimitedByStackingCap };
        }

        return decision;
    }

    /// <summary>Fen as yuan with two decimals ("12,345.67"), by integer arithmetic.</summary>
    public static string Yuan(long fen)
    {
        string sign = fen < 0 ? "-" : "";
        ulong magnitude = fen < 0 ? (ulong)(-(fen + 1)) + 1 : (ulong)fen;
        return string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{sign}{magnitude / 100:N0}.{magnitude % 100:00}");
    }
}
