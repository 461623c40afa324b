namespace Metering.Engine.Audit;

/// <summary>How a chain is broken at its first broken link.</summary>
public enum ChainBreakKind
{
    /// <summary>The stored hash differs from SHA-256(previous hash || canonical record): the row or its hash was changed.</summary>
    HashMismatch,

    /// <summary>A sequence number below the committed mark has no row: a record was deleted.</summary>
    RecordMissing,

    /// <summary>A sequence number is stored more than once: a row was inserted.</summary>
    RecordDuplicated,

    /// <summary>A row cannot be encoded canonically (a NULL, a sub-millisecond time, an over-long string): it was written outside ingest.</summary>
    RecordNotEncodable,

    /// <summary>The rows verify, but the last one's hash is not the chain head the stream acknowledged.</summary>
    HeadMismatch,

    /// <summary>Rows are stored past the stream's committed mark: they were inserted outside ingest.</summary>
    RecordBeyondHead,
}

/// <summary>
/// The evidence of a chain's first broken link: what was expected, what is stored, and the bytes
/// an auditor can hash again with any SHA-256 tool.
/// </summary>
/// <param name="Sequence">The first sequence number at which the chain does not hold.</param>
/// <param name="PreviousHashHex">The hash the link starts from (the stored hash of the record before, or the recomputed one inside a range).</param>
/// <param name="StoredHashHex">The hash stored on the row, or the head recorded for the stream; empty when there is no row.</param>
/// <param name="ComputedHashHex">SHA-256(previous || canonical); empty when the row could not be encoded.</param>
/// <param name="CanonicalHex">The row's canonical encoding (format 1) as the verifier built it; empty when there is no row.</param>
/// <param name="Detail">A sentence that says what is wrong, including what is missing.</param>
public sealed record ChainBreak(ulong Sequence, ChainBreakKind Kind, string PreviousHashHex, string StoredHashHex, string ComputedHashHex, string CanonicalHex, string Detail);

/// <summary>The outcome of re-verifying one stream's chain, or a range of it.</summary>
/// <param name="RecordsChecked">Records whose link verified before the first break (all of them when intact).</param>
/// <param name="ComputedHead">The recomputed hash of the last record that verified (of the range's end when intact).</param>
/// <param name="FirstBrokenSequence">The first record whose stored hash does not match the recomputed one, or whose sequence is missing.</param>
/// <param name="Evidence">A one-line account of the break; <see cref="Break"/> carries the full evidence.</param>
public sealed record ChainVerification(string ProviderId, string StreamId, ulong RecordsChecked, byte[] ComputedHead, ulong? FirstBrokenSequence, string? Evidence)
{
    public bool Intact => FirstBrokenSequence is null;

    /// <summary>First sequence of the verified range.</summary>
    public ulong FromSequence { get; init; } = 1;

    /// <summary>Last sequence of the verified range (the committed mark unless a range was asked for).</summary>
    public ulong ToSequence { get; init; }

    /// <summary>The stream's committed mark when the verification started.</summary>
    public ulong CommittedSequence { get; init; }

    /// <summary>Canonical bytes hashed (without the 32-byte previous hashes).</summary>
    public long CanonicalBytes { get; init; }

    /// <summary>The first broken link with its evidence; null when intact.</summary>
    public ChainBreak? Break { get; init; }
}

/// <summary>What to verify: a whole chain by default, or the sequence range [From, To].</summary>
public sealed record VerificationRange(ulong FromSequence = 1, ulong? ToSequence = null)
{
    public static readonly VerificationRange Whole = new();
}

/// <summary>Receives every canonical encoding the verifier builds, in sequence order (the bench exports them for sha256sum).</summary>
public interface ICanonicalSink
{
    void Write(ReadOnlySpan<byte> canonical);
}

/// <summary>Bounds of one verifier, checked when it is made.</summary>
public sealed record VerifierLimits
{
    /// <summary>
    /// Most row readers running at once (connections taken from the pool): four per core, at
    /// least four and at most sixteen. A reader that has drained its socket waits for PostgreSQL,
    /// and its wake-up goes through the thread pool; with one reader per core the pool's workers
    /// kept running dry and spinning before they slept (a profile on two cores put a quarter of
    /// the verifier's CPU there), while more readers in flight keep them busy: on the 2-core host,
    /// 2.0-2.3 µs of client CPU per record with two readers against 1.3-1.5 with eight.
    /// </summary>
    public int ParallelReadersMax { get; init; } = Math.Clamp(4 * Environment.ProcessorCount, 4, 16);

    /// <summary>A range at least twice this long is split into segments verified side by side.</summary>
    public long SegmentRecordsMin { get; init; } = 250_000;

    /// <summary>Most streams one provider-wide verification takes on.</summary>
    public int StreamsMax { get; init; } = 100_000;

    public void Validate()
    {
        if (ParallelReadersMax is < 1 or > 64)
        {
            throw new ArgumentOutOfRangeException(nameof(ParallelReadersMax), "ParallelReadersMax must be between 1 and 64.");
        }

        if (SegmentRecordsMin is < 1_000 or > 1_000_000_000)
        {
            throw new ArgumentOutOfRangeException(nameof(SegmentRecordsMin), "SegmentRecordsMin must be between 1,000 and 1,000,000,000.");
        }

        if (StreamsMax is < 1 or > 10_000_000)
        {
            throw new ArgumentOutOfRangeException(nameof(StreamsMax), "StreamsMax must be between 1 and 10,000,000.");
        }
    }
}
