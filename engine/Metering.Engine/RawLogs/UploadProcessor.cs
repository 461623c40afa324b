using System.Text;
using Metering.Engine.Catalog;
using Metering.Engine.Ingest;
using Metering.Engine.Storage;
using Metering.Engine.Telemetry;
using Npgsql;

namespace Metering.Engine.RawLogs;

/// <summary>The whole upload is refused before anything of it is committed (a bad header line).</summary>
public sealed class UploadRefusedException(RawLogRefusalReason reason, string message) : Exception(message)
{
    public RawLogRefusalReason Reason { get; } = reason;
}

/// <summary>
/// Turns the lines of one upload into committed usage records. Good lines become records with the
/// stream's next sequence numbers; every other line is counted and, if refused, reported. Each flush
/// commits the records together with the byte offset and counters they account for, so a resumed
/// upload continues exactly after the last committed line.
///
/// Flushes commit while the lines after them are parsed, up to the session's batches in flight
/// (<see cref="IngestSession.AheadMax"/>, the provider's commits in flight,
/// <see cref="IngestLimits.GroupCommitsInFlightMax"/>): each flush is numbered and chained on the
/// one before and begun ahead (<see cref="IngestSession.BeginAhead(IReadOnlyList{IngestRecord}, ICommitStep, CancellationToken)"/>),
/// so that it copies its rows and jobs while the flush before it locks, checks and commits, and
/// commits only after that flush has, in a transaction of its own. <see cref="FlushAsync"/> first
/// ends the oldest flush when as many are in flight as may be, and any flush that failed (throwing
/// its failure, having begun nothing more). The upload's counters move only once a flush has
/// committed, in order, and a flush commits only if every flush before it did, so whatever fails,
/// the committed offset is that of the last flush that committed and nothing parsed after it is
/// kept. The caller ends with <see cref="EndFlushAsync"/>, or, failing, <see cref="AbandonFlushAsync"/>.
/// </summary>
public sealed class UploadProcessor : ILogLineSink
{
    private readonly IngestSession _session;
    private readonly RecordValidator _validator;
    private readonly UploadStore _store;
    private readonly UploadState _upload;
    private readonly ILogLineParser _parser;
    private readonly SacctParser? _sacct;
    private readonly TimeProvider _time;
    private readonly int _batchRecordsMax;
    private readonly int _fullAt;
    private readonly int _flushesInFlightMax;
    private List<IngestRecord> _records;
    private readonly Stack<List<IngestRecord>> _spareRecords = new();
    private readonly HashSet<(string JobId, long StartUnixMs)> _batchJobs = [];
    private readonly List<UploadLineError> _errors = [];
    private readonly Dictionary<(string Model, uint Denominator), (long First, long Last)> _spans = [];
    private readonly long _spanMinutesMax;

    // Most uploads carry no job the stream has metered before, so a flush first tries to record
    // its jobs as new, and the primary key of raw_log_jobs refuses any that are not (the flush is
    // then rolled back and tried again without them). After one such refusal the upload's jobs are
    // looked up before each flush instead.
    private bool _lookUpMeteredJobs;
    private long _spanMinutes;
    private long _pendingEndOffset;
    private long _lines;
    private long _skipped;
    private long _refused;
    private long _duplicates;
    private string? _headerLine;

    // The flushes being committed while the next is parsed, oldest first, and where the last of
    // them ends (the committed offset, and lines refused, when none is in flight).
    private readonly Queue<Flush> _inFlight = new();
    private long _begunOffset;
    private long _begunRefused;

    // While the sacct parser holds a `.batch` line, what the counters were just before it: a flush
    // then commits only up to that line, so that a resumed upload reads it again.
    private long _heldLineNumber;
    private long _holdOffset;
    private long _holdLines;
    private long _holdSkipped;
    private long _holdRefused;
    private long _holdDuplicates;
    private int _holdErrors;

    public UploadProcessor(IngestSession session, RecordValidator validator, UploadStore store, UploadState upload, RawLogFormat format, LogMappingRules rules, TimeProvider time)
    {
        _session = session;
        _validator = validator;
        _store = store;
        _upload = upload;
        _time = time;
        _batchRecordsMax = validator.Limits.UploadFlushRecordsMax;
        // One record adds at most its own length in minutes (plus the two it starts and ends in)
        // to the minutes a flush spans; stopping that far short of the fleet check's bound means a
        // flush never carries more minutes than the check takes at once.
        _spanMinutesMax = Math.Max(0, validator.Limits.ConcurrencyMinutesPerBatchMax - ((long)validator.Limits.RecordDurationMax.TotalMinutes + 2));
        _records = new List<IngestRecord>(_batchRecordsMax);
        _flushesInFlightMax = session.AheadMax;
        _begunOffset = upload.CommittedOffset;
        _begunRefused = upload.LinesRefused;

        // One sacct line gives a record per GPU type, and the line that decides a held `.batch` line
        // adds that line's records too: leave room for both in the batch.
        _fullAt = format == RawLogFormat.SacctParsable2 ? Math.Max(1, _batchRecordsMax - (2 * SacctParser.GpuTypesMax) + 1) : _batchRecordsMax;
        _pendingEndOffset = upload.CommittedOffset;
        if (format == RawLogFormat.SacctParsable2)
        {
            _sacct = new SacctParser(rules);
            _parser = _sacct;
            if (upload.HeaderLine is not null && _sacct.ReadHeader(Encoding.UTF8.GetBytes(upload.HeaderLine)) is string problem)
            {
                throw new UploadRefusedException(RawLogRefusalReason.HeaderInvalid, $"the stored header line is unusable: {problem}");
            }
        }
        else
        {
            _parser = new JsonLinesParser(rules);
        }
    }

    public UploadState Upload => _upload;

    // Errors are bounded too: a file of garbage must not grow one flush without limit.
    // So is the span of minutes: the fleet check refuses a batch that touches more (model, minute)
    // rows than ConcurrencyMinutesPerBatchMax, so an export of many days ends its flushes early.
    // A held line keeps the batch open until it is decided (see Refuse for the bound on that).
    // A flush that failed while the next was parsed ends the parsing at once: the next flush
    // throws its failure.
    public bool IsFull => AnyFlushFailed() || (_heldLineNumber == 0
        && (_records.Count >= _fullAt || _errors.Count >= UploadStore.StoredErrorsMax || (_records.Count > 0 && _spanMinutes >= _spanMinutesMax)));

    private bool AnyFlushFailed()
    {
        foreach (Flush flush in _inFlight)
        {
            if (flush.Commit is { IsCompleted: true, IsCompletedSuccessfully: false })
            {
                return true;
            }
        }

        return false;
    }

    public void OnLine(ReadOnlySpan<byte> line, long lineNumber, long endOffset)
    {
        long startOffset = _pendingEndOffset;
        _lines++;
        _pendingEndOffset = endOffset;
        bool hasNul = line.Contains((byte)0);
        if (_sacct is not null && !_sacct.HasHeader)
        {
            if (line.IsEmpty)
            {
                _skipped++;
                return;
            }

            if (hasNul)
            {
                throw new UploadRefusedException(RawLogRefusalReason.HeaderInvalid, $"line {lineNumber}: the header contains a NUL byte");
            }

            if (_sacct.ReadHeader(line) is string problem)
            {
                throw new UploadRefusedException(RawLogRefusalReason.HeaderInvalid, $"line {lineNumber}: {problem}");
            }

            _headerLine = Encoding.UTF8.GetString(line);
            _skipped++;
            return;
        }

        if (hasNul)
        {
            // UTF-8 allows NUL, PostgreSQL text does not: no field of a record may carry one.
            Refuse(lineNumber, RawLogRefusalReason.MalformedLine.ContractName(), "the line contains a NUL byte");
            return;
        }

        LineOutcome outcome = _parser.Parse(line, out IngestRecord record, out LineRefusal refusal);
        if (_sacct is not null)
        {
            TakeResolved();
            if (_sacct.HeldThisLine)
            {
                // Counted once decided; until then a flush stops before this line.
                _heldLineNumber = lineNumber;
                _holdOffset = startOffset;
                _holdLines = _lines - 1;
                (_holdSkipped, _holdRefused, _holdDuplicates, _holdErrors) = (_skipped, _refused, _duplicates, _errors.Count);
                return;
            }
        }

        switch (outcome)
        {
            case LineOutcome.Skipped:
                _skipped++;
                break;
            case LineOutcome.Refused:
                Refuse(lineNumber, refusal.Reason, refusal.Message);
                break;
            default:
                Admit(record, lineNumber);
                while (_sacct is not null && _sacct.TryNextRecord(out IngestRecord next))
                {
                    Admit(next, lineNumber);
                }

                break;
        }
    }

    /// <summary>The file ended (not just this call): a `.batch` line still held is metered.</summary>
    public void EndOfFile()
    {
        if (_sacct is not null)
        {
            _sacct.EndOfFile();
            TakeResolved();
        }
    }

    /// <summary>Counts a held `.batch` line once the parser has decided it: its records, or a skip.</summary>
    private void TakeResolved()
    {
        SacctParser.Resolution resolution = _sacct!.LastResolution;
        if (_heldLineNumber == 0 || resolution == SacctParser.Resolution.None)
        {
            return;
        }

        long lineNumber = _heldLineNumber;
        _heldLineNumber = 0;
        if (resolution == SacctParser.Resolution.Dropped)
        {
            _skipped++;
            return;
        }

        while (_sacct.TryTakeReleased(out IngestRecord held))
        {
            Admit(held, lineNumber);
        }
    }

    private void Admit(IngestRecord record, long lineNumber)
    {
        // Sequence numbers are given at flush, once duplicates are known; a refused or
        // duplicate line takes none.
        Refusal invalid = _validator.Validate(record, _time.GetUtcNow().ToUnixTimeMilliseconds(), out DeviceModel? model);
        if (!invalid.IsRefused)
        {
            invalid = _session.CheckAdmission(record);
        }

        if (invalid.IsRefused)
        {
            Refuse(lineNumber, invalid.Reason.ContractName(), invalid.Message[(invalid.Message.IndexOf(": ", StringComparison.Ordinal) + 2)..]);
        }
        else if (!_batchJobs.Add((record.JobId, record.StartUnixMs)))
        {
            _duplicates++;
        }
        else
        {
            _records.Add(record);
            Span(model!.Key, record);
        }
    }

    public void OnLineTooLong(long lineNumber, long endOffset, long length)
    {
        _lines++;
        _pendingEndOffset = endOffset;
        Refuse(lineNumber, RawLogRefusalReason.LineTooLong.ContractName(), $"the line has {length} bytes; the limit is {_validator.Limits.RawLineBytesMax}");
    }

    /// <summary>
    /// Ends the oldest flush in flight when as many are in flight as may be, and any flush that
    /// failed (throwing its failure), then begins committing what the processor holds and returns
    /// while it commits.
    /// </summary>
    public async ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        while (_inFlight.Count > 0 && (_inFlight.Count >= _flushesInFlightMax || AnyFlushFailed()))
        {
            await EndOldestFlushAsync();
        }

        if (_pendingEndOffset == _begunOffset)
        {
            return;
        }

        if (_lookUpMeteredJobs)
        {
            // Jobs of a flush still in flight are not seen here: raw_log_jobs' key finds them.
            _duplicates += await DropMeteredJobsAsync(_records, cancellationToken);
        }

        // A held line and the lines after it (its own job's other steps) stay uncommitted.
        bool holding = _heldLineNumber != 0;
        long endOffset = holding ? _holdOffset : _pendingEndOffset;
        if (holding && endOffset == _begunOffset && _records.Count == 0)
        {
            return;
        }

        var flush = new Flush(
            _records,
            _begunOffset,
            endOffset,
            holding ? _holdLines : _lines,
            holding ? _holdSkipped : _skipped,
            holding ? _holdRefused : _refused,
            holding ? _holdDuplicates : _duplicates,
            _errors.GetRange(0, holding ? _holdErrors : _errors.Count),
            _begunRefused,
            _headerLine,
            cancellationToken);

        // What the flush takes leaves the processor, which goes on with what remains.
        _records = _spareRecords.TryPop(out List<IngestRecord>? spare) ? spare : new List<IngestRecord>(_batchRecordsMax);
        _batchJobs.Clear();
        _errors.RemoveRange(0, flush.Errors.Count);
        _spans.Clear();
        _spanMinutes = 0;
        (_lines, _skipped, _refused, _duplicates) = (_lines - flush.Lines, _skipped - flush.Skipped, _refused - flush.Refused, _duplicates - flush.Duplicates);
        (_holdLines, _holdSkipped, _holdRefused, _holdDuplicates, _holdErrors) = (0, 0, 0, 0, 0);
        _begunOffset = flush.EndOffset;
        _begunRefused += flush.Refused;

        bool ahead = flush.Records.Count > 0 && _flushesInFlightMax > 1;
        if (!ahead || (_inFlight.Count > 0 && !_inFlight.Peek().Ahead))
        {
            // A flush of no records (only its progress), or a session that commits one batch at a
            // time, commits by itself after every flush before it; so does any flush after one
            // of those.
            await EndFlushAsync();
        }

        if (ahead)
        {
            List<RawLogJob> jobs = Number(flush.Records, _session.PreparedThrough);
            try
            {
                flush.Commit = _session.BeginAhead(flush.Records, new UploadProgressStep(_upload, jobs, flush.Progress(flush.Records.Count)), cancellationToken);
            }
            catch (IngestRefusedException)
            {
                // Refused before its commit: the flushes before it end first, so that the first
                // failure is the one reported and what committed is counted.
                await EndFlushAsync();
                throw;
            }

            flush.Ahead = true;
        }
        else
        {
            flush.Commit = CommitAloneAsync(flush);
        }

        _inFlight.Enqueue(flush);
    }

    /// <summary>Waits for every flush in flight, oldest first, and counts each; throws the first failure.</summary>
    public async ValueTask EndFlushAsync()
    {
        while (_inFlight.Count > 0)
        {
            await EndOldestFlushAsync();
        }
    }

    /// <summary>
    /// Waits for the oldest flush in flight and counts it; throws its failure. A flush begun ahead
    /// that the registry changed under, or whose jobs raw_log_jobs' key found metered before (a
    /// job of the flush ahead of it, or of an earlier export), was rolled back with every flush
    /// behind it: they are committed again one by one, each after the one before, each checked
    /// against what the registry says now and without the jobs metered before.
    /// </summary>
    private async Task EndOldestFlushAsync()
    {
        Flush flush = _inFlight.Peek();
        if (flush.Ahead)
        {
            BatchOutcome? outcome;
            try
            {
                outcome = await _session.EndOldestAheadAsync();
            }
            catch (MeteredJobsFoundException)
            {
                _lookUpMeteredJobs = true;
                await _session.AbandonAheadAsync();
                await CommitInFlightOneByOneAsync();
                return;
            }

            if (outcome is null)
            {
                await _session.RestartAheadAsync(flush.CancellationToken);
                await CommitInFlightOneByOneAsync();
                return;
            }

            flush.Committed = outcome.Value.CommittedRecords;
        }
        else
        {
            await flush.Commit!;
        }

        Count(_inFlight.Dequeue());
    }

    /// <summary>After the flushes begun ahead were rolled back: commits each again, by itself, oldest first.</summary>
    private async Task CommitInFlightOneByOneAsync()
    {
        while (_inFlight.TryPeek(out Flush? flush))
        {
            if (_lookUpMeteredJobs)
            {
                // Every flush before this one has committed: the look-up sees all their jobs.
                flush.Duplicates += await DropMeteredJobsAsync(flush.Records, flush.CancellationToken);
            }

            flush.Ahead = false;
            flush.Commit = CommitAloneAsync(flush);
            await flush.Commit;
            Count(_inFlight.Dequeue());
        }
    }

    /// <summary>Moves the upload's counters by a flush that committed, and takes its buffer back.</summary>
    private void Count(Flush flush)
    {
        flush.Records.Clear();
        _spareRecords.Push(flush.Records);
        _upload.CommittedOffset = flush.EndOffset;
        _upload.Lines += flush.Lines;
        _upload.Records += flush.Committed;
        _upload.LinesSkipped += flush.Skipped;
        _upload.LinesRefused += flush.Refused;
        _upload.LinesDuplicate += flush.Duplicates;
        _upload.HeaderLine ??= _headerLine;
        MeteringTelemetry.RawLogFlushed(_upload.ProviderId, flush.Committed, flush.Skipped, flush.Refused, flush.Duplicates);
    }

    /// <summary>
    /// The call is failing: waits until every flush in flight has committed or failed (so that
    /// nothing of the upload is still being written when the call ends), and keeps their failures
    /// to itself, since the call's own error is what the client is told.
    /// </summary>
    public async ValueTask AbandonFlushAsync()
    {
        foreach (Flush flush in _inFlight)
        {
            if (!flush.Ahead && flush.Commit is { } commit)
            {
                try
                {
                    await commit;
                }
                catch (Exception)
                {
                    // The flush did not commit: the upload stays at the offset before it.
                }
            }
        }

        // Flushes begun ahead: none that failed or followed a failure committed.
        await _session.AbandonAheadAsync();
        _inFlight.Clear();
    }

    /// <summary>Gives the records the stream's next sequence numbers after <paramref name="after"/>; returns the jobs they meter.</summary>
    private static List<RawLogJob> Number(List<IngestRecord> records, ulong after)
    {
        var jobs = new List<RawLogJob>(records.Count);
        for (int i = 0; i < records.Count; i++)
        {
            IngestRecord numbered = records[i] with { Sequence = after + (ulong)i + 1 };
            records[i] = numbered;
            jobs.Add(new RawLogJob(numbered.JobId, numbered.StartUnixMs, (long)numbered.Sequence));
        }

        return jobs;
    }

    /// <summary>
    /// Commits one flush by itself, after every flush before it has committed: its records with the
    /// stream's next sequence numbers, the jobs they meter and the upload's progress, in one
    /// transaction. Runs while the processor parses on.
    /// </summary>
    private async Task CommitAloneAsync(Flush flush)
    {
        CancellationToken cancellationToken = flush.CancellationToken;
        List<IngestRecord> records = flush.Records;
        bool lookedUp = false;
        while (true)
        {
            List<RawLogJob> jobs = Number(records, _session.CommittedSequence);
            UploadProgress progress = flush.Progress(records.Count);
            if (records.Count == 0)
            {
                await _store.AdvanceAloneAsync(_upload, progress, cancellationToken);
                break;
            }

            try
            {
                await _session.AppendAsync(records, cancellationToken, new UploadProgressStep(_upload, jobs, progress));
                break;
            }
            catch (MeteredJobsFoundException) when (!lookedUp)
            {
                // The flush was rolled back whole. This upload repeats jobs the stream metered
                // before (an overlapping export, a corrected mapping, a job repeated further on in
                // the file): drop them and look them up before every later flush of this call.
                // Every flush before this one has committed, so the look-up sees all of them.
                lookedUp = true;
                _lookUpMeteredJobs = true;
                flush.Duplicates += await DropMeteredJobsAsync(records, cancellationToken);
            }
        }

        flush.Committed = records.Count;
    }

    /// <summary>
    /// Drops the records whose job this stream already metered from an earlier raw log: overlapping
    /// exports repeat jobs that cross their boundary, and a job is paid once. Returns how many it dropped.
    /// </summary>
    private async Task<int> DropMeteredJobsAsync(List<IngestRecord> records, CancellationToken cancellationToken)
    {
        if (records.Count == 0)
        {
            return 0;
        }

        var candidates = records.Select(r => new RawLogJob(r.JobId, r.StartUnixMs, 0)).ToList();
        HashSet<(string JobId, long StartUnixMs)> metered = await _store.MeteredJobsAsync(_upload.ProviderId, _upload.StreamId, candidates, cancellationToken);
        return metered.Count > 0 ? records.RemoveAll(r => metered.Contains((r.JobId, r.StartUnixMs))) : 0;
    }

    /// <summary>What one flush takes from the processor: its records and the lines and counts they account for.</summary>
    private sealed class Flush(List<IngestRecord> records, long fromOffset, long endOffset, long lines, long skipped, long refused, long duplicates, List<UploadLineError> errors,
        long refusedBefore, string? headerLine, CancellationToken cancellationToken)
    {
        public List<IngestRecord> Records { get; } = records;

        /// <summary>Where the flush before it ends: the committed offset it expects.</summary>
        public long FromOffset { get; } = fromOffset;

        public long EndOffset { get; } = endOffset;

        public long Lines { get; } = lines;

        public long Skipped { get; } = skipped;

        public long Refused { get; } = refused;

        /// <summary>Duplicates in the file, and jobs found metered before once the commit has looked.</summary>
        public long Duplicates { get; set; } = duplicates;

        public List<UploadLineError> Errors { get; } = errors;

        /// <summary>The records committed, once the flush has.</summary>
        public int Committed { get; set; }

        public CancellationToken CancellationToken { get; } = cancellationToken;

        /// <summary>Whether the flush was begun ahead in the session, which ends it; otherwise it commits by itself.</summary>
        public bool Ahead { get; set; }

        /// <summary>The flush's commit, which ends when it has committed or failed.</summary>
        public Task? Commit { get; set; }

        /// <summary>The upload's progress by this flush, with <paramref name="records"/> records.</summary>
        public UploadProgress Progress(int records) =>
            new(FromOffset, EndOffset, Lines, records, Skipped, Errors, Refused, Duplicates, headerLine, refusedBefore);
    }

    /// <summary>
    /// Widens the minutes the flush spans for the record's model and share denominator (the
    /// groups the fleet check writes rows for). The sum over groups of first-to-last minute is never
    /// below the rows the check will write, since it counts the gaps between records too.
    /// </summary>
    private void Span(string model, in IngestRecord record)
    {
        long first = record.StartUnixMs / 60_000;
        long last = record.EndUnixMs / 60_000;
        var key = (model, record.ShareDenominator);
        if (_spans.TryGetValue(key, out var span))
        {
            long before = span.Last - span.First + 1;
            span = (Math.Min(span.First, first), Math.Max(span.Last, last));
            _spanMinutes += span.Last - span.First + 1 - before;
        }
        else
        {
            span = (first, last);
            _spanMinutes += last - first + 1;
        }

        _spans[key] = span;
    }

    private void Refuse(long lineNumber, string reason, string message)
    {
        _refused++;
        _errors.Add(new UploadLineError(lineNumber, reason, message));
        if (_heldLineNumber != 0 && _errors.Count >= UploadStore.StoredErrorsMax)
        {
            // Refused lines after a held `.batch` line must not grow the batch without bound: give
            // the held line up unmetered (it may not be paid twice should the job have steps after all).
            _sacct!.DropHeld();
            TakeResolved();
        }
    }
}

/// <summary>
/// A flush's raw-log bookkeeping, committed with its records or not at all: the jobs it metered
/// (so that an overlapping export cannot meter them again) and how far the upload has read.
/// The jobs are copied with the records, before any lock, so that they too are copied while the
/// flush ahead commits; the progress is written under the locks.
/// </summary>
internal sealed class UploadProgressStep(UploadState upload, IReadOnlyList<RawLogJob> jobs, UploadProgress progress) : ICommitStep
{
    public async Task CopyAsync(NpgsqlConnection connection, CancellationToken cancellationToken)
    {
        if (!await UploadStore.RecordJobsAsync(connection, upload, jobs, cancellationToken))
        {
            throw new MeteredJobsFoundException();
        }
    }

    public async Task<NpgsqlBatchCommand?> RunAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, CancellationToken cancellationToken)
    {
        await UploadStore.AdvanceAsync(connection, transaction, upload, progress);
        return null;
    }
}

/// <summary>
/// Some of a flush's jobs were metered before: the step refuses the flush, which rolls back whole,
/// and the processor tries it again without them.
/// </summary>
internal sealed class MeteredJobsFoundException() : Exception("Jobs of the flush were metered before.");
