using Google.Rpc;
using Grpc.Core;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>
/// `metering settle` without --day: the nightly habit. It closes every open day through yesterday
/// in order, stops at a day with no records unless told it may close it, and says when there is
/// nothing left.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class SettleCatchUpCliTests(PostgresFixture postgres)
{
    private const long Day = 86_400_000;

    /// <summary>A server whose clock reads 2026-11-23 10:00 Shanghai, with usage on 11-20 and 11-22 and none on 11-21.</summary>
    private async Task<TestServer> StartAsync()
    {
        TestServer server = await TestServer.StartAsync(postgres, time: new ManualClock(new DateTimeOffset(2026, 11, 23, 10, 0, 0, TimeSpan.FromHours(8))));
        List<UsageRecord> records = TestRecords.Range(1, 5);
        foreach (UsageRecord late in records.Skip(3))
        {
            late.StartUnixMs += 2 * Day;
            late.EndUnixMs += 2 * Day;
        }

        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "catch-up");
        await call.SendAsync(records);
        await call.CompleteAsync();
        return server;
    }

    private static Task<(int ExitCode, string Output)> Settle(TestServer server, params string[] arguments) =>
        CliProcess.RunAsAsync(server, TestServer.SettlementKey, ["settle", .. arguments]);

    [Fact]
    public async Task Settle_without_a_day_closes_the_backlog_in_order_and_stops_at_an_empty_day_until_allowed()
    {
        await using TestServer server = await StartAsync();

        var (first, firstOutput) = await Settle(server);
        List<DateTime> afterFirst = await server.QueryAsync<DateTime>("SELECT day FROM settlement_runs ORDER BY day");
        var (second, secondOutput) = await Settle(server, "--allow-empty");
        List<DateTime> afterSecond = await server.QueryAsync<DateTime>("SELECT day FROM settlement_runs ORDER BY day");
        var (third, thirdOutput) = await Settle(server);

        Assert.True(first == 4, firstOutput);
        Assert.Equal([new DateTime(2026, 11, 20)], afterFirst);
        Assert.Contains("2026-11-21 has no usage records", firstOutput, StringComparison.Ordinal);
        Assert.Contains("--allow-empty", firstOutput, StringComparison.Ordinal);
        Assert.True(second == 0, secondOutput);
        Assert.Equal([new DateTime(2026, 11, 20), new DateTime(2026, 11, 21), new DateTime(2026, 11, 22)], afterSecond);
        Assert.Contains("Settled 2 day(s)", secondOutput, StringComparison.Ordinal);
        Assert.Equal(6, third);
        Assert.Contains("Nothing to settle", thirdOutput, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_empty_day_is_refused_over_the_wire_without_allow_empty_and_nothing_is_closed()
    {
        await using TestServer server = await StartAsync();
        var client = new SettlementService.SettlementServiceClient(server.Channel);

        var refused = await Assert.ThrowsAsync<RpcException>(() => client.SettleDayAsync(new SettleDayRequest { Day = "2026-11-21" }, TestServer.Bearer(TestServer.SettlementKey)).ResponseAsync);
        long closedAfterRefusal = await server.ScalarAsync<long>("SELECT count(*) FROM settlement_runs");
        var (cliExit, cliOutput) = await Settle(server, "--day", "2026-11-21");
        Protocol.V1.Settlement allowed = await client.SettleDayAsync(new SettleDayRequest { Day = "2026-11-21", AllowEmpty = true }, TestServer.Bearer(TestServer.SettlementKey));
        ListPendingDaysResponse pending = await client.ListPendingDaysAsync(new ListPendingDaysRequest(), TestServer.Bearer(TestServer.AuditorKey));

        Assert.Equal((StatusCode.FailedPrecondition, "DAY_EMPTY"), (refused.StatusCode, refused.GetRpcStatus()!.GetDetail<ErrorInfo>()!.Reason));
        Assert.Equal(0L, closedAfterRefusal);
        Assert.Equal(4, cliExit);
        Assert.Contains("FailedPrecondition DAY_EMPTY", cliOutput, StringComparison.Ordinal);
        Assert.Equal("2026-11-21", allowed.Day);
        // After the last closed day (11-21): only 11-22, with its two records, is still open.
        Assert.Equal([("2026-11-22", 2L)], pending.Days.Select(d => (d.Day, d.Records)));
    }
}
