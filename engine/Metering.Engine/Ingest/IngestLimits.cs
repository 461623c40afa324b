namespace Metering.Engine.Ingest;

/// <summary>
/// Every bound the ingest path enforces. Each one is named, has a default, and is checked at
/// start-up by <see cref="Validate"/>; input past a bound is refused, never accommodated.
/// </summary>
public sealed class IngestLimits
{
    /// <summary>Most records in one batch.</summary>
    public int BatchRecordsMax { get; set; } = 10_000;

    /// <summary>
    /// Most records one flush of a raw-log upload commits at once. Larger than a stream's batch:
    /// the fleet check rewrites every (model, minute) a flush touches, and the jobs of a day's
    /// export touch about the same minutes however many of them a flush holds, so fewer, larger
    /// flushes rewrite each minute fewer times. A flush also ends early when its records span
    /// enough minutes to come near <see cref="ConcurrencyMinutesPerBatchMax"/>.
    /// </summary>
    public int UploadFlushRecordsMax { get; set; } = 50_000;

    /// <summary>Longest single record (end minus start).</summary>
    public TimeSpan RecordDurationMax { get; set; } = TimeSpan.FromHours(24);

    /// <summary>How far in the future a start or end may lie, for clock skew between platforms.</summary>
    public TimeSpan FutureSkewMax { get; set; } = TimeSpan.FromMinutes(5);

    /// <summary>Earliest start accepted; the programme's usage begins in 2025.</summary>
    public DateTimeOffset StartEarliest { get; set; } = new(2024, 1, 1, 0, 0, 0, TimeSpan.Zero);

    /// <summary>Most devices in one record.</summary>
    public int DeviceCountMax { get; set; } = 16_384;

    /// <summary>Largest share denominator (a share is numerator/denominator of one device).</summary>
    public int ShareDenominatorMax { get; set; } = 1_000;

    /// <summary>Longest job id, in UTF-8 bytes.</summary>
    public int JobIdBytesMax { get; set; } = 128;

    /// <summary>Longest site name, in UTF-8 bytes.</summary>
    public int SiteBytesMax { get; set; } = 64;

    /// <summary>Longest device UUID, in UTF-8 bytes.</summary>
    public int DeviceUuidBytesMax { get; set; } = 64;

    /// <summary>Most device UUIDs listed on one record (never more than its device count).</summary>
    public int DeviceUuidsMax { get; set; } = 64;

    /// <summary>Longest line of a raw log upload, in bytes.</summary>
    public int RawLineBytesMax { get; set; } = 64 * 1024;

    /// <summary>Largest raw log file one upload may carry, in bytes.</summary>
    public long RawUploadBytesMax { get; set; } = 16L * 1024 * 1024 * 1024;

    /// <summary>
    /// Most (device model, share denominator, minute) rows one batch may add to the concurrency
    /// check (Ingest/FleetConcurrency.cs): about 69 days of one model. A batch past it is refused
    /// as too large rather than making one commit write without bound.
    /// </summary>
    public int ConcurrencyMinutesPerBatchMax { get; set; } = 100_000;

    /// <summary>
    /// Most heartbeats one stream may send in one minute of the server's clock. Only the first of
    /// a minute is written, so the rest cost no database work; the bound keeps a client that
    /// loops on heartbeats from taking the server's cores.
    /// </summary>
    public int HeartbeatsPerMinuteMax { get; set; } = 60;

    /// <summary>How far a heartbeat's client clock may lie from the server's before it is refused as broken.</summary>
    public TimeSpan HeartbeatClockSkewMax { get; set; } = TimeSpan.FromDays(1);

    /// <summary>
    /// Most batches, each of a different stream of one provider, that one group commit takes into
    /// one transaction (Ingest/GroupCommitter.cs). 1 commits every batch in a transaction of its
    /// own. The bound keeps one transaction, and the rollback of a group that fails, small.
    /// </summary>
    public int GroupCommitBatchesMax { get; set; } = 16;

    /// <summary>
    /// Most group commits of one provider in flight at once (Ingest/GroupCommitter.cs): the next
    /// group copies its rows in a transaction of its own while the group ahead of it locks the
    /// heads, checks the fleet and commits, and takes its own locks only after that group ended.
    /// 1 commits a provider's groups one after another. Each group in flight holds a database
    /// connection. A raw-log upload keeps as many of its flushes in flight (RawLogs/UploadProcessor.cs),
    /// each copying its rows and jobs while the flush before it commits.
    /// </summary>
    public int GroupCommitsInFlightMax { get; set; } = 2;

    /// <summary>
    /// Most batches of one stream the server holds in flight at once: the one committing and those
    /// validated, chained and queued behind it while it commits (Metering.Server/Ingest/IngestStreamLoop.cs),
    /// so that a client with batches in flight keeps its provider's group commits full. Each costs
    /// the stream buffers for <see cref="BatchRecordsMax"/> records. 1 takes a stream's batches one
    /// at a time.
    /// </summary>
    public int StreamBatchesInFlightMax { get; set; } = 2;

    /// <summary>Largest gRPC message the server accepts, in bytes.</summary>
    public int MessageBytesMax { get; set; } = 16 * 1024 * 1024;

    /// <summary>
    /// How long a connection that opens a stream held by another connection of this server waits
    /// for the holder to let go (it is cancelled at once, but a commit it has started runs to its
    /// end) before the opener is refused with UNAVAILABLE and tries again.
    /// </summary>
    public TimeSpan TakeoverWaitMax { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Throws with the offending setting when a bound is out of its sane range.</summary>
    public void Validate()
    {
        Require(BatchRecordsMax is > 0 and <= 100_000, nameof(BatchRecordsMax), "between 1 and 100000");
        Require(UploadFlushRecordsMax is > 0 and <= 1_000_000, nameof(UploadFlushRecordsMax), "between 1 and 1000000");
        Require(RecordDurationMax > TimeSpan.Zero && RecordDurationMax <= TimeSpan.FromDays(31), nameof(RecordDurationMax), "between 1 ms and 31 days");
        Require(FutureSkewMax >= TimeSpan.Zero && FutureSkewMax <= TimeSpan.FromHours(1), nameof(FutureSkewMax), "between 0 and 1 hour");
        Require(DeviceCountMax is > 0 and <= 1_000_000, nameof(DeviceCountMax), "between 1 and 1000000");
        Require(ShareDenominatorMax is > 0 and <= 1_000_000, nameof(ShareDenominatorMax), "between 1 and 1000000");
        Require(JobIdBytesMax is > 0 and <= 1024, nameof(JobIdBytesMax), "between 1 and 1024");
        Require(SiteBytesMax is > 0 and <= 1024, nameof(SiteBytesMax), "between 1 and 1024");
        Require(DeviceUuidBytesMax is > 0 and <= 256, nameof(DeviceUuidBytesMax), "between 1 and 256");
        Require(DeviceUuidsMax is >= 0 and <= 4096, nameof(DeviceUuidsMax), "between 0 and 4096");
        Require(RawLineBytesMax is >= 256 and <= 16 * 1024 * 1024, nameof(RawLineBytesMax), "between 256 bytes and 16 MiB");
        Require(RawUploadBytesMax is > 0 and <= 1L << 40, nameof(RawUploadBytesMax), "between 1 byte and 1 TiB");
        Require(ConcurrencyMinutesPerBatchMax is >= 1_440 and <= 10_000_000, nameof(ConcurrencyMinutesPerBatchMax), "between 1440 (a day) and 10000000");
        Require(HeartbeatsPerMinuteMax is >= 1 and <= 6_000, nameof(HeartbeatsPerMinuteMax), "between 1 and 6000");
        Require(HeartbeatClockSkewMax >= TimeSpan.FromMinutes(1) && HeartbeatClockSkewMax <= TimeSpan.FromDays(31), nameof(HeartbeatClockSkewMax), "between 1 minute and 31 days");
        Require(GroupCommitBatchesMax is >= 1 and <= 256, nameof(GroupCommitBatchesMax), "between 1 and 256");
        Require(GroupCommitsInFlightMax is >= 1 and <= 4, nameof(GroupCommitsInFlightMax), "between 1 and 4");
        Require(StreamBatchesInFlightMax is >= 1 and <= 8, nameof(StreamBatchesInFlightMax), "between 1 and 8");
        Require(MessageBytesMax is >= 64 * 1024 and <= 256 * 1024 * 1024, nameof(MessageBytesMax), "between 64 KiB and 256 MiB");
        Require(TakeoverWaitMax >= TimeSpan.FromMilliseconds(100) && TakeoverWaitMax <= TimeSpan.FromMinutes(10), nameof(TakeoverWaitMax), "between 100 ms and 10 minutes");
    }

    /// <summary>The longest canonical encoding a record within these limits can have.</summary>
    public int CanonicalBytesMax =>
        CanonicalEncoding.FixedBytes
        + CanonicalEncoding.SmActiveBytes
        + CanonicalEncoding.StreamIdBytesMax
        + JobIdBytesMax + SiteBytesMax + CanonicalEncoding.DeviceModelBytesMax
        + DeviceUuidsMax * (2 + DeviceUuidBytesMax)
        + CreditCodeBytes * 2;

    private const int CreditCodeBytes = 18;

    private static void Require(bool condition, string name, string range)
    {
        if (!condition)
        {
            throw new ArgumentOutOfRangeException(name, $"Ingest limit {name} must be {range}.");
        }
    }
}
