using Metering.Engine.Ledger;
using Metering.Engine.Settlement;
using Metering.Engine.Vouchers;
using Metering.Protocol.V1;
using Metering.Server.Tests.Infrastructure;
using Metering.Tests.Shared;
using Claim = Metering.Engine.Vouchers.Claim;
using ClaimLine = Metering.Engine.Vouchers.ClaimLine;
using Contract = Metering.Engine.Vouchers.Contract;
using FeeUnit = Metering.Engine.Registry.FeeUnit;
using HoldState = Metering.Engine.Vouchers.HoldState;
using SubsidyLimit = Metering.Engine.Vouchers.SubsidyLimit;
using Voucher = Metering.Engine.Vouchers.Voucher;

namespace Metering.Server.Tests.Vouchers;

/// <summary>
/// Exact money on worked examples, one per ratio and cap. The unit of usage throughout: one
/// record is 8 H100s for 5 minutes = 40 card-minutes = 2,400,000 card-ms, priced at 1,800 fen per
/// card-hour = 1,200 fen; or 8 × 989.4 TFLOPS × 5 min = 659,600,000 nPFh, priced at 1,900 fen per
/// PFLOPS·h = 1,253.24 fen. Ten records make one claim's eligible fee: 12,000 fen per card-hour,
/// or floor(6,596,000,000 × 1,900 / 10⁹) = floor(12,532.4) = 12,532 fen per PFLOPS·h.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class RedemptionMoneyTests(PostgresFixture postgres)
{
    private static readonly DateOnly Day = VoucherScene.Day;

    [Fact]
    public async Task Half_the_eligible_fee_is_held_on_the_voucher_at_the_standard_ratio()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        Contract contract = await scene.ContractAsync(holder);
        Voucher voucher = await scene.VoucherAsync(contract.ContractId, faceFen: 100_000_000);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, Day, 10));

        Claim claim = await scene.ClaimDayAsync(contract.ContractId, Day);

        Assert.Equal(10, claim.Records);
        Assert.Equal(12_000, claim.EligibleFeeFen);
        Assert.Equal(5_000u, claim.RatioBp);
        Assert.Equal(6_000, claim.SubsidyFen);
        Assert.Equal(SubsidyLimit.LimitedByRatio, claim.LimitedBy);
        Assert.Equal(HoldState.HoldReserved, claim.HoldState);
        ClaimLine line = Assert.Single(claim.Lines);
        Assert.Equal((24_000_000L, 1_800L, 12_000L), (line.CardMs, line.PriceFen, line.FeeFen));
        Voucher after = (await scene.Book.GetVoucherAsync(voucher.VoucherId, CancellationToken.None))!;
        Assert.Equal((6_000L, 0L, 99_994_000L), (after.HeldFen, after.PostedFen, after.RemainingFen));
        Assert.Equal(6_000, await scene.CreditBalanceAsync(Accounts.VoucherHeld(voucher.VoucherId)));
        Assert.Equal(99_994_000, await scene.CreditBalanceAsync(Accounts.VoucherAvailable(voucher.VoucherId)));
    }

    [Fact]
    public async Task A_start_up_under_a_year_old_at_signing_gets_sixty_percent()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync(VoucherScene.NewCode(), established: "2025-12-01");
        Contract contract = await scene.ContractAsync(holder, signed: "2026-01-01");
        await scene.VoucherAsync(contract.ContractId, faceFen: 100_000_000);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, Day, 10));

        Claim claim = await scene.ClaimDayAsync(contract.ContractId, Day);

        Assert.True(contract.Startup);
        Assert.Equal((12_000L, 6_000u, 7_200L), (claim.EligibleFeeFen, claim.RatioBp, claim.SubsidyFen));
    }

    [Fact]
    public async Task A_holder_a_year_old_at_signing_is_no_longer_a_start_up()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync(VoucherScene.NewCode(), established: "2025-01-01");

        Contract contract = await scene.ContractAsync(holder, signed: "2026-01-01");

        Assert.False(contract.Startup);
    }

    [Fact]
    public async Task Per_pflops_hour_pricing_rounds_down_once_per_line_not_per_record()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        Contract contract = await scene.ContractAsync(holder, unit: FeeUnit.PerPflopsHour);
        await scene.VoucherAsync(contract.ContractId, faceFen: 100_000_000);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, Day, 10));

        Claim claim = await scene.ClaimDayAsync(contract.ContractId, Day);

        ClaimLine line = Assert.Single(claim.Lines);
        Assert.Equal(6_596_000_000, line.UsageNpfh);
        // Per record it would be 10 × floor(1,253.24) = 12,530; once per line it is 12,532.
        Assert.Equal(12_532, claim.EligibleFeeFen);
        Assert.Equal(6_266, claim.SubsidyFen);
    }

    [Fact]
    public async Task The_annual_cap_counts_every_voucher_of_the_holder_and_then_refuses()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        Contract first = await scene.ContractAsync(holder);
        Contract second = await scene.ContractAsync(holder, provider: TestRecords.OtherProvider);
        await scene.VoucherAsync(first.ContractId, faceFen: 100_000_000);
        await scene.VoucherAsync(second.ContractId, faceFen: 100_000_000);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, Day, 10));
        await scene.IngestAsync("cluster-b", VoucherScene.Jobs(holder, Day, 20), TestRecords.OtherProvider);
        await scene.ParametersAsync(p => p with { AnnualCapFen = 10_000 });

        Claim atProviderOne = await scene.ClaimDayAsync(first.ContractId, Day);
        Claim atProviderTwo = await scene.ClaimJobsAsync(second.ContractId, VoucherScene.Jobs(holder, Day, 10).Select(r => r.JobId).ToArray());
        var refused = await Assert.ThrowsAsync<VoucherRefusedException>(() => scene.ClaimJobsAsync(second.ContractId, VoucherScene.Jobs(holder, Day, 20).Skip(10).Select(r => r.JobId).ToArray()));

        Assert.Equal((6_000L, SubsidyLimit.LimitedByRatio), (atProviderOne.SubsidyFen, atProviderOne.LimitedBy));
        Assert.Equal((4_000L, 4_000L, SubsidyLimit.LimitedByAnnualCap), (atProviderTwo.AnnualCapRemainingFen, atProviderTwo.SubsidyFen, atProviderTwo.LimitedBy));
        Assert.Equal(VoucherRefusalReason.HolderOverCap, refused.Reason);
        Assert.Equal(2u, atProviderTwo.ParametersVersion);
    }

    [Fact]
    public async Task The_stacking_cap_counts_other_public_support_for_the_contract_and_then_refuses()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        Contract contract = await scene.ContractAsync(holder, amountFen: 60_000_000);
        await scene.VoucherAsync(contract.ContractId, faceFen: 20_000_000);
        // Half of 600,000 CNY is 300,000 CNY; another fund already gave 299,960 CNY.
        await scene.Book.RecordOtherSupportAsync(VoucherScene.Operator, new OtherSupport(contract.ContractId, "District AI fund", 29_996_000),
            CancellationToken.None);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, Day, 20));

        string[] jobs = VoucherScene.Jobs(holder, Day, 20).Select(r => r.JobId).ToArray();
        Claim claim = await scene.ClaimJobsAsync(contract.ContractId, jobs[..10]);
        var refused = await Assert.ThrowsAsync<VoucherRefusedException>(() => scene.ClaimJobsAsync(contract.ContractId, jobs[10..]));

        Assert.Equal((6_000L, 4_000L, 4_000L, SubsidyLimit.LimitedByStackingCap), (claim.RatioSubsidyFen, claim.StackingRoomFen, claim.SubsidyFen, claim.LimitedBy));
        Assert.Equal(VoucherRefusalReason.StackingCapReached, refused.Reason);
        Contract after = (await scene.Book.GetContractAsync(contract.ContractId, CancellationToken.None))!;
        Assert.Equal((29_996_000L, 4_000L), (after.OtherSupportFen, after.VoucherSupportFen));
    }

    [Fact]
    public async Task What_is_left_on_the_voucher_bounds_the_subsidy_and_an_empty_voucher_refuses()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        Contract contract = await scene.ContractAsync(holder);
        Voucher voucher = await scene.VoucherAsync(contract.ContractId, faceFen: 10_000);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, Day, 30));
        string[] jobs = VoucherScene.Jobs(holder, Day, 30).Select(r => r.JobId).ToArray();

        Claim first = await scene.ClaimJobsAsync(contract.ContractId, jobs[..10]);
        Claim second = await scene.ClaimJobsAsync(contract.ContractId, jobs[10..20]);
        var refused = await Assert.ThrowsAsync<VoucherRefusedException>(() => scene.ClaimJobsAsync(contract.ContractId, jobs[20..]));

        Assert.Equal(6_000, first.SubsidyFen);
        Assert.Equal((4_000L, 4_000L, SubsidyLimit.LimitedByVoucherRemaining), (second.VoucherRemainingFen, second.SubsidyFen, second.LimitedBy));
        Assert.Equal(VoucherRefusalReason.VoucherExhausted, refused.Reason);
        Voucher after = (await scene.Book.GetVoucherAsync(voucher.VoucherId, CancellationToken.None))!;
        Assert.Equal((10_000L, 0L), (after.HeldFen, after.RemainingFen));
    }

    [Fact]
    public async Task A_voucher_above_the_ratio_of_the_contract_amount_is_not_issued()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        Contract contract = await scene.ContractAsync(holder, amountFen: 60_000_000);

        var refused = await Assert.ThrowsAsync<VoucherRefusedException>(() => scene.VoucherAsync(contract.ContractId, faceFen: 30_000_001));
        Voucher issued = await scene.VoucherAsync(contract.ContractId, faceFen: 30_000_000);

        Assert.Equal(VoucherRefusalReason.FaceValueOverLimit, refused.Reason);
        Assert.Equal(30_000_000, issued.RemainingFen);
        Assert.Equal(-30_000_000, await scene.CreditBalanceAsync(Accounts.ProgrammeBudget(2026)));
    }

    [Fact]
    public async Task A_voided_claim_returns_its_subsidy_and_releases_its_usage_for_another_claim()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        Contract contract = await scene.ContractAsync(holder);
        Voucher voucher = await scene.VoucherAsync(contract.ContractId, faceFen: 100_000_000);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, Day, 10));
        Claim claim = await scene.ClaimDayAsync(contract.ContractId, Day);

        Claim voided = await scene.Claims.VoidClaimAsync(VoucherScene.Operator, new ClaimVoid(claim.ClaimId, "Filed against the wrong contract."), CancellationToken.None);
        Claim again = await scene.ClaimDayAsync(contract.ContractId, Day);
        var twice = await Assert.ThrowsAsync<VoucherRefusedException>(() =>
            scene.Claims.VoidClaimAsync(VoucherScene.Operator, new ClaimVoid(claim.ClaimId, "again"), CancellationToken.None));

        Assert.Equal(HoldState.HoldVoided, voided.HoldState);
        Assert.Equal(6_000, again.SubsidyFen);
        Assert.Equal(VoucherRefusalReason.ClaimNotReserved, twice.Reason);
        Voucher after = (await scene.Book.GetVoucherAsync(voucher.VoucherId, CancellationToken.None))!;
        Assert.Equal(6_000, after.HeldFen);
    }
}
