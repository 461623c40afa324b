using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace Metering.Engine.Telemetry;

/// <summary>
/// The engine's measurements and traces, through the platform's System.Diagnostics types only:
/// the server decides where they go (OpenTelemetry, a Prometheus scrape, OTLP), the engine never
/// knows. Instruments are static, as the meter is one per process; every call records per batch,
/// per line block or per run, never per record, and tags go through <see cref="TagList"/>, which
/// holds up to eight tags without allocating.
/// </summary>
public static class MeteringTelemetry
{
    /// <summary>The name of the meter and of the activity source, which the server subscribes to.</summary>
    public const string Name = "Metering";

    public static readonly Meter Meter = new(Name);

    public static readonly ActivitySource Source = new(Name);

    // Bucket bounds in seconds: ingest is judged against a 100 ms p99, settlement against minutes.
    private static readonly double[] LatencyBoundsSeconds = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
    private static readonly double[] RunBoundsSeconds = [0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600];

    private static readonly Counter<long> RecordsCommitted = Meter.CreateCounter<long>("metering.ingest.records.committed", "{record}",
        "Usage records committed, by provider (streams and raw-log uploads; identical replays are not counted).");

    private static readonly Counter<long> RecordsRefused = Meter.CreateCounter<long>("metering.ingest.records.refused", "{record}",
        "Usage records in batches the server refused, by provider and reason; nothing of a refused batch is committed.");

    private static readonly Counter<long> Refusals = Meter.CreateCounter<long>("metering.ingest.refusals", "{refusal}",
        "Ingest streams ended by a refusal, by provider and reason (a refused open or heartbeat counts here with no record).");

    private static readonly Histogram<double> BatchCommitDuration = Meter.CreateHistogram("metering.ingest.batch.commit.duration", "s",
        "From a batch reaching the engine to its commit: validation, normalisation, chaining and the COPY.",
        tags: null, advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = LatencyBoundsSeconds });

    private static readonly Histogram<double> AckDuration = Meter.CreateHistogram("metering.ingest.ack.duration", "s",
        "From a batch arriving on a stream to its signed acknowledgement being written back.",
        tags: null, advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = LatencyBoundsSeconds });

    private static readonly Histogram<int> GroupCommitBatches = Meter.CreateHistogram("metering.ingest.group_commit.batches", "{batch}",
        "Stream batches each ingest transaction committed: 1 for a batch committed alone (no group, or a group split after a failure), more for a group commit.",
        tags: null, advice: new InstrumentAdvice<int> { HistogramBucketBoundaries = [1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128, 256] });

    private static readonly UpDownCounter<long> OpenStreams = Meter.CreateUpDownCounter<long>("metering.ingest.streams.open", "{stream}",
        "Ingest streams open now, by provider.");

    private static readonly Counter<long> Heartbeats = Meter.CreateCounter<long>("metering.ingest.heartbeats", "{heartbeat}",
        "Heartbeats answered, by provider and outcome: recorded (the first of its minute) or repeated (answered from memory).");

    private static readonly Counter<long> RawLogLines = Meter.CreateCounter<long>("metering.rawlog.lines", "{line}",
        "Raw-log lines committed, by provider and outcome: metered, skipped, refused or duplicate.");

    private static readonly Histogram<double> SettlementDuration = Meter.CreateHistogram("metering.settlement.run.duration", "s",
        "Settlement runs, by result: closed (a day settled), already_closed (nothing written) or failed.",
        tags: null, advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = RunBoundsSeconds });

    private static readonly Counter<long> ChainRecordsVerified = Meter.CreateCounter<long>("metering.audit.chain.verified.records", "{record}",
        "Chain records re-hashed by audit verification; its rate is the verification rate.");

    private static readonly Counter<long> ChainBytesVerified = Meter.CreateCounter<long>("metering.audit.chain.verified.bytes", "By",
        "Canonical bytes re-hashed by audit verification.");

    private static readonly Counter<long> KeyLookups = Meter.CreateCounter<long>("metering.access.key.lookups", "{lookup}",
        "API key look-ups, by outcome: hit (answered from the authentication cache) or miss (read from the database).");

    private static readonly Counter<long> CallRefusals = Meter.CreateCounter<long>("metering.rpc.refusals", "{refusal}",
        "Calls a handler ended with an error status (a refusal, or UNAVAILABLE), by gRPC method, status and ErrorInfo reason (the status's name when it has none).");

    private const string ProviderTag = "provider";
    private const string ReasonTag = "reason";
    private const string OutcomeTag = "outcome";
    private const string ResultTag = "result";

    /// <summary>Starts the trace and the timing of one batch; <see cref="BatchSpan.Committed"/> records its commit.</summary>
    public static BatchSpan StartBatch(string providerId, string streamId, int records)
    {
        Activity? activity = Source.StartActivity("metering.ingest.batch");
        if (activity is not null)
        {
            activity.SetTag("metering.provider", providerId);
            activity.SetTag("metering.stream", streamId);
            activity.SetTag("metering.batch.records", records);
        }

        return new BatchSpan(activity, providerId, Stopwatch.GetTimestamp());
    }

    /// <summary>One batch on its way to a commit. Disposing ends its trace.</summary>
    public readonly struct BatchSpan : IDisposable
    {
        private readonly Activity? _activity;
        private readonly string _providerId;
        private readonly long _startedTimestamp;

        internal BatchSpan(Activity? activity, string providerId, long startedTimestamp)
        {
            _activity = activity;
            _providerId = providerId;
            _startedTimestamp = startedTimestamp;
        }

        /// <summary>The batch committed <paramref name="records"/> new records.</summary>
        public void Committed(int records)
        {
            RecordsCommitted.Add(records, new TagList { { ProviderTag, _providerId } });
            BatchCommitDuration.Record(Stopwatch.GetElapsedTime(_startedTimestamp).TotalSeconds);
            _activity?.SetTag("metering.batch.committed", records);
        }

        public void Dispose() => _activity?.Dispose();
    }

    /// <summary>A stream ended with a refusal; <paramref name="records"/> is the refused batch's size, 0 when no batch was refused.</summary>
    public static void Refused(string providerId, string reason, int records)
    {
        var tags = new TagList { { ProviderTag, providerId }, { ReasonTag, reason } };
        Refusals.Add(1, tags);
        if (records > 0)
        {
            RecordsRefused.Add(records, tags);
        }
    }

    /// <summary>A batch's acknowledgement was written, <paramref name="receivedTimestamp"/> (<see cref="Stopwatch.GetTimestamp"/>) after it arrived.</summary>
    public static void Acknowledged(long receivedTimestamp) =>
        AckDuration.Record(Stopwatch.GetElapsedTime(receivedTimestamp).TotalSeconds);

    /// <summary>A group commit's transaction committed <paramref name="batches"/> stream batches of <paramref name="providerId"/>.</summary>
    public static void GroupCommitted(string providerId, int batches) =>
        GroupCommitBatches.Record(batches, new TagList { { ProviderTag, providerId } });

    /// <summary>Counts a stream open until the returned value is disposed.</summary>
    public static OpenStream StreamOpened(string providerId)
    {
        OpenStreams.Add(1, new TagList { { ProviderTag, providerId } });
        return new OpenStream(providerId);
    }

    /// <summary>An open stream; disposing counts it closed.</summary>
    public readonly struct OpenStream(string providerId) : IDisposable
    {
        public void Dispose() => OpenStreams.Add(-1, new TagList { { ProviderTag, providerId } });
    }

    public static void Heartbeat(string providerId, bool recorded) =>
        Heartbeats.Add(1, new TagList { { ProviderTag, providerId }, { OutcomeTag, recorded ? "recorded" : "repeated" } });

    /// <summary>The outcome of the lines one raw-log flush committed.</summary>
    public static void RawLogFlushed(string providerId, int metered, long skipped, long refused, long duplicate)
    {
        AddLines(providerId, "metered", metered);
        AddLines(providerId, "skipped", skipped);
        AddLines(providerId, "refused", refused);
        AddLines(providerId, "duplicate", duplicate);
    }

    private static void AddLines(string providerId, string outcome, long lines)
    {
        if (lines > 0)
        {
            RawLogLines.Add(lines, new TagList { { ProviderTag, providerId }, { OutcomeTag, outcome } });
        }
    }

    /// <summary>Starts the trace and the timing of a settlement run; dispose the result when the run ends.</summary>
    public static SettlementRun StartSettlement(DateOnly day) => new(Source.StartActivity("metering.settlement.run"), day);

    /// <summary>
    /// One settlement run. Its <see cref="Result"/> stays "failed" unless the run sets another
    /// before it ends, so that a run an exception ended is counted as failed.
    /// </summary>
    public sealed class SettlementRun : IDisposable
    {
        private readonly Activity? _activity;
        private readonly long _startedTimestamp = Stopwatch.GetTimestamp();

        internal SettlementRun(Activity? activity, DateOnly day)
        {
            _activity = activity;
            _activity?.SetTag("metering.settlement.day", day.ToString("yyyy-MM-dd", System.Globalization.CultureInfo.InvariantCulture));
        }

        public string Result { get; set; } = "failed";

        public void Dispose()
        {
            SettlementDuration.Record(Stopwatch.GetElapsedTime(_startedTimestamp).TotalSeconds, new TagList { { ResultTag, Result } });
            if (_activity is not null)
            {
                _activity.SetTag("metering.settlement.result", Result);
                _activity.SetStatus(Result == "failed" ? ActivityStatusCode.Error : ActivityStatusCode.Ok);
                _activity.Dispose();
            }
        }
    }

    /// <summary>One verified chain (or range of one): how much was re-hashed.</summary>
    public static void ChainVerified(ulong records, long canonicalBytes)
    {
        ChainRecordsVerified.Add((long)records);
        ChainBytesVerified.Add(canonicalBytes);
    }

    /// <summary>A call ended with a refusal: a status and, for every refusal the contract documents, an ErrorInfo reason.</summary>
    public static void CallRefused(string method, string status, string reason) =>
        CallRefusals.Add(1, new TagList { { "method", method }, { "status", status }, { ReasonTag, reason } });

    public static void KeyLookup(bool cacheHit) =>
        KeyLookups.Add(1, new TagList { { OutcomeTag, cacheHit ? "hit" : "miss" } });
}
