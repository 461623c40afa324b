using System.Globalization;
using System.Text;
using System.Text.Json;
using Metering.Engine.Time;
using Metering.Engine.Vouchers;

namespace Metering.Engine.Settlement;

/// <summary>What one holder's usage at one provider came to over the period.</summary>
public sealed record HolderProviderTotals(string Provider, long Records, long UsageNpfh, long FeeFen, long VoucherPaidFen, long DeductedFen, long HolderPaysFen);

/// <summary>One subsidy a holder's voucher paid: a claim's hold posted by a settlement run.</summary>
public sealed record HolderVoucherPayment(DateOnly Day, string Provider, long Claim, long Voucher, string Payee, string PayeeMode, long SubsidyFen);

/// <summary>A settled day that holds a statement of the holder, with the SHA-256 of its canonical CSV.</summary>
public sealed record HolderStatementSource(DateOnly Day, string Sha256Hex);

/// <summary>
/// The holder-facing statement of a period: per provider, what the holder's usage cost under its
/// contracts, what its vouchers paid, and what is left for the holder to pay; then every voucher
/// payment. It is a reading of the holder's daily statements (settlement.md), which stay the
/// evidence: each source day is named with its statement's hash.
/// </summary>
public sealed record HolderStatement(
    string Holder, DateOnly From, DateOnly To, IReadOnlyList<HolderStatementSource> Sources,
    IReadOnlyList<HolderProviderTotals> Providers, IReadOnlyList<HolderVoucherPayment> Payments)
{
    public long FeeFen => Providers.Sum(p => p.FeeFen);

    public long VoucherPaidFen => Providers.Sum(p => p.VoucherPaidFen);

    public long HolderPaysFen => Providers.Sum(p => p.HolderPaysFen);
}

/// <summary>
/// Builds and renders <see cref="HolderStatement"/>s. Amounts are summed as integers from the
/// statements' rows; the renderings only format them.
/// </summary>
public static class HolderStatements
{
    /// <summary>Longest period one holder statement covers, in days: a programme year, leap day included.</summary>
    public const int PeriodDaysMax = 366;

    /// <summary>The payee mode a subsidy row notes when the provider took the subsidy off the holder's bill.</summary>
    private const string ProviderDeduction = "provider_deduction";

    /// <summary>
    /// Sums the holder's daily statements of [from, to] into one statement. Each statement must be
    /// the holder's own; days without one (the holder had nothing settled then) are simply absent.
    /// </summary>
    public static HolderStatement Build(string holder, DateOnly from, DateOnly to, IEnumerable<(PartyStatement Statement, string Sha256Hex)> daily)
    {
        if (to < from || to.DayNumber - from.DayNumber + 1 > PeriodDaysMax)
        {
            throw new ArgumentException($"A holder statement covers 1 to {PeriodDaysMax} days, from its first day to its last.");
        }

        var sources = new List<HolderStatementSource>();
        var rows = new List<(DateOnly Day, StatementRow Row)>();
        foreach (var (statement, sha256Hex) in daily.OrderBy(d => d.Statement.Day))
        {
            if (statement.PartyKind != StatementFormats.HolderKind || statement.Party != holder || statement.Day < from || statement.Day > to)
            {
                throw new ArgumentException($"The {statement.PartyKind} statement of {statement.Party} for {ShanghaiTime.IsoDate(statement.Day)} is not one of holder {holder} in the period.");
            }

            sources.Add(new HolderStatementSource(statement.Day, sha256Hex));
            rows.AddRange(statement.Rows.Select(r => (statement.Day, r)));
        }

        var payments = rows.Where(r => r.Row.Record == "subsidy")
            .Select(r => new HolderVoucherPayment(r.Day, r.Row.Provider, r.Row.Claim ?? 0, r.Row.Voucher ?? 0, r.Row.Payee, r.Row.Note, r.Row.SubsidyFen ?? 0))
            .OrderBy(p => p.Day).ThenBy(p => p.Provider, StringComparer.Ordinal).ThenBy(p => p.Claim)
            .ToList();
        var providers = rows.Where(r => r.Row.Record is "usage" or "adjustment" or "subsidy")
            .GroupBy(r => r.Row.Provider, StringComparer.Ordinal)
            .OrderBy(g => g.Key, StringComparer.Ordinal)
            .Select(g =>
            {
                var usage = g.Where(r => r.Row.Record is "usage" or "adjustment").Select(r => r.Row).ToList();
                var posted = g.Where(r => r.Row.Record == "subsidy").Select(r => r.Row).ToList();
                long fee = usage.Sum(r => r.FeeFen ?? 0);
                long deducted = posted.Where(r => r.Note == ProviderDeduction).Sum(r => r.SubsidyFen ?? 0);
                return new HolderProviderTotals(g.Key, usage.Sum(r => r.Records ?? 0), usage.Sum(r => r.UsageNpfh ?? 0), fee,
                    posted.Sum(r => r.SubsidyFen ?? 0), deducted, fee - deducted);
            })
            .ToList();
        return new HolderStatement(holder, from, to, sources, providers, payments);
    }

    /// <summary>
    /// The statement for the holder to read, in Chinese: names beside credit codes where
    /// <paramref name="names"/> knows them (a code alone otherwise), amounts in yuan to the fen,
    /// days in Asia/Shanghai, and every source day with its statement's hash.
    /// </summary>
    public static string Text(HolderStatement statement, IReadOnlyDictionary<string, string> names)
    {
        string Named(string code) => StatementRendering.Named(code, names.GetValueOrDefault(code));
        var text = new StringBuilder();
        text.Append("训力券持有方结算汇总\n");
        text.Append("持有方：").Append(Named(statement.Holder)).Append('\n');
        text.Append("期间：").Append(Period(statement)).Append("（北京时间）\n");
        if (statement.Sources.Count == 0)
        {
            text.Append("\n期间内没有已结算的日子含有该持有方的用量或训力券支付。\n");
            return text.ToString();
        }

        text.Append("\n按服务机构\n");
        StatementRendering.TextTable(text, ["服务机构", "记录数", "用量（PFLOPS·h）", "合同内费用（元）", "训力券支付（元）", "服务机构抵扣（元）", "持有方支付（元）"],
            [.. statement.Providers.Select(p => new[]
            {
                Named(p.Provider), N(p.Records), StatementRendering.Scaled(p.UsageNpfh, Pricing.NanoPflopsHoursPerPflopsHour, 6), Pricing.Yuan(p.FeeFen),
                Pricing.Yuan(p.VoucherPaidFen), Pricing.Yuan(p.DeductedFen), Pricing.Yuan(p.HolderPaysFen),
            })]);
        if (statement.Payments.Count > 0)
        {
            text.Append("\n训力券支付\n");
            StatementRendering.TextTable(text, ["结算日", "服务机构", "申领", "训力券", "收款方", "支付方式", "金额（元）"],
                [.. statement.Payments.Select(p => new[]
                {
                    ShanghaiTime.IsoDate(p.Day), Named(p.Provider), N(p.Claim), N(p.Voucher), Named(p.Payee), StatementRendering.Note(p.PayeeMode), Pricing.Yuan(p.SubsidyFen),
                })]);
        }

        text.Append("\n合计\n");
        StatementRendering.TextTable(text, ["项目", "金额（元）"],
        [
            ["合同内费用", Pricing.Yuan(statement.FeeFen)],
            ["训力券支付", Pricing.Yuan(statement.VoucherPaidFen)],
            ["持有方支付", Pricing.Yuan(statement.HolderPaysFen)],
        ]);
        text.Append("\n依据：持有方每日结算单（各规范 CSV 的 SHA-256）\n");
        foreach (HolderStatementSource source in statement.Sources)
        {
            text.Append(CultureInfo.InvariantCulture, $"  {ShanghaiTime.IsoDate(source.Day)}  {source.Sha256Hex}\n");
        }

        return text.ToString();
    }

    /// <summary>The same statement as JSON for programs: amounts in fen and usage in nPFh, as integers.</summary>
    public static string Json(HolderStatement statement)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteString("format", "metering-holder-statement/1");
            json.WriteString("holder", statement.Holder);
            json.WriteString("from", ShanghaiTime.IsoDate(statement.From));
            json.WriteString("to", ShanghaiTime.IsoDate(statement.To));
            json.WriteNumber("feeFen", statement.FeeFen);
            json.WriteNumber("voucherPaidFen", statement.VoucherPaidFen);
            json.WriteNumber("holderPaysFen", statement.HolderPaysFen);
            json.WriteStartArray("providers");
            foreach (HolderProviderTotals p in statement.Providers)
            {
                json.WriteStartObject();
                json.WriteString("provider", p.Provider);
                json.WriteNumber("records", p.Records);
                json.WriteNumber("usageNpfh", p.UsageNpfh);
                json.WriteNumber("feeFen", p.FeeFen);
                json.WriteNumber("voucherPaidFen", p.VoucherPaidFen);
                json.WriteNumber("deductedFen", p.DeductedFen);
                json.WriteNumber("holderPaysFen", p.HolderPaysFen);
                json.WriteEndObject();
            }

            json.WriteEndArray();
            json.WriteStartArray("payments");
            foreach (HolderVoucherPayment p in statement.Payments)
            {
                json.WriteStartObject();
                json.WriteString("day", ShanghaiTime.IsoDate(p.Day));
                json.WriteString("provider", p.Provider);
                json.WriteNumber("claim", p.Claim);
                json.WriteNumber("voucher", p.Voucher);
                json.WriteString("payee", p.Payee);
                json.WriteString("payeeMode", p.PayeeMode);
                json.WriteNumber("subsidyFen", p.SubsidyFen);
                json.WriteEndObject();
            }

            json.WriteEndArray();
            json.WriteStartArray("sources");
            foreach (HolderStatementSource source in statement.Sources)
            {
                json.WriteStartObject();
                json.WriteString("day", ShanghaiTime.IsoDate(source.Day));
                json.WriteString("sha256", source.Sha256Hex);
                json.WriteEndObject();
            }

            json.WriteEndArray();
            json.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.ToArray()) + "\n";
    }

    private static string Period(HolderStatement statement) => statement.From == statement.To
        ? ShanghaiTime.IsoDate(statement.From)
        : $"{ShanghaiTime.IsoDate(statement.From)} 至 {ShanghaiTime.IsoDate(statement.To)}";

    private static string N(long value) => value.ToString("N0", CultureInfo.InvariantCulture);
}
