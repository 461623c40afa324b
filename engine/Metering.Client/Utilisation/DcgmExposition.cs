using System.Globalization;

namespace Metering.Client.Utilisation;

/// <summary>
/// Reads DCGM_FI_PROF_SM_ACTIVE per GPU from dcgm-exporter's Prometheus text exposition (format
/// 0.0.4): one sample per line, <c>NAME{label="value",...} VALUE [TIMESTAMP]</c>, with <c>#</c> lines
/// for HELP and TYPE. The metric is a gauge, the fraction of time at least one warp was resident on
/// an SM, averaged over the GPU's SMs, from 0 to 1; dcgm-exporter labels each sample with the GPU's
/// index (<c>gpu="0"</c>), <c>UUID</c>, <c>Hostname</c> and more. Values are read as decimals, never as
/// binary floating point. Samples of MIG instances (a <c>GPU_I_ID</c> label) are not read: the figure
/// is per whole GPU. Every line is checked for the shape of a sample, so a page that is not an
/// exposition (an HTML error page, a truncated body) is refused rather than read as "no GPUs".
/// </summary>
public static class DcgmExposition
{
    public const string SmActiveMetric = "DCGM_FI_PROF_SM_ACTIVE";

    /// <summary>GPUs one exposition may list; an HGX node has 8.</summary>
    public const int GpusMax = 1_024;

    /// <summary>The fraction (0 to 1) of each GPU index in <paramref name="text"/>; throws <see cref="GpuActivityException"/> (BadOutput) otherwise.</summary>
    public static SortedDictionary<int, decimal> ParseSmActive(string text)
    {
        var figures = new SortedDictionary<int, decimal>();
        int lineNumber = 0;
        foreach (string rawLine in text.Split('\n'))
        {
            lineNumber++;
            string line = rawLine.TrimEnd('\r');
            if (line.Length == 0 || line.TrimStart().StartsWith('#') || line.Trim().Length == 0)
            {
                continue;
            }

            if (!TryParseSample(line, out string name, out Dictionary<string, string> labels, out string value))
            {
                throw Bad($"line {lineNumber} is not a Prometheus sample: '{Clip(line)}'");
            }

            if (name != SmActiveMetric || labels.ContainsKey("GPU_I_ID"))
            {
                continue;
            }

            if (!labels.TryGetValue("gpu", out string? gpuText)
                || !int.TryParse(gpuText, NumberStyles.None, CultureInfo.InvariantCulture, out int gpu))
            {
                throw Bad($"line {lineNumber}: {SmActiveMetric} has no whole gpu=\"N\" label");
            }

            if (!decimal.TryParse(value, NumberStyles.AllowLeadingSign | NumberStyles.AllowDecimalPoint | NumberStyles.AllowExponent, CultureInfo.InvariantCulture, out decimal fraction))
            {
                throw Bad($"line {lineNumber}: {SmActiveMetric} of gpu {gpu} is '{Clip(value)}', not a number");
            }

            if (fraction < 0 || fraction > 1)
            {
                throw Bad($"line {lineNumber}: {SmActiveMetric} of gpu {gpu} is {value}, outside 0 to 1");
            }

            if (!figures.TryAdd(gpu, fraction) || figures.Count > GpusMax)
            {
                throw Bad($"line {lineNumber}: gpu {gpu} is listed twice, or more than {GpusMax} GPUs are");
            }
        }

        return figures.Count > 0 ? figures
            : throw Bad($"the exposition has no {SmActiveMetric} sample: the exporter's collector CSV must list it (a profiling metric, which needs a data-centre GPU)");
    }

    private static GpuActivityException Bad(string message) => new(GpuActivityProblem.BadOutput, message);

    private static string Clip(string text) => text.Length <= 80 ? text : text[..80] + "…";

    /// <summary>Splits one sample line into its name, labels and value text; false when it has not that shape.</summary>
    private static bool TryParseSample(string line, out string name, out Dictionary<string, string> labels, out string value)
    {
        labels = new Dictionary<string, string>(StringComparer.Ordinal);
        value = "";
        int at = 0;
        while (at < line.Length && (char.IsAsciiLetterOrDigit(line[at]) || line[at] is '_' or ':'))
        {
            at++;
        }

        name = line[..at];
        if (name.Length == 0 || char.IsAsciiDigit(name[0]))
        {
            return false;
        }

        if (at < line.Length && line[at] == '{')
        {
            at++;
            while (true)
            {
                while (at < line.Length && line[at] is ' ' or ',')
                {
                    at++;
                }

                if (at < line.Length && line[at] == '}')
                {
                    at++;
                    break;
                }

                int labelStart = at;
                while (at < line.Length && (char.IsAsciiLetterOrDigit(line[at]) || line[at] == '_'))
                {
                    at++;
                }

                string label = line[labelStart..at];
                if (label.Length == 0 || at + 1 >= line.Length || line[at] != '=' || line[at + 1] != '"')
                {
                    return false;
                }

                at += 2;
                var text = new System.Text.StringBuilder();
                while (at < line.Length && line[at] != '"')
                {
                    if (line[at] == '\\' && at + 1 < line.Length)
                    {
                        at++;
                        text.Append(line[at] == 'n' ? '\n' : line[at]);
                    }
                    else
                    {
                        text.Append(line[at]);
                    }

                    at++;
                }

                if (at >= line.Length)
                {
                    return false;
                }

                at++;
                labels[label] = text.ToString();
            }
        }

        string[] rest = line[at..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (at >= line.Length || line[at] != ' ' || rest.Length is < 1 or > 2)
        {
            return false;
        }

        value = rest[0];
        return rest.Length == 1 || long.TryParse(rest[1], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out _);
    }
}
