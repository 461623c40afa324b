using Grpc.Core;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Settlement;

/// <summary>SettleDayWithProgress: the run's steps as it works, then the settlement; refusals as SettleDay gives them.</summary>
[Collection(PostgresCollection.Name)]
public sealed class SettlementProgressTests(PostgresFixture postgres)
{
    private static Metadata Batch => TestServer.Bearer(TestServer.SettlementKey);

    private static async Task<List<SettleDayProgress>> SettleAsync(SettlementService.SettlementServiceClient client, string day)
    {
        using AsyncServerStreamingCall<SettleDayProgress> call = client.SettleDayWithProgress(new SettleDayRequest { Day = day }, Batch);
        var updates = new List<SettleDayProgress>();
        await foreach (SettleDayProgress update in call.ResponseStream.ReadAllAsync())
        {
            updates.Add(update);
        }

        return updates;
    }

    [Fact]
    public async Task The_run_streams_its_stages_in_order_then_the_settlement_and_a_rerun_streams_that_the_day_was_closed()
    {
        var clock = new ManualClock(VoucherScene.Now);
        await using TestServer server = await TestServer.StartAsync(postgres, time: clock);
        await using VoucherScene scene = VoucherScene.Over(server.ConnectionString, clock);
        string holder = await scene.HolderAsync();
        var contract = await scene.ContractAsync(holder);
        await scene.VoucherAsync(contract.ContractId, 100_000_000);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, VoucherScene.Day, 6));
        var client = new SettlementService.SettlementServiceClient(server.Channel);

        List<SettleDayProgress> first = await SettleAsync(client, "2026-11-20");
        List<SettleDayProgress> rerun = await SettleAsync(client, "2026-11-20");
        Protocol.V1.Settlement stored = await client.GetSettlementAsync(new GetSettlementRequest { Day = "2026-11-20" }, Batch);

        List<SettlementStep> steps = first.SkipLast(1).Select(u => u.Step).ToList();
        Assert.All(first.SkipLast(1), u => Assert.Equal(SettleDayProgress.UpdateOneofCase.Step, u.UpdateCase));
        string[] stages = [.. steps.Select(s => s.Stage)];
        Assert.Equal(["marks", "aggregate", "adjustments", "price", "holds", "merkle", "statements", "write", "ledger", "reconcile", "log", "committed"], stages);
        Assert.Contains("6 records of the day", steps[1].Message, StringComparison.Ordinal);
        Assert.Equal(steps.Select(s => s.ElapsedMs).Order(), steps.Select(s => s.ElapsedMs));
        Protocol.V1.Settlement settled = first[^1].Settlement;
        Assert.Equal((6L, false, stored.SettlementSha256), (settled.DayRecords, settled.AlreadyClosed, settled.SettlementSha256));

        Assert.Equal(["closed"], rerun.SkipLast(1).Select(u => u.Step.Stage));
        Assert.True(rerun[^1].Settlement.AlreadyClosed);
        Assert.Equal(stored.SettlementSha256, rerun[^1].Settlement.SettlementSha256);
    }

    [Fact]
    public async Task A_malformed_or_unfinished_day_ends_the_stream_with_the_refusal_and_writes_nothing()
    {
        var clock = new ManualClock(VoucherScene.Now);
        await using TestServer server = await TestServer.StartAsync(postgres, time: clock);
        var client = new SettlementService.SettlementServiceClient(server.Channel);

        var malformed = await Assert.ThrowsAsync<RpcException>(() => SettleAsync(client, "2026-11-31"));
        var unfinished = await Assert.ThrowsAsync<RpcException>(() => SettleAsync(client, "2026-12-01"));

        Assert.Equal((StatusCode.InvalidArgument, "SETTLEMENT_FIELD_INVALID"), (malformed.StatusCode, IngestCall.Reason(malformed)));
        Assert.Equal((StatusCode.FailedPrecondition, "DAY_NOT_ENDED"), (unfinished.StatusCode, IngestCall.Reason(unfinished)));
        Assert.Equal(0, await server.ScalarAsync<long>("SELECT count(*) FROM settlement_runs"));
    }
}
