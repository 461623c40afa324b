using Metering.Engine.Settlement;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Fixtures;

namespace Metering.Engine.IntegrationTests.Settlement;

/// <summary>
/// A statement's HTML form, rendered from a settled day with the names the registry and the voucher
/// book hold, and drawn by headless Chromium: its Chinese heading must come out as glyphs, not as
/// the empty boxes a missing CJK font leaves (the way ReportGlyphTests checks the audit report).
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class StatementGlyphTests(PostgresFixture postgres)
{
    private const string Heading = "训力券结算单";

    [Fact]
    public async Task A_settled_statements_html_names_its_parties_and_its_Chinese_heading_renders_as_glyphs()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        var contract = await scene.ContractAsync(holder);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, VoucherScene.Day, 4));
        SettlementOutcome outcome = await scene.SettleAsync(VoucherScene.Day);
        StoredStatement stored = outcome.Statements.Single(s => s.PartyKind == StatementFormats.HolderKind && s.Party == holder);
        PartyNames names = await new StatementNames(scene.DataSource).OfAsync(stored.Parse(), CancellationToken.None);

        string html = StatementRendering.Html(stored.Parse(), new StatementContext(stored.Sha256, outcome.SettlementHex, outcome.FinishedAt, names));

        Assert.Contains("<html lang=\"zh-CN\">", html, StringComparison.Ordinal);
        Assert.Contains($"训力券持有方 Holder {holder[^5..]}（{holder}）", html, StringComparison.Ordinal);
        Assert.Contains($"<td>Test provider {TestRecords.Provider[^4..]}（{TestRecords.Provider}）</td>", html, StringComparison.Ordinal);
        Assert.Contains($"<td class=\"num\">{contract.ContractId}</td>", html, StringComparison.Ordinal);
        Assert.Contains($"<code id=\"settlement-sha256\">{outcome.SettlementHex}</code>", html, StringComparison.Ordinal);
        Assert.Contains($"<h1>{Heading}</h1>", html, StringComparison.Ordinal);

        // The same page three times, differing only in the heading: the heading; as many
        // private-use characters, which no font draws, to show what tofu looks like here; and none.
        string folder = Directory.CreateTempSubdirectory("metering-statement-glyphs-").FullName;
        string Page(string name, string heading)
        {
            string path = Path.Combine(folder, name);
            File.WriteAllText(path, html.Replace($"<h1>{Heading}</h1>", $"<h1>{heading}</h1>", StringComparison.Ordinal));
            return path;
        }

        byte[] title = await HeadlessChromium.ScreenshotAsync(Page("title.html", Heading), 1100, 120);
        byte[] tofu = await HeadlessChromium.ScreenshotAsync(Page("tofu.html", new string('\uE000', Heading.Length)), 1100, 120);
        byte[] empty = await HeadlessChromium.ScreenshotAsync(Page("empty.html", ""), 1100, 120);

        Assert.False(title.AsSpan().SequenceEqual(empty), "the heading drew nothing at all");
        Assert.False(title.AsSpan().SequenceEqual(tofu),
            "the Chinese heading rendered exactly as characters no font has: no CJK font is installed (Debian: fonts-noto-cjk; bash .ci/ensure-chromium installs it)");
        Directory.Delete(folder, recursive: true);
    }
}
