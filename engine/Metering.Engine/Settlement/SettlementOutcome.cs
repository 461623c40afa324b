namespace Metering.Engine.Settlement;

/// <summary>A step of a run, for progress output.</summary>
public sealed record SettlementProgress(DateOnly Day, string Stage, string Message, TimeSpan Elapsed);

/// <summary>One statement as stored: its canonical CSV and hash.</summary>
public sealed record StoredStatement(string PartyKind, string Party, byte[] CanonicalCsv, byte[] Sha256)
{
    public PartyStatement Parse() => StatementFormats.ParseCanonicalCsv(CanonicalCsv);
}

/// <summary>A closed day, as the run that closed it recorded it.</summary>
public sealed record SettlementOutcome(DateOnly Day, bool AlreadyClosed, byte[] SettlementSha256, long DayRecords, long DayUsageNpfh, long AdjustmentRecords,
    long FeeFen, long SubsidyFen, string SettledBy, DateTimeOffset FinishedAt, IReadOnlyList<StoredStatement> Statements)
{
    public string SettlementHex => Convert.ToHexStringLower(SettlementSha256);
}

/// <summary>Knobs of a run that do not change its result.</summary>
public sealed class SettlementOptions
{
    /// <summary>
    /// For fault drills: how long a run waits, all its work done and checked, before it commits,
    /// so that an operator can kill it and watch the rerun. Zero in normal runs.
    /// </summary>
    public TimeSpan PauseBeforeCommit { get; init; } = TimeSpan.Zero;

    /// <summary>Longest a run may take before PostgreSQL cancels its statements: the only time limit on them, since the run's connections have no command timeout.</summary>
    public TimeSpan StatementTimeout { get; init; } = TimeSpan.FromMinutes(30);

    /// <summary>Most connections that may read one day side by side.</summary>
    public const int DaySegmentsMax = 8;

    /// <summary>
    /// How many connections read the day side by side, each the records of a range of the day's
    /// partition's blocks, all in the run's snapshot: PostgreSQL's scanning and sending of the
    /// rows is the larger part of a run, and one backend works on one core. 1 reads the day on
    /// the run's connection alone.
    /// </summary>
    public int DaySegments { get; init; } = 2;

    /// <summary>Most block ranges one connection reads in turn.</summary>
    internal const int DayRangesPerSegmentMax = 16;

    /// <summary>
    /// How many block ranges each of the <see cref="DaySegments"/> connections reads, one after
    /// the other. Before a range was grouped in chunks (<see cref="DayChunkBlocks"/>), PostgreSQL
    /// sent nothing of it until the range's scan ended, so with one range per connection the
    /// engine waited for the whole scan and PostgreSQL then waited for the engine; with several,
    /// the engine hashed one range's runs while the backends grouped the next, at the cost of
    /// more, smaller scans and groupings. The chunks now let the runs flow within a range.
    /// Which costs less has moved with the read: one range per connection measured 1.82 × the
    /// floor against 2.20 at four with the records' attributes sent in one aggregate, and 2.46
    /// against 2.17 once each attribute had an aggregate of its own (bench/RESULTS.md, issue 17,
    /// quiet two-core host, same session each), so four stay the default. Either way the run's
    /// connections wait for a range as long as PostgreSQL works on it: they have no command
    /// timeout of their own (<see cref="DailySettlement"/>), only <see cref="StatementTimeout"/>.
    /// Not a setting: tests set it to cut a small day into many ranges, and run-settle
    /// --day-ranges for A/B runs.
    /// </summary>
    internal int DayRangesPerSegment { get; init; } = 4;

    /// <summary>Most blocks of one chunk of a range (1 GiB of 8 KiB blocks).</summary>
    internal const int DayChunkBlocksMax = 128 * 1024;

    /// <summary>
    /// How many blocks of a range PostgreSQL groups at a time (<c>DailyLeaves.ChunkedRunsSql</c>):
    /// it sends a chunk's runs as soon as it has scanned the chunk, so the engine takes in one
    /// chunk while PostgreSQL scans the next, instead of waiting for the scan of the whole range.
    /// A chunk of 1,024 blocks (8 MiB) holds about 34,000 of the bench's records. Not a setting:
    /// tests set it small to cut a small day into many chunks, and run-settle --day-chunk-blocks
    /// for A/B runs.
    /// </summary>
    internal int DayChunkBlocks { get; init; } = 1024;
}
