using System.Diagnostics;
using System.Text.RegularExpressions;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Audit;

/// <summary>
/// `metering audit report` writes one self-contained HTML file, and headless Chromium (Debian's
/// chromium package, which .ci/run installs) renders it to the totals, charts and anomaly rows
/// the data calls for. Without Chromium the test fails and says so; it never passes unchecked.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed partial class HtmlReportTests(PostgresFixture postgres)
{
    [Fact]
    public async Task The_report_renders_in_headless_chromium_with_its_totals_charts_and_anomalies()
    {
        string chromium = FindChromium() ?? throw new InvalidOperationException(
            "Headless Chromium is needed to render the audit report and was not found on PATH (chromium or chromium-browser). Install Debian's chromium package: apt-get install chromium (.ci/run does this).");
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        // A validated fleet of 256 H100 from 2026-11-19 08:00 to 2026-11-21 08:00 Shenzhen time,
        // which takes in the first day of the report whole and the first eight hours of the second.
        long validation = await scene.PlantValidationAsync(TestRecords.Provider,
            new DateTimeOffset(2026, 11, 19, 0, 0, 0, TimeSpan.Zero), new DateTimeOffset(2026, 11, 21, 0, 0, 0, TimeSpan.Zero), ("H100-SXM", 256));
        // 300 H100 at once, above the validated 256, and twenty ordinary records.
        UsageRecord big = TestRecords.Valid(21);
        big.DeviceCount = 300;
        big.DeviceUuids.Clear();
        big.ClearEnergyMwh();
        await scene.StreamAsync("cluster-a", [.. TestRecords.Range(1, 20), big]);
        string html = Path.Combine(Path.GetTempPath(), $"audit-report-{Guid.NewGuid():N}.html");

        var (exit, output) = await CliProcess.RunAsAsync(scene.Server, TestServer.AuditorKey, "audit", "report", "--provider", TestRecords.Provider, "--from", "2026-11-20", "--to", "2026-11-21",
            "--out", html);
        Assert.True(exit == 0, output);
        Assert.Contains($"Wrote {html}: 21 records, 37.927000000 PFLOPS·h, ", output, StringComparison.Ordinal);
        Assert.Contains(" 0 broken chain(s).", output, StringComparison.Ordinal);

        string source = await File.ReadAllTextAsync(html);
        // Self-contained: no script, nothing fetched; the only URL is the SVG namespace.
        Assert.DoesNotContain("<script", source, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain(ExternalReference().Matches(source), m => m.Value != "http://www.w3.org/2000/svg");

        string dom = await DumpDomAsync(chromium, html);
        File.Delete(html);

        Assert.Contains("<td id=\"total-records\">21</td>", dom, StringComparison.Ordinal);
        // 20 × 659,600,000 nPFh + 300 H100 for five minutes (24,735,000,000 nPFh).
        Assert.Contains("<td id=\"total-pflops-hours\">37.927000000</td>", dom, StringComparison.Ordinal);
        Assert.Contains("<td id=\"chains-summary\">2 条中 2 条完整</td>", dom, StringComparison.Ordinal);
        Assert.Matches("<tr class=\"anomaly\" data-kind=\"CapacityExceeded\">", dom);
        Assert.Contains($"300 H100-SXM devices in use at once, above the 256 validated by fleet validation {validation}", dom, StringComparison.Ordinal);
        Assert.Contains("<svg id=\"chart-daily\"", dom, StringComparison.Ordinal);
        Assert.Equal(2, Regex.Count(dom, "<rect class=\"bar\" data-day="));
        // 256 × 989.4 TFLOPS = 253.2864 PFLOPS, for 24 h on the first day and 8 h on the second.
        Assert.Contains("id=\"capacity-line\"", dom, StringComparison.Ordinal);
        Assert.Contains("<line class=\"capacity\" data-day=\"2026-11-20\" data-npfh=\"6078873600000\"", dom, StringComparison.Ordinal);
        Assert.Contains("<line class=\"capacity\" data-day=\"2026-11-21\" data-npfh=\"2026291200000\"", dom, StringComparison.Ordinal);
        Assert.Contains("<td id=\"capacity-in-period\">8,105.164800000 PFLOPS·h</td>", dom, StringComparison.Ordinal);
        // The fleet table: the validation to its expiry, then none in force to the end of the period.
        Assert.Contains($"<tr class=\"validated\" data-validation=\"{validation}\"><td>2026-11-20 00:00</td><td>2026-11-21 08:00</td><td>算力核验 {validation}（清单版本 1，有效至 2026-11-21 08:00）</td><td>H100-SXM</td><td class=\"num\">256</td></tr>", dom, StringComparison.Ordinal);
        Assert.Contains("<tr class=\"unvalidated\"><td>2026-11-21 08:00</td><td>2026-11-22 00:00</td><td>无有效核验</td>", dom, StringComparison.Ordinal);
        Assert.Contains("<span id=\"declared-devices\">", dom, StringComparison.Ordinal);
        Assert.Contains("<rect class=\"bar\" data-key=\"H100-SXM\"", dom, StringComparison.Ordinal);
        Assert.Contains($"<rect class=\"bar\" data-key=\"{TestRecords.Holder}\"", dom, StringComparison.Ordinal);
        Assert.Equal(2, Regex.Count(dom, "<tr><td>2026-11-2[01]</td>"));

        // The server logged the query as the auditor the key names.
        Assert.Equal(1L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM audit_query_log WHERE actor = 'auditor-one' AND role = 'auditor' AND query = 'RenderReport'"));
    }

    [GeneratedRegex("(?:https?:)?//[^\"' )>]+|\\b(?:src|href)\\s*=", RegexOptions.IgnoreCase)]
    private static partial Regex ExternalReference();

    private static string? FindChromium()
    {
        foreach (string directory in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            foreach (string name in new[] { "chromium", "chromium-browser" })
            {
                string candidate = Path.Combine(directory, name);
                if (File.Exists(candidate))
                {
                    return candidate;
                }
            }
        }

        return null;
    }

    /// <summary>The DOM after Chromium has loaded and rendered the file.</summary>
    private static async Task<string> DumpDomAsync(string chromium, string file)
    {
        var start = new ProcessStartInfo(chromium) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string argument in new[] { "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--dump-dom", new Uri(file).AbsoluteUri })
        {
            start.ArgumentList.Add(argument);
        }

        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(120));
        string dom = await output;
        Assert.True(process.ExitCode == 0 && dom.Contains("</html>", StringComparison.Ordinal), $"chromium exited {process.ExitCode}: {await error}");
        return dom;
    }
}
