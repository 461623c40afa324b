using Metering.Engine.Vouchers;
using Metering.Engine.Registry;

namespace Metering.Engine.Tests.Vouchers;

/// <summary>The programme's money arithmetic: integers only, rounded down once where documented.</summary>
public sealed class PricingTests
{
    [Fact]
    public void Card_time_of_whole_devices_is_exact()
    {
        // Eight cards for five minutes: 40 card-minutes.
        Assert.Equal(2_400_000, Pricing.CardMilliseconds(8, 1, 1, 300_000));
    }

    [Fact]
    public void Card_time_of_a_fractional_share_is_rounded_down_once_per_record()
    {
        // Three sevenths of one A100 for one millisecond is 0.43 card-ms; 1,000 ms is 428.57.
        Assert.Equal(0, Pricing.CardMilliseconds(1, 3, 7, 1));
        Assert.Equal(428, Pricing.CardMilliseconds(1, 3, 7, 1_000));
    }

    [Fact]
    public void A_card_hour_line_divides_card_milliseconds_by_an_hour_and_rounds_down()
    {
        Assert.Equal(1_200, Pricing.FeeFen(FeeUnit.PerCardHour, 0, 2_400_000, 1_800));
        // One card-millisecond at 1,800 fen per card-hour is half a thousandth of a fen.
        Assert.Equal(0, Pricing.FeeFen(FeeUnit.PerCardHour, 0, 1, 1_800));
        Assert.Equal(1_800, Pricing.FeeFen(FeeUnit.PerCardHour, 0, 3_600_000, 1_800));
        Assert.Equal(1_799, Pricing.FeeFen(FeeUnit.PerCardHour, 0, 3_599_999, 1_800));
    }

    [Fact]
    public void A_pflops_hour_line_rounds_down_once_over_the_summed_usage()
    {
        // Ten records of 659,600,000 nPFh at 1,900 fen per PFLOPS·h: 12,532.4 fen.
        Assert.Equal(12_532, Pricing.FeeFen(FeeUnit.PerPflopsHour, 6_596_000_000, 0, 1_900));
        Assert.Equal(1_253, Pricing.FeeFen(FeeUnit.PerPflopsHour, 659_600_000, 0, 1_900));
    }

    [Fact]
    public void Large_quantities_at_large_prices_are_exact_past_64_bits_in_the_product()
    {
        // A year of 100,000 H100s is about 8.7e17 card-ms; times 1e6 fen the product is ~8.7e23, past a long.
        long cardMs = 100_000L * 365 * 24 * 3_600_000;
        Assert.Equal(cardMs / 3_600_000 * 1_000_000, Pricing.FeeFen(FeeUnit.PerCardHour, 0, cardMs, 1_000_000));
    }

    [Fact]
    public void A_fee_too_large_for_a_long_throws_instead_of_wrapping()
    {
        Assert.Throws<OverflowException>(() => Pricing.FeeFen(FeeUnit.PerCardHour, 0, long.MaxValue, 1_000_000_000_000));
    }

    [Fact]
    public void An_unspecified_unit_or_a_non_positive_price_prices_nothing()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => Pricing.FeeFen(FeeUnit.Unspecified, 1, 1, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => Pricing.FeeFen(FeeUnit.PerCardHour, 0, 1, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => Pricing.FeeFen(FeeUnit.PerCardHour, 0, -1, 10));
    }

    [Theory]
    [InlineData(12_000, 5_000, 6_000)]
    [InlineData(12_000, 6_000, 7_200)]
    [InlineData(12_001, 5_000, 6_000)]
    [InlineData(1, 5_000, 0)]
    [InlineData(12_532, 5_000, 6_266)]
    [InlineData(1_000_000_000_000_000, 10_000, 1_000_000_000_000_000)]
    public void A_ratio_in_basis_points_rounds_down(long amountFen, int ratioBp, long expectedFen)
    {
        Assert.Equal(expectedFen, Pricing.ShareFen(amountFen, ratioBp));
    }

    [Fact]
    public void The_subsidy_is_the_least_of_ratio_voucher_cap_and_stacking_and_names_which()
    {
        Assert.Equal(new SubsidyDecision(6_000, 6_000, SubsidyLimit.LimitedByRatio), Pricing.Subsidy(12_000, 5_000, 10_000, 10_000, 10_000));
        Assert.Equal(new SubsidyDecision(4_000, 6_000, SubsidyLimit.LimitedByVoucherRemaining), Pricing.Subsidy(12_000, 5_000, 4_000, 10_000, 10_000));
        Assert.Equal(new SubsidyDecision(3_000, 6_000, SubsidyLimit.LimitedByAnnualCap), Pricing.Subsidy(12_000, 5_000, 4_000, 3_000, 10_000));
        Assert.Equal(new SubsidyDecision(2_000, 6_000, SubsidyLimit.LimitedByStackingCap), Pricing.Subsidy(12_000, 5_000, 4_000, 3_000, 2_000));
        // A tie names the earlier cap: the ratio alone suffices.
        Assert.Equal(SubsidyLimit.LimitedByRatio, Pricing.Subsidy(12_000, 5_000, 6_000, 6_000, 6_000).LimitedBy);
        Assert.Equal(0, Pricing.Subsidy(12_000, 5_000, 10_000, -5, 10_000).SubsidyFen);
    }

    [Fact]
    public void Stacking_room_is_the_caps_share_less_other_support_and_vouchers_and_never_negative()
    {
        Assert.Equal(4_000, Pricing.StackingRoomFen(60_000_000, 5_000, 29_996_000, 0));
        Assert.Equal(0, Pricing.StackingRoomFen(60_000_000, 5_000, 29_996_000, 10_000));
        Assert.Equal(30_000_000, Pricing.StackingRoomFen(60_000_001, 5_000, 0, 0));
    }

    [Theory]
    [InlineData(0, "0.00")]
    [InlineData(5, "0.05")]
    [InlineData(123_456_789, "1,234,567.89")]
    [InlineData(-1_050, "-10.50")]
    [InlineData(long.MinValue, "-92,233,720,368,547,758.08")]
    public void Fen_print_as_yuan_with_two_decimals(long fen, string yuan)
    {
        Assert.Equal(yuan, Pricing.Yuan(fen));
    }
}
