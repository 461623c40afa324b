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
/// Not thread-safe: a stream has a single writer.
/// </summary>
public sealed class IngestSession
{
    private readonly UsageStore _store;
    private readonly RecordValidator _validator;
    private readonly TimeProvider _time;
    private readonly PreparedRecords _prepared;
    private readonly byte[] _scratch;
    private readonly DeviceModel?[] _validatedModels;
    private readonly string? _peer;
    private readonly AdmissionGate _gate;
    private readonly bool _proofStream;
    private readonly HeartbeatMinutes _heartbeats;
    private readonly AdmissionEpochStep _epochStep;
    private readonly FleetConcurrencyStep _fleetStep;
    private readonly ICommitStep[] _steps;
    private readonly int _batchRecordsMax;
    private readonly GroupCommitter? _committer;
    private AdmissionSnapshot _admission;
    private ulong _committed;
    private byte[] _head;

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
    public IngestSession(UsageStore store, RecordValidator validator, TimeProvider time, AdmissionGate gate, AdmissionSnapshot admission, string streamId, StreamHead head, string? peer = null,
        int? batchRecordsMax = null, GroupCommitter? committer = null)
    {
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
        _peer = peer;
        _prepared = new PreparedRecords(_batchRecordsMax);
        _validatedModels = new DeviceModel?[_batchRecordsMax];
        _scratch = new byte[CanonicalEncoding.HashBytes + validator.Limits.CanonicalBytesMax + ProviderAndStreamBytesMax];
        _heartbeats = new HeartbeatMinutes(validator.Limits.HeartbeatsPerMinuteMax);
        _epochStep = new AdmissionEpochStep(providerId);
        _fleetStep = new FleetConcurrencyStep(providerId, [_prepared], time, validator.Limits.ConcurrencyMinutesPerBatchMax);
        // Proof streams are never settled and come before admission, when there is no fleet yet;
        // every other stream's records must fit the provider's fleet.
        _steps = _proofStream ? [_epochStep] : [_epochStep, _fleetStep];
        _committer = _proofStream ? null : committer;
    }

    // Provider ids are 18-character credit codes and stream ids at most 64 ASCII characters.
    private const int ProviderAndStreamBytesMax = 18 + CanonicalEncoding.StreamIdBytesMax;

    public string ProviderId { get; }

    public string StreamId { get; }

    public ulong CommittedSequence => _committed;

    public byte[] ChainHead => _head;

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
        CheckShape(records);
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

        int fresh = records.Count - replayed;
        if (fresh > 0)
        {
            Prepare(records, replayed);
            try
            {
                _epochStep.ExpectedEpoch = _admission.Epoch;
                _fleetStep.Fleet = _admission.Fleet;
                if (_committer is not null && alongside is null)
                {
                    // Awaited without the token: once a group commit has taken the batch it may
                    // commit, and the stream must not be let go (or answered) before it knows.
                    await _committer.CommitAsync(ProviderId, new PendingCommit(StreamId, _committed, _prepared, _admission.Epoch, _admission.Fleet, _steps, cancellationToken));
                }
                else
                {
                    await _store.CommitAsync(ProviderId, StreamId, _committed, _prepared, alongside is null ? _steps : [.. _steps, alongside], cancellationToken);
                }

                _committed = last;
                span.Committed(fresh);
                _head = _prepared.HashAt(fresh - 1).ToArray();
            }
            catch (StreamMovedException moved)
            {
                throw new IngestRefusedException(new Refusal(IngestRefusalReason.StreamTakenOver, moved.Message));
            }
            finally
            {
                _prepared.Clear();
            }
        }

        return new BatchOutcome(first, last, _committed, _head, replayed, fresh);
    }

    private void CheckShape(IReadOnlyList<IngestRecord> records)
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
        if (first == 0 || first > _committed + 1)
        {
            throw Gap(first, _committed + 1, $"record {first} does not follow the committed sequence {_committed}");
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

    /// <summary>Normalises and chains the records after the replayed prefix. Allocates nothing per record.</summary>
    private void Prepare(IReadOnlyList<IngestRecord> records, int offset)
    {
        Debug.Assert(_prepared.Count == 0);
        ReadOnlySpan<byte> previous = _head;
        for (int i = offset; i < records.Count; i++)
        {
            int slot = _prepared.Count++;
            DeviceModel? model = _validatedModels[i];
            Debug.Assert(model is not null, "Records are validated before they are prepared.");
            PrepareOne(records[i], model, slot, previous);
            previous = PreparedHashAt(slot);
        }

        Array.Clear(_validatedModels, 0, records.Count);
    }

    /// <summary>The chain hash that <see cref="PrepareOne"/> wrote into a slot.</summary>
    internal ReadOnlySpan<byte> PreparedHashAt(int slot) => _prepared.Hashes.AsSpan(slot * CanonicalEncoding.HashBytes, CanonicalEncoding.HashBytes);

    /// <summary>Normalises and chains one validated record into a slot of the prepared batch.</summary>
    internal void PrepareOne(in IngestRecord record, DeviceModel model, int slot, ReadOnlySpan<byte> previousHash)
    {
        _prepared.Records[slot] = record;
        _prepared.Models[slot] = model;
        _prepared.UsageNanoPflopsHours[slot] = UsageNormaliser.UsageNanoPflopsHours(
            record.DeviceCount, record.ShareNumerator, record.ShareDenominator, record.EndUnixMs - record.StartUnixMs, model);
        CanonicalEncoding.ChainHash(previousHash, RecordFields.From(ProviderId, StreamId, record), _scratch, _prepared.Hashes.AsSpan(slot * CanonicalEncoding.HashBytes, CanonicalEncoding.HashBytes));
    }
}
