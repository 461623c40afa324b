using Grpc.Core;
using Metering.Engine.Fixtures;
using Metering.Fixtures;
using Metering.Protocol.V1;
using Metering.Server.Fixtures;

namespace Metering.Server.Tests.Settlement;

/// <summary>
/// Two stateless servers on one database, each asked to settle the same day at the same moment:
/// the database's run lock, not either process, makes one of them settle and the other find the
/// day closed.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class SettlementOnTwoServersTests(PostgresFixture postgres)
{
    private static Metadata Batch => TestServer.Bearer(TestServer.SettlementKey);

    [Fact]
    public async Task A_day_settled_on_two_servers_at_once_is_settled_once_with_one_hash_a_balanced_ledger_and_no_double_posting()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        Metering.Engine.Vouchers.Contract contract = await scene.ContractAsync(holder);
        Metering.Engine.Vouchers.Voucher voucher = await scene.VoucherAsync(contract.ContractId, 100_000_000);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, VoucherScene.Day, 10));
        Metering.Engine.Vouchers.Claim claim = await scene.ClaimJobsAsync(contract.ContractId, "job-1120-000", "job-1120-001", "job-1120-002");
        await using TestServer first = await TestServer.StartAsync(postgres, time: scene.Clock, database: scene.ConnectionString);
        await using TestServer second = await TestServer.StartAsync(postgres, time: scene.Clock, database: scene.ConnectionString);
        var onFirst = new SettlementService.SettlementServiceClient(first.Channel);
        var onSecond = new SettlementService.SettlementServiceClient(second.Channel);
        var request = new SettleDayRequest { Day = "2026-11-20" };

        // Both calls are on the wire before either is awaited: neither server knows of the other.
        Task<Protocol.V1.Settlement> fromFirst = onFirst.SettleDayAsync(request, Batch).ResponseAsync;
        Task<Protocol.V1.Settlement> fromSecond = onSecond.SettleDayAsync(request, Batch).ResponseAsync;
        Protocol.V1.Settlement[] runs = await Task.WhenAll(fromFirst, fromSecond);

        Assert.NotEqual(first.Address, second.Address);
        Assert.Single(runs, r => !r.AlreadyClosed);
        Assert.Single(runs, r => r.AlreadyClosed);
        Assert.Equal(runs[0].SettlementSha256, runs[1].SettlementSha256);
        Assert.Equal(1L, await scene.ScalarAsync<long>("SELECT count(*) FROM settlement_runs"));
        Assert.Equal(0L, await scene.ScalarAsync<long>("SELECT coalesce(sum(debit_fen - credit_fen), 0)::bigint FROM ledger_lines"));
        Assert.Equal(claim.SubsidyFen, await scene.ScalarAsync<long>("SELECT posted_fen FROM vouchers WHERE voucher_id = @id", new { id = voucher.VoucherId }));
        Assert.Equal(1L, await scene.ScalarAsync<long>("SELECT count(*) FROM voucher_holds WHERE state = 'posted'"));
    }
}
