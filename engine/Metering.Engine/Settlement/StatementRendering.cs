using System.Globalization;
using System.Net;
using System.Text;
using Metering.Engine.Formatting;
using Metering.Engine.Time;
using Metering.Engine.Vouchers;

namespace Metering.Engine.Settlement;

/// <summary>
/// What a readable statement shows beside its rows: the hashes that prove it, when the day was
/// closed, the parties' names and, where the reader asked for it, the party's payee account from
/// the ledger (not hashed).
/// </summary>
public sealed record StatementContext(byte[] Sha256, string SettlementHex, DateTimeOffset SettledAt, PartyNames Names, PayeePosition? Payable = null);

/// <summary>
/// The statements people read, in Chinese: a text form and a self-contained HTML form
/// (<c>lang="zh-CN"</c>, inline CSS, no script, nothing fetched). Both render the same sections,
/// one table each, in the order of <see cref="Sections"/>; a new kind of row gets a section of its
/// own there. Names stand beside credit codes, amounts are yuan with every fen (integer
/// arithmetic, <see cref="Pricing.Yuan"/>), days and times are Asia/Shanghai. Neither form is
/// hashed: the canonical CSV is what the hashes cover, and both forms print its SHA-256.
/// </summary>
public static class StatementRendering
{
    /// <summary>One table of a statement. Cells are display text; a cell of digits, commas, points and a sign is a number and aligns right.</summary>
    private sealed record Section(string Id, string Title, string[] Headers, IReadOnlyList<string[]> Rows);

    private const string Heading = "训力券结算单";

    public static string Text(PartyStatement statement, StatementContext context)
    {
        var text = new StringBuilder();
        text.Append(Heading).Append('\n');
        text.Append("结算对象：").Append(Party(statement, context.Names)).Append('\n');
        text.Append("结算日：").Append(ShanghaiTime.IsoDate(statement.Day)).Append("（北京时间）\n");
        text.Append("结算完成：").Append(Local(context.SettledAt)).Append("（北京时间）\n");
        foreach (Section section in Sections(statement, context))
        {
            text.Append('\n').Append(section.Title).Append('\n');
            TextTable(text, section.Headers, section.Rows);
        }

        text.Append('\n').Append("规范 CSV 的 SHA-256：").Append(Convert.ToHexStringLower(context.Sha256)).Append('\n');
        text.Append("当日结算哈希：").Append(context.SettlementHex).Append('\n');
        text.Append(Reading).Append('\n');
        return text.ToString();
    }

    public static string Html(PartyStatement statement, StatementContext context)
    {
        string party = Party(statement, context.Names);
        string day = ShanghaiTime.IsoDate(statement.Day);
        var html = new StringBuilder(16 * 1024);
        html.Append("""
            <!DOCTYPE html>
            <html lang="zh-CN"><head><meta charset="utf-8">
            <meta name="viewport" content="width=device-width, initial-scale=1">

            """);
        html.Append(CultureInfo.InvariantCulture, $"<title>{Heading} {E(party)} {day}</title>\n");
        html.Append(Style);
        html.Append("</head><body>\n");
        html.Append(CultureInfo.InvariantCulture, $"""
            <header><h1>{Heading}</h1>
            <p class="who">结算对象：<span id="party" data-kind="{E(statement.PartyKind)}" data-code="{E(statement.Party)}">{E(party)}</span></p>
            <p>结算日 <span id="day">{day}</span>（北京时间）· 结算完成于 <span id="settled-at">{E(Local(context.SettledAt))}</span>（北京时间）</p></header>

            """);
        foreach (Section section in Sections(statement, context))
        {
            html.Append(CultureInfo.InvariantCulture, $"<section id=\"{section.Id}\"><h2>{E(section.Title)}</h2><table><thead><tr>");
            foreach (string header in section.Headers)
            {
                html.Append("<th>").Append(E(header)).Append("</th>");
            }

            html.Append("</tr></thead><tbody>\n");
            foreach (string[] row in section.Rows)
            {
                html.Append("<tr>");
                foreach (string cell in row)
                {
                    html.Append(IsNumber(cell) ? "<td class=\"num\">" : "<td>").Append(E(cell)).Append("</td>");
                }

                html.Append("</tr>\n");
            }

            html.Append("</tbody></table></section>\n");
        }

        html.Append(CultureInfo.InvariantCulture, $"""
            <footer><p>规范 CSV 的 SHA-256：<code id="statement-sha256">{Convert.ToHexStringLower(context.Sha256)}</code></p>
            <p>当日结算哈希：<code id="settlement-sha256">{E(context.SettlementHex)}</code></p>
            <p class="note">{E(Reading)}</p></footer>
            </body></html>

            """);
        return html.ToString();
    }

    /// <summary>The sections of a statement, in order; a section with no rows is left out, except the totals.</summary>
    /// <summary>
    /// One table of a text statement: headers, a rule, then the rows, two spaces between columns,
    /// widths counted in display columns (a Chinese character is two), numbers aligned right.
    /// </summary>
    internal static void TextTable(StringBuilder text, string[] headers, IReadOnlyList<string[]> rows)
    {
        int[] widths = headers.Select((h, i) => Math.Max(DisplayWidth.Of(h), rows.Select(r => DisplayWidth.Of(r[i])).DefaultIfEmpty(0).Max())).ToArray();
        text.Append("  ").Append(string.Join("  ", headers.Select((h, i) => DisplayWidth.Pad(h, widths[i], alignRight: false))).TrimEnd()).Append('\n');
        text.Append("  ").AppendJoin("  ", widths.Select(w => new string('-', w))).Append('\n');
        foreach (string[] row in rows)
        {
            text.Append("  ").Append(string.Join("  ", row.Select((cell, i) => DisplayWidth.Pad(cell, widths[i], IsNumber(cell)))).TrimEnd()).Append('\n');
        }
    }

    private static List<Section> Sections(PartyStatement statement, StatementContext context)
    {
        PartyNames names = context.Names;
        var sections = new List<Section>();
        foreach ((string record, string title) in new[] { ("usage", "当日用量"), ("adjustment", "调整：已关账日迟到的用量") })
        {
            var rows = statement.Rows.Where(r => r.Record == record).ToList();
            if (rows.Count > 0)
            {
                sections.Add(new Section(record, title,
                    ["用量日", "服务机构", "持有方", "合同", "设备型号", "计费单位", "记录数", "用量（PFLOPS·h）", "卡时", "单价（元）", "费用（元）", "备注"],
                    [.. rows.Select(r => new[]
                    {
                        Day(r.UsageDay), Named(r.Provider, names.Provider(r.Provider)), Named(r.Holder, names.Holder(r.Holder)), Id(r.Contract), r.DeviceModel, FeeUnit(r.FeeUnit),
                        Count(r.Records), Scaled(r.UsageNpfh ?? 0, Pricing.NanoPflopsHoursPerPflopsHour, 6), Scaled(r.CardMs ?? 0, Pricing.CardMillisecondsPerCardHour, 3),
                        r.PriceFen is { } price ? Pricing.Yuan(price) : "", Pricing.Yuan(r.FeeFen ?? 0), Note(r.Note),
                    })]));
            }
        }

        var subsidies = statement.Rows.Where(r => r.Record is "subsidy" or "hold_expired").ToList();
        if (subsidies.Count > 0)
        {
            sections.Add(new Section("subsidy", "训力券补贴入账与到期的冻结",
                ["类型", "申领", "训力券", "服务机构", "持有方", "合同", "收款方", "补贴（元）", "支付方式"],
                [.. subsidies.Select(r => new[]
                {
                    r.Record == "subsidy" ? "补贴入账" : "冻结到期", Id(r.Claim), Id(r.Voucher), Named(r.Provider, names.Provider(r.Provider)), Named(r.Holder, names.Holder(r.Holder)),
                    Id(r.Contract), Named(r.Payee, names.Provider(r.Payee) ?? names.Holder(r.Payee)), Pricing.Yuan(r.SubsidyFen ?? 0), Note(r.Note),
                })]));
        }

        var roots = statement.Rows.Where(r => r.Record == StatementFormats.MerkleRootRecord).ToList();
        if (roots.Count > 0)
        {
            sections.Add(new Section("merkle-root", "当日计量日志的 Merkle 根（结算时，见 proto/metering/v1/merkle-proofs.md）",
                ["日期", "服务机构", "叶子数", "根（SHA-256）"],
                [.. roots.Select(r => new[] { Day(r.UsageDay), Named(r.Provider, names.Provider(r.Provider)), Count(r.Records), r.Note })]));
        }

        if (statement.Rows.FirstOrDefault(r => r.Record == "total") is { } total)
        {
            sections.Add(new Section("totals", "合计", ["项目", "数值"],
            [
                ["记录数", Count(total.Records ?? 0)],
                ["用量（PFLOPS·h）", Scaled(total.UsageNpfh ?? 0, Pricing.NanoPflopsHoursPerPflopsHour, 6)],
                ["卡时", Scaled(total.CardMs ?? 0, Pricing.CardMillisecondsPerCardHour, 3)],
                ["合同内费用（元）", Pricing.Yuan(total.FeeFen ?? 0)],
                ["已入账补贴（元）", Pricing.Yuan(total.SubsidyFen ?? 0)],
                ["持有方支付（元）", Pricing.Yuan(total.HolderPaysFen ?? 0)],
                ["计划支付（元）", Pricing.Yuan(total.ProgrammePaysFen ?? 0)],
            ]));
        }

        if (context.Payable is { } payable)
        {
            // Read from the ledger when the statement is rendered, so a later payout shows here while the hashed CSV stays as closed.
            var account = new List<string[]>
            {
                new[] { "截至当日已入账（元）", "", "", Pricing.Yuan(payable.PostedFen) },
                new[] { "截至当日已支付（元）", "", "", Pricing.Yuan(payable.PaidFen) },
                new[] { "尚欠（元）", "", "", Pricing.Yuan(payable.OutstandingFen) },
            };
            account.AddRange(payable.PayoutsOfDay.Select(p => new[] { "当日支付 " + Id(p.PayoutId), Named(p.PayeeCode, names.Provider(p.PayeeCode) ?? names.Holder(p.PayeeCode)), p.BankReference, Pricing.Yuan(p.AmountFen) }));
            sections.Add(new Section("payouts", "收款账户与支付（来自账本，不计入哈希）", ["项目", "收款方", "银行流水号", "金额（元）"], account));
        }

        return sections;
    }

    private const string Reading = "金额以元计，精确到分（账目以分为整数记账）；用量与卡时为截断后的显示值，精确值见规范 CSV 的 usage_npfh 与 card_ms。日期与时间均为北京时间（Asia/Shanghai）。";

    /// <summary>Whose statement, as a person reads it: the kind, then the name beside the credit code.</summary>
    private static string Party(PartyStatement statement, PartyNames names) => statement.PartyKind switch
    {
        StatementFormats.ProviderKind => "服务机构 " + Named(statement.Party, names.Provider(statement.Party)),
        StatementFormats.HolderKind => "训力券持有方 " + Named(statement.Party, names.Holder(statement.Party)),
        _ => "训力券计划",
    };

    internal static string Named(string code, string? name) => code.Length == 0 || name is null ? code : $"{name}（{code}）";

    private static string FeeUnit(string unit) => unit switch
    {
        "per_card_hour" => "按卡时",
        "per_pflops_hour" => "按 PFLOPS·h",
        _ => unit,
    };

    /// <summary>The notes the settlement writes, in Chinese; a note it does not know shows as written.</summary>
    internal static string Note(string note) => note switch
    {
        "no_contract" => "无合同，未计价",
        "no_filed_price" => "无备案价格，未计价",
        "holder_reimbursement" => "拨付持有方",
        "provider_deduction" => "服务机构抵扣",
        _ => note,
    };

    private static string Day(DateOnly? day) => day is { } d ? ShanghaiTime.IsoDate(d) : "";

    private static string Id(long? value) => value is { } v ? v.ToString(CultureInfo.InvariantCulture) : "";

    private static string Count(long? value) => value is { } v ? v.ToString("N0", CultureInfo.InvariantCulture) : "";

    private static string Local(DateTimeOffset instant) => instant.ToOffset(ShanghaiTime.Offset).ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture);

    private static bool IsNumber(string cell) => cell.Length > 0 && cell.All(c => char.IsAsciiDigit(c) || c is ',' or '.' or '-');

    /// <summary>An integer of nano-units as a decimal with the given digits, truncated: for display only, never for money.</summary>
    internal static string Scaled(long value, long perUnit, int digits)
    {
        long whole = value / perUnit;
        long fraction = value % perUnit;
        long divisor = perUnit;
        for (int i = 0; i < digits; i++)
        {
            divisor /= 10;
        }

        divisor = Math.Max(divisor, 1);
        return string.Create(CultureInfo.InvariantCulture, $"{whole:N0}.{(fraction / divisor).ToString(new string('0', digits), CultureInfo.InvariantCulture)}");
    }

    private static string E(string text) => WebUtility.HtmlEncode(text);

    private const string Style = """
        <style>
        body { font-family: system-ui, "Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Microsoft YaHei", sans-serif; margin: 24px auto; max-width: 1200px; color: #1d2330; }
        h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; border-bottom: 1px solid #d5d9e0; padding-bottom: 3px; margin-top: 28px; }
        table { border-collapse: collapse; font-size: 13px; } th, td { border: 1px solid #d5d9e0; padding: 3px 7px; text-align: left; vertical-align: top; }
        td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; } code { font-size: 12px; word-break: break-all; }
        .note { color: #5b6475; font-size: 12px; } .who { font-size: 15px; }
        </style>

        """;
}
