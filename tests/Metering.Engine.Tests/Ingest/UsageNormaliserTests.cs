using Metering.Engine.Catalog;
using Metering.Engine.Ingest;

namespace Metering.Engine.Tests.Ingest;

public sealed class UsageNormaliserTests
{
    private const long HourMs = 3_600_000;

    [Theory]
    // One H100 SXM for one hour is 0.9894 PFLOPS·h.
    [InlineData(1u, 1u, 1u, HourMs, 989_400L, 989_400_000L)]
    // One second of it: 274,833.3… rounds down.
    [InlineData(1u, 1u, 1u, 1_000L, 989_400L, 274_833L)]
    // Eight H20 for 90 minutes: 8 × 0.148 × 1.5 = 1.776 PFLOPS·h.
    [InlineData(8u, 1u, 1u, 5_400_000L, 148_000L, 1_776_000_000L)]
    // One MIG 1g slice (1/7) of an A100 for an hour: 44,571,428.57… rounds down.
    [InlineData(1u, 1u, 7u, HourMs, 312_000L, 44_571_428L)]
    // Three slices of seven for 30 minutes: 0.312 × 3/7 × 0.5 = 0.0668571… PFLOPS·h.
    [InlineData(1u, 3u, 7u, 1_800_000L, 312_000L, 66_857_142L)]
    // Half an L40S for five minutes.
    [InlineData(1u, 1u, 2u, 300_000L, 362_050L, 15_085_416L)]
    // 512 B200 for a day: 512 × 2.25 × 24 = 27,648 PFLOPS·h.
    [InlineData(512u, 1u, 1u, 24 * HourMs, 2_250_000L, 27_648_000_000_000L)]
    // One millisecond of one MI300X: 363.1… nPFh rounds down.
    [InlineData(1u, 1u, 1u, 1L, 1_307_400L, 363L)]
    public void Usage_is_exact_and_rounded_down(uint devices, uint numerator, uint denominator, long durationMs, long gflops, long expectedNanoPflopsHours)
    {
        Assert.Equal(expectedNanoPflopsHours, UsageNormaliser.UsageNanoPflopsHours(devices, numerator, denominator, durationMs, gflops));
    }

    [Fact]
    public void Largest_record_the_limits_admit_does_not_overflow()
    {
        var limits = new IngestLimits();
        long usage = UsageNormaliser.UsageNanoPflopsHours((uint)limits.DeviceCountMax, 1, 1, (long)limits.RecordDurationMax.TotalMilliseconds, 2_250_000);
        // 16,384 B200 for 24 h = 884,736 PFLOPS·h.
        Assert.Equal(884_736_000_000_000L, usage);
    }

    [Fact]
    public void Splitting_a_record_never_gains_usage()
    {
        // Rounding down per record means two halves sum to at most the whole.
        long whole = UsageNormaliser.UsageNanoPflopsHours(3, 1, 7, 1_001, 989_400);
        long half = UsageNormaliser.UsageNanoPflopsHours(3, 1, 7, 500, 989_400);
        long rest = UsageNormaliser.UsageNanoPflopsHours(3, 1, 7, 501, 989_400);
        Assert.True(half + rest <= whole);
        Assert.True(whole - (half + rest) <= 1);
    }

    private static readonly DeviceCatalog Shipped = DeviceCatalog.LoadEmbedded();

    private static DeviceModel A100In(string version) => Shipped.Versions.Single(v => v.Version == version).TryGet("A100-SXM", out DeviceModel model) ? model : throw new InvalidOperationException();

    [Theory]
    // 1g on an A100 is 14 of 108 SMs: 0.312 × 14/108 PFLOPS for an hour = 40,444,444.4… nPFh.
    [InlineData(1u, 1u, 14u, HourMs, 40_444_444L)]
    // 3g is 42 SMs, for 30 minutes: 0.312 × 42/108 × 0.5.
    [InlineData(1u, 3u, 42u, 1_800_000L, 60_666_666L)]
    // 7g leaves 10 SMs unused: 98/108 of the device, not the whole of it.
    [InlineData(1u, 7u, 98u, HourMs, 283_111_111L)]
    // Four 2g instances, each on its own GPU: 4 × 28/108.
    [InlineData(4u, 2u, 28u, HourMs, 323_555_555L)]
    public void A_MIG_share_is_the_profiles_multiprocessor_fraction_from_the_catalog(uint devices, uint slices, uint multiprocessors, long durationMs, long expectedNanoPflopsHours)
    {
        DeviceModel a100 = A100In("2026.1");
        Assert.Equal(expectedNanoPflopsHours, UsageNormaliser.UsageNanoPflopsHours(devices, slices, 7, durationMs, a100));
        Assert.Equal(expectedNanoPflopsHours, UsageNormaliser.UsageNanoPflopsHours(devices, multiprocessors, 108, durationMs, 312_000));
    }

    [Fact]
    public void One_MIG_1g_slice_is_worth_less_than_a_seventh_of_the_GPU()
    {
        long mig = UsageNormaliser.UsageNanoPflopsHours(1, 1, 7, HourMs, A100In("2026.1"));
        long seventh = UsageNormaliser.UsageNanoPflopsHours(1, 1, 7, HourMs, 312_000);
        Assert.Equal((40_444_444L, 44_571_428L), (mig, seventh));
    }

    [Fact]
    public void Under_the_old_catalog_version_a_share_of_seven_stays_the_plain_fraction()
    {
        // Records stored under 2025.1 were normalised as k/7; the version they name still gives that.
        Assert.Equal(44_571_428L, UsageNormaliser.UsageNanoPflopsHours(1, 1, 7, HourMs, A100In("2025.1")));
        Assert.Equal(66_857_142L, UsageNormaliser.UsageNanoPflopsHours(1, 3, 7, 1_800_000L, A100In("2025.1")));
    }

    [Fact]
    public void Time_slices_of_a_MIG_capable_model_keep_their_plain_fraction()
    {
        DeviceModel a100 = A100In("2026.1");
        Assert.Equal(UsageNormaliser.UsageNanoPflopsHours(1, 1, 2, HourMs, 312_000), UsageNormaliser.UsageNanoPflopsHours(1, 1, 2, HourMs, a100));
        Assert.Equal(UsageNormaliser.UsageNanoPflopsHours(1, 2, 14, HourMs, 312_000), UsageNormaliser.UsageNanoPflopsHours(1, 2, 14, HourMs, a100));
        Assert.Equal(312_000_000L, UsageNormaliser.UsageNanoPflopsHours(1, 1, 1, HourMs, a100));
    }

    [Theory]
    [InlineData(5u)]
    [InlineData(6u)]
    public void A_share_of_seven_that_names_no_MIG_profile_is_not_normalised(uint slices)
    {
        DeviceModel a100 = A100In("2026.1");
        Assert.False(a100.TryComputeShare(slices, 7, out _, out _));
        Assert.Throws<ArgumentException>(() => UsageNormaliser.UsageNanoPflopsHours(1, slices, 7, HourMs, a100));
    }
}
