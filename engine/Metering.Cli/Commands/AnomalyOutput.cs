using System.Globalization;
using System.Text;
using Google.Protobuf;
using Metering.Protocol.V1;

namespace Metering.Cli.Commands;

/// <summary>
/// How `metering audit anomalies` prints a DetectAnomaliesResponse: the per-kind summary first,
/// saying plainly where the per-kind cap cut a kind's list, then each anomaly with its evidence; or
/// the response itself as JSON.
/// </summary>
internal static class AnomalyOutput
{
    /// <summary>The kinds by the names the CLI shows and `--kind` takes, in the order of AnomalyKind.</summary>
    public static readonly IReadOnlyList<(string Name, AnomalyKind Kind)> Kinds =
    [
        ("CapacityExceeded", AnomalyKind.AnomalyCapacityExceeded),
        ("DeviceDoubleBooked", AnomalyKind.AnomalyDeviceDoubleBooked),
        ("OutsideAdmission", AnomalyKind.AnomalyOutsideAdmission),
        ("TamperConflict", AnomalyKind.AnomalyTamperConflict),
        ("ChainBroken", AnomalyKind.AnomalyChainBroken),
        ("SilentStream", AnomalyKind.AnomalySilentStream),
        ("UsageSpike", AnomalyKind.AnomalyUsageSpike),
        ("CapacityUnvalidated", AnomalyKind.AnomalyCapacityUnvalidated),
        ("AllocatedIdle", AnomalyKind.AnomalyAllocatedIdle),
    ];

    /// <summary>
    /// The kind a `--kind` value names: the name shown (CapacityExceeded), in any case, with or
    /// without underscores (capacity_exceeded) or the proto's prefix (ANOMALY_CAPACITY_EXCEEDED).
    /// </summary>
    public static AnomalyKind Parse(string text)
    {
        string plain = text.Replace("_", "", StringComparison.Ordinal);
        if (plain.StartsWith("anomaly", StringComparison.OrdinalIgnoreCase))
        {
            plain = plain["anomaly".Length..];
        }

        foreach (var (name, kind) in Kinds)
        {
            if (string.Equals(name, plain, StringComparison.OrdinalIgnoreCase))
            {
                return kind;
            }
        }

        throw new UsageException($"--kind '{text}' is not an anomaly kind; the kinds are {string.Join(", ", Kinds.Select(k => k.Name))}");
    }

    public static string NameOf(AnomalyKind kind) => Kinds.FirstOrDefault(k => k.Kind == kind).Name ?? kind.ToString();

    /// <summary>The response in the protobuf JSON mapping, zero counts included (64-bit counts are JSON strings there).</summary>
    public static string Json(DetectAnomaliesResponse found) =>
        new JsonFormatter(JsonFormatter.Settings.Default.WithFormatDefaultValues(true).WithIndentation()).Format(found) + "\n";

    /// <summary>The summary by kind, then every anomaly with its evidence, then one closing line.</summary>
    public static string Text(DetectAnomaliesResponse found, string provider, string from, string to)
    {
        var text = new StringBuilder();
        text.Append(Labels.Format("Anomalies of {0} from {1} to {2}, by kind ({3:N0} records examined):", provider, from, to, found.RecordsExamined)).Append('\n');
        int width = found.Kinds.Select(k => NameOf(k.Kind).Length).DefaultIfEmpty(0).Max();
        foreach (AnomalyKindCount kind in found.Kinds)
        {
            text.Append(CultureInfo.InvariantCulture, $"  {NameOf(kind.Kind).PadRight(width)}  {N(kind.Found),9}\n");
        }

        // A cut list said in words, so that nobody takes the anomalies below for all of them.
        foreach (AnomalyKindCount kind in found.Kinds.Where(k => k.Truncated))
        {
            text.Append(CultureInfo.InvariantCulture,
                $"{N(kind.Found)} {NameOf(kind.Kind)}, showing the first {N(kind.Shown)}: at most {N(found.AnomaliesPerKindMax)} of a kind are sent; narrow the period to see the rest.\n");
        }

        foreach (Anomaly anomaly in found.Anomalies)
        {
            text.Append(CultureInfo.InvariantCulture, $"\n{NameOf(anomaly.Kind)}  {LocalTime.Minutes(anomaly.FromUnixMs)} to {LocalTime.Minutes(anomaly.UntilUnixMs)}  {anomaly.StreamId}\n");
            text.Append(CultureInfo.InvariantCulture, $"  {anomaly.Summary}\n");
            foreach (EvidenceRecord row in anomaly.Evidence)
            {
                text.Append(CultureInfo.InvariantCulture,
                    $"    {row.StreamId} #{row.Sequence} job {row.JobId} {row.DeviceCount}×{row.DeviceModel} {row.ShareNumerator}/{row.ShareDenominator} {LocalTime.Minutes(row.StartUnixMs)}–{LocalTime.Minutes(row.EndUnixMs)} {row.Site} {string.Join(' ', row.DeviceUuids)}{(row.HasSmActiveBp ? $" SM {row.SmActiveBp} bp" : "")}\n");
            }

            if (anomaly.EvidenceTotal > anomaly.Evidence.Count)
            {
                text.Append(CultureInfo.InvariantCulture, $"    … {N(anomaly.EvidenceTotal)} evidence rows, showing the first {N(anomaly.Evidence.Count)}\n");
            }
        }

        ulong total = found.Kinds.Aggregate(0UL, (sum, k) => sum + k.Found);
        text.Append('\n').Append(total > (ulong)found.Anomalies.Count
            ? Labels.Format("{0:N0} anomalies in {1:N0} records; {2:N0} shown.", total, found.RecordsExamined, found.Anomalies.Count)
            : Labels.Format(total == 1 ? "{0} anomaly in {1:N0} records." : "{0} anomalies in {1:N0} records.", total, found.RecordsExamined)).Append('\n');
        return text.ToString();
    }

    /// <summary>One row per anomaly for `--output csv`: its kind, period, stream, summary and how many evidence rows it has.</summary>
    public static Rows CsvRows(DetectAnomaliesResponse found)
    {
        var rows = new Rows(("kind", "kind"), ("from", "from"), ("until", "until"), ("stream", "streamId"), ("summary", "summary"), ("evidence rows", "evidenceRows"));
        foreach (Anomaly anomaly in found.Anomalies)
        {
            rows.Add(NameOf(anomaly.Kind), Cell.Instant(anomaly.FromUnixMs), Cell.Instant(anomaly.UntilUnixMs), anomaly.StreamId, anomaly.Summary,
                Cell.Number(anomaly.EvidenceTotal, N(anomaly.EvidenceTotal)));
        }

        return rows;
    }

    private static string N(ulong value) => value.ToString("N0", CultureInfo.InvariantCulture);

    private static string N(long value) => value.ToString("N0", CultureInfo.InvariantCulture);
}
