namespace Metering.Client.Utilisation;

/// <summary>
/// Averages samples of each GPU's activity over a metering interval into whole basis points
/// (ingest.proto <c>sm_active_bp</c>): the mean of the fractions sampled, times 10,000, rounded half
/// away from zero, in decimal arithmetic (no binary floating point touches a figure that is hashed
/// and audited). A GPU missing from some samples is averaged over the samples that list it.
/// </summary>
public sealed class SmActivitySampler(Func<CancellationToken, Task<SortedDictionary<int, decimal>>> read)
{
    /// <summary>Samples one interval may hold, so that a long interval polled often cannot grow without bound.</summary>
    public const int SamplesMax = 100_000;

    private readonly SortedDictionary<int, (decimal Sum, int Count)> _sums = [];
    private int _samples;

    /// <summary>Samples taken since the last <see cref="TakeMeansBp"/>.</summary>
    public int Samples => _samples;

    /// <summary>Reads the source once and adds each GPU's figure to its sum; throws <see cref="GpuActivityException"/> when the source fails.</summary>
    public async Task SampleAsync(CancellationToken cancellationToken)
    {
        if (_samples >= SamplesMax)
        {
            throw new InvalidOperationException($"an interval holds at most {SamplesMax} samples");
        }

        SortedDictionary<int, decimal> figures = await read(cancellationToken);
        foreach (var (gpu, fraction) in figures)
        {
            (decimal sum, int count) = _sums.GetValueOrDefault(gpu);
            _sums[gpu] = (sum + fraction, count + 1);
        }

        _samples++;
    }

    /// <summary>Takes <paramref name="count"/> samples <paramref name="every"/> apart (the first at once).</summary>
    public async Task SampleAsync(int count, TimeSpan every, CancellationToken cancellationToken)
    {
        for (int i = 0; i < count; i++)
        {
            if (i > 0)
            {
                await Task.Delay(every, cancellationToken);
            }

            await SampleAsync(cancellationToken);
        }
    }

    /// <summary>Each GPU's mean over the interval in basis points (0 to 10,000), and starts the next interval.</summary>
    public SortedDictionary<int, uint> TakeMeansBp()
    {
        var means = new SortedDictionary<int, uint>();
        foreach (var (gpu, (sum, count)) in _sums)
        {
            means[gpu] = ToBasisPoints(sum / count);
        }

        _sums.Clear();
        _samples = 0;
        return means;
    }

    /// <summary>A fraction from 0 to 1 as whole basis points, rounded half away from zero.</summary>
    public static uint ToBasisPoints(decimal fraction) => (uint)decimal.Round(fraction * 10_000m, 0, MidpointRounding.AwayFromZero);

    /// <summary>
    /// The mean of the given GPUs' figures in basis points, rounded half away from zero; null when
    /// none of them has one (the record then carries no figure: absent is not zero).
    /// </summary>
    public static uint? MeanBp(IReadOnlyDictionary<int, uint> meansBp, IEnumerable<int> gpus)
    {
        long sum = 0;
        int count = 0;
        foreach (int gpu in gpus)
        {
            if (meansBp.TryGetValue(gpu, out uint bp))
            {
                sum += bp;
                count++;
            }
        }

        return count == 0 ? null : (uint)((sum * 2 + count) / (2 * count));
    }
}
