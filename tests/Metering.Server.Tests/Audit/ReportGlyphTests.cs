using Metering.Engine.Audit;
using Metering.Engine.Catalog;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Audit;

/// <summary>
/// The report is Chinese, and Chinese needs a font: without one Chromium draws every character as
/// the same empty box (tofu), and the report looks whole to a DOM check while nobody can read it.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class ReportGlyphTests(PostgresFixture postgres)
{
    private const string Title = "训力审计报告";

    [Fact]
    public async Task The_reports_Chinese_title_renders_as_glyphs_not_as_empty_boxes()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        RenderedReport report = await new HtmlReport(scene.DataSource, DeviceCatalog.LoadEmbedded(), TimeProvider.System)
            .RenderAsync(TestRecords.Provider, new DateOnly(2026, 11, 20), new DateOnly(2026, 11, 20), CancellationToken.None);
        Assert.Contains("<html lang=\"zh-CN\">", report.Html, StringComparison.Ordinal);
        Assert.Contains($"<h1>{Title}</h1>", report.Html, StringComparison.Ordinal);

        // The same page three times, differing only in the heading: the title; as many
        // private-use characters, which no font draws, so they show what tofu looks like here;
        // and the heading empty. Everything else on the page renders identically in all three.
        string folder = Directory.CreateTempSubdirectory("metering-glyphs-").FullName;
        string Page(string name, string heading)
        {
            string path = Path.Combine(folder, name);
            File.WriteAllText(path, report.Html.Replace($"<h1>{Title}</h1>", $"<h1>{heading}</h1>", StringComparison.Ordinal));
            return path;
        }

        byte[] title = await HeadlessChromium.ScreenshotAsync(Page("title.html", Title), 1000, 120);
        byte[] tofu = await HeadlessChromium.ScreenshotAsync(Page("tofu.html", new string('\uE000', Title.Length)), 1000, 120);
        byte[] empty = await HeadlessChromium.ScreenshotAsync(Page("empty.html", ""), 1000, 120);

        Assert.False(title.AsSpan().SequenceEqual(empty), "the heading drew nothing at all");
        Assert.False(title.AsSpan().SequenceEqual(tofu),
            "the Chinese title rendered exactly as characters no font has: no CJK font is installed (Debian: fonts-noto-cjk; bash .ci/ensure-chromium installs it)");
    }
}
