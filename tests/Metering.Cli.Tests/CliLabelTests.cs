using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using Metering.Cli;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>
/// The CLI prints Chinese labels where LANG starts with zh and English otherwise; what machines
/// read (the canonical statement, its hash) is the same bytes under either.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed partial class CliLabelTests(PostgresFixture postgres)
{
    private static readonly Dictionary<string, string> Chinese = new() { ["LANG"] = "zh_CN.UTF-8" };
    private static readonly Dictionary<string, string> English = new() { ["LANG"] = "C" };

    [Fact]
    public async Task Table_headers_field_names_and_summary_lines_are_Chinese_where_LANG_says_zh_and_English_under_C()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);

        var keys = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, Chinese, "key", "list");
        var keysC = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, English, "key", "list");
        var clock = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, Chinese, "clock", "show");
        var clockC = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, English, "clock", "show");
        var applications = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, Chinese, "registry", "applications");
        var applicationsC = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, English, "registry", "applications");
        var organisation = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, Chinese, "registry", "org", "show", TestRecords.Provider);
        var organisationC = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, English, "registry", "org", "show", TestRecords.Provider);

        foreach (var (exit, output) in new[] { keys, keysC, clock, clockC, applications, applicationsC, organisation, organisationC })
        {
            Assert.True(exit == 0, output);
        }

        Assert.Matches(@"^编号\s+角色\s+主体\s+标签\s+签发时间\s+经办人\s+吊销\s+客户端证书 SHA-256\n", keys.Output);
        Assert.Matches(@"^id\s+role\s+subject\s+label\s+issued\s+by\s+revoked\s+client cert sha256\n", keysC.Output);
        Assert.Matches(@"^现在：\d{4}-\d\d-\d\d \d\d:\d\d 北京时间（\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ）\n时钟：真实时间\n$", clock.Output);
        Assert.Matches(@"^now:\s+\d{4}-\d\d-\d\d \d\d:\d\d Asia/Shanghai \(.*\)\nclock:\s+real time\n$", clockC.Output);
        Assert.Matches(@"^编号\s+申请机构\s+批次\s+服务项目\s+状态\s+提交时间", applications.Output);
        Assert.Matches(@"^id\s+applicant\s+batch\s+service item\s+state\s+filed", applicationsC.Output);
        // Field names of a show command, padded by screen columns, and its section titles.
        Assert.StartsWith($"统一社会信用代码  {TestRecords.Provider}\n名称              Test provider {TestRecords.Provider[^4..]}\n", organisation.Output, StringComparison.Ordinal);
        Assert.Contains("\n服务项目:\n服务项目", organisation.Output, StringComparison.Ordinal);
        Assert.StartsWith($"credit code  {TestRecords.Provider}\nname         Test provider {TestRecords.Provider[^4..]}\n", organisationC.Output, StringComparison.Ordinal);
        Assert.Contains("\nService items:\nservice item", organisationC.Output, StringComparison.Ordinal);
        // Labels change; values do not.
        Assert.Contains(TestRecords.Provider, applications.Output, StringComparison.Ordinal);
        Assert.Equal(Codes(applicationsC.Output), Codes(applications.Output));
    }

    [Fact]
    public async Task Under_a_Chinese_locale_settle_prints_Chinese_labels_but_the_canonical_statement_is_the_same_bytes_with_the_same_hash()
    {
        var clock = new ManualClock(VoucherScene.Now);
        await using TestServer server = await TestServer.StartAsync(postgres, time: clock);
        await using VoucherScene scene = VoucherScene.Over(server.ConnectionString, clock);
        string holder = await scene.HolderAsync();
        await scene.ContractAsync(holder);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, VoucherScene.Day, 3));
        string day = "2026-11-20";
        Protocol.V1.Settlement closed = await new SettlementService.SettlementServiceClient(server.Channel)
            .SettleDayAsync(new SettleDayRequest { Day = day }, TestServer.Bearer(TestServer.SettlementKey));

        var list = await CliProcess.RunAsAsync(server, TestServer.AuditorKey, Chinese, "settle", "list");
        var csv = await CliProcess.RunAsAsync(server, TestServer.AuditorKey, Chinese, "settle", "show", "--day", day, "--party-kind", "holder", "--party", holder, "--format", "csv");
        var html = await CliProcess.RunAsAsync(server, TestServer.AuditorKey, English, "settle", "show", "--day", day, "--party-kind", "holder", "--party", holder, "--format", "html");

        foreach (var (exit, output) in new[] { list, csv, html })
        {
            Assert.True(exit == 0, output);
        }

        Assert.Matches(@"^日期\s+记录数\s+迟到记录\s+费用（元）\s+补贴（元）\s+结算人\s+完成时间（北京时间）\s+结算哈希（SHA-256）\n", list.Output);
        Assert.Contains(closed.SettlementSha256, list.Output, StringComparison.Ordinal);
        Assert.StartsWith(string.Join(',', Engine.Settlement.StatementFormats.Columns) + "\n", csv.Output, StringComparison.Ordinal);
        string expected = closed.Statements.Single(s => s.PartyKind == PartyKind.PartyHolder && s.Party == holder).Sha256;
        Assert.Equal(expected, Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(csv.Output))));
        // The statement is Chinese whatever the reader's locale: it is a document, not a label.
        Assert.StartsWith("<!DOCTYPE html>\n<html lang=\"zh-CN\">", html.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Audit_verify_usage_and_anomalies_print_Chinese_headers_and_summary_lines_where_LANG_says_zh()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync("cluster-a", 1, 30);
        await scene.TamperAsync($"UPDATE usage_records SET site = 'elsewhere' WHERE provider_id = '{TestRecords.Provider}' AND stream_id = 'cluster-a' AND sequence = 12");
        string[] period = ["--provider", TestRecords.Provider, "--from", "2026-11-20", "--to", "2026-11-20"];

        var verify = await CliProcess.RunAsAsync(scene.Server, TestServer.AuditorKey, Chinese, "audit", "verify", "--provider", TestRecords.Provider);
        var usage = await CliProcess.RunAsAsync(scene.Server, TestServer.AuditorKey, Chinese, ["audit", "usage", .. period, "--by", "model"]);
        var anomalies = await CliProcess.RunAsAsync(scene.Server, TestServer.AuditorKey, Chinese, ["audit", "anomalies", .. period]);

        Assert.True((verify.ExitCode, usage.ExitCode, anomalies.ExitCode) == (3, 0, 0), verify.Output + usage.Output + anomalies.Output);
        Assert.Matches(@"^数据流\s+起\s+止\s+已核验\s+哈希链\s+链头\n", verify.Output);
        Assert.Contains("在第 12 条断裂（HashMismatch）", verify.Output, StringComparison.Ordinal);
        Assert.Contains("2 条数据流，13 条记录，重新哈希规范编码", verify.Output, StringComparison.Ordinal);
        Assert.Matches(@"^型号\s+记录数\s+设备时\s+FP16 算力用量（PFLOPS·h）\n", usage.Output);
        Assert.Matches(@"\n合计\s+[\d,]+\s", usage.Output);
        Assert.Matches(@"\n在 [\d,]+ 条记录中发现 \d+ 项异常。\n$", anomalies.Output);
    }

    [Fact]
    public void Every_Chinese_line_takes_the_same_values_as_its_English_and_an_unknown_label_reads_in_English()
    {
        foreach (var (english, chinese) in Labels.Chinese)
        {
            Assert.Equal(Placeholders(english), Placeholders(chinese));
            Assert.Equal(english, Labels.Of(english, chinese: false));
            Assert.Equal(chinese, Labels.Of(english, chinese: true));
        }

        Assert.Equal("no such label", Labels.Of("no such label", chinese: true));
    }

    private static string[] Placeholders(string format) => [.. Placeholder().Matches(format).Select(m => m.Value).Order(StringComparer.Ordinal)];

    private static string[] Codes(string output) => [.. CreditCode().Matches(output).Select(m => m.Value)];

    [GeneratedRegex(@"\{\d+(:[^}]*)?\}")]
    private static partial Regex Placeholder();

    [GeneratedRegex(@"\b[0-9A-HJ-NPQRTUWXY]{18}\b")]
    private static partial Regex CreditCode();
}
