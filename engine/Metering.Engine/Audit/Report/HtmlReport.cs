using System.Globalization;
using System.Net;
using System.Text;
using Metering.Engine.Capacity;
using Metering.Engine.Catalog;
using Metering.Engine.Ingest;
using Metering.Engine.Registry;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Audit;

/// <summary>What a rendered report holds, beside its HTML.</summary>
public sealed record RenderedReport(string Html, UsageTotals Total, int Anomalies, int StreamsBroken);

/// <summary>
/// The audit report of one provider over whole Asia/Shanghai days: totals; usage per day against
/// the validated fleet; usage by device model and by holder; the fleet validations in force;
/// every stream's chain; the daily Merkle roots; and every anomaly with its evidence. One self-contained HTML file: inline CSS
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

        ReportData data = await ReportData.LoadAsync(dataSource, time, settings, providerId, fromDay, toDay, HoldersShown, cancellationToken);
        (string name, Dictionary<string, string> holderNames, UsageSummary byDay, UsageSummary byModel, UsageSummary byHolder,
            FleetSnapshot fleet, IReadOnlyList<FleetStretch> stretches, IReadOnlyList<Anomaly> anomalies, IReadOnlyList<ChainVerification> chains, List<DailyRoot> roots) = data;

        long[] capacityByDay = DailyCapacityNanoPflopsHours(stretches, fromDay, days);
        long capacityTotal = capacityByDay.Aggregate(0L, (sum, day) => checked(sum + day));
        bool validatedThroughout = stretches.All(s => s.Fleet is not null);
        var html = new StringBuilder(64 * 1024);
        html.Append("""
            <!DOCTYPE html>
            <html lang="zh-CN"><head><meta charset="utf-8">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            """);
        html.Append(CultureInfo.InvariantCulture, $"<title>训力审计报告 {E(name)} {E(providerId)} {fromDay:yyyy-MM-dd} 至 {toDay:yyyy-MM-dd}</title>\n");
        html.Append(Style);
        html.Append("</head><body>\n");
        html.Append(CultureInfo.InvariantCulture, $"""
            <header><h1>训力审计报告</h1>
            <p class="who"><span id="provider-name">{E(name)}</span> · <span id="provider-code">{E(providerId)}</span></p>
            <p>统计期间 <span id="period">{fromDay:yyyy-MM-dd} 至 {toDay:yyyy-MM-dd}</span>（北京时间，共 {days} 天）· 生成于 {E(Local(time.GetUtcNow().ToUnixTimeMilliseconds()))}</p></header>

            """);

        // Totals.
        html.Append(CultureInfo.InvariantCulture, $"""
            <section id="totals"><h2>合计</h2><table class="totals">
            <tr><th>记录数</th><td id="total-records">{byDay.Total.Records:N0}</td></tr>
            <tr><th>设备时</th><td id="total-device-hours">{byDay.Total.DeviceHours}</td></tr>
            <tr><th>FP16 算力用量（PFLOPS·h）</th><td id="total-pflops-hours">{byDay.Total.PflopsHours}</td></tr>
            <tr><th>期间内已核验算力</th><td id="capacity-in-period">{Units.Fixed(capacityTotal, 9)} PFLOPS·h</td></tr>
            <tr><th>异常</th><td id="total-anomalies">{anomalies.Count}</td></tr>
            <tr><th>哈希链</th><td id="chains-summary">{chains.Count} 条中 {chains.Count(c => c.Intact)} 条完整</td></tr>
            </table>
            <p class="note">用量是精确值：逐条记录存储的纳 PFLOPS·h 之和。设备时为设备数 × 占比 × 时长，逐条向下取整到毫秒。
            已核验算力：每一时刻有效的算力核验中各型号的设备数（即接入时合理性检查与 CapacityExceeded 检测所用的数字，见 engine/Metering.Engine/Capacity/README.md），
            按各型号的 FP16 稠密峰值，乘以其有效时长；
            {(validatedThroughout ? "整个期间均有有效的核验。" : "没有有效核验的时段按 0 计（见下方已核验算力）。")}</p></section>

            """);

        AppendDailyChart(html, fromDay, days, byDay, capacityByDay);
        AppendBars(html, "by-model", "按设备型号的用量", byModel.Groups.Select(g => (g.Key, g.UsageNanoPflopsHours, g.Records)).ToList(), names: null);
        var holders = byHolder.Groups.Take(HoldersShown).Select(g => (g.Key, g.UsageNanoPflopsHours, g.Records)).ToList();
        if (byHolder.Groups.Count > HoldersShown)
        {
            var rest = byHolder.Groups.Skip(HoldersShown).ToList();
            holders.Add(($"其他 {rest.Count} 家", rest.Sum(g => g.UsageNanoPflopsHours), rest.Sum(g => g.Records)));
        }

        AppendBars(html, "by-holder", "按训力券持有方的用量", holders, holderNames);
        AppendFleet(html, stretches, fleet);
        AppendAnomalies(html, anomalies);
        AppendChains(html, chains, roots);
        html.Append("</body></html>\n");
        return new RenderedReport(html.ToString(), byDay.Total, anomalies.Count, chains.Count(c => !c.Intact));
    }

    /// <summary>
    /// Per day: Σ over the stretches of the day with a validation in force, Σ over its models, of
    /// devices × dense FP16 peak × the stretch's time in the day, in nPFh, rounded down per
    /// stretch and model (UsageNormaliser's rule), with the catalog in force at the day's start.
    /// A model the catalog does not know there adds nothing.
    /// </summary>
    private long[] DailyCapacityNanoPflopsHours(IReadOnlyList<FleetStretch> stretches, DateOnly fromDay, int days)
    {
        var capacity = new long[days];
        for (int i = 0; i < days; i++)
        {
            long dayFromMs = ShanghaiTime.StartOf(fromDay.AddDays(i)).ToUnixTimeMilliseconds();
            long dayUntilMs = ShanghaiTime.StartOf(fromDay.AddDays(i + 1)).ToUnixTimeMilliseconds();
            CatalogVersion version = catalog.VersionAt(dayFromMs);
            foreach (FleetStretch stretch in stretches)
            {
                long overlapMs = Math.Min(stretch.UntilUnixMs, dayUntilMs) - Math.Max(stretch.FromUnixMs, dayFromMs);
                if (stretch.Fleet is not { } validation || overlapMs <= 0)
                {
                    continue;
                }

                foreach (var (model, devices) in validation.Devices)
                {
                    if (devices > 0 && version.TryGet(model, out DeviceModel entry))
                    {
                        capacity[i] = checked(capacity[i] + UsageNormaliser.UsageNanoPflopsHours(checked((uint)devices), 1, 1, overlapMs, entry.Fp16DenseGflops));
                    }
                }
            }
        }

        return capacity;
    }

    private static void AppendDailyChart(StringBuilder html, DateOnly fromDay, int days, UsageSummary byDay, long[] capacityByDay)
    {
        var usage = byDay.Groups.ToDictionary(g => g.Key, g => g.UsageNanoPflopsHours, StringComparer.Ordinal);
        long max = Math.Max(capacityByDay.Max(), usage.Values.DefaultIfEmpty(0).Max());
        max = Math.Max(max, 1);
        const int left = 90, top = 10, bottom = 40;
        int plotWidth = ChartWidth - left - 10;
        int slot = Math.Max(plotWidth / days, 1);
        int height = top + DailyPlotHeight + bottom;
        html.Append(CultureInfo.InvariantCulture, $"""
            <section id="daily"><h2>每日用量与已核验算力</h2>
            <svg id="chart-daily" class="chart" xmlns="http://www.w3.org/2000/svg" width="{ChartWidth}" height="{height}" viewBox="0 0 {ChartWidth} {height}" role="img" aria-label="每日 FP16 算力用量（PFLOPS·h）">
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

        // The validated fleet is a step: one segment per day at that day's capacity, which changes
        // when a validation completes or expires.
        if (capacityByDay.Any(c => c > 0))
        {
            html.Append("<g id=\"capacity-line\">\n");
            for (int i = 0; i < days; i++)
            {
                string key = fromDay.AddDays(i).ToString("yyyy-MM-dd", CultureInfo.InvariantCulture);
                int y = top + DailyPlotHeight - (int)((Int128)capacityByDay[i] * DailyPlotHeight / max);
                html.Append(CultureInfo.InvariantCulture,
                    $"<line class=\"capacity\" data-day=\"{key}\" data-npfh=\"{capacityByDay[i]}\" x1=\"{left + i * slot}\" y1=\"{y}\" x2=\"{left + (i + 1) * slot}\" y2=\"{y}\"><title>{key}：已核验算力 {Units.Fixed(capacityByDay[i], 9)} PFLOPS·h</title></line>\n");
            }

            int lastY = top + DailyPlotHeight - (int)((Int128)capacityByDay[^1] * DailyPlotHeight / max);
            html.Append(CultureInfo.InvariantCulture, $"</g>\n<text class=\"label capacity-label\" x=\"{ChartWidth - 12}\" y=\"{Math.Max(lastY - 4, 10)}\" text-anchor=\"end\">已核验算力</text>\n");
        }

        html.Append(capacityByDay.Any(c => c > 0)
            ? "</svg><p class=\"note\">柱：当日开始的记录的 FP16 算力用量（PFLOPS·h）。线：当日有效的已核验算力，按其有效时长计。</p></section>\n"
            : "</svg><p class=\"note\">柱：当日开始的记录的 FP16 算力用量（PFLOPS·h）。无线：期间内没有有效的算力核验。</p></section>\n");
    }

    /// <summary>A horizontal bar per row; where <paramref name="names"/> knows a key's name, the label shows the name and the tooltip both.</summary>
    private static void AppendBars(StringBuilder html, string id, string title, List<(string Key, long Usage, long Records)> rows, Dictionary<string, string>? names)
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
            html.Append("<text class=\"label\" x=\"4\" y=\"18\">期间内无用量</text>\n");
        }

        for (int i = 0; i < rows.Count; i++)
        {
            var (key, usage, records) = rows[i];
            string? rowName = names?.GetValueOrDefault(key);
            string label = rowName ?? key;
            string tip = rowName is null ? key : $"{rowName}（{key}）";
            int y = 4 + i * BarRowHeight;
            int width = Math.Max((int)((Int128)usage * plotWidth / max), 1);
            html.Append(CultureInfo.InvariantCulture, $"""
                <text class="label" x="{labelWidth - 6}" y="{y + 15}" text-anchor="end">{E(label)}</text>
                <rect class="bar" data-key="{E(key)}" data-npfh="{usage}" x="{labelWidth}" y="{y + 3}" width="{width}" height="{BarRowHeight - 6}"><title>{E(tip)}：{Units.Fixed(usage, 9)} PFLOPS·h，{records:N0} 条记录</title></rect>
                <text class="value" x="{labelWidth + width + 6}" y="{y + 15}">{Units.Fixed(usage / 1_000_000, 3)}</text>

                """);
        }

        html.Append("</svg><p class=\"note\">FP16 算力用量（PFLOPS·h），保留三位小数（向下取整）。</p></section>\n");
    }

    /// <summary>The stretches of the period with the validation in force in each (or none), its devices per model, and the declared devices ingest falls back to.</summary>
    private static void AppendFleet(StringBuilder html, IReadOnlyList<FleetStretch> stretches, FleetSnapshot fleet)
    {
        html.Append("""
            <section id="capacity"><h2>已核验算力</h2>
            <table id="fleet-stretches"><thead><tr><th>起</th><th>止</th><th>算力核验</th><th>设备型号</th><th>设备数</th></tr></thead><tbody>

            """);
        foreach (FleetStretch stretch in stretches)
        {
            string when = $"<td>{E(Local(stretch.FromUnixMs))}</td><td>{E(Local(stretch.UntilUnixMs))}</td>";
            if (stretch.Fleet is not { } validation)
            {
                html.Append(CultureInfo.InvariantCulture, $"<tr class=\"unvalidated\">{when}<td>无有效核验</td><td></td><td></td></tr>\n");
                continue;
            }

            foreach (var (model, devices) in validation.Devices.OrderBy(p => p.Key, StringComparer.Ordinal))
            {
                html.Append(CultureInfo.InvariantCulture,
                    $"<tr class=\"validated\" data-validation=\"{validation.ValidationId}\">{when}<td>算力核验 {validation.ValidationId}（清单版本 {validation.InventoryVersion}，有效至 {E(Local(validation.ExpiresUnixMs))}）</td><td>{E(model)}</td><td class=\"num\">{devices:N0}</td></tr>\n");
            }
        }

        string declared = fleet.Declared.Count == 0 ? "无"
            : string.Join(", ", fleet.Declared.OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => string.Create(CultureInfo.InvariantCulture, $"{p.Value:N0} {p.Key}")));
        html.Append(CultureInfo.InvariantCulture, $"""
            </tbody></table>
            <p class="note">各次核验所申报的全部设备清单中每个型号的设备数，由算力核验服务抽样节点核验（见 engine/Metering.Engine/Capacity/README.md）。
            核验自完成起有效，直至到期或更晚的一次核验完成。没有有效核验时，接入按已入库申请所申报的设备
            （<span id="declared-devices">{E(declared)}</span>，按登记簿现状）判断用量，并由 CapacityUnvalidated 检测报告该用量。</p></section>

            """);
    }

    private static void AppendAnomalies(StringBuilder html, IReadOnlyList<Anomaly> anomalies)
    {
        html.Append(CultureInfo.InvariantCulture, $"<section id=\"anomalies\"><h2>异常（{anomalies.Count}）</h2>\n");
        if (anomalies.Count == 0)
        {
            html.Append("<p id=\"no-anomalies\">本期间各项检测均未发现异常。</p></section>\n");
            return;
        }

        html.Append("<table id=\"anomaly-table\"><thead><tr><th>类型</th><th>起</th><th>止</th><th>数据流</th><th>发现</th></tr></thead><tbody>\n");
        foreach (Anomaly anomaly in anomalies)
        {
            html.Append(CultureInfo.InvariantCulture, $"""
                <tr class="anomaly" data-kind="{anomaly.Kind}"><td>{anomaly.Kind}</td><td>{E(Local(anomaly.FromUnixMs))}</td><td>{E(Local(anomaly.UntilUnixMs))}</td><td>{E(anomaly.StreamId ?? "")}</td>
                <td>{E(anomaly.Summary)}<details><summary>证据 {anomaly.EvidenceTotal} 行{(anomaly.EvidenceTotal > anomaly.Evidence.Count ? $"，显示前 {anomaly.Evidence.Count} 行" : "")}</summary>
                <dl class="facts">{string.Concat(anomaly.Facts.Select(f => $"<dt>{E(f.Name)}</dt><dd>{E(f.Value)}</dd>"))}</dl>
                <table class="evidence"><tr><th>数据流</th><th>序号</th><th>作业</th><th>持有方</th><th>型号</th><th>设备数</th><th>占比</th><th>开始</th><th>结束</th><th>站点</th><th>UUID</th></tr>

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
        html.Append("<section id=\"chains\"><h2>哈希链</h2><table><thead><tr><th>数据流</th><th>记录数</th><th>哈希链</th><th>链头（SHA-256）</th></tr></thead><tbody>\n");
        foreach (ChainVerification chain in chains)
        {
            html.Append(CultureInfo.InvariantCulture,
                $"<tr class=\"chain {(chain.Intact ? "intact" : "broken")}\"><td>{E(chain.StreamId)}</td><td class=\"num\">{chain.CommittedSequence:N0}</td><td>{(chain.Intact ? "完整" : E($"在第 {chain.FirstBrokenSequence} 条断裂：{chain.Break!.Kind}"))}</td><td class=\"hash\">{Convert.ToHexStringLower(chain.ComputedHead)}</td></tr>\n");
        }

        html.Append("</tbody></table>\n<h3>每日 Merkle 根</h3><table id=\"merkle-roots\"><thead><tr><th>日期</th><th>叶子数</th><th>根</th></tr></thead><tbody>\n");
        foreach (DailyRoot root in roots)
        {
            html.Append(CultureInfo.InvariantCulture, $"<tr><td>{root.Day:yyyy-MM-dd}</td><td class=\"num\">{root.LeafCount:N0}</td><td class=\"hash\">{Convert.ToHexStringLower(root.Root)}</td></tr>\n");
        }

        html.Append("</tbody></table><p class=\"note\">根的定义见 proto/metering/v1/merkle-proofs.md，覆盖生成报告时已提交的全部记录。</p></section>\n");
    }

    private static string E(string text) => WebUtility.HtmlEncode(text);

    private static string Local(long unixMs) =>
        DateTimeOffset.FromUnixTimeMilliseconds(unixMs).ToOffset(ShanghaiTime.Offset).ToString("yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture);

    private const string Style = """
        <style>
        body { font-family: system-ui, "Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Microsoft YaHei", sans-serif; margin: 24px auto; max-width: 1000px; color: #1d2330; }
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
