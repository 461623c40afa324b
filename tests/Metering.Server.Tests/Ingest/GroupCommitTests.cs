using Grpc.Core;
using Metering.Engine.Ingest;
using Metering.Engine.Fixtures;
using Metering.Protocol.V1;
using Metering.Server.Fixtures;
using Metering.Fixtures;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;

namespace Metering.Server.Tests.Ingest;

/// <summary>
/// Group commit: the batches one provider's streams send while a commit of that provider runs are
/// committed together in one transaction, and each stream is still answered for its own batch
/// only. To make a group form every time, a test holds the head row of a stream the provider is
/// committing to, so that the other streams' batches queue behind that commit; releasing it lets
/// the queued batches go as one group. The scene's provider declared 320 H100 SXM.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class GroupCommitTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Batches_that_queue_behind_a_commit_commit_in_one_transaction_and_each_stream_gets_its_own_acknowledgement()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key, _) = await scene.AdmitAsync();
        DateTimeOffset start = scene.Clock.Now.AddHours(1);
        scene.Clock.Now = start.AddHours(3);
        string provider = RegistryScene.KeyOf(key);
        GroupCommitter committer = scene.Server.Services.GetRequiredService<GroupCommitter>();
        await using IngestCall blocker = await IngestCall.OpenAsync(scene.Server.Client(), "blocker", provider);
        await using IngestCall a = await IngestCall.OpenAsync(scene.Server.Client(), "a", provider);
        await using IngestCall b = await IngestCall.OpenAsync(scene.Server.Client(), "b", provider);
        await using IngestCall c = await IngestCall.OpenAsync(scene.Server.Client(), "c", provider);

        var (blocked, queued) = await QueueBehindBlockerAsync(scene, committer, code, blocker, start, [
            (a, [At(1, start, 50), At(2, start.AddMinutes(1), 10)]),
            (b, [At(1, start, 50)]),
            (c, [At(1, start, 50), At(2, start.AddMinutes(2), 10), At(3, start.AddMinutes(3), 10)]),
        ]);
        long groupsBefore = committer.GroupsCommitted;
        await ReleaseAsync(blocked);
        Assert.Equal(1UL, (await blocked.First).CommittedSequence);
        BatchAck[] acks = await Task.WhenAll(queued);

        Assert.Equal([2UL, 1UL, 3UL], acks.Select(ack => ack.CommittedSequence));
        Assert.Equal(groupsBefore + 1, committer.GroupsCommitted);
        // One transaction wrote the three streams' rows: they carry one transaction id.
        Assert.Equal(1L, await scene.Server.ScalarAsync<long>(
            "SELECT count(DISTINCT xmin::text) FROM usage_records WHERE provider_id = @code AND stream_id IN ('a', 'b', 'c')", new { code }));
        Assert.Equal(6L, await scene.Server.ScalarAsync<long>(
            "SELECT count(*) FROM usage_records WHERE provider_id = @code AND stream_id IN ('a', 'b', 'c')", new { code }));
        // Each acknowledgement carries its own stream's mark and chain head, as the database holds them.
        string[] streams = ["a", "b", "c"];
        for (int i = 0; i < streams.Length; i++)
        {
            byte[] head = await scene.Server.ScalarAsync<byte[]>(
                "SELECT chain_head FROM ingest_streams WHERE provider_id = @code AND stream_id = @stream", new { code, stream = streams[i] });
            Assert.Equal(head, acks[i].ChainHead.ToByteArray());
        }
    }

    [Fact]
    public async Task A_group_with_one_batch_above_the_fleet_refuses_only_that_stream_and_commits_the_others()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key, _) = await scene.AdmitAsync();
        DateTimeOffset start = scene.Clock.Now.AddHours(1);
        scene.Clock.Now = start.AddHours(3);
        string provider = RegistryScene.KeyOf(key);
        GroupCommitter committer = scene.Server.Services.GetRequiredService<GroupCommitter>();
        await using IngestCall blocker = await IngestCall.OpenAsync(scene.Server.Client(), "blocker", provider);
        await using IngestCall a = await IngestCall.OpenAsync(scene.Server.Client(), "a", provider);
        await using IngestCall b = await IngestCall.OpenAsync(scene.Server.Client(), "b", provider);
        await using IngestCall c = await IngestCall.OpenAsync(scene.Server.Client(), "c", provider);

        // b alone needs 321 devices of a fleet of 320 at seconds no other record touches, whatever
        // order the batches arrive in; a and c together need 300.
        var (blocked, queued) = await QueueBehindBlockerAsync(scene, committer, code, blocker, start, [
            (a, [At(1, start, 200)]),
            (b, [At(1, start.AddMinutes(40), 321)]),
            (c, [At(1, start, 100), At(2, start.AddHours(2), 10)]),
        ]);
        long splitBefore = committer.GroupsSplit;
        await ReleaseAsync(blocked);
        Assert.Equal(1UL, (await blocked.First).CommittedSequence);

        Assert.Equal(1UL, (await queued[0]).CommittedSequence);
        RpcException refused = await Assert.ThrowsAsync<RpcException>(() => queued[1]);
        Assert.Equal((StatusCode.FailedPrecondition, "CONCURRENCY_ABOVE_FLEET"), (refused.StatusCode, IngestCall.Reason(refused)));
        Assert.Contains("321.00 H100-SXM devices at once", refused.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(2UL, (await queued[2]).CommittedSequence);
        Assert.Equal(splitBefore + 1, committer.GroupsSplit);

        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT committed_sequence FROM ingest_streams WHERE provider_id = @code AND stream_id = 'b'", new { code }));
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE provider_id = @code AND stream_id = 'b'", new { code }));
        Assert.Equal(3L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE provider_id = @code AND stream_id IN ('a', 'c')", new { code }));
        // The concurrency sums hold a's and c's devices only: nothing of the rolled-back group stayed.
        Assert.Equal(300L, await scene.Server.ScalarAsync<long>(
            "SELECT max(l) FROM usage_concurrency, unnest(levels) AS l WHERE provider_id = @code", new { code }));
    }

    /// <summary>
    /// Holds the blocker stream's head row, sends one batch on it (whose commit then waits for the
    /// row), sends the given batches and returns once all of them wait in the provider's queue.
    /// The caller ends the returned transaction to let the commits go.
    /// </summary>
    private static async Task<(Blocked Blocked, Task<BatchAck>[] Queued)> QueueBehindBlockerAsync(RegistryScene scene, GroupCommitter committer, string code,
        IngestCall blocker, DateTimeOffset start, (IngestCall Call, UsageRecord[] Records)[] batches)
    {
        NpgsqlConnection connection = await scene.DataSource.OpenConnectionAsync();
        NpgsqlTransaction blocked = await connection.BeginTransactionAsync();
        await using (var hold = new NpgsqlCommand("SELECT 1 FROM ingest_streams WHERE provider_id = @code AND stream_id = 'blocker' FOR UPDATE", connection, blocked))
        {
            hold.Parameters.AddWithValue("code", code);
            await hold.ExecuteScalarAsync();
        }

        // The blocker's record shares no second with the others. Its commit must be the one
        // running (waiting for the held row) before the others are sent, or one of them could be
        // taken first and commit alone.
        Task<BatchAck> first = blocker.SendAsync([At(1, start.AddMinutes(150), 1)]);
        DateTime deadline = DateTime.UtcNow.AddSeconds(60);
        while (await scene.Server.ScalarAsync<long>("SELECT count(*) FROM pg_stat_activity WHERE @holder = ANY(pg_blocking_pids(pid))", new { holder = connection.ProcessID }) == 0)
        {
            Assert.True(DateTime.UtcNow < deadline, "the blocker's commit never waited for its held head row");
            await Task.Delay(20);
        }

        Task<BatchAck>[] queued = batches.Select(batch => batch.Call.SendAsync(batch.Records)).ToArray();
        while (committer.WaitingOf(code) < batches.Length)
        {
            Assert.True(DateTime.UtcNow < deadline, $"only {committer.WaitingOf(code)} of {batches.Length} batches queued behind the blocked commit");
            Assert.False(first.IsCompleted, "the blocker's commit finished while its head row was held");
            await Task.Delay(20);
        }

        return (new Blocked(connection, blocked, first), queued);
    }

    private sealed record Blocked(NpgsqlConnection Connection, NpgsqlTransaction Transaction, Task<BatchAck> First);

    private static async Task ReleaseAsync(Blocked blocked)
    {
        await blocked.Transaction.CommitAsync();
        await blocked.Transaction.DisposeAsync();
        await blocked.Connection.DisposeAsync();
    }

    private static UsageRecord At(ulong sequence, DateTimeOffset start, uint devices) => new()
    {
        Sequence = sequence,
        JobId = $"job-{sequence}",
        HolderCode = TestRecords.Holder,
        DeviceModel = "H100-SXM",
        DeviceCount = devices,
        ShareNumerator = 1,
        ShareDenominator = 1,
        StartUnixMs = start.ToUnixTimeMilliseconds(),
        EndUnixMs = (start + TimeSpan.FromMinutes(30)).ToUnixTimeMilliseconds(),
        Site = "sz-nanshan-dc1",
    };
}
