using Metering.Engine.Ledger;
using Metering.Engine.Settlement;
using Metering.Engine.Vouchers;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Claim = Metering.Engine.Vouchers.Claim;
using Contract = Metering.Engine.Vouchers.Contract;
using Voucher = Metering.Engine.Vouchers.Voucher;

namespace Metering.Engine.IntegrationTests.Vouchers;

/// <summary>Many redemptions at once on one voucher stay exact and never overdraw it.</summary>
[Collection(PostgresCollection.Name)]
public sealed class ConcurrentRedemptionTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Sixty_four_concurrent_claims_on_one_voucher_hold_exactly_its_face_value_and_no_more()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        Contract contract = await scene.ContractAsync(holder);
        // Each claim is one record: 1,200 fen eligible, 600 fen at 50%. The face value pays 20
        // claims in full and a 21st in part (500 fen); the other 43 find it empty.
        Voucher voucher = await scene.VoucherAsync(contract.ContractId, faceFen: 20 * 600 + 500);
        var records = VoucherScene.Jobs(holder, VoucherScene.Day, 64);
        await scene.IngestAsync("cluster-a", records);

        var start = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task<Claim>[] claims = records.Select(r => Task.Run(async () =>
        {
            await start.Task;
            return await scene.ClaimJobsAsync(contract.ContractId, r.JobId);
        })).ToArray();
        start.SetResult();
        await Task.WhenAll(claims.Select(c => c.ContinueWith(_ => { }, TaskScheduler.Default)));

        var held = claims.Where(c => c.IsCompletedSuccessfully).Select(c => c.Result).ToList();
        var refused = claims.Where(c => c.IsFaulted).Select(c => c.Exception!.InnerException).ToList();
        Assert.All(refused, e => Assert.Equal(VoucherRefusalReason.VoucherExhausted, Assert.IsType<VoucherRefusedException>(e).Reason));
        Assert.Equal(21, held.Count);
        Assert.Equal(43, refused.Count);
        Assert.Equal(20, held.Count(c => c.SubsidyFen == 600));
        Assert.Equal(500, Assert.Single(held, c => c.SubsidyFen != 600).SubsidyFen);

        Voucher after = (await scene.Book.GetVoucherAsync(voucher.VoucherId, CancellationToken.None))!;
        Assert.Equal((12_500L, 0L, 0L), (after.HeldFen, after.PostedFen, after.RemainingFen));
        Assert.Equal(12_500L, await scene.ScalarAsync<long>("SELECT sum(amount_fen)::bigint FROM voucher_holds WHERE state = 'reserved'"));
        Assert.Equal(12_500L, await scene.CreditBalanceAsync(Accounts.VoucherHeld(voucher.VoucherId)));
        Assert.Equal(0L, await scene.CreditBalanceAsync(Accounts.VoucherAvailable(voucher.VoucherId)));
        Assert.Equal(21L, await scene.ScalarAsync<long>("SELECT count(*) FROM redeemed_usage"));
    }
}
