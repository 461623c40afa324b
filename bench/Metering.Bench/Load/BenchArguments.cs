using System.Globalization;

namespace Metering.Bench.Load;

/// <summary>The load tools' command lines: '--name value' pairs.</summary>
internal static class BenchArguments
{
    public static Dictionary<string, string>? Pairs(string[] args, out string? error)
    {
        error = null;
        var values = new Dictionary<string, string>(StringComparer.Ordinal);
        for (int i = 0; i < args.Length; i += 2)
        {
            if (!args[i].StartsWith("--", StringComparison.Ordinal) || i + 1 >= args.Length)
            {
                error = $"expected '--name value' pairs, got '{args[i]}'";
                return null;
            }

            values[args[i][2..]] = args[i + 1];
        }

        return values;
    }

    public static long Long(Dictionary<string, string> values, string name, long fallback) =>
        values.TryGetValue(name, out string? text) ? long.Parse(text, CultureInfo.InvariantCulture) : fallback;
}
