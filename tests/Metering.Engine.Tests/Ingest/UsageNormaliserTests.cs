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
}
