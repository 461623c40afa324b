using Grpc.Core;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Vouchers;

/// <summary>VoucherService.ListClaims: newest first, all or one contract's, bounded; a negative contract id is refused.</summary>
[Collection(PostgresCollection.Name)]
public sealed class ListClaimsTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Claims_are_listed_newest_first_for_every_contract_or_one_and_a_negative_contract_is_refused()
    {
        var clock = new ManualClock(VoucherScene.Now);
        await using TestServer server = await TestServer.StartAsync(postgres, time: clock);
        await using VoucherScene scene = VoucherScene.Over(server.ConnectionString, clock);
        string first = await scene.HolderAsync();
        string second = await scene.HolderAsync(VoucherScene.NewCode());
        var a = await scene.ContractAsync(first);
        var b = await scene.ContractAsync(second);
        await scene.VoucherAsync(a.ContractId, 100_000_000);
        await scene.VoucherAsync(b.ContractId, 100_000_000);
        await scene.IngestAsync("cluster-a", [.. VoucherScene.Jobs(first, VoucherScene.Day, 2), .. VoucherScene.Jobs(second, VoucherScene.Day, 1, firstSlot: 10, prefix: "other")]);
        var one = await scene.ClaimJobsAsync(a.ContractId, "job-1120-000");
        var two = await scene.ClaimJobsAsync(b.ContractId, "other-1120-010");
        var three = await scene.ClaimJobsAsync(a.ContractId, "job-1120-001");
        var vouchers = new VoucherService.VoucherServiceClient(server.Channel);
        Metadata auditor = TestServer.Bearer(TestServer.AuditorKey);

        ListClaimsResponse all = await vouchers.ListClaimsAsync(new ListClaimsRequest(), auditor);
        ListClaimsResponse ofA = await vouchers.ListClaimsAsync(new ListClaimsRequest { ContractId = a.ContractId }, auditor);
        ListClaimsResponse newest = await vouchers.ListClaimsAsync(new ListClaimsRequest { Limit = 1 }, auditor);
        ListClaimsResponse none = await vouchers.ListClaimsAsync(new ListClaimsRequest { ContractId = 999_999 }, auditor);
        var negative = await Assert.ThrowsAsync<RpcException>(() => vouchers.ListClaimsAsync(new ListClaimsRequest { ContractId = -1 }, auditor).ResponseAsync);

        Assert.Equal([three.ClaimId, two.ClaimId, one.ClaimId], all.Claims.Select(c => c.ClaimId));
        Assert.Equal([three.ClaimId, one.ClaimId], ofA.Claims.Select(c => c.ClaimId));
        Assert.Equal((one.SubsidyFen, HoldState.HoldReserved, 1), (ofA.Claims[1].SubsidyFen, ofA.Claims[1].HoldState, ofA.Claims[1].Lines.Count));
        Assert.Equal([three.ClaimId], newest.Claims.Select(c => c.ClaimId));
        Assert.Empty(none.Claims);
        Assert.Equal((StatusCode.InvalidArgument, "VOUCHER_FIELD_INVALID"), (negative.StatusCode, IngestCall.Reason(negative)));
    }
}
