using System.Buffers.Text;
using System.Text;
using System.Text.Unicode;
using Metering.Engine.Ingest;

namespace Metering.Engine.RawLogs;

/// <summary>
/// Parses `sacct --parsable2` output: a header line naming the fields, then one '|'-separated line
/// per job or job step. Fields are found by name, so any column order works; JobID, Account,
/// Partition, AllocTRES, Start, End, Elapsed and State are required, others are ignored.
///
/// What is metered: by default each finished job allocation (JobID without a '.'), with its GPUs
/// from AllocTRES (`gres/gpu:TYPE=N`, mapped by GRES type, or `gres/gpu=N`, mapped by partition);
/// with meter_steps, each numbered step (12345.0, ...) instead. Jobs still running or pending,
/// CPU-only jobs, zero-length jobs and the other kind of line are skipped, not refused.
/// </summary>
public sealed class SacctParser : ILogLineParser
{
    private const int FieldsMax = 128;
    private static readonly string[] Required = ["JobID", "Account", "Partition", "AllocTRES", "Start", "End", "Elapsed", "State"];

    /// <summary>At most this many GPU types in one AllocTRES; Slurm nodes carry a handful.</summary>
    internal const int GpuTypesMax = 8;

    /// <summary>A held `.batch` line's job id (without `.batch`) is kept in this many bytes; a longer one is not held but skipped.</summary>
    private const int HeldJobBytesMax = 256;

    private readonly LogMappingRules _rules;
    private readonly int[] _index = new int[Required.Length];
    private readonly IngestRecord[] _extra = new IngestRecord[GpuTypesMax - 1];
    private int _extraCount;
    private int _extraTaken;
    private readonly IngestRecord[] _held = new IngestRecord[GpuTypesMax];
    private readonly IngestRecord[] _released = new IngestRecord[GpuTypesMax];
    private int _releasedCount;
    private readonly HashSet<string> _releasedJobs = new(StringComparer.Ordinal);
    private readonly byte[] _heldJob = new byte[HeldJobBytesMax];
    private int _heldCount;
    private int _heldJobLength = -1;
    private int _releasedTaken;
    private Resolution _resolution;
    private int _suspendedIndex = -1;
    private int _fieldCount;

    public SacctParser(LogMappingRules rules) => _rules = rules;

    /// <summary>True once the header line has been read.</summary>
    public bool HasHeader => _fieldCount > 0;

    /// <summary>Reads the header line; returns a problem sentence, or null.</summary>
    public string? ReadHeader(ReadOnlySpan<byte> line)
    {
        Span<Range> fields = stackalloc Range[FieldsMax];
        int count = SplitInto(line, fields, (byte)'|');
        if (count >= FieldsMax)
        {
            return $"the header has more than {FieldsMax - 1} fields";
        }

        for (int r = 0; r < Required.Length; r++)
        {
            _index[r] = -1;
            for (int f = 0; f < count; f++)
            {
                if (Ascii.EqualsIgnoreCase(line[fields[f]], Required[r]))
                {
                    _index[r] = f;
                    break;
                }
            }

            if (_index[r] < 0)
            {
                return $"the header lacks the field {Required[r]} (run sacct --parsable2 --format=JobID,Account,Partition,AllocTRES,Start,End,Elapsed,State)";
            }
        }

        _suspendedIndex = -1;
        for (int f = 0; f < count; f++)
        {
            if (Ascii.EqualsIgnoreCase(line[fields[f]], "Suspended"u8))
            {
                _suspendedIndex = f;
            }
        }

        _fieldCount = count;
        return null;
    }

    /// <summary>
    /// After <see cref="Parse"/> returned a record for a line holding several GPU types, gives the
    /// records of the other types one by one (each with the job id suffixed by its GRES type).
    /// </summary>
    public bool TryNextRecord(out IngestRecord record)
    {
        if (_extraTaken < _extraCount)
        {
            record = _extra[_extraTaken];
            _extra[_extraTaken++] = default;
            return true;
        }

        record = default;
        return false;
    }

    public LineOutcome Parse(ReadOnlySpan<byte> line, out IngestRecord record, out LineRefusal refusal)
    {
        record = default;
        refusal = default;
        _extraCount = _extraTaken = 0;
        HeldThisLine = false;
        if (_resolution != Resolution.None)
        {
            _resolution = Resolution.None;
            _released.AsSpan().Clear();
            _releasedCount = _releasedTaken = 0;
        }

        LineOutcome outcome = ParseFields(line, out SacctLine parsed, out refusal);
        if (_heldJobLength >= 0 && !parsed.JobId.IsEmpty)
        {
            Resolve(parsed.JobId);
        }

        if (outcome != LineOutcome.Record)
        {
            return outcome;
        }

        if (_releasedJobs.Count > 0 && IsReleasedJobStep(parsed.JobId))
        {
            refusal = LineRefusal.Of(RawLogRefusalReason.MalformedLine, $"step {Encoding.UTF8.GetString(parsed.JobId)} comes after its job's .batch step was metered for want of numbered steps; sacct lists a job's lines together");
            return LineOutcome.Refused;
        }

        bool batch = parsed.JobId.EndsWith(".batch"u8);
        if (batch && parsed.JobId.Length - ".batch".Length > HeldJobBytesMax)
        {
            return LineOutcome.Skipped;
        }

        if (!_rules.TryHolder(parsed.Account, out string holder))
        {
            refusal = LineRefusal.Of(RawLogRefusalReason.UnmappedAccount, $"account '{Encoding.UTF8.GetString(parsed.Account)}' has no holder in the mapping");
            return LineOutcome.Refused;
        }

        if (parsed.GpuTypes <= 1)
        {
            if (!TryModel(parsed.GresType, parsed.Partition, out string model, out refusal))
            {
                return LineOutcome.Refused;
            }

            record = NewRecord(Encoding.UTF8.GetString(parsed.JobId), holder, model, parsed.GpuCount, parsed);
            return batch ? Hold(ref record, parsed.JobId) : LineOutcome.Record;
        }

        // Several GPU types: every type must map before any record is given, so a line is metered
        // whole or not at all. Each type's job id is the line's with `/gpu:TYPE` appended, the same
        // on every upload, so that a re-uploaded line is still recognised as a duplicate.
        Span<Range> types = stackalloc Range[GpuTypesMax];
        Span<uint> counts = stackalloc uint[GpuTypesMax];
        int typeCount = ScanGpus(parsed.AllocTres, types, counts, out _, out _);
        string jobId = Encoding.UTF8.GetString(parsed.JobId);
        for (int t = 0; t < typeCount; t++)
        {
            ReadOnlySpan<byte> type = parsed.AllocTres[types[t]];
            if (!TryModel(type, parsed.Partition, out string model, out refusal))
            {
                record = default;
                _extra.AsSpan().Clear();
                return LineOutcome.Refused;
            }

            IngestRecord typed = NewRecord($"{jobId}/gpu:{Encoding.UTF8.GetString(type)}", holder, model, counts[t], parsed);
            if (t == 0)
            {
                record = typed;
            }
            else
            {
                _extra[t - 1] = typed;
            }
        }

        _extraCount = typeCount - 1;
        return batch ? Hold(ref record, parsed.JobId) : LineOutcome.Record;
    }

    /// <summary>
    /// True when the last <see cref="Parse"/> held its line (a `.batch` step with meter_steps) instead of
    /// giving its records: it returned <see cref="LineOutcome.Skipped"/>, and a later line decides.
    /// </summary>
    internal bool HeldThisLine { get; private set; }

    /// <summary>True while a `.batch` line waits to learn whether its job has numbered steps.</summary>
    internal bool Holding => _heldJobLength >= 0;

    /// <summary>What the last <see cref="Parse"/> (or <see cref="EndOfFile"/>) decided about the line held before it.</summary>
    internal Resolution LastResolution => _resolution;

    /// <summary>
    /// The file ended: a held `.batch` line's job had no numbered step, so its records are released
    /// (<see cref="TryTakeReleased"/>).
    /// </summary>
    internal void EndOfFile()
    {
        if (_heldJobLength >= 0)
        {
            Release();
        }
    }

    /// <summary>Gives up a held line without metering it (the caller can no longer keep its place).</summary>
    internal void DropHeld()
    {
        if (_heldJobLength >= 0)
        {
            _heldJobLength = -1;
            _held.AsSpan().Clear();
            _heldCount = 0;
            _resolution = Resolution.Dropped;
        }
    }

    /// <summary>The released records of the held line, one by one.</summary>
    internal bool TryTakeReleased(out IngestRecord record)
    {
        if (_resolution == Resolution.Released && _releasedTaken < _releasedCount)
        {
            record = _released[_releasedTaken];
            _released[_releasedTaken++] = default;
            return true;
        }

        record = default;
        return false;
    }

    /// <summary>
    /// With meter_steps, a `.batch` step is metered only for a job without numbered steps (an sbatch
    /// script that never called srun); sacct lists a job's `.batch` before its numbered steps, so the
    /// line is held until a later line shows whether the job has any.
    /// </summary>
    private LineOutcome Hold(ref IngestRecord record, ReadOnlySpan<byte> jobId)
    {
        ReadOnlySpan<byte> job = jobId[..^".batch".Length];
        _held[0] = record;
        for (int e = 0; e < _extraCount; e++)
        {
            _held[e + 1] = _extra[e];
            _extra[e] = default;
        }

        _heldCount = _extraCount + 1;
        _extraCount = 0;
        job.CopyTo(_heldJob);
        _heldJobLength = job.Length;
        HeldThisLine = true;
        record = default;
        return LineOutcome.Skipped;
    }

    /// <summary>A numbered step of the held job drops the held line; a line of another job releases it.</summary>
    private void Resolve(ReadOnlySpan<byte> jobId)
    {
        int dot = jobId.IndexOf((byte)'.');
        ReadOnlySpan<byte> job = dot < 0 ? jobId : jobId[..dot];
        if (!job.SequenceEqual(_heldJob.AsSpan(0, _heldJobLength)))
        {
            Release();
        }
        else if (dot > 0 && IsDigits(jobId[(dot + 1)..]))
        {
            DropHeld();
        }
    }

    private bool IsReleasedJobStep(ReadOnlySpan<byte> jobId)
    {
        int dot = jobId.IndexOf((byte)'.');
        if (dot <= 0 || dot > HeldJobBytesMax || !IsDigits(jobId[(dot + 1)..]))
        {
            return false;
        }

        Span<char> chars = stackalloc char[HeldJobBytesMax];
        int written = Encoding.UTF8.GetChars(jobId[..dot], chars);
        return _releasedJobs.GetAlternateLookup<ReadOnlySpan<char>>().Contains(chars[..written]);
    }

    private void Release()
    {
        // Remembered for the rest of the file, so that a step of this job placed later cannot be paid too.
        _releasedJobs.Add(Encoding.UTF8.GetString(_heldJob.AsSpan(0, _heldJobLength)));
        _held.AsSpan(0, _heldCount).CopyTo(_released);
        _held.AsSpan().Clear();
        _releasedCount = _heldCount;
        _releasedTaken = 0;
        _heldCount = 0;
        _heldJobLength = -1;
        _resolution = Resolution.Released;
    }

    internal enum Resolution
    {
        None,
        Released,
        Dropped,
    }

    private IngestRecord NewRecord(string jobId, string holder, string model, uint count, in SacctLine parsed) => new(
        Sequence: 0,
        JobId: jobId,
        HolderCode: holder,
        DeviceModel: model,
        DeviceCount: count,
        ShareNumerator: 1,
        ShareDenominator: 1,
        StartUnixMs: parsed.StartUnixMs,
        EndUnixMs: parsed.EndUnixMs,
        Site: _rules.Site,
        DeviceUuids: [],
        EnergyMwh: null);

    /// <summary>
    /// The GRES type through gres_models; a line without a type, or with a type the mapping does not
    /// name, through partition_models (Slurm writes a node's GRES type even for an untyped request).
    /// </summary>
    private bool TryModel(ReadOnlySpan<byte> gresType, ReadOnlySpan<byte> partition, out string model, out LineRefusal refusal)
    {
        refusal = default;
        if ((!gresType.IsEmpty && _rules.TryGresModel(gresType, out model)) || _rules.TryPartitionModel(partition, out model))
        {
            return true;
        }

        refusal = gresType.IsEmpty
            ? LineRefusal.Of(RawLogRefusalReason.UnmappedDevice, $"partition '{Encoding.UTF8.GetString(partition)}' has no device model in the mapping (and AllocTRES names no GRES type)")
            : LineRefusal.Of(RawLogRefusalReason.UnmappedDevice, $"GRES type '{Encoding.UTF8.GetString(gresType)}' has no device model in the mapping, nor has partition '{Encoding.UTF8.GetString(partition)}'");
        return false;
    }

    /// <summary>The fields of one metered line, as slices of the line.</summary>
    public ref struct SacctLine
    {
        public ReadOnlySpan<byte> JobId;
        public ReadOnlySpan<byte> Account;
        public ReadOnlySpan<byte> Partition;

        /// <summary>The first GPU type of AllocTRES, or empty for untyped GPUs.</summary>
        public ReadOnlySpan<byte> GresType;

        /// <summary>The GPU count of that type (or the untyped count).</summary>
        public uint GpuCount;

        /// <summary>How many GPU types AllocTRES holds (0 for untyped GPUs); a record per type.</summary>
        public int GpuTypes;

        /// <summary>The whole AllocTRES field.</summary>
        public ReadOnlySpan<byte> AllocTres;
        public long StartUnixMs;

        /// <summary>Start plus the metered seconds: End, or less for a job that was suspended.</summary>
        public long EndUnixMs;
    }

    /// <summary>Tokenises and checks a line without allocating (except to word a refusal).</summary>
    public LineOutcome ParseFields(ReadOnlySpan<byte> line, out SacctLine parsed, out LineRefusal refusal)
    {
        parsed = default;
        refusal = default;
        if (line.IsEmpty)
        {
            return LineOutcome.Skipped;
        }

        if (!Utf8.IsValid(line))
        {
            refusal = LineRefusal.Of(RawLogRefusalReason.InvalidUtf8, "the line is not valid UTF-8");
            return LineOutcome.Refused;
        }

        Span<Range> fields = stackalloc Range[FieldsMax];
        int count = SplitInto(line, fields, (byte)'|');
        if (count != _fieldCount)
        {
            refusal = LineRefusal.Of(RawLogRefusalReason.MalformedLine, $"the line has {count} fields; the header has {_fieldCount}");
            return LineOutcome.Refused;
        }

        ReadOnlySpan<byte> jobId = line[fields[_index[0]]];
        if (jobId.IsEmpty)
        {
            return Malformed("JobID is empty", out refusal);
        }

        // Set before any skip: with meter_steps, every line tells whether a held `.batch` line's job has steps.
        parsed.JobId = jobId;
        int dot = jobId.IndexOf((byte)'.');
        bool meteredStep = dot > 0 && (IsDigits(jobId[(dot + 1)..]) || jobId[(dot + 1)..].SequenceEqual("batch"u8));
        if (dot > 0 ? !(meteredStep && _rules.MeterSteps) : _rules.MeterSteps)
        {
            return LineOutcome.Skipped;
        }

        if (!TryState(line[fields[_index[7]]], out JobState state))
        {
            return Malformed($"State '{Encoding.UTF8.GetString(line[fields[_index[7]]])}' is not a Slurm job state", out refusal);
        }

        if (state == JobState.Unfinished)
        {
            return LineOutcome.Skipped;
        }

        ReadOnlySpan<byte> tres = line[fields[_index[3]]];
        Span<Range> types = stackalloc Range[GpuTypesMax];
        Span<uint> counts = stackalloc uint[GpuTypesMax];
        int typeCount = ScanGpus(tres, types, counts, out uint untyped, out string? tresProblem);
        if (typeCount < 0)
        {
            return Malformed(tresProblem!, out refusal);
        }

        if ((typeCount == 0 ? untyped : counts[0]) == 0)
        {
            return LineOutcome.Skipped;
        }

        ReadOnlySpan<byte> startText = line[fields[_index[4]]];
        ReadOnlySpan<byte> endText = line[fields[_index[5]]];

        // A job that never started (cancelled while pending, revoked to another cluster) held no GPU;
        // a requeued run's line has an End only once that run is over (sacct -D lists earlier runs).
        if (startText.SequenceEqual("None"u8) || startText.SequenceEqual("Unknown"u8)
            || (state == JobState.Requeued && (endText.SequenceEqual("Unknown"u8) || endText.SequenceEqual("None"u8))))
        {
            return LineOutcome.Skipped;
        }

        if (!TryTime(startText, out long start) || !TryTime(endText, out long end))
        {
            return Malformed("Start and End must be yyyy-MM-ddTHH:mm:ss", out refusal);
        }

        if (!TryElapsed(line[fields[_index[6]]], out long elapsedSeconds))
        {
            return Malformed($"Elapsed '{Encoding.UTF8.GetString(line[fields[_index[6]]])}' is not [D-]HH:MM:SS", out refusal);
        }

        if (_rules.Zone is TimeZoneInfo zone)
        {
            if (!TryToUtc(zone, ref start, "Start", startText, out refusal) || !TryToUtc(zone, ref end, "End", endText, out refusal))
            {
                return LineOutcome.Refused;
            }
        }
        else
        {
            start -= _rules.UtcOffset.Ticks / TimeSpan.TicksPerMillisecond;
            end -= _rules.UtcOffset.Ticks / TimeSpan.TicksPerMillisecond;
        }

        long windowSeconds = (end - start) / 1000;
        if (elapsedSeconds > windowSeconds + 1)
        {
            refusal = LineRefusal.Of(RawLogRefusalReason.ElapsedMismatch, $"Elapsed is {elapsedSeconds} s, longer than End − Start ({windowSeconds} s)");
            return LineOutcome.Refused;
        }

        // Slurm's Elapsed leaves out the time a job was suspended. A shorter Elapsed is believed only
        // when the line's own Suspended field accounts for the difference, so that an End moved later
        // by hand is still caught; and what is metered is Elapsed, the time the job ran.
        if (_suspendedIndex >= 0)
        {
            if (!TryElapsed(line[fields[_suspendedIndex]], out long suspendedSeconds))
            {
                return Malformed($"Suspended '{Encoding.UTF8.GetString(line[fields[_suspendedIndex]])}' is not [D-]HH:MM:SS", out refusal);
            }

            if (Math.Abs(elapsedSeconds + suspendedSeconds - windowSeconds) > 1)
            {
                refusal = LineRefusal.Of(RawLogRefusalReason.ElapsedMismatch, $"Elapsed ({elapsedSeconds} s) plus Suspended ({suspendedSeconds} s) is not End − Start ({windowSeconds} s)");
                return LineOutcome.Refused;
            }
        }
        else if (elapsedSeconds < windowSeconds - 1)
        {
            refusal = LineRefusal.Of(RawLogRefusalReason.ElapsedMismatch, $"Elapsed is {elapsedSeconds} s but End − Start is {windowSeconds} s (a suspended job needs the Suspended field in --format)");
            return LineOutcome.Refused;
        }

        if (elapsedSeconds < windowSeconds - 1)
        {
            end = start + elapsedSeconds * 1000;
        }

        if (end == start)
        {
            return LineOutcome.Skipped;
        }

        parsed.JobId = jobId;
        parsed.Account = line[fields[_index[1]]];
        parsed.Partition = line[fields[_index[2]]];
        parsed.GresType = typeCount == 0 ? default : tres[types[0]];
        parsed.GpuCount = typeCount == 0 ? untyped : counts[0];
        parsed.GpuTypes = typeCount;
        parsed.AllocTres = tres;
        parsed.StartUnixMs = start;
        parsed.EndUnixMs = end;
        return LineOutcome.Record;
    }

    /// <summary>
    /// Converts a local time (milliseconds read as if UTC) to UTC with the zone's rule for that date.
    /// A time the zone skips or repeats has no single instant, and guessing would move usage by the
    /// size of the change; it is refused.
    /// </summary>
    private static bool TryToUtc(TimeZoneInfo zone, ref long unixMs, string field, ReadOnlySpan<byte> text, out LineRefusal refusal)
    {
        refusal = default;
        var local = new DateTime(DateTime.UnixEpoch.Ticks + (unixMs * TimeSpan.TicksPerMillisecond), DateTimeKind.Unspecified);
        if (zone.IsInvalidTime(local))
        {
            refusal = LineRefusal.Of(RawLogRefusalReason.UnresolvableLocalTime, $"{field} {Encoding.UTF8.GetString(text)} does not exist in {zone.Id} (clocks moved forward past it)");
            return false;
        }

        if (zone.IsAmbiguousTime(local))
        {
            refusal = LineRefusal.Of(RawLogRefusalReason.UnresolvableLocalTime, $"{field} {Encoding.UTF8.GetString(text)} happens twice in {zone.Id} (clocks moved back over it)");
            return false;
        }

        unixMs -= zone.GetUtcOffset(local).Ticks / TimeSpan.TicksPerMillisecond;
        return true;
    }

    private enum JobState
    {
        Finished,
        Unfinished,
        Requeued,
    }

    private static LineOutcome Malformed(string message, out LineRefusal refusal)
    {
        refusal = LineRefusal.Of(RawLogRefusalReason.MalformedLine, message);
        return LineOutcome.Refused;
    }

    private static bool IsDigits(ReadOnlySpan<byte> text) => !text.IsEmpty && !text.ContainsAnyExceptInRange((byte)'0', (byte)'9');

    /// <summary>
    /// Finished states are metered; running, pending and the like are skipped until they end. A
    /// REQUEUED line is an earlier run of a requeued job (sacct -D): metered once it has an End.
    /// </summary>
    private static bool TryState(ReadOnlySpan<byte> state, out JobState kind)
    {
        int space = state.IndexOf((byte)' ');
        ReadOnlySpan<byte> word = space < 0 ? state : state[..space];
        bool finished = word.SequenceEqual("COMPLETED"u8) || word.SequenceEqual("FAILED"u8) || word.SequenceEqual("CANCELLED"u8)
            || word.SequenceEqual("TIMEOUT"u8) || word.SequenceEqual("OUT_OF_MEMORY"u8) || word.SequenceEqual("NODE_FAIL"u8)
            || word.SequenceEqual("PREEMPTED"u8) || word.SequenceEqual("BOOT_FAIL"u8) || word.SequenceEqual("DEADLINE"u8)
            || word.SequenceEqual("REVOKED"u8) || word.SequenceEqual("SPECIAL_EXIT"u8);
        bool unfinished = word.SequenceEqual("RUNNING"u8) || word.SequenceEqual("PENDING"u8)
            || word.SequenceEqual("SUSPENDED"u8) || word.SequenceEqual("RESIZING"u8) || word.SequenceEqual("COMPLETING"u8)
            || word.SequenceEqual("REQUEUE_HOLD"u8) || word.SequenceEqual("REQUEUE_FED"u8);
        kind = finished ? JobState.Finished : word.SequenceEqual("REQUEUED"u8) ? JobState.Requeued : JobState.Unfinished;
        return finished || unfinished || kind == JobState.Requeued;
    }

    /// <summary>
    /// Reads the GPUs of AllocTRES: each `gres/gpu:TYPE=N` (their type names as ranges of
    /// <paramref name="tres"/>, at most <see cref="GpuTypesMax"/>, each type once) and the untyped
    /// `gres/gpu=N`, which Slurm writes as the total of the typed ones when both appear. Returns the
    /// number of types, or -1 with a problem sentence.
    /// </summary>
    private static int ScanGpus(ReadOnlySpan<byte> tres, Span<Range> types, Span<uint> counts, out uint untyped, out string? problem)
    {
        untyped = 0;
        problem = null;
        bool hasUntyped = false;
        int typeCount = 0;
        ulong typedSum = 0;
        foreach (Range range in tres.Split((byte)','))
        {
            ReadOnlySpan<byte> item = tres[range];
            int itemStart = range.Start.GetOffset(tres.Length);
            // gres/gpu=N or gres/gpu:TYPE=N; not gres/gpumem=… or other GRES that share the prefix.
            if (!item.StartsWith("gres/gpu"u8) || item.Length == "gres/gpu".Length || item["gres/gpu".Length] is not ((byte)'=' or (byte)':'))
            {
                continue;
            }

            int equals = item.IndexOf((byte)'=');
            if (equals < 0 || !Utf8Parser.TryParse(item[(equals + 1)..], out uint value, out int consumed) || consumed != item.Length - equals - 1)
            {
                problem = $"AllocTRES entry '{Encoding.UTF8.GetString(item)}' has no whole GPU count";
                return -1;
            }

            ReadOnlySpan<byte> key = item[..equals];
            if (key.Length == "gres/gpu".Length)
            {
                if (hasUntyped)
                {
                    problem = "AllocTRES names gres/gpu twice";
                    return -1;
                }

                hasUntyped = true;
                untyped = value;
                continue;
            }

            Range type = (itemStart + "gres/gpu:".Length)..(itemStart + equals);
            if (tres[type].IsEmpty)
            {
                problem = $"AllocTRES entry '{Encoding.UTF8.GetString(item)}' has an empty GPU type";
                return -1;
            }

            for (int t = 0; t < typeCount; t++)
            {
                if (tres[types[t]].SequenceEqual(tres[type]))
                {
                    problem = $"AllocTRES names GPU type '{Encoding.UTF8.GetString(tres[type])}' twice";
                    return -1;
                }
            }

            if (typeCount == types.Length)
            {
                problem = $"AllocTRES holds more than {GpuTypesMax} GPU types";
                return -1;
            }

            types[typeCount] = type;
            counts[typeCount++] = value;
            typedSum += value;
        }

        // Slurm's untyped entry is the sum of the typed ones: a typed entry added to a line by hand
        // (or a count raised) breaks the sum and is caught.
        if (hasUntyped && typeCount > 0 && typedSum != untyped)
        {
            problem = $"AllocTRES gives gres/gpu={untyped} but its GPU types add up to {typedSum}";
            return -1;
        }

        return typeCount;
    }

    /// <summary>yyyy-MM-ddTHH:mm:ss as milliseconds, read as if UTC (the caller applies the zone).</summary>
    private static bool TryTime(ReadOnlySpan<byte> text, out long unixMs)
    {
        unixMs = 0;
        if (text.Length != 19 || text[4] != '-' || text[7] != '-' || text[10] != 'T' || text[13] != ':' || text[16] != ':')
        {
            return false;
        }

        if (!TryDigits(text[0..4], out int year) || !TryDigits(text[5..7], out int month) || !TryDigits(text[8..10], out int day)
            || !TryDigits(text[11..13], out int hour) || !TryDigits(text[14..16], out int minute) || !TryDigits(text[17..19], out int second))
        {
            return false;
        }

        if (year < 1970 || month is < 1 or > 12 || day < 1 || day > DateTime.DaysInMonth(year, month) || hour > 23 || minute > 59 || second > 59)
        {
            return false;
        }

        unixMs = (new DateTime(year, month, day, hour, minute, second, DateTimeKind.Utc).Ticks - DateTime.UnixEpoch.Ticks) / TimeSpan.TicksPerMillisecond;
        return true;
    }

    /// <summary>Slurm's elapsed time: [D-][HH:]MM:SS.</summary>
    private static bool TryElapsed(ReadOnlySpan<byte> text, out long seconds)
    {
        seconds = 0;
        long days = 0;
        int dash = text.IndexOf((byte)'-');
        if (dash >= 0)
        {
            if (!TryDigits(text[..dash], out int d))
            {
                return false;
            }

            days = d;
            text = text[(dash + 1)..];
        }

        Span<Range> parts = stackalloc Range[4];
        int count = SplitInto(text, parts, (byte)':');
        if (count is < 2 or > 3)
        {
            return false;
        }

        long total = 0;
        for (int i = 0; i < count; i++)
        {
            if (!TryDigits(text[parts[i]], out int value) || (i > 0 && value > 59))
            {
                return false;
            }

            total = total * 60 + value;
        }

        seconds = days * 86_400 + total;
        return true;
    }

    /// <summary>
    /// Splits into at most <paramref name="ranges"/>.Length fields and returns how many there are;
    /// a return equal to the capacity means "that many or more".
    /// </summary>
    internal static int SplitInto(ReadOnlySpan<byte> text, Span<Range> ranges, byte separator)
    {
        int count = 0;
        int start = 0;
        while (count < ranges.Length)
        {
            int next = text[start..].IndexOf(separator);
            if (next < 0)
            {
                ranges[count++] = start..text.Length;
                return count;
            }

            ranges[count++] = start..(start + next);
            start += next + 1;
        }

        return count;
    }

    private static bool TryDigits(ReadOnlySpan<byte> text, out int value)
    {
        value = 0;
        if (text.IsEmpty || text.Length > 9)
        {
            return false;
        }

        foreach (byte b in text)
        {
            if (b is < (byte)'0' or > (byte)'9')
            {
                return false;
            }

            value = value * 10 + (b - '0');
        }

        return true;
    }
}
