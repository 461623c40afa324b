using System.Collections.Concurrent;
using System.Diagnostics;
using Metering.Engine.Capacity;
using Metering.Engine.Storage;
using Metering.Engine.Telemetry;

namespace Metering.Engine.Ingest;

/// <summary>
/// Group commit per provider: the batches that one provider's streams have ready while a commit of
/// that provider is running are committed together in the next transaction, with one head lock
/// per stream, one COPY, one registry epoch check, one fleet check over all of them and one
/// COMMIT (one WAL flush). A batch that arrives while the provider has nothing committing starts
/// at once, so a lone stream waits for nothing. Each stream still gets its own outcome: its
/// session acknowledges its own batch with its own mark and chain head, and only after the COMMIT
/// that holds it.
///
/// A stream whose server prepares its next batch while the one before commits may have two or
/// more consecutive batches waiting; one group takes them together, as one run of rows after the
/// stream's mark, so a stream's batches commit in order and a group fills with whatever the
/// provider's streams have ready.
///
/// A group that fails as a whole (one stream's batch above the fleet, a stream taken over, the
/// registry changed) is rolled back and its batches are committed again one by one in arrival
/// order, each with its own checks, so a refusal reaches only the stream it belongs to and the
/// others commit exactly as if they had come alone. The fleet check over the union is never more
/// lenient than the batches one after another: at every second a batch touches, the group's sum
/// includes that batch and everything committed before it. A batch that failed takes every later
/// batch of its stream with it, unwritten (<see cref="EarlierBatchFailedException"/>): they are
/// chained on records that were not committed.
///
/// Up to <see cref="IngestLimits.GroupCommitsInFlightMax"/> groups of a provider are in flight:
/// the next group copies its rows, on a connection of its own, while the group ahead locks the
/// heads, checks the registry and the fleet, moves the heads and commits, which is the part that
/// runs one group at a time. A group locks only after the group ahead has ended, so it reads the
/// marks and the concurrency sums that group committed, exactly as if the two had run one after
/// the other; a batch that fails ahead fails its stream's later batches in the group in flight
/// too, and that group is rolled back and committed batch by batch.
/// </summary>
public sealed class GroupCommitter(UsageStore store, TimeProvider time, IngestLimits limits)
{
    private readonly ConcurrentDictionary<string, ProviderQueue> _providers = new(StringComparer.Ordinal);
    private long _groupsCommitted;
    private long _groupsSplit;
    private long _groupsFailedAhead;
    private long _transactions;
    private long _batches;

    /// <summary>How many transactions committed more than one stream's batch.</summary>
    internal long GroupsCommitted => Interlocked.Read(ref _groupsCommitted);

    /// <summary>How many groups failed as a whole and were committed again batch by batch.</summary>
    internal long GroupsSplit => Interlocked.Read(ref _groupsSplit);

    /// <summary>
    /// How many groups in flight were rolled back before they locked anything because a batch of
    /// theirs had already failed with an earlier batch of its stream in a group ahead.
    /// </summary>
    internal long GroupsFailedAhead => Interlocked.Read(ref _groupsFailedAhead);

    /// <summary>How many transactions committed, and how many stream batches they held: how full the groups ran.</summary>
    internal (long Transactions, long Batches) Committed => (Interlocked.Read(ref _transactions), Interlocked.Read(ref _batches));

    /// <summary>How many batches of the provider wait for its next commit (not counting those of groups in flight).</summary>
    internal int WaitingOf(string providerId)
    {
        if (!_providers.TryGetValue(providerId, out ProviderQueue? queue))
        {
            return 0;
        }

        lock (queue.Gate)
        {
            return queue.Waiting.Count;
        }
    }

    /// <summary>How many groups of the provider are taken and not ended: copying, waiting for the group ahead, or committing.</summary>
    internal int GroupsInFlightOf(string providerId)
    {
        if (!_providers.TryGetValue(providerId, out ProviderQueue? queue))
        {
            return 0;
        }

        lock (queue.Gate)
        {
            return queue.InFlight.Count;
        }
    }

    /// <summary>
    /// Queues one stream's prepared batch for its provider's next commit; the task ends when the
    /// commit holding it has committed or failed. A batch whose <see cref="PendingCommit.Cancelled"/>
    /// token fires before a commit takes it is dropped unwritten; once taken it is committed (or
    /// not) whatever the token says, so the caller must await the task without cancelling it
    /// before it tells its client anything or lets the stream go.
    /// </summary>
    internal Task CommitAsync(string providerId, PendingCommit pending)
    {
        ProviderQueue queue = _providers.GetOrAdd(providerId, static _ => new ProviderQueue());
        bool start;
        TaskCompletionSource? arrival;
        lock (queue.Gate)
        {
            queue.Waiting.Add(pending);
            start = !queue.Draining;
            queue.Draining = true;
            arrival = queue.Arrival;
            queue.Arrival = null;
        }

        arrival?.TrySetResult();
        if (start)
        {
            _ = Task.Run(() => DrainAsync(providerId, queue));
        }

        return pending.Done.Task;
    }

    /// <summary>
    /// Takes the provider's groups in arrival order and runs each (<see cref="RunGroupAsync"/>).
    /// With <see cref="IngestLimits.GroupCommitsInFlightMax"/> above 1, the next group is taken as
    /// soon as the one before has copied its rows, while that one locks, checks and commits, so
    /// the COPYs of consecutive groups overlap with the part of a commit that runs one at a time;
    /// the batches that arrive during a COPY gather for the next group. Each group still locks,
    /// checks and commits only after the group ahead of it has ended.
    /// </summary>
    private async Task DrainAsync(string providerId, ProviderQueue queue)
    {
        var leftBehind = new HashSet<string>(StringComparer.Ordinal);
        var ends = new Queue<Task>();
        Task ahead = Task.CompletedTask;
        Task aheadCopied = Task.CompletedTask;
        while (true)
        {
            await aheadCopied;
            while (ends.Count > 0 && ends.Peek().IsCompleted)
            {
                _ = ends.Dequeue();
            }

            if (ends.Count >= limits.GroupCommitsInFlightMax)
            {
                await ends.Dequeue();
                continue;
            }

            var taken = new List<PendingCommit>();
            Task? arrived = null;
            lock (queue.Gate)
            {
                if (queue.Waiting.Count > 0)
                {
                    Take(queue.Waiting, taken, limits.GroupCommitBatchesMax, leftBehind);
                }

                if (taken.Count > 0)
                {
                    queue.InFlight.Add(taken);
                }
                else if (queue.Waiting.Count == 0 && ends.Count == 0)
                {
                    queue.Draining = false;
                    return;
                }
                else if (queue.Waiting.Count == 0)
                {
                    queue.Arrival = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                    arrived = queue.Arrival.Task;
                }
            }

            if (taken.Count == 0)
            {
                if (arrived is not null)
                {
                    // Nothing waits, and a group is still in flight: the next batch to arrive, or
                    // the end of the oldest group, whichever comes first.
                    await Task.WhenAny(arrived, ends.Peek());
                }

                continue;
            }

            var copied = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            ahead = RunGroupAsync(providerId, queue, taken, ahead, copied);
            aheadCopied = copied.Task;
            ends.Enqueue(ahead);
        }
    }

    /// <summary>
    /// Moves into <paramref name="taken"/> the waiting batches the next transaction can hold:
    /// those checked against the same registry epoch as the oldest, in arrival order, at most
    /// <paramref name="batchesMax"/>. A stream's batches wait in its order, each continuing the one
    /// before; a batch left behind keeps every later batch of its stream behind too, so a group
    /// never holds a batch without the one it continues. Batches whose caller gave up are dropped.
    /// </summary>
    private static void Take(List<PendingCommit> waiting, List<PendingCommit> taken, int batchesMax, HashSet<string> leftBehind)
    {
        long? epoch = null;
        leftBehind.Clear();
        for (int i = 0; i < waiting.Count && taken.Count < batchesMax;)
        {
            PendingCommit pending = waiting[i];
            if (pending.Cancelled.IsCancellationRequested)
            {
                waiting.RemoveAt(i);
                pending.Done.TrySetCanceled(pending.Cancelled);
                continue;
            }

            epoch ??= pending.ExpectedEpoch;
            if (pending.ExpectedEpoch == epoch && !leftBehind.Contains(pending.StreamId))
            {
                Debug.Assert(taken.FindLast(t => t.StreamId == pending.StreamId) is not { } before || before.LastSequence == pending.ExpectedSequence,
                    "A stream's batches wait in its order, each continuing the one before.");
                waiting.RemoveAt(i);
                taken.Add(pending);
                continue;
            }

            leftBehind.Add(pending.StreamId);
            i++;
        }
    }

    /// <summary>
    /// Copies the group's rows in a transaction of its own, signals <paramref name="copied"/>, waits
    /// for the group ahead to end (<paramref name="ahead"/>), then locks, checks and commits. Only
    /// then do the group's sums and marks include everything the groups before it committed, so the
    /// fleet check and the head check are as strict as with one group at a time. A group that the
    /// group ahead left with a failed batch (a later batch of a stream that failed there), or that
    /// fails as a whole, is rolled back and committed again batch by batch. Never throws: every
    /// batch's outcome goes to its <see cref="PendingCommit.Done"/>.
    /// </summary>
    private async Task RunGroupAsync(string providerId, ProviderQueue queue, List<PendingCommit> taken, Task ahead, TaskCompletionSource copied)
    {
        try
        {
            (List<StreamBatch> batches, IReadOnlyList<ICommitStep> steps) = GroupOf(providerId, taken);
            UsageStore.OpenGroupCommit? open = null;
            Exception? failure = null;
            try
            {
                open = await store.BeginGroupAsync(providerId, batches, steps, CancellationToken.None);
            }
            catch (Exception e)
            {
                failure = e;
            }
            finally
            {
                copied.TrySetResult();
            }

            try
            {
                await ahead;
                if (open is not null && taken.Exists(pending => pending.Done.Task.IsCompleted))
                {
                    Interlocked.Increment(ref _groupsFailedAhead);
                }
                else if (open is not null)
                {
                    await open.FinishAsync(CancellationToken.None);
                    Interlocked.Increment(ref _transactions);
                    Interlocked.Add(ref _batches, taken.Count);
                    if (taken.Count > 1)
                    {
                        Interlocked.Increment(ref _groupsCommitted);
                    }

                    MeteringTelemetry.GroupCommitted(providerId, taken.Count);
                    foreach (PendingCommit pending in taken)
                    {
                        pending.Done.TrySetResult();
                    }

                    return;
                }
            }
            catch (Exception e)
            {
                failure = e;
            }
            finally
            {
                // Rolled back before anything of it is committed again below, which would
                // otherwise wait for its own uncommitted rows.
                if (open is not null)
                {
                    await open.DisposeAsync();
                }
            }

            if (taken.TrueForAll(pending => pending.Done.Task.IsCompleted))
            {
                // Every batch failed with an earlier batch of its stream in a group ahead.
                return;
            }

            if (taken.Count == 1 && failure is not null)
            {
                // A lone batch's own commit failed: that is its outcome.
                FailWithLaterBatches(queue, taken, 0, failure);
                return;
            }

            // The whole group was rolled back; which batch caused it, and how each stream should be
            // answered, is found by committing them one by one below.
            Interlocked.Increment(ref _groupsSplit);
            await CommitOneByOneAsync(providerId, queue, taken);
        }
        catch (Exception e)
        {
            // Not expected: every failure of a commit is caught above. The batches still get an
            // answer, so that no stream waits for ever.
            foreach (PendingCommit pending in taken)
            {
                pending.Done.TrySetException(e);
            }
        }
        finally
        {
            copied.TrySetResult();
            lock (queue.Gate)
            {
                queue.InFlight.Remove(taken);
            }
        }
    }

    private async Task CommitOneByOneAsync(string providerId, ProviderQueue queue, List<PendingCommit> taken)
    {
        for (int i = 0; i < taken.Count; i++)
        {
            PendingCommit pending = taken[i];
            if (pending.Done.Task.IsCompleted)
            {
                // Failed with a batch of its stream before it, in this group or a group ahead.
                continue;
            }

            try
            {
                await store.CommitAsync(providerId, pending.StreamId, pending.ExpectedSequence, pending.Rows, pending.Steps, CancellationToken.None);
                MeteringTelemetry.GroupCommitted(providerId, 1);
                Interlocked.Increment(ref _transactions);
                Interlocked.Increment(ref _batches);
                pending.Done.TrySetResult();
            }
            catch (Exception e)
            {
                FailWithLaterBatches(queue, taken, i, e);
            }
        }
    }

    /// <summary>
    /// Fails a batch, and with it every later batch of its stream, in this group, in a group behind
    /// it already in flight (its rows copied, its transaction waiting for this group to end) or
    /// still waiting: they continue records that were not committed, so they could only fail on the
    /// stream's mark. A group behind that finds one of its batches failed rolls back as a whole.
    /// The later ones fail first, so that their stream learns of them before it sees the batch's
    /// own failure and lets them go.
    /// </summary>
    private static void FailWithLaterBatches(ProviderQueue queue, List<PendingCommit> taken, int index, Exception failure)
    {
        PendingCommit failed = taken[index];
        var later = new EarlierBatchFailedException(failed.StreamId, failed.ExpectedSequence);
        for (int i = index + 1; i < taken.Count; i++)
        {
            if (taken[i].StreamId == failed.StreamId)
            {
                taken[i].Done.TrySetException(later);
            }
        }

        lock (queue.Gate)
        {
            // Groups in flight are listed in take order; those after this one are behind it.
            for (int g = queue.InFlight.IndexOf(taken) + 1; g is > 0 && g < queue.InFlight.Count; g++)
            {
                foreach (PendingCommit behind in queue.InFlight[g])
                {
                    if (behind.StreamId == failed.StreamId)
                    {
                        behind.Done.TrySetException(later);
                    }
                }
            }

            for (int i = 0; i < queue.Waiting.Count;)
            {
                if (queue.Waiting[i].StreamId == failed.StreamId)
                {
                    queue.Waiting[i].Done.TrySetException(later);
                    queue.Waiting.RemoveAt(i);
                    continue;
                }

                i++;
            }
        }

        failed.Done.TrySetException(failure);
    }

    /// <summary>
    /// What the taken batches commit as: a stream's consecutive batches as one run of rows after
    /// its mark, and the group's steps (one registry epoch check, one fleet check over all of
    /// them), or a lone batch's own steps.
    /// </summary>
    private (List<StreamBatch> Batches, IReadOnlyList<ICommitStep> Steps) GroupOf(string providerId, List<PendingCommit> taken)
    {
        var batches = new List<StreamBatch>(taken.Count);
        if (taken.Count == 1)
        {
            batches.Add(new StreamBatch(taken[0].StreamId, taken[0].ExpectedSequence, taken[0].Rows));
            return (batches, taken[0].Steps);
        }

        var prepared = new PreparedRecords[taken.Count];
        for (int i = 0; i < taken.Count; i++)
        {
            prepared[i] = taken[i].Rows;
            int run = batches.FindIndex(b => b.StreamId == taken[i].StreamId);
            if (run < 0)
            {
                batches.Add(new StreamBatch(taken[i].StreamId, taken[i].ExpectedSequence, taken[i].Rows));
                continue;
            }

            // A later batch of a stream already in the group continues it: its rows go after the
            // ones before, under the mark the first one expects.
            batches[run] = batches[run] with { Rows = PreparedRun.Append(batches[run].Rows, taken[i].Rows) };
        }

        var epochStep = new AdmissionEpochStep(providerId) { ExpectedEpoch = taken[0].ExpectedEpoch };
        var fleetStep = new FleetConcurrencyStep(providerId, prepared, time, limits.ConcurrencyMinutesPerBatchMax) { Fleet = taken[0].Fleet };
        return (batches, [epochStep, fleetStep]);
    }

    private sealed class ProviderQueue
    {
        public Lock Gate { get; } = new();

        public List<PendingCommit> Waiting { get; } = [];

        /// <summary>The groups taken and not ended, in take order.</summary>
        public List<List<PendingCommit>> InFlight { get; } = [];

        public bool Draining { get; set; }

        /// <summary>Set by the next batch to arrive, for a drain that waits with nothing to take.</summary>
        public TaskCompletionSource? Arrival { get; set; }
    }
}

/// <summary>
/// One stream's prepared batch waiting for its provider's group commit, with what committing it
/// alone takes (its session's own steps), should its group fail.
/// </summary>
internal sealed class PendingCommit(string streamId, ulong expectedSequence, PreparedRecords rows, long expectedEpoch, FleetSnapshot fleet,
    IReadOnlyList<ICommitStep> steps, CancellationToken cancelled)
{
    public string StreamId { get; } = streamId;

    public ulong ExpectedSequence { get; } = expectedSequence;

    public PreparedRecords Rows { get; } = rows;

    /// <summary>The sequence of the batch's last record: the mark the stream's next batch expects.</summary>
    public ulong LastSequence => Rows.Records[Rows.Count - 1].Sequence;

    /// <summary>The registry epoch the batch was checked against; a group holds batches of one epoch.</summary>
    public long ExpectedEpoch { get; } = expectedEpoch;

    /// <summary>The fleet read at <see cref="ExpectedEpoch"/>.</summary>
    public FleetSnapshot Fleet { get; } = fleet;

    public IReadOnlyList<ICommitStep> Steps { get; } = steps;

    public CancellationToken Cancelled { get; } = cancelled;

    public TaskCompletionSource Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
}

/// <summary>
/// A batch was not committed because a batch of its stream before it failed: it continues records
/// that are not there. The stream's session reports the earlier batch's failure, not this.
/// </summary>
internal sealed class EarlierBatchFailedException(string streamId, ulong expectedSequence)
    : Exception($"Stream {streamId}: the batch after {expectedSequence} failed, so the batches queued behind it were not committed.");
