using System.Globalization;
using System.Runtime.Versioning;

namespace Metering.Cli.Tests.Slurm;

/// <summary>
/// Reads real `sacct --parsable2` output in the test, independently of the server's parser, so
/// that what the database holds can be compared with what Slurm said.
/// </summary>
[SupportedOSPlatform("linux")]
internal static class SacctOutput
{
    private static readonly TimeZoneInfo Zone = TimeZoneInfo.FindSystemTimeZoneById(SlurmCluster.Zone);

    /// <summary>One line of sacct output, by column name.</summary>
    internal sealed record Line(string JobId, string Account, string AllocTres, string Start, string End, string Elapsed, string Suspended, string State)
    {
        public bool IsAllocation => !JobId.Contains('.', StringComparison.Ordinal);

        /// <summary>The typed GPU entries of AllocTRES: `gres/gpu:a100=1` gives (a100, 1).</summary>
        public IReadOnlyList<(string Type, int Count)> TypedGpus => AllocTres.Split(',')
            .Where(entry => entry.StartsWith("gres/gpu:", StringComparison.Ordinal))
            .Select(entry => entry["gres/gpu:".Length..].Split('='))
            .Select(parts => (parts[0], int.Parse(parts[1], CultureInfo.InvariantCulture)))
            .ToList();

        public DateTime StartUtc => Utc(Start);

        public DateTime EndUtc => Utc(End);

        /// <summary>Elapsed (`[D-]HH:MM:SS`, or `MM:SS`) as a span: the time the job ran, its suspended time left out.</summary>
        public TimeSpan ElapsedTime => Duration(Elapsed);

        /// <summary>How long the job was suspended, from the Suspended column (zero when the output has none).</summary>
        public TimeSpan SuspendedTime => Suspended.Length == 0 ? TimeSpan.Zero : Duration(Suspended);
    }

    public static List<Line> Parse(string output)
    {
        string[] lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        string[] header = lines[0].Trim().Split('|');
        int Column(string name) => Array.IndexOf(header, name);
        return lines.Skip(1).Select(text => text.TrimEnd('\r').Split('|')).Select(fields => new Line(
            fields[Column("JobID")], fields[Column("Account")], fields[Column("AllocTRES")], fields[Column("Start")],
            fields[Column("End")], fields[Column("Elapsed")], Column("Suspended") < 0 ? "" : fields[Column("Suspended")], fields[Column("State")])).ToList();
    }

    private static TimeSpan Duration(string text)
    {
        string[] days = text.Split('-');
        int[] parts = days[^1].Split(':').Select(part => int.Parse(part, CultureInfo.InvariantCulture)).ToArray();
        int seconds = parts.Aggregate(0, (total, part) => (total * 60) + part);
        return TimeSpan.FromSeconds(seconds) + (days.Length == 2 ? TimeSpan.FromDays(int.Parse(days[0], CultureInfo.InvariantCulture)) : TimeSpan.Zero);
    }

    /// <summary>sacct's local time in the cluster's zone, as UTC.</summary>
    public static DateTime Utc(string local) =>
        TimeZoneInfo.ConvertTimeToUtc(DateTime.ParseExact(local, "yyyy-MM-dd'T'HH:mm:ss", CultureInfo.InvariantCulture), Zone);
}
