using System.Globalization;
using System.Net;
using System.Text;
using Dapper;
using Metering.Engine.Catalog;
using Metering.Engine.Ingest;
using Metering.Engine.Registry;
using Npgsql;

namespace Metering.Engine.Audit;

/// <summary>What a rendered report holds, beside its HTML.</summary>
public sealed record RenderedReport(string Html, UsageTotals Total, int Anomalies, int StreamsBroken);

/// <summary>
/// The audit report of one provider over whole Asia/Shanghai days: totals; usage per day against
/// the verified capacity; usage by device model and by holder; every stream's chain; the daily
/// Merkle roots; and every anomaly with its evidence. One self-contained HTML file: inline CSS
/// and inline SVG, no script, no font, no image, nothing fetched. Chart geometry is integer
/// arithmetic like everything else on the audit path.
/// </summary>
public sealed class HtmlReport(NpgsqlDataSource dataSource, DeviceCatalog catalog, TimeProvider time, DetectorSettings? settings = null)
{
    /// <summary>Most days one report covers.</summary>
    public const int DaysMax = 92;

    /// <summary>Holders drawn one by one; the rest are summed as "others".</summary>
    public const int HoldersShown = 12;

    private const int ChartWidth = 760;
    private const int DailyPlotHeight = 220;
    private const int BarRowHeight = 22;

    public async Task<RenderedReport> RenderAsync(string providerId, DateOnly fromDay, DateOnly toDay, CancellationToken cancellationToken)
    {
        int days = toDay.DayNumber - fromDay.DayNumber + 1;
        if (days < 1 || days > DaysMax)
        {
            throw new ArgumentException($"A report covers 1 to {DaysMax} whole days; {fromDay:yyyy-MM-dd} to {toDay:yyyy-MM-dd} is {days}.");
        }

        DateTimeOffset from = ShanghaiTime.StartOf(fromDay);
        DateTimeOffset until = ShanghaiTime.StartOf(toDay.AddDays(1));
        var filter = new UsageFilter { ProviderId = providerId, From = from, Until = until };
        var queries = new UsageQueries(dataSource);
        UsageSummary byDay = await queries.SummariseAsync(filter, UsageGrouping.Day, 0, cancellationToken);
        UsageSummary byModel = await queries.SummariseAsync(filter, UsageGrouping.DeviceModel, 0, cancellationToken);
        UsageSummary byHolder = await queries.SummariseAsync(filter, UsageGrouping.Holder, 0, cancellationToken);
        VerifiedCapacity capacity = await VerifiedCapacity.LoadAsync(dataSource, providerId, cancellationToken);
        IReadOnlyList<Anomaly> anomalies = await new AnomalyDetectors(dataSource, time, settings).DetectAsync(providerId, from, until, cancellationToken);
        IReadOnlyList<ChainVerification> chains = await new ChainVerifier(dataSource).VerifyProviderAsync(providerId, VerificationRange.Whole, cancellationToken);
        var merkle = new DailyMerkle(dataSource);
        var roots = new List<DailyRoot>();
        for (DateOnly day = fromDay; day <= toDay; day = day.AddDays(1))
        {
            roots.Add(await merkle.RootAsync(providerId, day, MerkleCutOff.None, cancellationToken));
        }

        string name;
        await using (NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken))
        {
            name = await connection.ExecuteScalarAsync<string?>(new CommandDefinition("SELECT name FROM organisations WHERE provider_id = @providerId", new { providerId }, cancellationToken: cancellationToken))
                ?? "(not in the registry)";
        }

        long capacityPerDay = DailyCapacityNanoPflopsHours(capacity, from.ToUnixTimeMilliseconds());
        var html = new StringBuilder(64 * 1024);
        html.Append("""
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            """);
        html.Append(CultureInfo.InvariantCulture, $"<title>Audit report {E(providerId)} {fromDay:yyyy-MM-dd} to {toDay:yyyy-MM-dd}</title>\n");
        html.Append(Style);
        html.Append("</head><body>\n");
        html.Append(CultureInfo.InvariantCulture, $"""
            <header><h1>Training-audit report (训力审计)</h1>
            <p class="who"><span id="provider-name">{E(name)}</span> · <span id="provider-code">{E(providerId)}</span></p>
            <p>Period <span id="period">{fromDay:yyyy-MM-dd} to {toDay:yyyy-MM-dd}</span> (Asia/Shanghai, {days} day{(days == 1 ? "" : "s")}) · generated {E(Local(time.GetUtcNow().ToUnixTimeMilliseconds()))}</p></header>

            """);

        // Totals.
        html.Append(CultureInfo.InvariantCulture, $"""
            <section id="totals"><h2>Totals</h2><table class="totals">
            <tr><th>Records</th><td id="total-records">{byDay.Total.Records:N0}</td></tr>
            <tr><th>Device-hours</th><td id="total-device-hours">{byDay.Total.DeviceHours}</td></tr>
            <tr><th>FP16 PFLOPS·h</th><td id="total-pflops-hours">{byDay.Total.PflopsHours}</td></tr>
            <tr><th>Verified capacity per day</th><td id="capacity-per-day">{Units.Fixed(capacityPerDay, 9)} PFLOPS·h</td></tr>
            <tr><th>Anomalies</th><td id="total-anomalies">{anomalies.Count}</td></tr>
            <tr><th>Chains</th><td id="chains-summary">{chains.Count(c => c.Intact)} of {chains.Count} intact</td></tr>
            </table>
            <p class="note">Usage is exact: the sum of the stored per-record nano-PFLOPS·h. Device-hours are devices × share × duration, rounded down per record to the millisecond.
            Verified capacity: {E(capacity.Source)}, at each model's dense FP16 peak for 24 h.</p></section>

            """);

        AppendDailyChart(html, fromDay, days, byDay, capacityPerDay);
        AppendBars(html, "by-model", "Usage by device model", byModel.Groups.Select(g => (g.Key, g.UsageNanoPflopsHours, g.Records)).ToList());
        var holders = byHolder.Groups.Take(HoldersShown).Select(g => (g.Key, g.UsageNanoPflopsHours, g.Records)).ToList();
        if (byHolder.Groups.Count > HoldersShown)
        {
            var rest = byHolder.Groups.Skip(HoldersShown).ToList();
            holders.Add(($"{rest.Count} others", rest.Sum(g => g.UsageNanoPflopsHours), rest.Sum(g => g.Records)));
        }

        AppendBars(html, "by-holder", "Usage by voucher holder", holders);
        AppendCapacity(html, capacity);
        AppendAnomalies(html, anomalies);
        AppendChains(html, chains, roots);
        html.Append("</body></html>\n");
        return new RenderedReport(html.ToString(), byDay.Total, anomalies.Count, chains.Count(c => !c.Intact));
    }

    /// <summary>Σ devices × dense FP16 peak × 24 h over the verified capacity, in nPFh, with the catalog in force at the period's start.</summary>
    private long DailyCapacityNanoPflopsHours(VerifiedCapacity capacity, long atMs)
    {
        CatalogVersion version = catalog.VersionAt(atMs);
        long total = 0;
        foreach (var ((_, model), devices) in capacity.Devices)
        {
            if (version.TryGet(model, out DeviceModel entry))
            {
                total = checked(total + UsageNormaliser.UsageNanoPflopsHours(checked((uint)devices), 1, 1, 86_400_000, entry.Fp16DenseGflops));
            }
        }

        return total;
    }

    private static void AppendDailyChart(StringBuilder html, DateOnly fromDay, int days, UsageSummary byDay, long capacityPerDay)
    {
        var usage = byDay.Groups.ToDictionary(g => g.Key, g => g.UsageNanoPflopsHours, StringComparer.Ordinal);
        long max = Math.Max(capacityPerDay, usage.Values.DefaultIfEmpty(0).Max());
        max = Math.Max(max, 1);
        const int left = 90, top = 10, bottom = 40;
        int plotWidth = ChartWidth - left - 10;
        int slot = Math.Max(plotWidth / days, 1);
        int height = top + DailyPlotHeight + bottom;
        html.Append(CultureInfo.InvariantCulture, $"""
            <section id="daily"><h2>Usage per day against verified capacity</h2>
            <svg id="chart-daily" class="chart" xmlns="http://www.w3.org/2000/svg" width="{ChartWidth}" height="{height}" viewBox="0 0 {ChartWidth} {height}" role="img" aria-label="FP16 PFLOPS·h per day">
            <line class="axis" x1="{left}" y1="{top + DailyPlotHeight}" x2="{ChartWidth - 10}" y2="{top + DailyPlotHeight}"/>
            <text class="label" x="{left - 6}" y="{top + 10}" text-anchor="end">{E(Units.Fixed(max / UsageNormaliser.NanoPflopsHoursPerPflopsHour, 0))}</text>
            <text class="label" x="{left - 6}" y="{top + DailyPlotHeight}" text-anchor="end">0</text>

            """);
        for (int i = 0; i < days; i++)
        {
            DateOnly day = fromDay.AddDays(i);
            string key = day.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture);
            long value = usage.GetValueOrDefault(key);
            int barHeight = (int)((Int128)value * DailyPlotHeight / max);
            int x = left + i * slot + slot / 8;
            int width = Math.Max(slot - slot / 4, 1);
            html.Append(CultureInfo.InvariantCulture,
                $"<rect class=\"bar\" data-day=\"{key}\" data-npfh=\"{value}\" x=\"{x}\" y=\"{top + DailyPlotHeight - barHeight}\" width=\"{width}\" height=\"{barHeight}\"><title>{key}: {Units.Fixed(value, 9)} PFLOPS·h</title></rect>\n");
            if (days <= 16 || i % ((days + 15) / 16) == 0)
            {
                html.Append(CultureInfo.InvariantCulture, $"<text class=\"label\" x=\"{x + width / 2}\" y=\"{top + DailyPlotHeight + 16}\" text-anchor=\"middle\">{day:MM-dd}</text>\n");
            }
        }

        if (capacityPerDay > 0)
        {
            int y = top + DailyPlotHeight - (int)((Int128)capacityPerDay * DailyPlotHeight / max);
            html.Append(CultureInfo.InvariantCulture, $"""
                <line id="capacity-line" class="capacity" data-npfh="{capacityPerDay}" x1="{left}" y1="{y}" x2="{ChartWidth - 10}" y2="{y}"><title>verified capacity: {Units.Fixed(capacityPerDay, 9)} PFLOPS·h per day</title></line>
                <text class="label capacity-label" x="{ChartWidth - 12}" y="{Math.Max(y - 4, 10)}" text-anchor="end">verified capacity</text>

                """);
        }

        html.Append("</svg><p class=\"note\">Bars: FP16 PFLOPS·h of records starting that day. Line: verified capacity run for 24 h.</p></section>\n");
    }

    private static void AppendBars(StringBuilder html, string id, string title, List<(string Key, long Usage, long Records)> rows)
    {
        const int labelWidth = 190, valueWidth = 170;
        int plotWidth = ChartWidth - labelWidth - valueWidth;
        long max = Math.Max(rows.Select(r => r.Usage).DefaultIfEmpty(0).Max(), 1);
        int height = Math.Max(rows.Count, 1) * BarRowHeight + 8;
        html.Append(CultureInfo.InvariantCulture, $"""
            <section id="{id}"><h2>{E(title)}</h2>
            <svg id="chart-{id}" class="chart" xmlns="http://www.w3.org/2000/svg" width="{ChartWidth}" height="{height}" viewBox="0 0 {ChartWidth} {height}" role="img" aria-label="{E(title)}">

            """);
        if (rows.Count == 0)
        {
            html.Append("<text class=\"label\" x=\"4\" y=\"18\">no usage in the period</text>\n");
        }

        for (int i = 0; i < rows.Count; i++)
        {
            var (key, usage, records) = rows[i];
            int y = 4 + i * BarRowHeight;
            int width = Math.Max((int)((Int128)usage * plotWidth / max), 1);
            html.Append(CultureInfo.InvariantCulture, $"""
                <text class="label" x="{labelWidth - 6}" y="{y + 15}" text-anchor="end">{E(key)}</text>
                <rect class="bar" data-key="{E(key)}" data-npfh="{usage}" x="{labelWidth}" y="{y + 3}" width="{width}" height="{BarRowHeight - 6}"><title>{E(key)}: {Units.Fixed(usage, 9)} PFLOPS·h, {records:N0} records</title></rect>
                <text class="value" x="{labelWidth + width + 6}" y="{y + 15}">{Units.Fixed(usage / 1_000_000, 3)}</text>

                """);
        }

        html.Append("</svg><p class=\"note\">FP16 PFLOPS·h, three decimals (rounded down).</p></section>\n");
    }

    private static void AppendCapacity(StringBuilder html, VerifiedCapacity capacity)
    {
        html.Append("<section id=\"capacity\"><h2>Verified capacity</h2><table><thead><tr><th>Site</th><th>Device model</th><th>Devices</th></tr></thead><tbody>\n");
        foreach (var ((site, model), devices) in capacity.Devices.OrderBy(p => p.Key.Site, StringComparer.Ordinal).ThenBy(p => p.Key.Model, StringComparer.Ordinal))
        {
            html.Append(CultureInfo.InvariantCulture, $"<tr><td>{E(site)}</td><td>{E(model)}</td><td class=\"num\">{devices:N0}</td></tr>\n");
        }

        html.Append("</tbody></table></section>\n");
    }

    private static void AppendAnomalies(StringBuilder html, IReadOnlyList<Anomaly> anomalies)
    {
        html.Append(CultureInfo.InvariantCulture, $"<section id=\"anomalies\"><h2>Anomalies ({anomalies.Count})</h2>\n");
        if (anomalies.Count == 0)
        {
            html.Append("<p id=\"no-anomalies\">No detector raised anything in this period.</p></section>\n");
            return;
        }

        html.Append("<table id=\"anomaly-table\"><thead><tr><th>Kind</th><th>From</th><th>Until</th><th>Stream</th><th>Finding</th></tr></thead><tbody>\n");
        foreach (Anomaly anomaly in anomalies)
        {
            html.Append(CultureInfo.InvariantCulture, $"""
                <tr class="anomaly" data-kind="{anomaly.Kind}"><td>{anomaly.Kind}</td><td>{E(Local(anomaly.FromUnixMs))}</td><td>{E(Local(anomaly.UntilUnixMs))}</td><td>{E(anomaly.StreamId ?? "")}</td>
                <td>{E(anomaly.Summary)}<details><summary>{anomaly.EvidenceTotal} evidence row(s){(anomaly.EvidenceTotal > anomaly.Evidence.Count ? $", first {anomaly.Evidence.Count} shown" : "")}</summary>
                <dl class="facts">{string.Concat(anomaly.Facts.Select(f => $"<dt>{E(f.Name)}</dt><dd>{E(f.Value)}</dd>"))}</dl>
                <table class="evidence"><tr><th>stream</th><th>seq</th><th>job</th><th>holder</th><th>model</th><th>devices</th><th>share</th><th>start</th><th>end</th><th>site</th><th>UUIDs</th></tr>

                """);
            foreach (EvidenceRow row in anomaly.Evidence)
            {
                html.Append(CultureInfo.InvariantCulture,
                    $"<tr class=\"evidence-row\"><td>{E(row.StreamId)}</td><td>{row.Sequence}</td><td>{E(row.JobId)}</td><td>{E(row.HolderCode)}</td><td>{E(row.DeviceModel)}</td><td>{row.DeviceCount}</td><td>{row.ShareNumerator}/{row.ShareDenominator}</td><td>{E(Local(row.StartUnixMs))}</td><td>{E(Local(row.EndUnixMs))}</td><td>{E(row.Site)}</td><td>{E(string.Join(' ', row.DeviceUuids))}</td></tr>\n");
            }

            html.Append("</table></details></td></tr>\n");
        }

        html.Append("</tbody></table></section>\n");
    }

    private static void AppendChains(StringBuilder html, IReadOnlyList<ChainVerification> chains, List<DailyRoot> roots)
    {
        html.Append("<section id=\"chains\"><h2>Hash chains</h2><table><thead><tr><th>Stream</th><th>Records</th><th>Chain</th><th>Head (SHA-256)</th></tr></thead><tbody>\n");
        foreach (ChainVerification chain in chains)
        {
            html.Append(CultureInfo.InvariantCulture,
                $"<tr class=\"chain {(chain.Intact ? "intact" : "broken")}\"><td>{E(chain.StreamId)}</td><td class=\"num\">{chain.CommittedSequence:N0}</td><td>{(chain.Intact ? "intact" : E($"BROKEN at {chain.FirstBrokenSequence}: {chain.Break!.Kind}"))}</td><td class=\"hash\">{Convert.ToHexStringLower(chain.ComputedHead)}</td></tr>\n");
        }

        html.Append("</tbody></table>\n<h3>Daily Merkle roots</h3><table id=\"merkle-roots\"><thead><tr><th>Day</th><th>Leaves</th><th>Root</th></tr></thead><tbody>\n");
        foreach (DailyRoot root in roots)
        {
            html.Append(CultureInfo.InvariantCulture, $"<tr><td>{root.Day:yyyy-MM-dd}</td><td class=\"num\">{root.LeafCount:N0}</td><td class=\"hash\">{Convert.ToHexStringLower(root.Root)}</td></tr>\n");
        }

        html.Append("</tbody></table><p class=\"note\">Roots as proto/metering/v1/merkle-proofs.md defines them, over everything committed when the report was made.</p></section>\n");
    }

    private static string E(string text) => WebUtility.HtmlEncode(text);

    private static string Local(long unixMs) =>
        DateTimeOffset.FromUnixTimeMilliseconds(unixMs).ToOffset(ShanghaiTime.Offset).ToString("yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture);

    private const string Style = """
        <style>
        body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1000px; color: #1d2330; }
        h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; border-bottom: 1px solid #d5d9e0; padding-bottom: 3px; margin-top: 28px; }
        table { border-collapse: collapse; font-size: 13px; } th, td { border: 1px solid #d5d9e0; padding: 3px 7px; text-align: left; vertical-align: top; }
        table.totals td { text-align: right; font-variant-numeric: tabular-nums; min-width: 160px; }
        td.num { text-align: right; font-variant-numeric: tabular-nums; } td.hash { font-family: monospace; font-size: 11px; }
        .note { color: #5b6475; font-size: 12px; } .who { font-size: 15px; }
        svg.chart { display: block; background: #fafbfc; border: 1px solid #e3e6eb; }
        svg .bar { fill: #3f6fb5; } svg .axis { stroke: #59606e; } svg .capacity { stroke: #c0392b; stroke-width: 2; stroke-dasharray: 6 4; }
        svg .label, svg .value { font-size: 11px; fill: #3a4150; } svg .capacity-label { fill: #c0392b; }
        tr.anomaly td:first-child { font-weight: 600; color: #a12b1f; } tr.chain.broken td { background: #fbe9e7; }
        table.evidence { margin-top: 6px; font-size: 11px; } dl.facts { display: grid; grid-template-columns: max-content auto; gap: 2px 10px; font-size: 11px; }
        dl.facts dd { margin: 0; font-family: monospace; word-break: break-all; }
        </style>

        """;
}
