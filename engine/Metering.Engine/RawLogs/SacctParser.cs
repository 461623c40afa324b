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

    private readonly LogMappingRules _rules;
    private readonly int[] _index = new int[Required.Length];
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

        _fieldCount = count;
        return null;
    }

    public LineOutcome Parse(ReadOnlySpan<byte> line, out IngestRecord record, out LineRefusal refusal)
    {
        record = default;
        refusal = default;
        LineOutcome outcome = ParseFields(line, out SacctLine parsed, out refusal);
        if (outcome != LineOutcome.Record)
        {
            return outcome;
        }

        if (!_rules.TryHolder(parsed.Account, out string holder))
        {
            refusal = LineRefusal.Of(RawLogRefusalReason.UnmappedAccount, $"account '{Encoding.UTF8.GetString(parsed.Account)}' has no holder in the mapping");
            return LineOutcome.Refused;
        }

        string model;
        if (!parsed.GresType.IsEmpty)
        {
            if (!_rules.TryGresModel(parsed.GresType, out model))
            {
                refusal = LineRefusal.Of(RawLogRefusalReason.UnmappedDevice, $"GRES type '{Encoding.UTF8.GetString(parsed.GresType)}' has no device model in the mapping");
                return LineOutcome.Refused;
            }
        }
        else if (!_rules.TryPartitionModel(parsed.Partition, out model))
        {
            refusal = LineRefusal.Of(RawLogRefusalReason.UnmappedDevice, $"partition '{Encoding.UTF8.GetString(parsed.Partition)}' has no device model in the mapping (and AllocTRES names no GRES type)");
            return LineOutcome.Refused;
        }

        record = new IngestRecord(
            Sequence: 0,
            JobId: Encoding.UTF8.GetString(parsed.JobId),
            HolderCode: holder,
            DeviceModel: model,
            DeviceCount: parsed.GpuCount,
            ShareNumerator: 1,
            ShareDenominator: 1,
            StartUnixMs: parsed.StartUnixMs,
            EndUnixMs: parsed.EndUnixMs,
            Site: _rules.Site,
            DeviceUuids: [],
            EnergyMwh: null);
        return LineOutcome.Record;
    }

    /// <summary>The fields of one metered line, as slices of the line.</summary>
    public ref struct SacctLine
    {
        public ReadOnlySpan<byte> JobId;
        public ReadOnlySpan<byte> Account;
        public ReadOnlySpan<byte> Partition;
        public ReadOnlySpan<byte> GresType;
        public uint GpuCount;
        public long StartUnixMs;
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

        int dot = jobId.IndexOf((byte)'.');
        bool numberedStep = dot > 0 && IsDigits(jobId[(dot + 1)..]);
        if (dot > 0 ? !(numberedStep && _rules.MeterSteps) : _rules.MeterSteps)
        {
            return LineOutcome.Skipped;
        }

        if (!TryState(line[fields[_index[7]]], out bool finished))
        {
            return Malformed($"State '{Encoding.UTF8.GetString(line[fields[_index[7]]])}' is not a Slurm job state", out refusal);
        }

        if (!finished)
        {
            return LineOutcome.Skipped;
        }

        ReadOnlySpan<byte> tres = line[fields[_index[3]]];
        if (!TryGpus(tres, out ReadOnlySpan<byte> gresType, out uint gpus, out string? tresProblem))
        {
            return Malformed(tresProblem!, out refusal);
        }

        if (gpus == 0)
        {
            return LineOutcome.Skipped;
        }

        if (!TryTime(line[fields[_index[4]]], out long start) || !TryTime(line[fields[_index[5]]], out long end))
        {
            return Malformed("Start and End must be yyyy-MM-ddTHH:mm:ss", out refusal);
        }

        if (!TryElapsed(line[fields[_index[6]]], out long elapsedSeconds))
        {
            return Malformed($"Elapsed '{Encoding.UTF8.GetString(line[fields[_index[6]]])}' is not [D-]HH:MM:SS", out refusal);
        }

        start -= _rules.UtcOffset.Ticks / TimeSpan.TicksPerMillisecond;
        end -= _rules.UtcOffset.Ticks / TimeSpan.TicksPerMillisecond;
        if (Math.Abs((end - start) / 1000 - elapsedSeconds) > 1)
        {
            refusal = LineRefusal.Of(RawLogRefusalReason.ElapsedMismatch, $"Elapsed is {elapsedSeconds} s but End − Start is {(end - start) / 1000} s");
            return LineOutcome.Refused;
        }

        if (end == start)
        {
            return LineOutcome.Skipped;
        }

        parsed.JobId = jobId;
        parsed.Account = line[fields[_index[1]]];
        parsed.Partition = line[fields[_index[2]]];
        parsed.GresType = gresType;
        parsed.GpuCount = gpus;
        parsed.StartUnixMs = start;
        parsed.EndUnixMs = end;
        return LineOutcome.Record;
    }

    private static LineOutcome Malformed(string message, out LineRefusal refusal)
    {
        refusal = LineRefusal.Of(RawLogRefusalReason.MalformedLine, message);
        return LineOutcome.Refused;
    }

    private static bool IsDigits(ReadOnlySpan<byte> text) => !text.IsEmpty && !text.ContainsAnyExceptInRange((byte)'0', (byte)'9');

    /// <summary>Finished states are metered; running, pending and the like are skipped until they end.</summary>
    private static bool TryState(ReadOnlySpan<byte> state, out bool finished)
    {
        int space = state.IndexOf((byte)' ');
        ReadOnlySpan<byte> word = space < 0 ? state : state[..space];
        finished = word.SequenceEqual("COMPLETED"u8) || word.SequenceEqual("FAILED"u8) || word.SequenceEqual("CANCELLED"u8)
            || word.SequenceEqual("TIMEOUT"u8) || word.SequenceEqual("OUT_OF_MEMORY"u8) || word.SequenceEqual("NODE_FAIL"u8)
            || word.SequenceEqual("PREEMPTED"u8) || word.SequenceEqual("BOOT_FAIL"u8) || word.SequenceEqual("DEADLINE"u8);
        bool unfinished = word.SequenceEqual("RUNNING"u8) || word.SequenceEqual("PENDING"u8) || word.SequenceEqual("REQUEUED"u8)
            || word.SequenceEqual("SUSPENDED"u8) || word.SequenceEqual("RESIZING"u8) || word.SequenceEqual("COMPLETING"u8);
        return finished || unfinished;
    }

    /// <summary>Finds `gres/gpu:TYPE=N` (preferred) or `gres/gpu=N` in AllocTRES.</summary>
    private static bool TryGpus(ReadOnlySpan<byte> tres, out ReadOnlySpan<byte> gresType, out uint count, out string? problem)
    {
        gresType = default;
        count = 0;
        problem = null;
        uint untyped = 0;
        bool typed = false;
        foreach (Range range in tres.Split((byte)','))
        {
            ReadOnlySpan<byte> item = tres[range];
            // gres/gpu=N or gres/gpu:TYPE=N; not gres/gpumem=… or other GRES that share the prefix.
            if (!item.StartsWith("gres/gpu"u8) || item.Length == "gres/gpu".Length || item["gres/gpu".Length] is not ((byte)'=' or (byte)':'))
            {
                continue;
            }

            int equals = item.IndexOf((byte)'=');
            if (equals < 0 || !Utf8Parser.TryParse(item[(equals + 1)..], out uint value, out int consumed) || consumed != item.Length - equals - 1)
            {
                problem = $"AllocTRES entry '{Encoding.UTF8.GetString(item)}' has no whole GPU count";
                return false;
            }

            ReadOnlySpan<byte> key = item[..equals];
            if (key.Length == "gres/gpu".Length)
            {
                untyped = value;
            }
            else if (key["gres/gpu".Length] == (byte)':')
            {
                if (typed)
                {
                    problem = "AllocTRES holds several GPU types; split the allocation per type";
                    return false;
                }

                typed = true;
                gresType = key[("gres/gpu".Length + 1)..];
                count = value;
            }
        }

        if (!typed)
        {
            count = untyped;
        }

        return true;
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
