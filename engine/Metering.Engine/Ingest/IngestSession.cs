using System.Diagnostics;
using Metering.Engine.Catalog;
using Metering.Engine.Storage;
using Metering.Engine.Telemetry;

namespace Metering.Engine.Ingest;

/// <summary>A batch was refused; nothing of it was committed.</summary>
public sealed class IngestRefusedException(Refusal refusal, ulong? sequence = null, ulong? expectedSequence = null)
    : Exception(refusal.Message)
{
    public Refusal Refusal { get; } = refusal;

    /// <summary>The record that caused the refusal, when one did.</summary>
    public ulong? Sequence { get; } = sequence;

    /// <summary>For a sequence gap, the sequence the server wanted next.</summary>
    public ulong? ExpectedSequence { get; } = expectedSequence;
}

/// <summary>What one accepted batch did to the stream.</summary>
public readonly record struct BatchOutcome(ulong FirstSequence, ulong LastSequence, ulong CommittedSequence, byte[] ChainHead, int ReplayedRecords, int CommittedRecords);

/// <summary>What one accepted heartbeat did: the server minute it fell in, and whether it wrote that minute.</summary>
public readonly record struct HeartbeatOutcome(long MinuteUnixMs, long ServerUnixMs, bool Recorded, ulong CommittedSequence);

/// <summary>
/// One writer's session on one stream: validates, normalises and chains each batch, then commits
/// it. The session caches the committed mark and chain head; the database re-checks the mark on
/// every commit, so a stale session fails instead of forking the chain.
///
/// A batch goes either through <see cref="AppendAsync"/>, which returns once it has committed, or
/// ahead (<see cref="BeginAhead(IReadOnlyList{IngestRecord}, CancellationToken)"/>): it is
/// validated, chained on the last batch begun and, on a group-committed stream, queued for its
/// provider's next group commit while the batches before it may still be committing, or, with a
/// step of the caller's alongside (a raw-log upload's flush), committed in a transaction of its
/// own whose rows are copied while the batch before it commits. <see cref="EndOldestAheadAsync"/>
/// then waits for the commits in the order they began. A batch begun ahead commits only if every
/// batch before it did: it expects the stream's mark where the batch before it ends, and the
/// database checks that mark.
/// Not thread-safe: a stream has a single writer, and one caller drives it.
/// </summary>
public sealed class IngestSession
{
    private readonly UsageStore _store;
    private readonly RecordValidator _validator;
    private readonly TimeProvider _time;
    private readonly CommitSlot?[] _slots;
    private readonly byte[] _scratch;
    private readonly DeviceModel?[] _validatedModels;
    private readonly string? _peer;
    private readonly AdmissionGate _gate;
    private readonly bool _proofStream;
    private readonly HeartbeatMinutes _heartbeats;
    private readonly int _batchRecordsMax;
    private readonly GroupCommitter? _committer;
    private AdmissionSnapshot _admission;
    private ulong _committed;
    private byte[] _head;

    // The batches begun ahead and not yet ended, a ring over the slots: the oldest is at
    // _aheadFirst. _preparedThrough and _preparedHead are where the last of them ends (the
    // committed mark and head when none is), which the next batch begun ahead is chained on.
    private int _aheadFirst;
    private int _aheadCount;
    private ulong _preparedThrough;
    private readonly byte[] _preparedHead = new byte[CanonicalEncoding.HashBytes];

    /// <summary>Stream ids with this prefix carry an applicant's metering-log proof; see ingest.proto.</summary>
    public const string ProofStreamPrefix = "proof:";

    /// <summary>
    /// How many times a batch is tried when the registry changes under its commit. Registry
    /// changes to one organisation are rare, so running out means something is wrong and the
    /// client is told to retry.
    /// </summary>
    private const int AdmissionAttemptsMax = 4;

    /// <summary>A proof stream shows the platform keeps a verifiable log; it is not a place for usage.</summary>
    public const ulong ProofRecordsMax = 10_000;

    /// <param name="batchRecordsMax">
    /// Most records one batch may hold: the stream limit (<see cref="IngestLimits.BatchRecordsMax"/>)
    /// unless the caller is a raw-log upload, whose flushes may be larger
    /// (<see cref="IngestLimits.UploadFlushRecordsMax"/>).
    /// </param>
    /// <param name="committer">
    /// The provider's group commit, or null to commit every batch in a transaction of its own. A
    /// proof stream's batches and those with a step alongside always commit alone.
    /// </param>
    /// <param name="batchesInFlightMax">
    /// Most batches begun ahead and not yet ended; each has buffers of its own, made when first
    /// needed. With a committer they go to its group commits; without one only batches with a step
    /// alongside are begun ahead. 1, or a proof stream: every batch goes through <see cref="AppendAsync"/>.
    /// </param>
    public IngestSession(UsageStore store, RecordValidator validator, TimeProvider time, AdmissionGate gate, AdmissionSnapshot admission, string streamId, StreamHead head, string? peer = null,
        int? batchRecordsMax = null, GroupCommitter? committer = null, int batchesInFlightMax = 1)
    {
        if (batchesInFlightMax < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(batchesInFlightMax), "At least the batch being committed is in flight.");
        }

        _batchRecordsMax = batchRecordsMax ?? validator.Limits.BatchRecordsMax;
        if (_batchRecordsMax < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(batchRecordsMax), "A batch holds at least one record.");
        }

        _store = store;
        _validator = validator;
        _time = time;
        _gate = gate;
        _admission = admission;
        string providerId = admission.ProviderId;
        _proofStream = streamId.StartsWith(ProofStreamPrefix, StringComparison.Ordinal);
        ProviderId = providerId;
        StreamId = streamId;
        _committed = head.CommittedSequence;
        _head = head.ChainHash;
        _preparedThrough = _committed;
        _head.CopyTo(_preparedHead, 0);
        _peer = peer;
        _validatedModels = new DeviceModel?[_batchRecordsMax];
        _scratch = new byte[CanonicalEncoding.HashBytes + validator.Limits.CanonicalBytesMax + ProviderAndStreamBytesMax];
        _heartbeats = new HeartbeatMinutes(validator.Limits.HeartbeatsPerMinuteMax);
        _committer = _proofStream ? null : committer;
        // The first slot serves AppendAsync too; the others are made when a batch first needs them,
        // so a stream that never has two batches in flight holds the buffers of one.
        _slots = new CommitSlot?[_proofStream ? 1 : batchesInFlightMax];
        _slots[0] = NewSlot();
    }

    /// <summary>The slot <see cref="AppendAsync"/> prepares and commits in; a batch begun ahead may use it too, never while an append runs.</summary>
    private CommitSlot AppendSlot => _slots[0]!;

    /// <summary>A batch's buffers with the steps that commit with it.</summary>
    private CommitSlot NewSlot()
    {
        var rows = new PreparedRecords(_batchRecordsMax);
        var epochStep = new AdmissionEpochStep(ProviderId);
        var fleetStep = new FleetConcurrencyStep(ProviderId, [rows], _time, _validator.Limits.ConcurrencyMinutesPerBatchMax);
        // Proof streams are never settled and come before admission, when there is no fleet yet;
        // every other stream's records must fit the provider's fleet.
        return new CommitSlot(rows, epochStep, fleetStep, _proofStream ? [epochStep] : [epochStep, fleetStep]);
    }

    // Provider ids are 18-character credit codes and stream ids at most 64 ASCII characters.
    private const int ProviderAndStreamBytesMax = 18 + CanonicalEncoding.StreamIdBytesMax;

    public string ProviderId { get; }

    public string StreamId { get; }

    public ulong CommittedSequence => _committed;

    public byte[] ChainHead => _head;

    /// <summary>How many batches begun ahead have not been ended yet.</summary>
    public int AheadCount => _aheadCount;

    /// <summary>The sequence the last batch begun ends at (the committed mark when none is in flight): the next batch starts after it.</summary>
    public ulong PreparedThrough => _preparedThrough;

    /// <summary>Most batches in flight at once; 1 when every batch goes through <see cref="AppendAsync"/>.</summary>
    public int AheadMax => _slots.Length;

    /// <summary>
    /// Whether the registry lets <paramref name="admission"/>'s provider open
    /// <paramref name="streamId"/> at all, checked before the stream's row is written so that an
    /// opener the registry would refuse every record of writes nothing: a proof stream needs a
    /// registered organisation not on an integrity list; any other stream an admission, current
    /// or past (a provider whose admission ended may still send the usage of its admitted time).
    /// </summary>
    public static Refusal CheckOpen(AdmissionSnapshot admission, string streamId)
    {
        if (streamId.StartsWith(ProofStreamPrefix, StringComparison.Ordinal))
        {
            if (!admission.Registered)
            {
                return new Refusal(IngestRefusalReason.OrganisationNotRegistered, $"{admission.ProviderId} is not a registered organisation; proof streams are for applicants the registry holds");
            }

            return admission.ListedOn is { } list
                ? new Refusal(IngestRefusalReason.ProofNotAllowed, $"{admission.ProviderId} is on the {list} list and may not write a metering-log proof")
                : default;
        }

        return admission.EverAdmitted
            ? default
            : new Refusal(IngestRefusalReason.ProviderNotAdmitted, $"{admission.ProviderId} holds no admitted service item; usage is taken only from admitted providers");
    }

    /// <summary>
    /// Whether the registry lets this provider's stream take the record: a proof stream needs a
    /// registered organisation; any other stream an admission covering the record's whole time.
    /// </summary>
    public Refusal CheckAdmission(in IngestRecord record)
    {
        if (_proofStream)
        {
            if (!_admission.Registered)
            {
                return new Refusal(IngestRefusalReason.OrganisationNotRegistered, $"record {record.Sequence}: {ProviderId} is not a registered organisation; proof streams are for applicants the registry holds");
            }

            if (_admission.ListedOn is { } list)
            {
                return new Refusal(IngestRefusalReason.ProofNotAllowed, $"record {record.Sequence}: {ProviderId} is on the {list} list and may not write a metering-log proof");
            }

            return record.Sequence > ProofRecordsMax
                ? new Refusal(IngestRefusalReason.ProofNotAllowed, $"record {record.Sequence}: a proof stream holds at most {ProofRecordsMax} records")
                : default;
        }

        return _admission.Check(record.Sequence, record.StartUnixMs, record.EndUnixMs);
    }

    /// <summary>
    /// Takes a heartbeat: the stream is alive with nothing to report. The server's clock decides
    /// the minute; the first heartbeat of a minute writes it (one statement, outside any batch's
    /// transaction), later ones in the minute are answered from memory. No admission is needed,
    /// since a heartbeat carries no usage; a proof stream's heartbeats are answered but not
    /// recorded. Throws <see cref="IngestRefusedException"/> past the per-minute bound or for a
    /// client clock too far off, having recorded nothing.
    /// </summary>
    public async Task<HeartbeatOutcome> HeartbeatAsync(long? clientUnixMs, CancellationToken cancellationToken)
    {
        long now = _time.GetUtcNow().ToUnixTimeMilliseconds();
        TimeSpan skewMax = _validator.Limits.HeartbeatClockSkewMax;
        long skewMaxMs = (long)skewMax.TotalMilliseconds;
        if (clientUnixMs is long client && (client < now - skewMaxMs || client > now + skewMaxMs))
        {
            throw new IngestRefusedException(new Refusal(IngestRefusalReason.ClientClockOutOfRange,
                $"the heartbeat's client clock ({client} ms since the epoch) is more than {(long)skewMax.TotalMinutes} minutes from the server's ({now} ms)"));
        }

        HeartbeatDecision decision = _heartbeats.Take(now, out long minute);
        if (decision == HeartbeatDecision.TooFrequent)
        {
            throw new IngestRefusedException(new Refusal(IngestRefusalReason.HeartbeatsTooFrequent,
                $"the stream sent more than {_validator.Limits.HeartbeatsPerMinuteMax} heartbeats in one minute of the server's clock"));
        }

        bool recorded = false;
        if (decision == HeartbeatDecision.Record && !_proofStream)
        {
            recorded = await _store.RecordHeartbeatAsync(ProviderId, StreamId, minute, now, clientUnixMs, cancellationToken);
            _heartbeats.Recorded(minute);
        }

        return new HeartbeatOutcome(minute, now, recorded, _committed);
    }

    /// <summary>Validates the whole batch, then commits its new records; throws <see cref="IngestRefusedException"/> on refusal.</summary>
    /// <param name="alongside">A step of the caller's that commits with the records (a raw-log upload's progress), or null.</param>
    public async Task<BatchOutcome> AppendAsync(IReadOnlyList<IngestRecord> records, CancellationToken cancellationToken, ICommitStep? alongside = null)
    {
        if (_aheadCount > 0)
        {
            throw new InvalidOperationException("Batches begun ahead are in flight; end them before appending the next batch.");
        }

        for (int attempt = 1; ; attempt++)
        {
            try
            {
                return await AppendOnceAsync(records, cancellationToken, alongside);
            }
            catch (AdmissionChangedException) when (attempt < AdmissionAttemptsMax)
            {
                // The registry changed between the snapshot and the commit; nothing was written.
                // Check the batch again against what the registry says now.
                _admission = await _gate.LoadAsync(ProviderId, cancellationToken);
            }
            catch (AdmissionChangedException changed)
            {
                _admission = await _gate.LoadAsync(ProviderId, cancellationToken);
                throw new IngestRefusedException(new Refusal(IngestRefusalReason.RegistryBusy, $"{changed.Message} Nothing was committed; resume from the committed mark."));
            }
        }
    }

    private async Task<BatchOutcome> AppendOnceAsync(IReadOnlyList<IngestRecord> records, CancellationToken cancellationToken, ICommitStep? alongside)
    {
        using MeteringTelemetry.BatchSpan span = MeteringTelemetry.StartBatch(ProviderId, StreamId, records.Count);
        CheckShape(records, _committed);
        ulong first = records[0].Sequence;
        ulong last = records[^1].Sequence;
        int replayed = last <= _committed ? records.Count : (int)(_committed >= first ? _committed - first + 1 : 0);

        // Replayed records are compared with what is committed before anything else: a replay
        // that differs is a tamper conflict and evidence, whether or not it would also be invalid.
        // An identical replay passed validation when it was committed.
        if (replayed > 0)
        {
            await CheckReplayAsync(records, replayed, cancellationToken);
        }

        Validate(records, replayed);
        int fresh = records.Count - replayed;
        if (fresh > 0)
        {
            CommitSlot slot = AppendSlot;
            Prepare(slot.Rows, records, replayed, _head);
            try
            {
                slot.EpochStep.ExpectedEpoch = _admission.Epoch;
                slot.FleetStep.Fleet = _admission.Fleet;
                if (_committer is not null && alongside is null)
                {
                    // Awaited without the token: once a group commit has taken the batch it may
                    // commit, and the stream must not be let go (or answered) before it knows.
                    await _committer.CommitAsync(ProviderId, new PendingCommit(StreamId, _committed, slot.Rows, _admission.Epoch, _admission.Fleet, slot.Steps, cancellationToken));
                }
                else
                {
                    await _store.CommitAsync(ProviderId, StreamId, _committed, slot.Rows, alongside is null ? slot.Steps : [.. slot.Steps, alongside], cancellationToken);
                }

                _committed = last;
                span.Committed(fresh);
                _head = slot.Rows.HashAt(fresh - 1).ToArray();
                _preparedThrough = last;
                _head.CopyTo(_preparedHead, 0);
            }
            catch (StreamMovedException moved)
            {
                throw new IngestRefusedException(new Refusal(IngestRefusalReason.StreamTakenOver, moved.Message));
            }
            finally
            {
                slot.Rows.Clear();
            }
        }

        return new BatchOutcome(first, last, _committed, _head, replayed, fresh);
    }

    /// <summary>
    /// Whether <paramref name="records"/> can be begun ahead (<see cref="BeginAhead(IReadOnlyList{IngestRecord}, CancellationToken)"/>): the stream
    /// commits through a group commit, a slot is free, and the batch starts right after the last
    /// batch begun (or the committed mark), so it replays nothing. Any other batch goes through
    /// <see cref="AppendAsync"/> once the batches ahead of it have ended.
    /// </summary>
    public bool CanBeginAhead(IReadOnlyList<IngestRecord> records) => _committer is not null && HasRoomAhead(records);

    private bool HasRoomAhead(IReadOnlyList<IngestRecord> records) =>
        _slots.Length > 1 && _aheadCount < _slots.Length && records.Count > 0 && records[0].Sequence == _preparedThrough + 1;

    /// <summary>
    /// Validates, normalises and chains the next batch on the last one begun and queues it for the
    /// provider's next group commit, while the batches before it may still be committing; returns
    /// at once. Nothing is acknowledged until <see cref="EndOldestAheadAsync"/> has seen it commit.
    /// Throws <see cref="IngestRefusedException"/>, having begun nothing, for a batch
    /// <see cref="AppendAsync"/> would refuse before its commit.
    /// </summary>
    /// <param name="cancellationToken">Drops the batch unwritten if it fires before a group commit takes it.</param>
    public void BeginAhead(IReadOnlyList<IngestRecord> records, CancellationToken cancellationToken)
    {
        if (!CanBeginAhead(records))
        {
            throw new InvalidOperationException("Only a batch that follows the last one begun, with a slot free, on a group-committed stream, is begun ahead.");
        }

        CommitSlot slot = PrepareAhead(records);
        slot.Commit = _committer!.CommitAsync(ProviderId, new PendingCommit(StreamId, _preparedThrough, slot.Rows, _admission.Epoch, _admission.Fleet, slot.Steps, cancellationToken));
        Advance(slot);
    }

    /// <summary>
    /// Validates, normalises and chains a batch to be begun ahead into the next free slot, and
    /// starts its trace; <see cref="Advance"/> then counts it in once its commit is set.
    /// </summary>
    private CommitSlot PrepareAhead(IReadOnlyList<IngestRecord> records)
    {
        CheckShape(records, _preparedThrough);
        Validate(records, 0);
        CommitSlot slot = _slots[(_aheadFirst + _aheadCount) % _slots.Length] ??= NewSlot();
        Prepare(slot.Rows, records, 0, _preparedHead);
        slot.EpochStep.ExpectedEpoch = _admission.Epoch;
        slot.FleetStep.Fleet = _admission.Fleet;
        // The batch's trace runs beside the stream's next messages until its commit ends, so it
        // does not stay the current activity above them.
        Activity? current = Activity.Current;
        slot.Span = MeteringTelemetry.StartBatch(ProviderId, StreamId, records.Count);
        Activity.Current = current;
        slot.LastSequence = records[^1].Sequence;
        return slot;
    }

    /// <summary>Counts in a batch begun ahead: the next batch starts after it and chains on its last hash.</summary>
    private void Advance(CommitSlot slot)
    {
        _aheadCount++;
        _preparedThrough = slot.LastSequence;
        slot.Rows.HashAt(slot.Rows.Count - 1).Span.CopyTo(_preparedHead);
    }

    /// <summary>
    /// Begins a batch that commits with a step of the caller's (a raw-log upload's flush), on a
    /// stream without a group commit, while the batches begun before it may still be committing:
    /// validates, normalises and chains it on the last batch begun, then, in a transaction of its
    /// own, copies its rows and the step's (<see cref="UsageStore.BeginGroupAsync"/>) at once, and
    /// locks, checks and commits (<see cref="UsageStore.OpenGroupCommit.FinishAsync"/>) only after
    /// the batch before it has committed; should that batch fail, this one is rolled back unlocked.
    /// So its COPY overlaps the commit ahead of it, and it reads the marks and sums that commit
    /// left, as if the two had run one after the other. Returns at once; nothing is acknowledged
    /// until <see cref="EndOldestAheadAsync"/> has seen it commit. Throws
    /// <see cref="IngestRefusedException"/>, having begun nothing, for a batch that
    /// <see cref="AppendAsync"/> would refuse before its commit.
    /// </summary>
    /// <param name="cancellationToken">Cancels the batch's COPY and commit; the caller still ends or abandons it.</param>
    /// <returns>The batch's commit, which ends when it has committed or failed (for watching; end it with <see cref="EndOldestAheadAsync"/>).</returns>
    public Task BeginAhead(IReadOnlyList<IngestRecord> records, ICommitStep alongside, CancellationToken cancellationToken)
    {
        if (_committer is not null || !HasRoomAhead(records))
        {
            throw new InvalidOperationException("Only a batch that follows the last one begun, with a slot free, on a stream without a group commit, is begun ahead with a step alongside.");
        }

        int index = (_aheadFirst + _aheadCount) % _slots.Length;
        CommitSlot slot = PrepareAhead(records);
        CommitSlot? before = _aheadCount > 0 ? _slots[(index + _slots.Length - 1) % _slots.Length] : null;
        Task ahead = before?.Commit ?? Task.CompletedTask;
        Task aheadCopied = before?.Copied ?? Task.CompletedTask;
        ulong aheadExpected = before is null ? _committed : before.Rows.Records[0].Sequence - 1;
        var copied = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        slot.Copied = copied.Task;
        slot.Commit = CommitAfterAsync(new StreamBatch(StreamId, _preparedThrough, slot.Rows), [.. slot.Steps, alongside], aheadCopied, copied, ahead, aheadExpected, cancellationToken);
        Advance(slot);
        return slot.Commit;
    }

    /// <summary>
    /// Copies a batch begun ahead with a step alongside, once the batch ahead of it has copied its
    /// own rows, then, once that batch has committed, locks, checks and commits it; rolls it back
    /// unlocked should that batch fail.
    /// </summary>
    /// <remarks>
    /// The COPYs run one after the other so that a key the two batches share (a raw-log job
    /// repeated in the next flush) is always written first by the batch ahead: the batch behind
    /// then waits for that batch's commit and fails on the key, or goes on once it rolled back.
    /// Were the batch behind first, the batch ahead would wait in the database for a transaction
    /// that itself waits here for the batch ahead: a deadlock that the database cannot see.
    /// </remarks>
    private async Task CommitAfterAsync(StreamBatch batch, IReadOnlyList<ICommitStep> steps, Task aheadCopied, TaskCompletionSource copied, Task ahead, ulong aheadExpected,
        CancellationToken cancellationToken)
    {
        // Off the caller's thread: the COPY's encoding runs beside the parsing that follows.
        await Task.Yield();
        UsageStore.OpenGroupCommit open;
        try
        {
            await aheadCopied;
            open = await _store.BeginGroupAsync(ProviderId, [batch], steps, cancellationToken);
        }
        finally
        {
            copied.TrySetResult();
        }

        await using UsageStore.OpenGroupCommit begun = open;
        try
        {
            await ahead;
        }
        catch (Exception)
        {
            throw new EarlierBatchFailedException(StreamId, aheadExpected);
        }

        await begun.FinishAsync(cancellationToken);
    }

    /// <summary>The commit of the oldest batch begun ahead and not ended; it ends when the commit has committed or failed.</summary>
    public Task OldestAhead => _aheadCount > 0
        ? _slots[_aheadFirst]!.Commit!
        : throw new InvalidOperationException("No batch is in flight.");

    /// <summary>
    /// Waits for the commit of the oldest batch begun ahead and returns what it did to the stream.
    /// Returns null, with the batch and every later one left in flight, when the registry changed
    /// the provider since they were checked: nothing of them was committed, and the caller calls
    /// <see cref="RestartAheadAsync"/> and appends them again. Throws
    /// <see cref="IngestRefusedException"/> (a stream taken over) or the commit's own error
    /// otherwise; the call then ends, after <see cref="AbandonAheadAsync"/>.
    /// </summary>
    public async Task<BatchOutcome?> EndOldestAheadAsync()
    {
        CommitSlot slot = _aheadCount > 0 ? _slots[_aheadFirst]! : throw new InvalidOperationException("No batch is in flight.");
        try
        {
            await slot.Commit!;
        }
        catch (AdmissionChangedException)
        {
            return null;
        }
        catch (StreamMovedException moved)
        {
            throw new IngestRefusedException(new Refusal(IngestRefusalReason.StreamTakenOver, moved.Message));
        }

        int fresh = slot.Rows.Count;
        ulong first = slot.Rows.Records[0].Sequence;
        _committed = slot.LastSequence;
        slot.Span.Committed(fresh);
        _head = slot.Rows.HashAt(fresh - 1).ToArray();
        Release(slot);
        _aheadFirst = (_aheadFirst + 1) % _slots.Length;
        _aheadCount--;
        return new BatchOutcome(first, _committed, _committed, _head, 0, fresh);
    }

    /// <summary>
    /// Waits until no batch begun ahead can still commit, whatever became of each, and forgets them
    /// all: the stream is back at its committed mark. The caller ends the call, or appends again.
    /// </summary>
    public async Task AbandonAheadAsync()
    {
        for (; _aheadCount > 0; _aheadCount--)
        {
            CommitSlot slot = _slots[_aheadFirst]!;
            try
            {
                await slot.Commit!;
            }
            catch (Exception)
            {
                // What became of it is reported by the batch ahead of it, or by the call's own error.
            }

            Release(slot);
            _aheadFirst = (_aheadFirst + 1) % _slots.Length;
        }

        _preparedThrough = _committed;
        _head.CopyTo(_preparedHead, 0);
    }

    /// <summary>
    /// After <see cref="EndOldestAheadAsync"/> returned null: forgets the batches in flight (none
    /// of them committed) and checks the stream against what the registry says now, so that the
    /// caller can append them again, one by one, with <see cref="AppendAsync"/>.
    /// </summary>
    public async Task RestartAheadAsync(CancellationToken cancellationToken)
    {
        ulong committedBefore = _committed;
        await AbandonAheadAsync();
        Debug.Assert(_committed == committedBefore);
        _admission = await _gate.LoadAsync(ProviderId, cancellationToken);
    }

    private static void Release(CommitSlot slot)
    {
        slot.Span.Dispose();
        slot.Span = default;
        slot.Commit = null;
        slot.Copied = null;
        slot.Rows.Clear();
    }

    /// <summary>Validates the records after the replayed prefix, keeping each one's catalog entry for <see cref="Prepare"/>.</summary>
    private void Validate(IReadOnlyList<IngestRecord> records, int replayed)
    {
        long now = _time.GetUtcNow().ToUnixTimeMilliseconds();
        for (int i = replayed; i < records.Count; i++)
        {
            IngestRecord record = records[i];
            Refusal refusal = _validator.Validate(record, now, out _validatedModels[i]);
            if (!refusal.IsRefused)
            {
                refusal = CheckAdmission(record);
            }

            if (refusal.IsRefused)
            {
                Array.Clear(_validatedModels, 0, records.Count);
                throw new IngestRefusedException(refusal, record.Sequence);
            }
        }
    }

    private void CheckShape(IReadOnlyList<IngestRecord> records, ulong committed)
    {
        if (records.Count == 0)
        {
            throw new IngestRefusedException(new Refusal(IngestRefusalReason.BatchEmpty, "the batch has no records"));
        }

        if (records.Count > _batchRecordsMax)
        {
            throw new IngestRefusedException(new Refusal(IngestRefusalReason.BatchTooLarge, $"the batch has {records.Count} records; at most {_batchRecordsMax} are taken"));
        }

        ulong first = records[0].Sequence;
        if (first == 0 || first > committed + 1)
        {
            throw Gap(first, committed + 1, $"record {first} does not follow the committed sequence {committed}");
        }

        ulong previous = first;
        for (int i = 1; i < records.Count; i++)
        {
            ulong sequence = records[i].Sequence;
            if (sequence != first + (ulong)i)
            {
                throw Gap(sequence, first + (ulong)i, $"record {sequence} follows record {previous} in the batch");
            }

            previous = sequence;
        }
    }

    private static IngestRefusedException Gap(ulong sequence, ulong expected, string detail) =>
        new(new Refusal(IngestRefusalReason.SequenceGap, $"{detail}; expected {expected}"), sequence, expected);

    /// <summary>
    /// Replayed records must reproduce the committed chain exactly. Recomputing from the committed
    /// hash before the first replayed record, each record's hash must equal the stored one.
    /// </summary>
    private async Task CheckReplayAsync(IReadOnlyList<IngestRecord> records, int replayed, CancellationToken cancellationToken)
    {
        ulong first = records[0].Sequence;
        byte[][] stored = await _store.ReadChainHashesAsync(ProviderId, StreamId, first - 1, first + (ulong)replayed - 1, cancellationToken);
        Span<byte> hash = stackalloc byte[CanonicalEncoding.HashBytes];
        ReadOnlySpan<byte> previous = stored[0];
        for (int i = 0; i < replayed; i++)
        {
            IngestRecord record = records[i];
            var fields = RecordFields.From(ProviderId, StreamId, record);
            // A replay is not validated, so its strings may exceed the limits the scratch buffer
            // is sized for; such a record cannot match and is encoded in a buffer of its own.
            int canonicalBytes = CanonicalEncoding.Length(fields);
            if (canonicalBytes < 0)
            {
                // Too long to encode, so it cannot be what was committed: refuse it as invalid.
                Refusal invalid = _validator.Validate(record, _time.GetUtcNow().ToUnixTimeMilliseconds(), out _);
                throw new IngestRefusedException(invalid.IsRefused ? invalid : new Refusal(IngestRefusalReason.JobIdInvalid, $"record {record.Sequence}: a field is too long to encode"), record.Sequence);
            }

            byte[] scratch = CanonicalEncoding.HashBytes + canonicalBytes <= _scratch.Length ? _scratch : new byte[CanonicalEncoding.HashBytes + canonicalBytes];
            CanonicalEncoding.ChainHash(previous, fields, scratch, hash);
            if (!hash.SequenceEqual(stored[i + 1]))
            {
                int length = CanonicalEncoding.Encode(fields, scratch);
                await _store.RecordTamperConflictAsync(ProviderId, StreamId, record.Sequence, stored[i + 1], hash.ToArray(), scratch.AsMemory(0, length), _peer, cancellationToken);
                throw new IngestRefusedException(
                    new Refusal(IngestRefusalReason.TamperConflict, $"record {record.Sequence} is already committed with different content; the conflict is recorded for audit"),
                    record.Sequence);
            }

            previous = stored[i + 1];
        }
    }

    /// <summary>
    /// Normalises and chains the records after the replayed prefix into <paramref name="rows"/>,
    /// from <paramref name="previousHash"/>. Allocates nothing per record.
    /// </summary>
    private void Prepare(PreparedRecords rows, IReadOnlyList<IngestRecord> records, int offset, ReadOnlySpan<byte> previousHash)
    {
        Debug.Assert(rows.Count == 0);
        ReadOnlySpan<byte> previous = previousHash;
        for (int i = offset; i < records.Count; i++)
        {
            int slot = rows.Count++;
            DeviceModel? model = _validatedModels[i];
            Debug.Assert(model is not null, "Records are validated before they are prepared.");
            PrepareOne(rows, records[i], model, slot, previous);
            previous = rows.Hashes.AsSpan(slot * CanonicalEncoding.HashBytes, CanonicalEncoding.HashBytes);
        }

        Array.Clear(_validatedModels, 0, records.Count);
    }

    /// <summary>The chain hash that <see cref="PrepareOne"/> wrote into a slot.</summary>
    internal ReadOnlySpan<byte> PreparedHashAt(int slot) => AppendSlot.Rows.Hashes.AsSpan(slot * CanonicalEncoding.HashBytes, CanonicalEncoding.HashBytes);

    /// <summary>Normalises and chains one validated record into a slot of the prepared batch.</summary>
    internal void PrepareOne(in IngestRecord record, DeviceModel model, int slot, ReadOnlySpan<byte> previousHash) =>
        PrepareOne(AppendSlot.Rows, record, model, slot, previousHash);

    private void PrepareOne(PreparedRecords rows, in IngestRecord record, DeviceModel model, int slot, ReadOnlySpan<byte> previousHash)
    {
        rows.Records[slot] = record;
        rows.Models[slot] = model;
        rows.UsageNanoPflopsHours[slot] = UsageNormaliser.UsageNanoPflopsHours(
            record.DeviceCount, record.ShareNumerator, record.ShareDenominator, record.EndUnixMs - record.StartUnixMs, model);
        CanonicalEncoding.ChainHash(previousHash, RecordFields.From(ProviderId, StreamId, record), _scratch, rows.Hashes.AsSpan(slot * CanonicalEncoding.HashBytes, CanonicalEncoding.HashBytes));
    }
}

/// <summary>
/// One batch's buffers and the steps that commit with it; while the batch is in flight (begun
/// ahead and not ended) also its commit, its last sequence and its trace.
/// </summary>
internal sealed class CommitSlot(PreparedRecords rows, AdmissionEpochStep epochStep, FleetConcurrencyStep fleetStep, ICommitStep[] steps)
{
    public PreparedRecords Rows { get; } = rows;

    public AdmissionEpochStep EpochStep { get; } = epochStep;

    public FleetConcurrencyStep FleetStep { get; } = fleetStep;

    public ICommitStep[] Steps { get; } = steps;

    public Task? Commit { get; set; }

    /// <summary>For a batch begun ahead with a step alongside: ends once its rows are copied, or its COPY failed.</summary>
    public Task? Copied { get; set; }

    public ulong LastSequence { get; set; }

    public MeteringTelemetry.BatchSpan Span { get; set; }
}
