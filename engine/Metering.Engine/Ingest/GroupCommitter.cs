using System.Collections.Concurrent;
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
/// A group that fails as a whole (one stream's batch above the fleet, a stream taken over, the
/// registry changed) is rolled back and its batches are committed again one by one in arrival
/// order, each with its own checks, so a refusal reaches only the stream it belongs to and the
/// others commit exactly as if they had come alone. The fleet check over the union is never more
/// lenient than the batches one after another: at every second a batch touches, the group's sum
/// includes that batch and everything committed before it.
/// </summary>
public sealed class GroupCommitter(UsageStore store, TimeProvider time, IngestLimits limits)
{
    private readonly ConcurrentDictionary<string, ProviderQueue> _providers = new(StringComparer.Ordinal);
    private long _groupsCommitted;
    private long _groupsSplit;

    /// <summary>How many transactions committed more than one stream's batch.</summary>
    internal long GroupsCommitted => Interlocked.Read(ref _groupsCommitted);

    /// <summary>How many groups failed as a whole and were committed again batch by batch.</summary>
    internal long GroupsSplit => Interlocked.Read(ref _groupsSplit);

    /// <summary>How many batches of the provider wait for its next commit (not counting one being committed).</summary>
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
        lock (queue.Gate)
        {
            queue.Waiting.Add(pending);
            start = !queue.Draining;
            queue.Draining = true;
        }

        if (start)
        {
            _ = Task.Run(() => DrainAsync(providerId, queue));
        }

        return pending.Done.Task;
    }

    private async Task DrainAsync(string providerId, ProviderQueue queue)
    {
        var taken = new List<PendingCommit>();
        while (true)
        {
            taken.Clear();
            lock (queue.Gate)
            {
                if (queue.Waiting.Count == 0)
                {
                    queue.Draining = false;
                    return;
                }

                Take(queue.Waiting, taken, limits.GroupCommitBatchesMax);
            }

            await CommitTakenAsync(providerId, taken);
        }
    }

    /// <summary>
    /// Moves into <paramref name="taken"/> the waiting batches the next transaction can hold:
    /// those checked against the same registry epoch as the oldest, one per stream, in arrival
    /// order, at most <paramref name="batchesMax"/>. Batches whose caller gave up are dropped.
    /// </summary>
    private static void Take(List<PendingCommit> waiting, List<PendingCommit> taken, int batchesMax)
    {
        long? epoch = null;
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
            if (pending.ExpectedEpoch == epoch && !taken.Exists(t => t.StreamId == pending.StreamId))
            {
                waiting.RemoveAt(i);
                taken.Add(pending);
                continue;
            }

            i++;
        }
    }

    private async Task CommitTakenAsync(string providerId, List<PendingCommit> taken)
    {
        if (taken.Count == 0)
        {
            return;
        }

        if (taken.Count > 1)
        {
            try
            {
                await CommitGroupAsync(providerId, taken);
                Interlocked.Increment(ref _groupsCommitted);
                MeteringTelemetry.GroupCommitted(providerId, taken.Count);
                foreach (PendingCommit pending in taken)
                {
                    pending.Done.TrySetResult();
                }

                return;
            }
            catch (Exception)
            {
                // The whole group was rolled back; which batch caused it, and how each stream
                // should be answered, is found by committing them one by one below.
                Interlocked.Increment(ref _groupsSplit);
            }
        }

        foreach (PendingCommit pending in taken)
        {
            try
            {
                await store.CommitAsync(providerId, pending.StreamId, pending.ExpectedSequence, pending.Rows, pending.Steps, CancellationToken.None);
                MeteringTelemetry.GroupCommitted(providerId, 1);
                pending.Done.TrySetResult();
            }
            catch (Exception e)
            {
                pending.Done.TrySetException(e);
            }
        }
    }

    /// <summary>Commits the taken batches in one transaction; visible to tests, which drive a group directly.</summary>
    internal async Task CommitGroupAsync(string providerId, IReadOnlyList<PendingCommit> taken)
    {
        var batches = new StreamBatch[taken.Count];
        var prepared = new PreparedRecords[taken.Count];
        for (int i = 0; i < taken.Count; i++)
        {
            batches[i] = new StreamBatch(taken[i].StreamId, taken[i].ExpectedSequence, taken[i].Rows);
            prepared[i] = taken[i].Rows;
        }

        var epochStep = new AdmissionEpochStep(providerId) { ExpectedEpoch = taken[0].ExpectedEpoch };
        var fleetStep = new FleetConcurrencyStep(providerId, prepared, time, limits.ConcurrencyMinutesPerBatchMax) { Fleet = taken[0].Fleet };
        await store.CommitGroupAsync(providerId, batches, [epochStep, fleetStep], CancellationToken.None);
    }

    private sealed class ProviderQueue
    {
        public Lock Gate { get; } = new();

        public List<PendingCommit> Waiting { get; } = [];

        public bool Draining { get; set; }
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

    /// <summary>The registry epoch the batch was checked against; a group holds batches of one epoch.</summary>
    public long ExpectedEpoch { get; } = expectedEpoch;

    /// <summary>The fleet read at <see cref="ExpectedEpoch"/>.</summary>
    public FleetSnapshot Fleet { get; } = fleet;

    public IReadOnlyList<ICommitStep> Steps { get; } = steps;

    public CancellationToken Cancelled { get; } = cancelled;

    public TaskCompletionSource Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
}
