using System.Text;
using Metering.Engine.Catalog;
using Metering.Engine.Ingest;
using Metering.Engine.Storage;
using Metering.Protocol.V1;

namespace Metering.Engine.RawLogs;

/// <summary>The whole upload is refused before anything of it is committed (a bad header line).</summary>
public sealed class UploadRefusedException(RawLogRefusal reason, string message) : Exception(message)
{
    public RawLogRefusal Reason { get; } = reason;
}

/// <summary>
/// Turns the lines of one upload into committed usage records. Good lines become records with the
/// stream's next sequence numbers; every other line is counted and, if refused, reported. Each flush
/// commits the records together with the byte offset and counters they account for, so a resumed
/// upload continues exactly after the last committed line.
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
    private readonly List<UsageRecord> _records;
    private readonly List<UploadLineError> _errors = [];
    private long _pendingEndOffset;
    private long _lines;
    private long _skipped;
    private long _refused;
    private string? _headerLine;

    public UploadProcessor(IngestSession session, RecordValidator validator, UploadStore store, UploadState upload, LogFormat format, LogMappingRules rules, TimeProvider time)
    {
        _session = session;
        _validator = validator;
        _store = store;
        _upload = upload;
        _time = time;
        _batchRecordsMax = validator.Limits.BatchRecordsMax;
        _records = new List<UsageRecord>(_batchRecordsMax);
        _pendingEndOffset = upload.CommittedOffset;
        if (format == LogFormat.SacctParsable2)
        {
            _sacct = new SacctParser(rules);
            _parser = _sacct;
            if (upload.HeaderLine is not null && _sacct.ReadHeader(Encoding.UTF8.GetBytes(upload.HeaderLine)) is string problem)
            {
                throw new UploadRefusedException(RawLogRefusal.HeaderInvalid, $"the stored header line is unusable: {problem}");
            }
        }
        else
        {
            _parser = new JsonLinesParser(rules);
        }
    }

    public UploadState Upload => _upload;

    // Errors are bounded too: a file of garbage must not grow one flush without limit.
    public bool IsFull => _records.Count >= _batchRecordsMax || _errors.Count >= UploadStore.StoredErrorsMax;

    public void OnLine(ReadOnlySpan<byte> line, long lineNumber, long endOffset)
    {
        _lines++;
        _pendingEndOffset = endOffset;
        if (_sacct is not null && !_sacct.HasHeader)
        {
            if (line.IsEmpty)
            {
                _skipped++;
                return;
            }

            if (_sacct.ReadHeader(line) is string problem)
            {
                throw new UploadRefusedException(RawLogRefusal.HeaderInvalid, $"line {lineNumber}: {problem}");
            }

            _headerLine = Encoding.UTF8.GetString(line);
            _skipped++;
            return;
        }

        switch (_parser.Parse(line, out UsageRecord? record, out LineRefusal refusal))
        {
            case LineOutcome.Skipped:
                _skipped++;
                break;
            case LineOutcome.Refused:
                Refuse(lineNumber, refusal.Reason, refusal.Message);
                break;
            default:
                record!.Sequence = _session.CommittedSequence + (ulong)_records.Count + 1;
                Refusal invalid = _validator.Validate(record, _time.GetUtcNow().ToUnixTimeMilliseconds(), out DeviceModel? _);
                if (invalid.IsRefused)
                {
                    // The record's sequence is not consumed: the next good line takes it.
                    Refuse(lineNumber, ProtocolNames.Of(invalid.Reason), invalid.Message[(invalid.Message.IndexOf(": ", StringComparison.Ordinal) + 2)..]);
                }
                else
                {
                    _records.Add(record);
                }

                break;
        }
    }

    public void OnLineTooLong(long lineNumber, long endOffset, long length)
    {
        _lines++;
        _pendingEndOffset = endOffset;
        Refuse(lineNumber, ProtocolNames.Of(RawLogRefusal.LineTooLong), $"the line has {length} bytes; the limit is {_validator.Limits.RawLineBytesMax}");
    }

    public async ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        if (_pendingEndOffset == _upload.CommittedOffset)
        {
            return;
        }

        var progress = new UploadProgress(_upload.CommittedOffset, _pendingEndOffset, _lines, _records.Count, _skipped, _errors, _refused, _headerLine);
        if (_records.Count > 0)
        {
            await _session.AppendAsync(_records, cancellationToken, (connection, transaction) => UploadStore.AdvanceAsync(connection, transaction, _upload, progress));
        }
        else
        {
            await _store.AdvanceAloneAsync(_upload, progress, cancellationToken);
        }

        _upload.CommittedOffset = _pendingEndOffset;
        _upload.Lines += _lines;
        _upload.Records += _records.Count;
        _upload.LinesSkipped += _skipped;
        _upload.LinesRefused += _refused;
        _upload.HeaderLine ??= _headerLine;
        _records.Clear();
        _errors.Clear();
        _lines = _skipped = _refused = 0;
    }

    private void Refuse(long lineNumber, string reason, string message)
    {
        _refused++;
        _errors.Add(new UploadLineError(lineNumber, reason, message));
    }
}
