using Grpc.Core;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Settlement;

/// <summary>Vouchers and settlement over gRPC: operators record, the batch settles, a provider reads only its own statement.</summary>
[Collection(PostgresCollection.Name)]
public sealed class SettlementServiceTests(PostgresFixture postgres)
{
    private static Metadata Operator => TestServer.Bearer(TestServer.OperatorKey);

    [Fact]
    public async Task An_operator_records_a_holder_contract_voucher_and_claim_and_the_batch_settles_the_day()
    {
        var clock = new ManualClock(VoucherScene.Now);
        await using TestServer server = await TestServer.StartAsync(postgres, time: clock);
        await using VoucherScene scene = VoucherScene.Over(server.ConnectionString, clock);
        var vouchers = new VoucherService.VoucherServiceClient(server.Channel);
        var settlement = new SettlementService.SettlementServiceClient(server.Channel);

        (Holder approved, Contract contract) = await VoucherRequests.HolderAndContractAsync(vouchers, Operator, "HT-2026-001");
        Voucher voucher = await vouchers.IssueVoucherAsync(new IssueVoucherRequest { ContractId = contract.ContractId, ProgrammeYear = 2026, FaceValueFen = 50_000_000 }, Operator);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(TestRecords.Holder, VoucherScene.Day, 10));
        Claim claim = await vouchers.FileClaimAsync(new FileClaimRequest { ContractId = contract.ContractId, JobIds = { "job-1120-000", "job-1120-001" }, ProgrammeYear = 2026 }, Operator);

        Protocol.V1.Settlement closed = await settlement.SettleDayAsync(new SettleDayRequest { Day = "2026-11-20" }, TestServer.Bearer(TestServer.SettlementKey));
        Protocol.V1.Settlement again = await settlement.SettleDayAsync(new SettleDayRequest { Day = "2026-11-20" }, TestServer.Bearer(TestServer.SettlementKey));
        Statement own = await settlement.GetStatementAsync(new GetStatementRequest
        {
            Day = "2026-11-20",
            PartyKind = PartyKind.PartyProvider,
            Party = TestRecords.Provider,
            Format = StatementFormat.StatementText,
        }, TestServer.Bearer(TestServer.ProviderKey));
        var other = await Assert.ThrowsAsync<RpcException>(() => settlement.GetStatementAsync(new GetStatementRequest
        {
            Day = "2026-11-20",
            PartyKind = PartyKind.PartyHolder,
            Party = TestRecords.Holder,
        }, TestServer.Bearer(TestServer.ProviderKey)).ResponseAsync);
        Voucher after = await vouchers.GetVoucherAsync(new GetVoucherRequest { VoucherId = voucher.VoucherId }, TestServer.Bearer(TestServer.AuditorKey));

        Assert.Equal(HolderStatus.HolderApproved, approved.Status);
        Assert.Equal((2_400L, 1_200L), (claim.EligibleFeeFen, claim.SubsidyFen));
        Assert.Equal((10L, 12_000L, 1_200L, false), (closed.DayRecords, closed.FeeFen, closed.SubsidyFen, closed.AlreadyClosed));
        Assert.True(again.AlreadyClosed);
        Assert.Equal(closed.SettlementSha256, again.SettlementSha256);
        Assert.Matches(@"\n  合同内费用（元）\s+120\.00\n", own.Content);
        Assert.Contains($"Tencent（{TestRecords.Holder}）", own.Content, StringComparison.Ordinal);
        Assert.Equal(closed.Statements.Single(s => s.PartyKind == PartyKind.PartyProvider).Sha256, own.Sha256);
        Assert.Equal((StatusCode.PermissionDenied, "STATEMENT_OF_OTHER_PARTY"), (other.StatusCode, IngestCall.Reason(other)));
        Assert.Equal((0L, 1_200L), (after.HeldFen, after.PostedFen));
    }

    [Fact]
    public async Task The_statement_summary_carries_the_providers_root_and_the_audit_service_recomputes_and_proves_against_it_as_settled()
    {
        var clock = new ManualClock(VoucherScene.Now);
        await using TestServer server = await TestServer.StartAsync(postgres, time: clock);
        await using VoucherScene scene = VoucherScene.Over(server.ConnectionString, clock);
        var settlement = new SettlementService.SettlementServiceClient(server.Channel);
        var audit = new AuditService.AuditServiceClient(server.Channel);
        Metadata provider = TestServer.Bearer(TestServer.ProviderKey);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(TestRecords.Holder, VoucherScene.Day, 5));

        var unsettled = await Assert.ThrowsAsync<RpcException>(() => audit.GetMerkleRootAsync(new GetMerkleRootRequest { CreditCode = TestRecords.Provider, Day = "2026-11-20", Settled = true }, provider).ResponseAsync);
        Protocol.V1.Settlement closed = await settlement.SettleDayAsync(new SettleDayRequest { Day = "2026-11-20" }, TestServer.Bearer(TestServer.SettlementKey));
        await scene.IngestAsync("cluster-a", [VoucherScene.Usage(TestRecords.Holder, VoucherScene.Day, 100, "late-1")]);
        StatementSummary summary = closed.Statements.Single(s => s.PartyKind == PartyKind.PartyProvider);
        MerkleRoot settled = await audit.GetMerkleRootAsync(new GetMerkleRootRequest { CreditCode = TestRecords.Provider, Day = "2026-11-20", Settled = true }, provider);
        MerkleRoot now = await audit.GetMerkleRootAsync(new GetMerkleRootRequest { CreditCode = TestRecords.Provider, Day = "2026-11-20" }, provider);
        InclusionProof proof = await audit.GetInclusionProofAsync(new GetInclusionProofRequest { CreditCode = TestRecords.Provider, StreamId = "cluster-a", Sequence = 3, Settled = true }, provider);
        Statement json = await settlement.GetStatementAsync(new GetStatementRequest
        {
            Day = "2026-11-20",
            PartyKind = PartyKind.PartyProvider,
            Party = TestRecords.Provider,
            Format = StatementFormat.StatementJson,
        }, provider);
        var both = await Assert.ThrowsAsync<RpcException>(() => audit.GetMerkleRootAsync(new GetMerkleRootRequest
        {
            CreditCode = TestRecords.Provider,
            Day = "2026-11-20",
            Settled = true,
            AsOfUnixMs = VoucherScene.Now.ToUnixTimeMilliseconds(),
        }, provider).ResponseAsync);
        var late = await Assert.ThrowsAsync<RpcException>(() => audit.GetInclusionProofAsync(new GetInclusionProofRequest { CreditCode = TestRecords.Provider, StreamId = "cluster-a", Sequence = 6, Settled = true }, provider).ResponseAsync);

        Assert.Equal((StatusCode.NotFound, "AUDIT_NOT_FOUND"), (unsettled.StatusCode, IngestCall.Reason(unsettled)));
        Assert.Equal((5u, 64), (summary.MerkleLeafCount, summary.MerkleRoot.Length));
        Assert.Equal((true, 5u, summary.MerkleRoot), (settled.Settled, settled.LeafCount, Convert.ToHexStringLower(settled.Root.ToByteArray())));
        Assert.Equal(6u, now.LeafCount);
        Assert.Equal((true, settled.Root), (proof.Settled, proof.Root));
        Assert.Contains($"\"root\": \"{summary.MerkleRoot}\"", json.Content, StringComparison.Ordinal);
        Assert.All(closed.Statements.Where(s => s.PartyKind != PartyKind.PartyProvider), s => Assert.Equal((0u, ""), (s.MerkleLeafCount, s.MerkleRoot)));
        Assert.Equal((StatusCode.InvalidArgument, "AUDIT_ARGUMENT_INVALID"), (both.StatusCode, IngestCall.Reason(both)));
        Assert.Equal((StatusCode.NotFound, "AUDIT_NOT_FOUND"), (late.StatusCode, IngestCall.Reason(late)));
    }

    [Fact]
    public async Task Refusals_carry_their_reason_and_status()
    {
        var clock = new ManualClock(VoucherScene.Now);
        await using TestServer server = await TestServer.StartAsync(postgres, time: clock);
        var vouchers = new VoucherService.VoucherServiceClient(server.Channel);
        var settlement = new SettlementService.SettlementServiceClient(server.Channel);

        var provider = await Assert.ThrowsAsync<RpcException>(() => vouchers.RegisterHolderAsync(new RegisterHolderRequest
        {
            Holder = new Holder { CreditCode = TestRecords.Provider, Name = "Huawei", Type = HolderType.HolderEnterprise, District = "longgang", EstablishedOn = "1987-09-15" },
        }, Operator).ResponseAsync);
        var early = await Assert.ThrowsAsync<RpcException>(() => settlement.SettleDayAsync(new SettleDayRequest { Day = "2026-12-01" }, TestServer.Bearer(TestServer.SettlementKey)).ResponseAsync);
        var unsettled = await Assert.ThrowsAsync<RpcException>(() => settlement.GetSettlementAsync(new GetSettlementRequest { Day = "2026-11-19" }, TestServer.Bearer(TestServer.AuditorKey)).ResponseAsync);

        Assert.Equal((StatusCode.FailedPrecondition, "HOLDER_IS_PROVIDER"), (provider.StatusCode, IngestCall.Reason(provider)));
        Assert.Equal((StatusCode.FailedPrecondition, "DAY_NOT_ENDED"), (early.StatusCode, IngestCall.Reason(early)));
        Assert.Equal((StatusCode.NotFound, "DAY_NOT_SETTLED"), (unsettled.StatusCode, IngestCall.Reason(unsettled)));
    }
}
