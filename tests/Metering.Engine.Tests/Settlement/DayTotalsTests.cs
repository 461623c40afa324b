using System.Buffers.Binary;
using System.Numerics;
using System.Text;
using Metering.Engine.Settlement;

namespace Metering.Engine.Tests.Settlement;

/// <summary>
/// The one pass's totals per provider, holder and model, summed from runs that PostgreSQL has
/// grouped per stream, device share and block of sequences, with card time rounded down once
/// per record exactly as the set-based SQL's numeric <c>div</c> does, in 64 bits and past them
/// (SettlementOnePassTests holds the run to an independent GROUP BY too).
/// </summary>
public sealed class DayTotalsTests
{
    private static readonly byte[] Provider = Encoding.UTF8.GetBytes("91440300MA5B000011");
    private static readonly byte[] Holder = Encoding.UTF8.GetBytes("91440300MA5C000022");
    private static readonly byte[] H100 = Encoding.UTF8.GetBytes("H100-SXM");
    private static readonly byte[] A100 = Encoding.UTF8.GetBytes("A100-SXM");

    /// <summary>The reference rule in arbitrary precision: shares × µs / (denominator × 1000), rounded down.</summary>
    private static long Reference(long shares, int denominator, long microseconds) =>
        (long)(new BigInteger(shares) * microseconds / (new BigInteger(denominator) * 1000));

    /// <summary>Durations as PostgreSQL sends end_at - start_at: whole days split off the microseconds, no months.</summary>
    private static byte[] Intervals(params long[] microseconds)
    {
        var bytes = new byte[microseconds.Length * DayTotals.IntervalBytes];
        for (int i = 0; i < microseconds.Length; i++)
        {
            BinaryPrimitives.WriteInt64BigEndian(bytes.AsSpan(i * 16), microseconds[i] % 86_400_000_000);
            BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(i * 16 + 8), (int)(microseconds[i] / 86_400_000_000));
        }

        return bytes;
    }

    [Fact]
    public void Card_time_is_rounded_down_once_per_record_and_a_product_past_64_bits_is_divided_in_128()
    {
        long[] durations = [1_234_567, 999_989, 90_000_000_001, 1];

        Assert.Equal(durations.Sum(d => Reference(3, 7, d)), DayTotals.CardMilliseconds(3, 7, durations.Length, Intervals(durations)));
        Assert.Equal(529L + 428L + 38_571_428L + 0L, DayTotals.CardMilliseconds(3, 7, durations.Length, Intervals(durations)));

        long microseconds = 3_000_000_000_000_000;
        Assert.Equal(Reference(4_000 * 6, 7, microseconds), DayTotals.CardMilliseconds(4_000 * 6, 7, 1, Intervals(microseconds)));
        Assert.Throws<OverflowException>(() => DayTotals.CardMilliseconds((long)int.MaxValue * int.MaxValue, 1, 1, Intervals(long.MaxValue / 2)));
    }

    [Theory]
    [InlineData(0, 1, 1_000, 0)]
    [InlineData(1, 0, 1_000, 0)]
    [InlineData(1, 1, 0, 0)]
    [InlineData(1, 1, -5, 0)]
    [InlineData(1, 1, 1_000, 1)]
    public void A_run_of_shares_or_durations_the_table_checks_would_have_refused_is_refused(long shares, int denominator, long microseconds, int months)
    {
        byte[] durations = Intervals(microseconds);
        BinaryPrimitives.WriteInt32BigEndian(durations.AsSpan(12), months);

        Assert.Throws<InvalidDataException>(() => DayTotals.CardMilliseconds(shares, denominator, 1, durations));
        Assert.Throws<InvalidDataException>(() => DayTotals.CardMilliseconds(1, 1, 2, Intervals(1_000)));
    }

    /// <summary>One record's attributes.</summary>
    private sealed record Record(long Microseconds, long UsageNpfh, long Shares, int Denominator, byte[] Holder, byte[] Model);

    /// <summary>A run's attributes as the day's read sends them: one column per attribute, numbers back to back, names joined by line feeds.</summary>
    private sealed class Run(params Record[] records)
    {
        public Record[] Records { get; } = records;

        public byte[] Durations { get; set; } = Intervals([.. records.Select(r => r.Microseconds)]);

        public byte[] Usages { get; set; } = [.. records.SelectMany(r => BigEndian(r.UsageNpfh))];

        public byte[] Shares { get; set; } = [.. records.SelectMany(r => BigEndian(r.Shares))];

        public byte[] Denominators { get; set; } = [.. records.SelectMany(r => BigEndian(r.Denominator))];

        public byte[] Holders { get; set; } = Joined(records.Select(r => r.Holder));

        public byte[] Models { get; set; } = Joined(records.Select(r => r.Model));

        public RunAttributes Attributes => new(Durations, Usages, Shares, Denominators, Holders, Models);

        private static byte[] BigEndian(long value)
        {
            var bytes = new byte[sizeof(long)];
            BinaryPrimitives.WriteInt64BigEndian(bytes, value);
            return bytes;
        }

        private static byte[] BigEndian(int value)
        {
            var bytes = new byte[sizeof(int)];
            BinaryPrimitives.WriteInt32BigEndian(bytes, value);
            return bytes;
        }

        private static byte[] Joined(IEnumerable<byte[]> names) => [.. names.SelectMany((name, i) => i == 0 ? name : [DayTotals.NameSeparator, .. name])];
    }

    [Fact]
    public void A_runs_records_are_summed_each_to_its_holder_and_model_with_card_time_rounded_down_per_record()
    {
        byte[] other = Encoding.UTF8.GetBytes("91440300MA5C000030");
        var run = new Run(new Record(1_234_567, 100, 3, 7, Holder, A100), new Record(300_000_000, 300, 8, 1, Holder, H100),
            new Record(999_989, 200, 3, 7, Holder, A100), new Record(60_000_000, 5, 1, 1, other, A100));
        var totals = new DayTotals();

        totals.AddRecords(Provider, 4, 605, run.Attributes);

        var groups = totals.Groups();
        Assert.Equal(3, groups.Count);
        Assert.Equal((Encoding.UTF8.GetString(Holder), "A100-SXM", 2L, 300L, Reference(3, 7, 1_234_567) + Reference(3, 7, 999_989)),
            (groups[0].Holder, groups[0].Model, groups[0].Records, groups[0].UsageNpfh, groups[0].CardMs));
        Assert.Equal(("H100-SXM", 1L, 300L, 2_400_000L), (groups[1].Model, groups[1].Records, groups[1].UsageNpfh, groups[1].CardMs));
        Assert.Equal(("91440300MA5C000030", 1L, 5L, 60_000L), (groups[2].Holder, groups[2].Records, groups[2].UsageNpfh, groups[2].CardMs));
    }

    [Fact]
    public void Attributes_that_do_not_add_up_to_the_run_or_are_cut_short_are_refused()
    {
        Run One() => new(new Record(60_000_000, 5, 1, 1, Holder, H100));
        Run two = new(new Record(60_000_000, 5, 1, 1, Holder, H100), new Record(60_000_000, 5, 1, 1, Holder, A100));

        new DayTotals().AddRecords(Provider, 1, 5, One().Attributes);
        Assert.Throws<InvalidDataException>(() => new DayTotals().AddRecords(Provider, 2, 5, One().Attributes));
        Assert.Throws<InvalidDataException>(() => new DayTotals().AddRecords(Provider, 1, 6, One().Attributes));
        Assert.Throws<InvalidDataException>(() => new DayTotals().AddRecords(Provider, 1, 5, new Run(new Record(60_000_000, 5, 1, 1, Holder, H100)) { Durations = new byte[15] }.Attributes));
        Assert.Throws<InvalidDataException>(() => new DayTotals().AddRecords(Provider, 1, 5, new Run(new Record(60_000_000, 5, 1, 1, Holder, H100)) { Denominators = new byte[8] }.Attributes));
        Assert.Throws<InvalidDataException>(() => new DayTotals().AddRecords(Provider, 1, -5, new Run(new Record(60_000_000, -5, 1, 1, Holder, H100)).Attributes));
        Assert.Throws<InvalidDataException>(() => new DayTotals().AddRecords(Provider, 1, 5, new Run(new Record(60_000_000, 5, 0, 1, Holder, H100)).Attributes));
        Assert.Throws<InvalidDataException>(() => new DayTotals().AddRecords(Provider, 1, 5, new Run(new Record(0, 5, 1, 1, Holder, H100)).Attributes));

        // Names that are not one per record: a holder missing, a model too many, or a name that holds the separator.
        new DayTotals().AddRecords(Provider, 2, 10, two.Attributes);
        Assert.Throws<InvalidDataException>(() => new DayTotals().AddRecords(Provider, 2, 10, new Run(two.Records) { Holders = Holder }.Attributes));
        Assert.Throws<InvalidDataException>(() => new DayTotals().AddRecords(Provider, 2, 10, new Run(two.Records) { Models = [.. H100, DayTotals.NameSeparator, .. A100, DayTotals.NameSeparator, .. A100] }.Attributes));
        Assert.Throws<InvalidDataException>(() => new DayTotals().AddRecords(Provider, 1, 5, new Run(new Record(60_000_000, 5, 1, 1, [.. Holder, DayTotals.NameSeparator], H100)).Attributes));
    }

    [Fact]
    public void A_total_past_a_bigint_is_refused()
    {
        var totals = new DayTotals();
        totals.AddRecords(Provider, 1, long.MaxValue, new Run(new Record(60_000_000, long.MaxValue, 1, 1, Holder, H100)).Attributes);

        Assert.Throws<OverflowException>(() => totals.AddRecords(Provider, 1, 1, new Run(new Record(60_000_000, 1, 1, 1, Holder, H100)).Attributes));
    }

    [Fact]
    public void Segments_absorbed_into_one_give_the_groups_of_one_read_sorted_once()
    {
        byte[] other = Encoding.UTF8.GetBytes("91440300MA5B000029");
        // One record per run, its card time as whole milliseconds of one full device.
        var runs = new (byte[] Provider, byte[] Model, long Usage, long CardMs)[]
        {
            (other, H100, 7, 480), (Provider, A100, 100, 529), (Provider, H100, 300, 2_400_000),
            (other, H100, 9, 1), (Provider, A100, 200, 1_428), (Provider, H100, 1, 20),
        };
        var whole = new DayTotals();
        var first = new DayTotals();
        var second = new DayTotals();
        for (int i = 0; i < runs.Length; i++)
        {
            var (provider, model, usage, cardMs) = runs[i];
            var record = new Run(new Record(cardMs * 1_000, usage, 1, 1, Holder, model));
            whole.AddRecords(provider, 1, usage, record.Attributes);
            (i < 3 ? first : second).AddRecords(provider, 1, usage, record.Attributes);
        }

        first.Absorb(second);

        Assert.Equal(whole.Groups(), first.Groups());
        Assert.Equal(3, first.Groups().Count);
        Assert.Equal(["91440300MA5B000011/A100-SXM", "91440300MA5B000011/H100-SXM", "91440300MA5B000029/H100-SXM"], first.Groups().Select(g => $"{g.Provider}/{g.Model}"));
        Assert.Equal((2L, 300L, 1_957L), (first.Groups()[0].Records, first.Groups()[0].UsageNpfh, first.Groups()[0].CardMs));
    }
}
