using Grpc.Core;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Vouchers;

/// <summary>
/// An organisation is never a provider and a voucher holder at the same time, as the guide says;
/// it may be one after the other. Driven through the server's registry and voucher services.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class ProviderHolderExclusivityTests(PostgresFixture postgres)
{
    private static readonly TimeSpan Shanghai = TimeSpan.FromHours(8);

    private static int _numbers;

    [Fact]
    public async Task A_holder_whose_contracts_and_vouchers_have_ended_leaves_the_role_and_may_then_apply_as_a_provider()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        VoucherService.VoucherServiceClient vouchers = new(scene.Server.Channel);
        DateTimeOffset filingDay = scene.Clock.Now;
        scene.Clock.Now = new DateTimeOffset(2026, 3, 1, 10, 0, 0, Shanghai);
        var (code, key) = await scene.RegisterAsync();
        await HolderAsync(vouchers, code);
        Contract contract = await ContractAsync(vouchers, code, "2026-03-01", "2026-06-30");
        await vouchers.IssueVoucherAsync(new IssueVoucherRequest { ContractId = contract.ContractId, ProgrammeYear = 2026, FaceValueFen = 50_000_000, ValidFrom = "2026-03-01", ValidUntil = "2026-06-30" },
            RegistryScene.Operator);

        scene.Clock.Now = filingDay;
        Holder left = await vouchers.LeaveHolderRoleAsync(new LeaveHolderRoleRequest { CreditCode = code, Reason = "Now builds its own compute platform." }, RegistryScene.Operator);
        Assert.Equal(HolderStatus.HolderLeft, left.Status);

        Application filed = await scene.Client.FileApplicationAsync(RegistryScene.Filing(code), key);
        Assert.Equal(ApplicationState.AwaitingMaterialReview, filed.State);

        // Having left, it records no new contract and cannot leave twice.
        RpcException contractRefused = await Assert.ThrowsAsync<RpcException>(() => ContractAsync(vouchers, code, "2026-12-01", "2026-12-31"));
        Assert.Equal("HOLDER_NOT_APPROVED", IngestCall.Reason(contractRefused));
        RpcException again = await Assert.ThrowsAsync<RpcException>(() =>
            vouchers.LeaveHolderRoleAsync(new LeaveHolderRoleRequest { CreditCode = code, Reason = "Again." }, RegistryScene.Operator).ResponseAsync);
        Assert.Equal("HOLDER_NOT_APPROVED", IngestCall.Reason(again));
    }

    [Fact]
    public async Task A_holder_with_a_live_contract_can_neither_leave_the_role_nor_apply_as_a_provider()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        VoucherService.VoucherServiceClient vouchers = new(scene.Server.Channel);
        var (code, key) = await scene.RegisterAsync();
        await HolderAsync(vouchers, code);
        Contract contract = await ContractAsync(vouchers, code, "2026-06-01", "2026-12-31");

        RpcException refused = await Assert.ThrowsAsync<RpcException>(() =>
            vouchers.LeaveHolderRoleAsync(new LeaveHolderRoleRequest { CreditCode = code, Reason = "Wants to provide compute." }, RegistryScene.Operator).ResponseAsync);
        Assert.Equal((StatusCode.FailedPrecondition, "HOLDER_STILL_ENGAGED"), (refused.StatusCode, IngestCall.Reason(refused)));
        Assert.Equal(contract.ContractId.ToString(System.Globalization.CultureInfo.InvariantCulture), IngestCall.Metadata(refused, "contract_id"));
        Holder unchanged = await vouchers.GetHolderAsync(new GetHolderRequest { CreditCode = code }, RegistryScene.Operator);
        Assert.Equal(HolderStatus.HolderApproved, unchanged.Status);

        RpcException filing = await Assert.ThrowsAsync<RpcException>(() => scene.Client.FileApplicationAsync(RegistryScene.Filing(code), key).ResponseAsync);
        Assert.Equal((StatusCode.FailedPrecondition, "VOUCHER_HOLDER_CONFLICT"), (filing.StatusCode, IngestCall.Reason(filing)));

        // The organisation's own provider key cannot end its holder role either: operators do.
        RpcException byItself = await Assert.ThrowsAsync<RpcException>(() =>
            vouchers.LeaveHolderRoleAsync(new LeaveHolderRoleRequest { CreditCode = code, Reason = "Self-service." }, key).ResponseAsync);
        Assert.Equal((StatusCode.PermissionDenied, "ROLE_NOT_ALLOWED"), (byItself.StatusCode, IngestCall.Reason(byItself)));
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM voucher_holders WHERE holder_code = @code AND status = 'left'", new { code }));
    }

    [Fact]
    public async Task A_provider_with_an_admitted_item_cannot_register_as_a_holder_but_may_once_it_has_withdrawn()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        VoucherService.VoucherServiceClient vouchers = new(scene.Server.Channel);
        var (code, key, _) = await scene.AdmitAsync();

        RpcException refused = await Assert.ThrowsAsync<RpcException>(() => vouchers.RegisterHolderAsync(new RegisterHolderRequest { Holder = Applicant(code) }, RegistryScene.Operator).ResponseAsync);
        Assert.Equal((StatusCode.FailedPrecondition, "HOLDER_IS_PROVIDER"), (refused.StatusCode, IngestCall.Reason(refused)));
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM voucher_holders WHERE holder_code = @code", new { code }));

        scene.Clock.Advance(TimeSpan.FromHours(2));
        await scene.Client.ChangeServiceItemStatusAsync(
            new ChangeServiceItemStatusRequest { CreditCode = code, ServiceItem = Admissions.ServiceItem, Action = ServiceItemAction.Withdraw, Reasons = "Leaves the programme." },
            RegistryScene.Operator);

        Holder holder = await HolderAsync(vouchers, code);
        Assert.Equal(HolderStatus.HolderApproved, holder.Status);

        // Now a holder, it cannot slip back into the provider role.
        RpcException filing = await Assert.ThrowsAsync<RpcException>(() => scene.Client.FileApplicationAsync(RegistryScene.Filing(code), key).ResponseAsync);
        Assert.Equal("VOUCHER_HOLDER_CONFLICT", IngestCall.Reason(filing));
    }

    private static Holder Applicant(string code) => new()
    {
        CreditCode = code,
        Name = $"Lab {code[^5..]}",
        Type = HolderType.HolderEnterprise,
        District = "futian",
        EstablishedOn = "2012-05-01",
    };

    private static async Task<Holder> HolderAsync(VoucherService.VoucherServiceClient vouchers, string code)
    {
        await vouchers.RegisterHolderAsync(new RegisterHolderRequest { Holder = Applicant(code) }, RegistryScene.Operator);
        return await vouchers.ApproveHolderAsync(new ApproveHolderRequest { CreditCode = code }, RegistryScene.Operator);
    }

    /// <summary>A contract of the holder with the seeded provider, admitted from 2024 to 2028.</summary>
    private static async Task<Contract> ContractAsync(VoucherService.VoucherServiceClient vouchers, string holder, string starts, string ends) =>
        await vouchers.RecordContractAsync(new RecordContractRequest
        {
            Contract = new Contract
            {
                HolderCode = holder,
                ProviderId = TestRecords.Provider,
                ServiceItem = Admissions.ServiceItem,
                ContractNumber = $"EX-{Interlocked.Increment(ref _numbers):D5}",
                SignedOn = starts,
                StartsOn = starts,
                EndsOn = ends,
                AmountFen = 200_000_000,
                FeeUnit = FeeUnit.PerCardHour,
                NonRelatedParty = true,
                DeclarationRef = "declarations/non-related.pdf",
            },
        }, RegistryScene.Operator);
}
