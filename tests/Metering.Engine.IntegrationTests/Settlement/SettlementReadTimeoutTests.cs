using System.Diagnostics;
using Dapper;
using Metering.Engine.Fixtures;
using Metering.Engine.Settlement;
using Metering.Engine.Storage;
using Metering.Fixtures;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;

namespace Metering.Engine.IntegrationTests.Settlement;

/// <summary>
/// PostgreSQL sends nothing of a COPY of the day's grouped runs until it has scanned the range,
/// and Npgsql waits for a raw COPY's first message under the connection string's command
/// timeout, which the COPY cannot override. These tests give the run a data source whose command
/// timeout is one second and keep PostgreSQL from answering the day's read for longer than that:
/// another transaction holds the usage table in ACCESS EXCLUSIVE mode, so that the read waits in
/// PostgreSQL exactly as a slow grouping keeps it waiting. The run must wait for it, and still
/// stop when it is cancelled.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class SettlementReadTimeoutTests(PostgresFixture postgres)
{
    private static readonly DateOnly Day = VoucherScene.Day;

    /// <summary>The command timeout of the run's data source, in seconds: Npgsql's smallest.</summary>
    private const int CommandTimeoutSeconds = 1;

    /// <summary>How long PostgreSQL keeps the read waiting once it waits: three command timeouts.</summary>
    private static readonly TimeSpan Held = TimeSpan.FromSeconds(3 * CommandTimeoutSeconds);

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public async Task A_day_read_that_PostgreSQL_answers_after_the_command_timeout_is_waited_for_and_settles(int segments)
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        await scene.ContractAsync(holder);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, Day, 120));
        await scene.IngestAsync("cluster-b", VoucherScene.Jobs(holder, Day, 120, prefix: "b"));
        await using NpgsqlDataSource timed = TimedDataSource(scene);
        DailySettlement settlement = new(timed, scene.Clock, NullLogger.Instance, new SettlementOptions { DaySegments = segments, DayRangesPerSegment = 1 });

        await using NpgsqlConnection holding = await scene.DataSource.OpenConnectionAsync();
        await using NpgsqlTransaction held = await holding.BeginTransactionAsync();
        await holding.ExecuteAsync("LOCK TABLE usage_records IN ACCESS EXCLUSIVE MODE", transaction: held);
        Task<SettlementOutcome> settling = settlement.SettleAsync(Day, VoucherScene.Batch, null, CancellationToken.None);
        await BlockedAsync(scene, holding, settling);
        await Task.Delay(Held);

        // Still waiting for PostgreSQL, well past the command timeout, and it settles once PostgreSQL answers.
        Assert.False(settling.IsCompleted, settling.Exception?.ToString());
        await held.CommitAsync();
        SettlementOutcome outcome = await settling;
        Assert.False(outcome.AlreadyClosed);
        Assert.Equal(240, outcome.DayRecords);
        Assert.Equal(1, await scene.ScalarAsync<long>("SELECT count(*) FROM settlement_runs WHERE day = @day", new { day = Day }));
    }

    [Fact]
    public async Task A_run_waiting_for_its_day_read_stops_when_cancelled_and_leaves_the_day_open()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        await scene.ContractAsync(holder);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, Day, 12));
        await using NpgsqlDataSource timed = TimedDataSource(scene);
        DailySettlement settlement = new(timed, scene.Clock, NullLogger.Instance, new SettlementOptions { DaySegments = 1, DayRangesPerSegment = 1 });

        SettlementOutcome? settled;
        await using (NpgsqlConnection holding = await scene.DataSource.OpenConnectionAsync())
        await using (NpgsqlTransaction held = await holding.BeginTransactionAsync())
        {
            await holding.ExecuteAsync("LOCK TABLE usage_records IN ACCESS EXCLUSIVE MODE", transaction: held);
            using var cancel = new CancellationTokenSource();
            Task<SettlementOutcome> settling = settlement.SettleAsync(Day, VoucherScene.Batch, null, cancel.Token);
            await BlockedAsync(scene, holding, settling);
            await Task.Delay(Held);

            // Cancelled while PostgreSQL still holds the read back: the run stops at once, not when the lock goes.
            Assert.False(settling.IsCompleted, settling.Exception?.ToString());
            var stopping = Stopwatch.StartNew();
            await cancel.CancelAsync();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => settling);
            Assert.True(stopping.Elapsed < TimeSpan.FromSeconds(10), $"the run took {stopping.Elapsed} to stop");
            Assert.Equal(0, await scene.ScalarAsync<long>("SELECT count(*) FROM settlement_runs"));
            await held.RollbackAsync();
        }

        // Nothing of the cancelled run stands in the way of the next.
        settled = await settlement.SettleAsync(Day, VoucherScene.Batch, null, CancellationToken.None);
        Assert.False(settled.AlreadyClosed);
        Assert.Equal(12, settled.DayRecords);
    }

    /// <summary>A data source on the scene's database whose command timeout is <see cref="CommandTimeoutSeconds"/>.</summary>
    private static NpgsqlDataSource TimedDataSource(VoucherScene scene) =>
        Database.CreateDataSource(new NpgsqlConnectionStringBuilder(scene.ConnectionString) { CommandTimeout = CommandTimeoutSeconds }.ConnectionString);

    /// <summary>Waits until a backend of the run waits for the holding connection's lock.</summary>
    private static async Task BlockedAsync(VoucherScene scene, NpgsqlConnection holding, Task settling)
    {
        var waited = Stopwatch.StartNew();
        while (await scene.ScalarAsync<long>("SELECT count(*) FROM pg_stat_activity WHERE @holder = ANY(pg_blocking_pids(pid))", new { holder = holding.ProcessID }) == 0)
        {
            Assert.False(settling.IsCompleted, $"the run ended before it waited for the lock: {settling.Exception}");
            Assert.True(waited.Elapsed < TimeSpan.FromSeconds(30), "the run never reached the usage table");
            await Task.Delay(20);
        }
    }
}
