using Metering.Engine.Formatting;
using Metering.Engine.Settlement;

namespace Metering.Engine.Tests.Settlement;

/// <summary>The statements people read: Chinese, names beside credit codes, yuan to the fen by integer arithmetic, Asia/Shanghai time.</summary>
public sealed class StatementRenderingTests
{
    private const string Provider = "914403001922038216";
    private const string Holder = "9144030071526726XG";
    private const string Unnamed = "91440300MA5K000019";
    private static readonly DateOnly Day = new(2026, 11, 20);

    private static readonly PartyNames Names = new(
        new Dictionary<string, string> { [Provider] = "深圳算力服务有限公司" },
        new Dictionary<string, string> { [Holder] = "深圳某大学" });

    /// <summary>18:30:05 UTC on the day is 02:30:05 the next morning in Shenzhen.</summary>
    private static readonly StatementContext Context = new(new byte[32], new string('a', 64), new DateTimeOffset(2026, 11, 20, 18, 30, 5, TimeSpan.Zero), Names);

    private static StatementRow Usage(string holder, long feeFen) => new()
    {
        Record = "usage",
        UsageDay = Day,
        Provider = Provider,
        Holder = holder,
        Contract = 7,
        DeviceModel = "H100-SXM",
        FeeUnit = "per_card_hour",
        Records = 12_345,
        UsageNpfh = 6_596_000_000,
        CardMs = 24_000_000,
        PriceFen = 1_800,
        FeeFen = feeFen,
    };

    private static PartyStatement Statement(params StatementRow[] rows) => new(Day, StatementFormats.ProviderKind, Provider, StatementFormats.Order(rows));

    /// <summary>The largest amount a fen column can hold: a double has no exact form for it, so only integer arithmetic prints it right.</summary>
    private static readonly StatementRow Total = new()
    {
        Record = "total",
        Records = 12_346,
        UsageNpfh = 6_596_000_000,
        CardMs = 24_000_000,
        FeeFen = long.MaxValue,
        SubsidyFen = 3_000,
        HolderPaysFen = 1,
        ProgrammePaysFen = 0,
    };

    [Fact]
    public void A_text_statement_is_Chinese_with_names_beside_credit_codes_and_an_unknown_code_shown_alone()
    {
        PartyStatement statement = Statement(Usage(Holder, 12_000), Usage(Unnamed, 0) with { PriceFen = null, Note = "no_contract" }, Total);

        string text = StatementRendering.Text(statement, Context);

        Assert.StartsWith("训力券结算单\n结算对象：服务机构 深圳算力服务有限公司（914403001922038216）\n结算日：2026-11-20（北京时间）\n", text, StringComparison.Ordinal);
        Assert.Contains($"深圳某大学（{Holder}）", text, StringComparison.Ordinal);
        Assert.Contains($"  {Unnamed}  ", text, StringComparison.Ordinal);
        Assert.Contains("无合同，未计价", text, StringComparison.Ordinal);
        Assert.Contains("按卡时", text, StringComparison.Ordinal);
        Assert.DoesNotContain("Settlement statement", text, StringComparison.Ordinal);
    }

    [Fact]
    public void Amounts_are_yuan_with_every_fen_even_where_a_double_would_round()
    {
        PartyStatement statement = Statement(Usage(Holder, 1_234_567_891), Total);

        string text = StatementRendering.Text(statement, Context);

        Assert.Matches(@"\n  合同内费用（元）\s+92,233,720,368,547,758\.07\n", text);
        Assert.Contains("12,345,678.91", text, StringComparison.Ordinal);
        Assert.Matches(@"\n  持有方支付（元）\s+0\.01\n", text);
        Assert.Matches(@"\n  用量（PFLOPS·h）\s+6\.596000\n", text);
    }

    [Fact]
    public void The_day_and_the_time_the_day_was_closed_are_Shanghai_time()
    {
        string text = StatementRendering.Text(Statement(Total), Context);
        string html = StatementRendering.Html(Statement(Total), Context);

        Assert.Contains("结算完成：2026-11-21 02:30:05（北京时间）", text, StringComparison.Ordinal);
        Assert.Contains("<span id=\"settled-at\">2026-11-21 02:30:05</span>", html, StringComparison.Ordinal);
    }

    [Fact]
    public void Text_tables_stay_aligned_when_names_are_Chinese()
    {
        string text = StatementRendering.Text(Statement(Usage(Holder, 12_000), Usage(Unnamed, 1), Total), Context);

        // In the usage table, the model column starts at the same screen column in the header and
        // in both rows, after a holder column that is a Chinese name in one row and a code in the other.
        string[] table = text.Split("\n当日用量\n")[1].Split("\n\n")[0].Split('\n');
        Assert.Equal(4, table.Length);
        int header = DisplayWidth.Of(table[0][..table[0].IndexOf("设备型号", StringComparison.Ordinal)]);
        Assert.All(table[2..], row => Assert.Equal(header, DisplayWidth.Of(row[..row.IndexOf("H100-SXM", StringComparison.Ordinal)])));
        Assert.All(table, line => Assert.False(line.EndsWith(' '), line));
    }

    [Fact]
    public void The_html_statement_is_zh_CN_self_contained_escapes_names_and_has_one_section_per_kind_of_row()
    {
        var hostile = new PartyNames(new Dictionary<string, string> { [Provider] = "<script>alert(1)</script>&Co" }, Names.Holders);
        StatementRow subsidy = new() { Record = "subsidy", Provider = Provider, Holder = Holder, Contract = 7, Claim = 3, Voucher = 4, Payee = Holder, SubsidyFen = 3_000, Note = "holder_reimbursement" };
        PartyStatement statement = Statement(Usage(Holder, 12_000), subsidy, StatementFormats.MerkleRootRow(Day, Provider, 13, new byte[32]), Total);

        string html = StatementRendering.Html(statement, Context with { Names = hostile, Sha256 = Enumerable.Repeat((byte)0xab, 32).ToArray() });

        Assert.StartsWith("<!DOCTYPE html>\n<html lang=\"zh-CN\">", html, StringComparison.Ordinal);
        Assert.Contains("&lt;script&gt;alert(1)&lt;/script&gt;&amp;Co（914403001922038216）", html, StringComparison.Ordinal);
        Assert.DoesNotContain("<script", html, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain("http", html, StringComparison.Ordinal);
        Assert.Equal(["usage", "subsidy", "merkle-root", "totals"],
            System.Text.RegularExpressions.Regex.Matches(html, "<section id=\"([a-z-]+)\">").Select(m => m.Groups[1].Value));
        Assert.Contains($"<code id=\"statement-sha256\">{string.Concat(Enumerable.Repeat("ab", 32))}</code>", html, StringComparison.Ordinal);
        Assert.Contains("<td>补贴入账</td>", html, StringComparison.Ordinal);
        Assert.Contains($"<td>深圳某大学（{Holder}）</td><td class=\"num\">30.00</td><td>拨付持有方</td>", html, StringComparison.Ordinal);
    }
}
