using System.Numerics;
using System.Text;
using Metering.Engine.Settlement;

namespace Metering.Engine.Tests.Settlement;

/// <summary>
/// The one pass's totals per provider, holder and model: card time rounded down once per record,
/// exactly as the set-based SQL's numeric <c>div</c> does, in 64 bits and past them.
/// </summary>
public sealed class DayTotalsTests
{
    private static readonly byte[] Provider = Encoding.UTF8.GetBytes("91440300MA5B000011");
    private static readonly byte[] Holder = Encoding.UTF8.GetBytes("91440300MA5C000022");
    private static readonly byte[] H100 = Encoding.UTF8.GetBytes("H100-SXM");
    private static readonly byte[] A100 = Encoding.UTF8.GetBytes("A100-SXM");

    /// <summary>The reference rule in arbitrary precision: devices × numerator × µs / (denominator × 1000), rounded down.</summary>
    private static long Reference(int devices, int numerator, int denominator, long microseconds) =>
        (long)(new BigInteger(devices) * numerator * microseconds / (new BigInteger(denominator) * 1000));

    [Fact]
    public void Records_are_summed_per_provider_holder_and_model_with_card_time_rounded_down_once_per_record()
    {
        var totals = new DayTotals();
        totals.Add(Provider, Holder, A100, 100, 1 * 3, 7, 0, 1_234_567);
        totals.Add(Provider, Holder, A100, 200, 2 * 5, 7, 10, 999_999);
        totals.Add(Provider, Holder, H100, 300, 8 * 1, 1, 0, 300_000_000);

        var groups = totals.Groups();

        Assert.Equal(2, groups.Count);
        Assert.Equal(("A100-SXM", 2L, 300L, Reference(1, 3, 7, 1_234_567) + Reference(2, 5, 7, 999_989)),
            (groups[0].Model, groups[0].Records, groups[0].UsageNpfh, groups[0].CardMs));
        Assert.Equal(529L + 1_428L, groups[0].CardMs);
        Assert.Equal(("H100-SXM", 1L, 300L, 2_400_000L), (groups[1].Model, groups[1].Records, groups[1].UsageNpfh, groups[1].CardMs));
    }

    [Fact]
    public void A_product_past_64_bits_is_divided_in_128_and_a_total_past_a_bigint_is_refused()
    {
        var totals = new DayTotals();
        long microseconds = 3_000_000_000_000_000;
        totals.Add(Provider, Holder, H100, 0, 4_000 * 6, 7, 0, microseconds);

        Assert.Equal(Reference(4_000, 6, 7, microseconds), totals.Groups().Single().CardMs);
        Assert.Throws<OverflowException>(() => totals.Add(Provider, Holder, H100, 0, (long)int.MaxValue * int.MaxValue, 1, 0, long.MaxValue));
    }

    [Theory]
    [InlineData(0, 1, 1, 1_000)]
    [InlineData(1, 0, 1, 1_000)]
    [InlineData(1, 1, 0, 1_000)]
    [InlineData(1, 1, 1, 0)]
    [InlineData(1, 1, 1, -5)]
    public void A_record_the_table_checks_would_have_refused_is_refused(int devices, int numerator, int denominator, long microseconds)
    {
        var totals = new DayTotals();

        Assert.Throws<InvalidDataException>(() => totals.Add(Provider, Holder, H100, 0, (long)devices * numerator, denominator, 1_000, 1_000 + microseconds));
        Assert.Empty(totals.Groups());
    }

    [Fact]
    public void Segments_absorbed_into_one_give_the_groups_of_one_read_sorted_once()
    {
        byte[] other = Encoding.UTF8.GetBytes("91440300MA5B000029");
        var rows = new (byte[] Provider, byte[] Model, long Usage, long Shares, int Denominator, long Microseconds)[]
        {
            (other, H100, 7, 8, 1, 60_000_001), (Provider, A100, 100, 3, 7, 1_234_567), (Provider, H100, 300, 8, 1, 300_000_000),
            (other, H100, 9, 1, 1, 999), (Provider, A100, 200, 10, 7, 999_989), (Provider, H100, 1, 4, 1, 5_000),
        };
        var whole = new DayTotals();
        var first = new DayTotals();
        var second = new DayTotals();
        for (int i = 0; i < rows.Length; i++)
        {
            var (provider, model, usage, shares, denominator, microseconds) = rows[i];
            whole.Add(provider, Holder, model, usage, shares, denominator, 0, microseconds);
            (i < 3 ? first : second).Add(provider, Holder, model, usage, shares, denominator, 0, microseconds);
        }

        first.Absorb(second);

        Assert.Equal(whole.Groups(), first.Groups());
        Assert.Equal(3, first.Groups().Count);
        Assert.Equal(["91440300MA5B000011/A100-SXM", "91440300MA5B000011/H100-SXM", "91440300MA5B000029/H100-SXM"], first.Groups().Select(g => $"{g.Provider}/{g.Model}"));
        Assert.Equal((2L, 300L), (first.Groups()[0].Records, first.Groups()[0].UsageNpfh));
    }
}
