using System.Text.Json;
using Grpc.Core;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;
using Claim = Metering.Engine.Vouchers.Claim;

namespace Metering.Cli.Tests;

/// <summary>
/// `metering settle statement --holder`: the holder-facing statement that a bureau key exports
/// for a holder, read from the settled day through a running server; and the statements a
/// provider's own key may read.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class HolderStatementCliTests(PostgresFixture postgres)
{
    private const string Day = "2026-11-20";

    /// <summary>A server past <see cref="Day"/>, and the engine over its database for what the CLI does not do.</summary>
    private sealed record Running(TestServer Server, VoucherScene Scene, string Holder, Claim AtProvider, Claim AtOther) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            await Scene.DisposeAsync();
            await Server.DisposeAsync();
        }
    }

    /// <summary>
    /// One holder with a contract and a voucher at each test provider, usage at both on
    /// <see cref="Day"/>, a claim at each, and the day settled: its vouchers paid two providers.
    /// </summary>
    private async Task<Running> SettledAsync()
    {
        var clock = new ManualClock(VoucherScene.Now);
        TestServer server = await TestServer.StartAsync(postgres, time: clock);
        VoucherScene scene = VoucherScene.Over(server.ConnectionString, clock);
        string holder = await scene.HolderAsync();
        var mine = await scene.ContractAsync(holder);
        var theirs = await scene.ContractAsync(holder, TestRecords.OtherProvider);
        await scene.VoucherAsync(mine.ContractId, 100_000_000);
        await scene.VoucherAsync(theirs.ContractId, 100_000_000);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, VoucherScene.Day, 12));
        await scene.IngestAsync("cluster-b", VoucherScene.Jobs(holder, VoucherScene.Day, 6, prefix: "other"), TestRecords.OtherProvider);
        var atProvider = await scene.ClaimJobsAsync(mine.ContractId, "job-1120-000", "job-1120-001");
        var atOther = await scene.ClaimJobsAsync(theirs.ContractId, "other-1120-000");
        await scene.SettleAsync(VoucherScene.Day);
        return new Running(server, scene, holder, atProvider, atOther);
    }

    [Fact]
    public async Task An_operator_exports_a_holders_statement_with_what_its_vouchers_paid_at_each_provider()
    {
        await using Running running = await SettledAsync();
        var (server, scene, holder, atProvider, atOther) = running;
        string path = Path.Combine(Path.GetTempPath(), $"holder-{Guid.NewGuid():N}.txt");

        var (textExit, textOutput) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "settle", "statement", "--holder", holder, "--day", Day, "--out", path);
        var (jsonExit, json) = await CliProcess.RunAsAsync(server, TestServer.SettlementKey, "settle", "statement", "--holder", holder, "--day", Day, "--format", "json");

        Assert.Equal((0, 0), (textExit, jsonExit));
        Assert.Contains($"Wrote {path}: 1 settled day(s), 2 voucher payment(s).", textOutput, StringComparison.Ordinal);
        string text = await File.ReadAllTextAsync(path);
        Assert.StartsWith($"训力券持有方结算汇总\n持有方：", text, StringComparison.Ordinal);
        Assert.Contains($"（{holder}）\n期间：{Day}（北京时间）\n", text, StringComparison.Ordinal);
        Assert.Matches($@"\n  Test provider \d+（{TestRecords.Provider}）", text);
        Assert.Contains(TestRecords.Provider, text, StringComparison.Ordinal);
        Assert.Contains(TestRecords.OtherProvider, text, StringComparison.Ordinal);
        Assert.False(File.Exists(path + ".partial"));

        // The figures agree with the claims and the ledger, which were written independently of the statement.
        using JsonDocument document = JsonDocument.Parse(json);
        JsonElement root = document.RootElement;
        var providers = root.GetProperty("providers").EnumerateArray().ToDictionary(p => p.GetProperty("provider").GetString()!);
        Assert.Equal(atProvider.SubsidyFen, providers[TestRecords.Provider].GetProperty("voucherPaidFen").GetInt64());
        Assert.Equal(atOther.SubsidyFen, providers[TestRecords.OtherProvider].GetProperty("voucherPaidFen").GetInt64());
        Assert.Equal(await scene.CreditBalanceAsync($"payee_payable:{holder}"), root.GetProperty("voucherPaidFen").GetInt64());
        Assert.Equal(await scene.CreditBalanceAsync($"provider_receivable:{TestRecords.Provider}"), providers[TestRecords.Provider].GetProperty("feeFen").GetInt64());
        Assert.Equal(await scene.CreditBalanceAsync($"provider_receivable:{TestRecords.OtherProvider}"), providers[TestRecords.OtherProvider].GetProperty("feeFen").GetInt64());
        Assert.Equal(-await scene.CreditBalanceAsync($"holder_due:{holder}"), root.GetProperty("feeFen").GetInt64());
        Assert.Equal((12L, 6L), (providers[TestRecords.Provider].GetProperty("records").GetInt64(), providers[TestRecords.OtherProvider].GetProperty("records").GetInt64()));
        Assert.True(atProvider.SubsidyFen > 0 && atOther.SubsidyFen > 0);
        // Each source day is named with the hash of the holder's daily statement it was read from.
        string stored = (await new SettlementService.SettlementServiceClient(server.Channel).GetStatementAsync(
            new GetStatementRequest { Day = Day, PartyKind = PartyKind.PartyHolder, Party = holder }, TestServer.Bearer(TestServer.AuditorKey))).Sha256;
        Assert.Equal(stored, root.GetProperty("sources")[0].GetProperty("sha256").GetString());
        Assert.Contains(stored, text, StringComparison.Ordinal);
        File.Delete(path);
    }

    [Fact]
    public async Task A_provider_reads_its_own_statement_but_not_another_partys_nor_exports_a_holders()
    {
        await using Running running = await SettledAsync();
        var (server, _, holder, _, _) = running;
        var settlement = new SettlementService.SettlementServiceClient(server.Channel);
        Metadata me = TestServer.Bearer(TestServer.ProviderKey);
        string path = Path.Combine(Path.GetTempPath(), $"holder-{Guid.NewGuid():N}.txt");

        Statement own = await settlement.GetStatementAsync(new GetStatementRequest { Day = Day, PartyKind = PartyKind.PartyProvider, Party = TestRecords.Provider, Format = StatementFormat.StatementText }, me);
        RpcException other = await Assert.ThrowsAsync<RpcException>(() => settlement.GetStatementAsync(
            new GetStatementRequest { Day = Day, PartyKind = PartyKind.PartyProvider, Party = TestRecords.OtherProvider }, me).ResponseAsync);
        RpcException holders = await Assert.ThrowsAsync<RpcException>(() => settlement.GetStatementAsync(
            new GetStatementRequest { Day = Day, PartyKind = PartyKind.PartyHolder, Party = holder }, me).ResponseAsync);
        RpcException programme = await Assert.ThrowsAsync<RpcException>(() => settlement.GetStatementAsync(
            new GetStatementRequest { Day = Day, PartyKind = PartyKind.PartyProgramme }, me).ResponseAsync);
        var (exit, output) = await CliProcess.RunAsAsync(server, TestServer.ProviderKey, "settle", "statement", "--holder", holder, "--day", Day, "--out", path);

        Assert.Matches($@"结算对象：服务机构 .*（{TestRecords.Provider}）\n", own.Content);
        Assert.DoesNotContain(TestRecords.OtherProvider, own.Content, StringComparison.Ordinal);
        Assert.All(new[] { other, holders, programme }, e => Assert.Equal((StatusCode.PermissionDenied, "STATEMENT_OF_OTHER_PARTY"), (e.StatusCode, IngestCall.Reason(e))));
        Assert.Equal(4, exit);
        Assert.Contains("refused: PermissionDenied ROLE_NOT_ALLOWED", output, StringComparison.Ordinal);
        Assert.False(File.Exists(path) || File.Exists(path + ".partial"));
    }

    [Fact]
    public async Task An_unknown_or_malformed_holder_a_day_not_settled_or_a_holder_with_nothing_settled_is_said_and_writes_no_file()
    {
        await using Running running = await SettledAsync();
        var (server, scene, holder, _, _) = running;
        string idle = await scene.HolderAsync(VoucherScene.NewCode());
        string path = Path.Combine(Path.GetTempPath(), $"holder-{Guid.NewGuid():N}.txt");

        var (unknownExit, unknown) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "settle", "statement", "--holder", VoucherScene.NewCode(), "--day", Day, "--out", path);
        var (malformedExit, malformed) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "settle", "statement", "--holder", "91440300", "--day", Day, "--out", path);
        var (openExit, open) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "settle", "statement", "--holder", holder, "--day", Day, "--to", "2026-11-21", "--out", path);
        var (idleExit, idleOutput) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "settle", "statement", "--holder", idle, "--day", Day, "--out", path);

        Assert.Equal((4, 2, 4, 6), (unknownExit, malformedExit, openExit, idleExit));
        Assert.Contains("refused: NotFound", unknown, StringComparison.Ordinal);
        Assert.Contains("--holder is not a unified social credit code", malformed, StringComparison.Ordinal);
        Assert.Contains("refused: NotFound DAY_NOT_SETTLED", open, StringComparison.Ordinal);
        Assert.Contains($"Holder {idle} has no usage or voucher payment settled from {Day} to {Day}; nothing was written.", idleOutput, StringComparison.Ordinal);
        Assert.False(File.Exists(path) || File.Exists(path + ".partial"));
    }
}
