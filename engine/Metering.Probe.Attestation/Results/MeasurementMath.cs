using Metering.Probe.Attestation.Checksums;

namespace Metering.Probe.Attestation.Results;

/// <summary>The integer arithmetic that turns durations into the reported median and rate; the server repeats it.</summary>
public static class MeasurementMath
{
    /// <summary>The median of the durations: the middle one, or the floor of the mean of the two middle ones.</summary>
    public static long MedianNs(IReadOnlyList<long> durationsNs)
    {
        ArgumentNullException.ThrowIfNull(durationsNs);
        if (durationsNs.Count == 0)
        {
            throw new ArgumentException("A median needs at least one duration.", nameof(durationsNs));
        }

        long[] sorted = [.. durationsNs];
        Array.Sort(sorted);
        int middle = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[middle] : (long)(((Int128)sorted[middle - 1] + sorted[middle]) / 2);
    }

    /// <summary>
    /// MFLOP/s (FLOPs * 1000 per nanosecond) or MB/s (bytes * 1000 per nanosecond), rounded down;
    /// 128-bit intermediates so that no product overflows.
    /// </summary>
    public static long Rate(KernelKind kind, long workPerRun, long medianNs)
    {
        if (medianNs <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(medianNs), medianNs, "A duration is positive.");
        }

        return KernelKinds.IsDefined(kind)
            ? (long)((Int128)workPerRun * 1000 / medianNs)
            : throw new ArgumentOutOfRangeException(nameof(kind), kind, "Unknown kernel kind.");
    }
}
