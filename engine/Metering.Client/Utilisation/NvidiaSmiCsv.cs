using System.Globalization;

namespace Metering.Client.Utilisation;

/// <summary>
/// Reads the output of <c>nvidia-smi --query-gpu=index,utilization.gpu --format=csv,noheader,nounits</c>:
/// one line per GPU, <c>INDEX, PERCENT</c>. utilization.gpu is the share of the last sample period
/// in which any kernel ran on the GPU: coarser than DCGM's SM activity (one busy SM counts as a
/// busy GPU), so it reads high for a GPU that runs small kernels. It is offered where DCGM is not.
/// </summary>
public static class NvidiaSmiCsv
{
    /// <summary>The fraction (0 to 1) of each GPU index; throws <see cref="GpuActivityException"/> (BadOutput) otherwise.</summary>
    public static SortedDictionary<int, decimal> ParseUtilisation(string text)
    {
        var figures = new SortedDictionary<int, decimal>();
        int lineNumber = 0;
        foreach (string rawLine in text.Split('\n'))
        {
            lineNumber++;
            string line = rawLine.Trim();
            if (line.Length == 0)
            {
                continue;
            }

            string[] fields = line.Split(',', StringSplitOptions.TrimEntries);
            if (fields.Length != 2
                || !int.TryParse(fields[0], NumberStyles.None, CultureInfo.InvariantCulture, out int gpu)
                || !decimal.TryParse(fields[1], NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out decimal percent))
            {
                // "[N/A]" and "[Not Supported]" land here too: a figure that is not there is not zero.
                throw new GpuActivityException(GpuActivityProblem.BadOutput, $"nvidia-smi line {lineNumber} is not 'INDEX, PERCENT': '{line}'");
            }

            if (percent > 100 || !figures.TryAdd(gpu, percent / 100) || figures.Count > DcgmExposition.GpusMax)
            {
                throw new GpuActivityException(GpuActivityProblem.BadOutput, $"nvidia-smi line {lineNumber}: gpu {gpu} is above 100% or listed twice");
            }
        }

        return figures.Count > 0 ? figures : throw new GpuActivityException(GpuActivityProblem.BadOutput, "nvidia-smi listed no GPU");
    }
}
