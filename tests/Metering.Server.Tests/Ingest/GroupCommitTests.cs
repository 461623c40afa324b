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
///
/// The tests of how groups form run with one group commit in flight per provider
/// (<see cref="IngestLimits.GroupCommitsInFlightMax"/> 1): with two, the first batch behind the
/// blocker would be taken at once, as a group of its own that copies its rows while the blocker
/// waits. The tests of that pipeline run with the default, two.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class GroupCommitTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Batches_that_queue_behind_a_commit_commit_in_one_transaction_and_each_stream_gets_its_own_acknowledgement()
    {
        await using Admitted admitted = await AdmitAsync();
        var (scene, code, _, start, committer) = admitted;
        await using IngestCall blocker = await admitted.OpenAsync("blocker");
        await using IngestCall a = await admitted.OpenAsync("a");
        await using IngestCall b = await admitted.OpenAsync("b");
        await using IngestCall c = await admitted.OpenAsync("c");

        var (blocked, queued) = await QueueBehindBlockerAsync(scene, committer, code, blocker, start, [
            (a, [At(1, start, 50), At(2, start.AddMinutes(1), 10)]),
            (b, [At(1, start, 50)]),
            (c, [At(1, start, 50), At(2, start.AddMinutes(2), 10), At(3, start.AddMinutes(3), 10)]),
        ]);
        long groupsBefore = committer.GroupsCommitted;
        await ReleaseAsync(blocked);
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
        await using Admitted admitted = await AdmitAsync();
        var (scene, code, _, start, committer) = admitted;
        await using IngestCall blocker = await admitted.OpenAsync("blocker");
        await using IngestCall a = await admitted.OpenAsync("a");
        await using IngestCall b = await admitted.OpenAsync("b");
        await using IngestCall c = await admitted.OpenAsync("c");

        // b alone needs 321 devices of a fleet of 320 at seconds no other record touches, whatever
        // order the batches arrive in; a and c together need 300.
        var (blocked, queued) = await QueueBehindBlockerAsync(scene, committer, code, blocker, start, [
            (a, [At(1, start, 200)]),
            (b, [At(1, start.AddMinutes(40), 321)]),
            (c, [At(1, start, 100), At(2, start.AddHours(2), 10)]),
        ]);
        long splitBefore = committer.GroupsSplit;
        await ReleaseAsync(blocked);

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

    [Fact]
    public async Task Consecutive_batches_of_one_stream_sent_ahead_commit_in_one_group_and_are_acknowledged_in_order()
    {
        await using Admitted admitted = await AdmitAsync();
        var (scene, code, _, start, committer) = admitted;
        await using IngestCall blocker = await admitted.OpenAsync("blocker");
        await using IngestCall a = await admitted.OpenAsync("a");
        await using IngestCall b = await admitted.OpenAsync("b");

        // a sends two batches without waiting: the server begins the second while the first waits,
        // so both queue behind the blocked commit, with b's one.
        Blocked blocked = await BlockAsync(scene, code, blocker, start);
        await SendAheadAsync(a, [At(1, start, 10), At(2, start.AddMinutes(1), 10)]);
        await SendAheadAsync(a, [At(3, start.AddMinutes(2), 10), At(4, start.AddMinutes(3), 10)]);
        Task<BatchAck> bAck = b.SendAsync([At(1, start, 10)]);
        await WaitQueuedAsync(committer, code, 3, blocked);
        long groupsBefore = committer.GroupsCommitted;
        await ReleaseAsync(blocked);

        BatchAck first = await ReadAckAsync(a);
        BatchAck second = await ReadAckAsync(a);
        Assert.Equal((1UL, 2UL, 2UL), (first.FirstSequence, first.LastSequence, first.CommittedSequence));
        Assert.Equal((3UL, 4UL, 4UL), (second.FirstSequence, second.LastSequence, second.CommittedSequence));
        Assert.Equal(1UL, (await bAck).CommittedSequence);
        Assert.Equal(groupsBefore + 1, committer.GroupsCommitted);
        // One transaction wrote both of a's batches and b's.
        Assert.Equal(1L, await scene.Server.ScalarAsync<long>(
            "SELECT count(DISTINCT xmin::text) FROM usage_records WHERE provider_id = @code AND stream_id IN ('a', 'b')", new { code }));
        Assert.Equal(5L, await scene.Server.ScalarAsync<long>(
            "SELECT count(*) FROM usage_records WHERE provider_id = @code AND stream_id IN ('a', 'b')", new { code }));
        // Each acknowledgement carries the chain head of its own last record, as the database holds it.
        byte[][] hashes = (await scene.Server.QueryAsync<byte[]>(
            "SELECT chain_hash FROM usage_records WHERE provider_id = @code AND stream_id = 'a' ORDER BY sequence", new { code })).ToArray();
        Assert.Equal(hashes[1], first.ChainHead.ToByteArray());
        Assert.Equal(hashes[3], second.ChainHead.ToByteArray());
        Assert.Equal(hashes[3], await scene.Server.ScalarAsync<byte[]>(
            "SELECT chain_head FROM ingest_streams WHERE provider_id = @code AND stream_id = 'a'", new { code }));
    }

    [Fact]
    public async Task A_refused_batch_with_the_next_already_sent_ends_the_stream_with_the_refusal_and_commits_neither()
    {
        await using Admitted admitted = await AdmitAsync();
        var (scene, code, _, start, committer) = admitted;
        await using IngestCall blocker = await admitted.OpenAsync("blocker");
        await using IngestCall a = await admitted.OpenAsync("a");
        await using IngestCall b = await admitted.OpenAsync("b");

        // a's first batch needs 321 devices of a fleet of 320, which only its commit finds out; its
        // second batch, valid alone, continues it. The client then waits, sending nothing more.
        Blocked blocked = await BlockAsync(scene, code, blocker, start);
        await SendAheadAsync(a, [At(1, start.AddMinutes(40), 321)]);
        await SendAheadAsync(a, [At(2, start, 10)]);
        Task<BatchAck> bAck = b.SendAsync([At(1, start, 10)]);
        await WaitQueuedAsync(committer, code, 3, blocked);
        long splitBefore = committer.GroupsSplit;
        await ReleaseAsync(blocked);

        // The refusal arrives without the client sending again, and no acknowledgement before it.
        RpcException refused = await Assert.ThrowsAsync<RpcException>(a.ReadAsync).WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal((StatusCode.FailedPrecondition, "CONCURRENCY_ABOVE_FLEET"), (refused.StatusCode, IngestCall.Reason(refused)));
        Assert.Equal(1UL, (await bAck).CommittedSequence);
        Assert.Equal(splitBefore + 1, committer.GroupsSplit);
        await AssertAUnwrittenAndReopensAtItsMarkAsync(admitted);
    }

    [Fact]
    public async Task A_lone_batch_refused_at_its_commit_is_refused_while_the_client_waits_without_sending()
    {
        await using Admitted admitted = await AdmitAsync();
        var (scene, code, _, start, _) = admitted;
        await using IngestCall a = await admitted.OpenAsync("a");
        Assert.Equal(1UL, (await a.SendAsync([At(1, start, 10)])).CommittedSequence);

        // Begun ahead of its commit, the batch is refused by the commit while the server waits
        // for the client's next message: the refusal must not wait for that message.
        await SendAheadAsync(a, [At(2, start.AddMinutes(40), 321)]);
        RpcException refused = await Assert.ThrowsAsync<RpcException>(a.ReadAsync).WaitAsync(TimeSpan.FromSeconds(60));
        Assert.True(refused.StatusCode == StatusCode.FailedPrecondition, $"{refused.StatusCode}: {refused.Status.Detail}");
        Assert.Equal((StatusCode.FailedPrecondition, "CONCURRENCY_ABOVE_FLEET"), (refused.StatusCode, IngestCall.Reason(refused)));
        Assert.Equal(1L, await scene.Server.ScalarAsync<long>("SELECT committed_sequence FROM ingest_streams WHERE provider_id = @code AND stream_id = 'a'", new { code }));
    }

    [Fact]
    public async Task Batches_in_flight_when_the_registry_changes_are_checked_again_and_acknowledged_in_order()
    {
        await using Admitted admitted = await AdmitAsync();
        var (scene, code, _, start, committer) = admitted;
        await using IngestCall blocker = await admitted.OpenAsync("blocker");
        await using IngestCall a = await admitted.OpenAsync("a");

        Blocked blocked = await BlockAsync(scene, code, blocker, start);
        await SendAheadAsync(a, [At(1, start, 10)]);
        await SendAheadAsync(a, [At(2, start.AddMinutes(1), 10), At(3, start.AddMinutes(2), 10)]);
        await WaitQueuedAsync(committer, code, 2, blocked);
        // The registry moves on while every batch waits: each was checked against the old epoch,
        // so none may commit as it was prepared.
        await using (NpgsqlConnection owner = await scene.DataSource.OpenConnectionAsync())
        await using (var bump = new NpgsqlCommand("UPDATE organisations SET admission_epoch = admission_epoch + 1 WHERE provider_id = @code", owner))
        {
            bump.Parameters.AddWithValue("code", code);
            Assert.Equal(1, await bump.ExecuteNonQueryAsync());
        }

        await ReleaseAsync(blocked);
        BatchAck first = await ReadAckAsync(a);
        BatchAck second = await ReadAckAsync(a);
        Assert.Equal((1UL, 1UL), (first.LastSequence, first.CommittedSequence));
        Assert.Equal((3UL, 3UL), (second.LastSequence, second.CommittedSequence));
        Assert.Equal(3L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE provider_id = @code AND stream_id = 'a'", new { code }));
        Assert.Equal(second.ChainHead.ToByteArray(), await scene.Server.ScalarAsync<byte[]>(
            "SELECT chain_head FROM ingest_streams WHERE provider_id = @code AND stream_id = 'a'", new { code }));
    }

    [Fact]
    public async Task A_takeover_while_batches_wait_behind_a_commit_drops_them_unwritten_and_the_new_connection_opens_at_the_mark()
    {
        await using Admitted admitted = await AdmitAsync();
        var (scene, code, _, start, committer) = admitted;
        await using IngestCall blocker = await admitted.OpenAsync("blocker");
        await using IngestCall a = await admitted.OpenAsync("a");

        Blocked blocked = await BlockAsync(scene, code, blocker, start);
        await SendAheadAsync(a, [At(1, start, 10)]);
        await SendAheadAsync(a, [At(2, start.AddMinutes(1), 10)]);
        await WaitQueuedAsync(committer, code, 2, blocked);

        // The new connection waits until the old one lets go, which it does only once neither of
        // its batches can still commit.
        Task<IngestCall> taking = admitted.OpenAsync("a");
        await Task.Delay(200);
        Assert.False(taking.IsCompleted, "the new connection opened while the old one's batches could still commit");
        await ReleaseAsync(blocked);
        await using IngestCall taker = await taking;

        RpcException error = await Assert.ThrowsAsync<RpcException>(a.ReadAsync);
        Assert.Equal((StatusCode.Aborted, "STREAM_TAKEN_OVER"), (error.StatusCode, IngestCall.Reason(error)));
        long mark = await scene.Server.ScalarAsync<long>("SELECT committed_sequence FROM ingest_streams WHERE provider_id = @code AND stream_id = 'a'", new { code });
        Assert.Equal(0L, mark);
        Assert.Equal((ulong)mark, taker.Opened.CommittedSequence);
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE provider_id = @code AND stream_id = 'a'", new { code }));
        Assert.Equal(1UL, (await taker.SendAsync([At(1, start, 10)])).CommittedSequence);
    }

    [Fact]
    public async Task The_next_group_copies_its_rows_while_the_group_ahead_waits_and_commits_only_after_it()
    {
        await using Admitted admitted = await AdmitAsync(groupsInFlight: 2);
        var (scene, code, _, start, committer) = admitted;
        await using IngestCall blocker = await admitted.OpenAsync("blocker");
        await using IngestCall a = await admitted.OpenAsync("a");
        await using IngestCall b = await admitted.OpenAsync("b");

        Blocked blocked = await BlockAsync(scene, code, blocker, start);
        await SendAheadAsync(a, [At(1, start, 10)]);
        // a's batch is a group of its own, in flight behind the blocker's: its rows are copied in a
        // transaction that then waits, although it shares no lock with the blocker's commit.
        await WaitUntilAsync(async () => committer.GroupsInFlightOf(code) == 2 && await CopiedAndWaitingAsync(scene) == 1, "a's group never copied its rows behind the blocker");
        await Task.Delay(200);
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT committed_sequence FROM ingest_streams WHERE provider_id = @code AND stream_id = 'a'", new { code }));

        // Two groups are in flight: the next batches wait.
        await SendAheadAsync(a, [At(2, start.AddMinutes(1), 10)]);
        Task<BatchAck> bAck = b.SendAsync([At(1, start, 10)]);
        await WaitQueuedAsync(committer, code, 2, blocked);
        await ReleaseAsync(blocked);

        BatchAck first = await ReadAckAsync(a);
        BatchAck second = await ReadAckAsync(a);
        Assert.Equal((1UL, 2UL), (first.CommittedSequence, second.CommittedSequence));
        Assert.Equal(1UL, (await bAck).CommittedSequence);
        // The blocker's commit ended before a's began: a's rows carry a later transaction id.
        Assert.True(await scene.Server.ScalarAsync<bool>("""
            SELECT (SELECT max(xmin::text::bigint) FROM usage_records WHERE provider_id = @code AND stream_id = 'blocker')
                 < (SELECT min(xmin::text::bigint) FROM usage_records WHERE provider_id = @code AND stream_id = 'a')
            """, new { code }));
        Assert.Equal(second.ChainHead.ToByteArray(), await scene.Server.ScalarAsync<byte[]>(
            "SELECT chain_head FROM ingest_streams WHERE provider_id = @code AND stream_id = 'a'", new { code }));
    }

    [Fact]
    public async Task A_batch_refused_in_the_group_ahead_fails_the_later_batch_of_its_stream_in_the_group_in_flight_behind_it_and_the_others_commit()
    {
        await using Admitted admitted = await AdmitAsync(groupsInFlight: 2);
        var (scene, code, _, start, committer) = admitted;
        await using IngestCall blocker = await admitted.OpenAsync("blocker");
        await using IngestCall a = await admitted.OpenAsync("a");
        await using IngestCall b = await admitted.OpenAsync("b");

        // a's first batch needs 321 devices of a fleet of 320 and is a group of its own behind the
        // blocker; its second batch, valid alone, and b's wait for the next group.
        Blocked blocked = await BlockAsync(scene, code, blocker, start);
        await SendAheadAsync(a, [At(1, start.AddMinutes(40), 321)]);
        await WaitUntilAsync(async () => committer.GroupsInFlightOf(code) == 2 && await CopiedAndWaitingAsync(scene) == 1, "a's first group never copied its rows");
        await SendAheadAsync(a, [At(2, start, 10)]);
        Task<BatchAck> bAck = b.SendAsync([At(1, start, 10)]);
        await WaitQueuedAsync(committer, code, 2, blocked);

        // a's head row is held too, so that a's first group, once the blocker's ends, waits at its
        // head lock while the next group is taken and copies a's second batch and b's.
        (NpgsqlConnection holder, NpgsqlTransaction held) = await HoldHeadAsync(scene, code, "a");
        long splitBefore = committer.GroupsSplit;
        long failedAheadBefore = committer.GroupsFailedAhead;
        await ReleaseAsync(blocked);
        await WaitUntilAsync(async () => committer.WaitingOf(code) == 0 && await CopiedAndWaitingAsync(scene) == 1
            && await scene.Server.ScalarAsync<long>("SELECT count(*) FROM pg_stat_activity WHERE @holder = ANY(pg_blocking_pids(pid))", new { holder = holder.ProcessID }) == 1,
            "the next group was not in flight while a's first group waited for its head");
        await held.CommitAsync();
        await held.DisposeAsync();
        await holder.DisposeAsync();

        RpcException refused = await Assert.ThrowsAsync<RpcException>(a.ReadAsync).WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal((StatusCode.FailedPrecondition, "CONCURRENCY_ABOVE_FLEET"), (refused.StatusCode, IngestCall.Reason(refused)));
        Assert.Equal(1UL, (await bAck).CommittedSequence);
        Assert.Equal(splitBefore + 1, committer.GroupsSplit);
        // The group behind learnt of the failure before it locked anything: its batch of a failed
        // with a's first, not on a's mark.
        Assert.Equal(failedAheadBefore + 1, committer.GroupsFailedAhead);
        Assert.Equal(1L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE provider_id = @code AND stream_id = 'b'", new { code }));
        await AssertAUnwrittenAndReopensAtItsMarkAsync(admitted);
    }

    [Fact]
    public async Task Another_writer_committing_the_same_records_while_the_copy_waits_for_them_ends_the_stream_as_taken_over()
    {
        await using Admitted admitted = await AdmitAsync(groupsInFlight: 2);
        var (scene, code, _, start, _) = admitted;
        await using IngestCall a = await admitted.OpenAsync("a");

        // Another writer (a server process that took the stream over) has written a's record 1,
        // with the same start, and not committed yet: this server's COPY of record 1 waits for it
        // at the unique index, before this server locks the head.
        UsageRecord record = At(1, start, 10);
        byte[] theirs = new byte[32];
        theirs[0] = 7;
        await using NpgsqlConnection other = await scene.DataSource.OpenConnectionAsync();
        await using NpgsqlTransaction writing = await other.BeginTransactionAsync();
        await using (var write = new NpgsqlCommand("""
            INSERT INTO usage_records (provider_id, stream_id, sequence, job_id, holder_code, device_model, device_count, share_numerator, share_denominator,
                start_at, end_at, site, catalog_version, usage_npfh, chain_hash)
            VALUES (@code, 'a', 1, 'theirs', @holder, 'H100-SXM', 10, 1, 1, @start, @end, 'sz-nanshan-dc1', 'theirs', 0, @hash);
            UPDATE ingest_streams SET committed_sequence = 1, chain_head = @hash WHERE provider_id = @code AND stream_id = 'a';
            """, other, writing))
        {
            write.Parameters.AddWithValue("code", code);
            write.Parameters.AddWithValue("holder", TestRecords.Holder);
            write.Parameters.AddWithValue("start", DateTimeOffset.FromUnixTimeMilliseconds(record.StartUnixMs).UtcDateTime);
            write.Parameters.AddWithValue("end", DateTimeOffset.FromUnixTimeMilliseconds(record.EndUnixMs).UtcDateTime);
            write.Parameters.AddWithValue("hash", theirs);
            await write.ExecuteNonQueryAsync();
        }

        Task<BatchAck> ours = a.SendAsync([record]);
        await WaitUntilAsync(async () => await scene.Server.ScalarAsync<long>(
            "SELECT count(*) FROM pg_stat_activity WHERE @other = ANY(pg_blocking_pids(pid))", new { other = other.ProcessID }) == 1,
            "this server's COPY never waited for the other writer's record");
        await writing.CommitAsync();

        RpcException error = await Assert.ThrowsAsync<RpcException>(() => ours).WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal((StatusCode.Aborted, "STREAM_TAKEN_OVER"), (error.StatusCode, IngestCall.Reason(error)));
        Assert.Equal(theirs, await scene.Server.ScalarAsync<byte[]>(
            "SELECT chain_hash FROM usage_records WHERE provider_id = @code AND stream_id = 'a' AND sequence = 1", new { code }));
        Assert.Equal(1L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE provider_id = @code AND stream_id = 'a'", new { code }));
    }

    /// <summary>How many of the server's connections copied rows and wait, their transaction open: a group in flight behind another.</summary>
    /// <summary>
    /// Stream a committed nothing, neither mark nor rows, and reopens at its mark, taking the
    /// record of its batch that failed behind the refused one as its first.
    /// </summary>
    private static async Task AssertAUnwrittenAndReopensAtItsMarkAsync(Admitted admitted)
    {
        var (scene, code, _, start, _) = admitted;
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT committed_sequence FROM ingest_streams WHERE provider_id = @code AND stream_id = 'a'", new { code }));
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE provider_id = @code AND stream_id = 'a'", new { code }));
        await using IngestCall again = await admitted.OpenAsync("a");
        Assert.Equal(0UL, again.Opened.CommittedSequence);
        Assert.Equal(1UL, (await again.SendAsync([At(1, start, 10)])).CommittedSequence);
    }

    private static Task<long> CopiedAndWaitingAsync(RegistryScene scene) => scene.Server.ScalarAsync<long>(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' AND query LIKE 'COPY usage_records%'");

    private static async Task WaitUntilAsync(Func<Task<bool>> condition, string failure)
    {
        DateTime deadline = DateTime.UtcNow.AddSeconds(60);
        while (!await condition())
        {
            Assert.True(DateTime.UtcNow < deadline, failure);
            await Task.Delay(20);
        }
    }

    /// <summary>Holds the head row of <paramref name="stream"/> until the caller ends the returned transaction.</summary>
    private static async Task<(NpgsqlConnection Connection, NpgsqlTransaction Transaction)> HoldHeadAsync(RegistryScene scene, string code, string stream)
    {
        NpgsqlConnection connection = await scene.DataSource.OpenConnectionAsync();
        NpgsqlTransaction transaction = await connection.BeginTransactionAsync();
        await using var hold = new NpgsqlCommand("SELECT 1 FROM ingest_streams WHERE provider_id = @code AND stream_id = @stream FOR UPDATE", connection, transaction);
        hold.Parameters.AddWithValue("code", code);
        hold.Parameters.AddWithValue("stream", stream);
        await hold.ExecuteScalarAsync();
        return (connection, transaction);
    }

    /// <summary>A scene with one admitted provider, its key, and a clock three hours past the start of its records.</summary>
    /// <param name="groupsInFlight">The provider's group commits in flight at once (<see cref="IngestLimits.GroupCommitsInFlightMax"/>).</param>
    private async Task<Admitted> AdmitAsync(int groupsInFlight = 1)
    {
        RegistryScene scene = await RegistryScene.StartAsync(postgres, limits: new IngestLimits { GroupCommitsInFlightMax = groupsInFlight });
        var (code, key, _) = await scene.AdmitAsync();
        DateTimeOffset start = scene.Clock.Now.AddHours(1);
        scene.Clock.Now = start.AddHours(3);
        return new Admitted(scene, code, RegistryScene.KeyOf(key), start, scene.Server.Services.GetRequiredService<GroupCommitter>());
    }

    private sealed record Admitted(RegistryScene Scene, string Code, string Provider, DateTimeOffset Start, GroupCommitter Committer) : IAsyncDisposable
    {
        /// <summary>Opens <paramref name="stream"/> of the admitted provider on the scene's server.</summary>
        public Task<IngestCall> OpenAsync(string stream) => IngestCall.OpenAsync(Scene.Server.Client(), stream, Provider);

        public ValueTask DisposeAsync() => Scene.DisposeAsync();
    }

    /// <summary>
    /// Holds the blocker stream's head row, sends one batch on it (whose commit then waits for the
    /// row), sends the given batches and returns once all of them wait in the provider's queue.
    /// The caller ends the returned transaction to let the commits go.
    /// </summary>
    private static async Task<(Blocked Blocked, Task<BatchAck>[] Queued)> QueueBehindBlockerAsync(RegistryScene scene, GroupCommitter committer, string code,
        IngestCall blocker, DateTimeOffset start, (IngestCall Call, UsageRecord[] Records)[] batches)
    {
        Blocked blocked = await BlockAsync(scene, code, blocker, start);
        Task<BatchAck>[] queued = batches.Select(batch => batch.Call.SendAsync(batch.Records)).ToArray();
        await WaitQueuedAsync(committer, code, batches.Length, blocked);
        return (blocked, queued);
    }

    /// <summary>
    /// Holds the blocker stream's head row and sends one batch on it, whose commit then waits for
    /// the row, so that the provider's next batches queue behind it. The caller ends the returned
    /// transaction to let the commits go.
    /// </summary>
    private static async Task<Blocked> BlockAsync(RegistryScene scene, string code, IngestCall blocker, DateTimeOffset start)
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

        return new Blocked(connection, blocked, first);
    }

    /// <summary>Returns once <paramref name="batches"/> batches of the provider wait behind the blocked commit.</summary>
    private static async Task WaitQueuedAsync(GroupCommitter committer, string code, int batches, Blocked blocked)
    {
        DateTime deadline = DateTime.UtcNow.AddSeconds(60);
        while (committer.WaitingOf(code) < batches)
        {
            Assert.True(DateTime.UtcNow < deadline, $"only {committer.WaitingOf(code)} of {batches} batches queued behind the blocked commit");
            Assert.False(blocked.First.IsCompleted, "the blocker's commit finished while its head row was held");
            await Task.Delay(20);
        }
    }

    /// <summary>Sends a batch without waiting for its answer, as a client with batches in flight does.</summary>
    private static Task SendAheadAsync(IngestCall call, UsageRecord[] records) =>
        call.WriteRawAsync(new IngestRequest { Batch = new UsageBatch { Records = { records } } });

    private static async Task<BatchAck> ReadAckAsync(IngestCall call)
    {
        IngestResponse response = await call.ReadAsync();
        Assert.Equal(IngestResponse.KindOneofCase.Ack, response.KindCase);
        return response.Ack;
    }

    private sealed record Blocked(NpgsqlConnection Connection, NpgsqlTransaction Transaction, Task<BatchAck> First);

    /// <summary>Ends the transaction that held the blocker's head row, and checks that the blocker's own batch then committed.</summary>
    private static async Task ReleaseAsync(Blocked blocked)
    {
        await blocked.Transaction.CommitAsync();
        await blocked.Transaction.DisposeAsync();
        await blocked.Connection.DisposeAsync();
        Assert.Equal(1UL, (await blocked.First).CommittedSequence);
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
