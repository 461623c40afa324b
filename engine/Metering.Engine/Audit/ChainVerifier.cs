using System.Buffers.Binary;
using System.Globalization;
using System.Text;
using Dapper;
using Metering.Engine.Ingest;
using Metering.Engine.Storage;
using Npgsql;

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
    /// <summary>Most row readers running at once (connections taken from the pool).</summary>
    public int ParallelReadersMax { get; init; } = Math.Clamp(Environment.ProcessorCount, 1, 16);

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

/// <summary>
/// Recomputes hash chains from the stored rows, exactly as an auditor would with sha256sum
/// (proto/metering/v1/canonical-encoding.md), and reports the first broken link with its evidence.
///
/// Rows stream out of PostgreSQL through an Npgsql data reader into one reused buffer
/// (<see cref="RowReader"/>): text is read into a reused char buffer and encoded to UTF-8 in
/// place, hashes are copied, so no string or array is allocated per record, and SHA-256 runs
/// over the previous hash and the encoding in one span. A long range is cut into segments that are verified side by side on their own
/// connections: a segment starts from the stored hash of the record before it, and the segment
/// before checks that very hash, so the segments together prove exactly what one pass would.
/// Streams of a provider are verified in parallel the same way.
/// </summary>
public sealed class ChainVerifier
{
    /// <summary>The longest canonical record the verifier encodes; any record ingest accepts is far shorter.</summary>
    public const int CanonicalBytesMax = 1024 * 1024;

    /// <summary>Columns of the verifier's read, in the order <see cref="RowEncoder"/> reads them.</summary>
    internal const int FieldCount = 13;
    private static readonly byte[] GenesisHash = new byte[CanonicalEncoding.HashBytes];

    // Session settings carry the provider and stream into the range query, so that the same
    // text serves the bench's server-side COPY, which takes no parameters; the
    // values never become SQL text.
    private const string SetKeys = "SELECT set_config('metering.audit_provider', @providerId, true), set_config('metering.audit_stream', @streamId, true)";

    private readonly NpgsqlDataSource _dataSource;
    private readonly VerifierLimits _limits;

    public ChainVerifier(NpgsqlDataSource dataSource, VerifierLimits? limits = null)
    {
        _dataSource = dataSource;
        _limits = limits ?? new VerifierLimits();
        _limits.Validate();
    }

    /// <summary>Verifies a whole stream from its first record to its committed mark.</summary>
    public Task<ChainVerification> VerifyStreamAsync(string providerId, string streamId, CancellationToken cancellationToken = default) =>
        VerifyStreamAsync(providerId, streamId, VerificationRange.Whole, null, cancellationToken);

    /// <summary>
    /// Verifies a range of one stream. A range that starts after 1 starts from the stored hash of
    /// the record before it; a range that ends at the committed mark is also checked against the
    /// acknowledged chain head.
    /// </summary>
    public async Task<ChainVerification> VerifyStreamAsync(string providerId, string streamId, VerificationRange range, ICanonicalSink? sink, CancellationToken cancellationToken = default)
    {
        StreamState? state = await ReadStateAsync(providerId, streamId, cancellationToken);
        if (state is null && !await AnyRowAsync(providerId, streamId, cancellationToken))
        {
            // Nothing to verify is not an intact chain: a stream that was never opened and holds
            // no row is unknown. Rows under a stream ingest never opened are verified (and flagged).
            throw new RecordNotFoundException($"{providerId} has no stream {streamId}: it was never opened and holds no record");
        }

        return await VerifyAsync(providerId, state ?? new StreamState(streamId, 0, GenesisHash, 0), range, sink, cancellationToken);
    }

    private async Task<bool> AnyRowAsync(string providerId, string streamId, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await _dataSource.OpenConnectionAsync(cancellationToken);
        return await connection.ExecuteScalarAsync<bool>(new CommandDefinition(
            "SELECT EXISTS (SELECT 1 FROM usage_records WHERE provider_id = @providerId AND stream_id = @streamId)",
            new { providerId, streamId }, cancellationToken: cancellationToken));
    }

    /// <summary>Verifies every stream of a provider (proof streams included) over the same range, several at once.</summary>
    public async Task<IReadOnlyList<ChainVerification>> VerifyProviderAsync(string providerId, VerificationRange range, CancellationToken cancellationToken = default)
    {
        await using NpgsqlConnection connection = await _dataSource.OpenConnectionAsync(cancellationToken);
        List<StreamState> states = (await connection.QueryAsync<(string Stream, long Committed, byte[] Head, long Beyond)>(new CommandDefinition("""
            SELECT s.stream_id, s.committed_sequence, s.chain_head,
                   (SELECT count(*) FROM usage_records r WHERE r.provider_id = s.provider_id AND r.stream_id = s.stream_id AND r.sequence > s.committed_sequence)
            FROM ingest_streams s WHERE s.provider_id = @providerId ORDER BY s.stream_id COLLATE "C" LIMIT @limit
            """, new { providerId, limit = _limits.StreamsMax + 1 }, cancellationToken: cancellationToken)))
            .Select(s => new StreamState(s.Stream, (ulong)s.Committed, s.Head, s.Beyond)).ToList();
        if (states.Count > _limits.StreamsMax)
        {
            throw new AuditLimitExceededException($"{providerId} has more than {_limits.StreamsMax} streams; verify them one by one.");
        }

        // Rows under a stream id that ingest never opened were written around it. The distinct
        // stream ids come from a walk down the primary key (one index probe per stream), so
        // this costs little more than the stream list itself.
        var known = states.Select(s => s.StreamId).ToHashSet(StringComparer.Ordinal);
        IEnumerable<string> stored = await connection.QueryAsync<string>(new CommandDefinition("""
            WITH RECURSIVE ids AS (
                SELECT min(stream_id) AS id FROM usage_records WHERE provider_id = @providerId
                UNION ALL
                SELECT (SELECT min(stream_id) FROM usage_records WHERE provider_id = @providerId AND stream_id > ids.id) FROM ids WHERE ids.id IS NOT NULL)
            SELECT id FROM ids WHERE id IS NOT NULL LIMIT @limit
            """, new { providerId, limit = _limits.StreamsMax + 1 }, cancellationToken: cancellationToken));
        states.AddRange(stored.Where(id => !known.Contains(id)).Select(id => new StreamState(id, 0, GenesisHash, UnopenedStream)));
        states.Sort((a, b) => string.CompareOrdinal(a.StreamId, b.StreamId));

        return await VerifyAllAsync(providerId, states, range, null, cancellationToken);
    }

    /// <summary>RowsBeyondHead of a stream that has rows but no ingest_streams entry.</summary>
    private const long UnopenedStream = -1;

    private sealed record StreamState(string StreamId, ulong Committed, byte[] Head, long RowsBeyondHead);

    private async Task<StreamState?> ReadStateAsync(string providerId, string streamId, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await _dataSource.OpenConnectionAsync(cancellationToken);
        // One statement, one snapshot: a commit that moves the head between two reads cannot
        // make its own new rows look as if they lay beyond the head.
        var rows = (await connection.QueryAsync<(long Committed, byte[] Head, long Beyond)>(new CommandDefinition("""
            SELECT s.committed_sequence, s.chain_head,
                   (SELECT count(*) FROM usage_records r WHERE r.provider_id = s.provider_id AND r.stream_id = s.stream_id AND r.sequence > s.committed_sequence)
            FROM ingest_streams s WHERE s.provider_id = @providerId AND s.stream_id = @streamId
            """, new { providerId, streamId }, cancellationToken: cancellationToken))).AsList();
        if (rows.Count == 0)
        {
            bool stored = await connection.ExecuteScalarAsync<bool>(new CommandDefinition(
                "SELECT EXISTS (SELECT 1 FROM usage_records WHERE provider_id = @providerId AND stream_id = @streamId)",
                new { providerId, streamId }, cancellationToken: cancellationToken));
            return stored ? new StreamState(streamId, 0, GenesisHash, UnopenedStream) : null;
        }

        return new StreamState(streamId, (ulong)rows[0].Committed, rows[0].Head, rows[0].Beyond);
    }

    private async Task<ChainVerification> VerifyAsync(string providerId, StreamState state, VerificationRange range, ICanonicalSink? sink, CancellationToken cancellationToken) =>
        (await VerifyAllAsync(providerId, [state], range, sink, cancellationToken))[0];

    /// <summary>One piece of work: records [First, Last] of one stream.</summary>
    private sealed record Segment(int Stream, ulong First, ulong Last);

    /// <summary>
    /// Plans every stream's range as segments, runs them all through at most
    /// <see cref="VerifierLimits.ParallelReadersMax"/> readers at once, and joins each stream's
    /// segments in order.
    /// </summary>
    private async Task<ChainVerification[]> VerifyAllAsync(string providerId, IReadOnlyList<StreamState> states, VerificationRange range, ICanonicalSink? sink, CancellationToken cancellationToken)
    {
        var ranges = new (ulong From, ulong To)[states.Count];
        var segments = new List<Segment>();
        for (int s = 0; s < states.Count; s++)
        {
            StreamState state = states[s];
            ulong from = Math.Max(range.FromSequence, 1);
            ulong to = Math.Min(range.ToSequence ?? state.Committed, state.Committed);
            if (range.ToSequence is ulong asked && asked > state.Committed && states.Count == 1)
            {
                throw new ArgumentOutOfRangeException(nameof(range), $"Stream {providerId}/{state.StreamId} is committed up to {state.Committed}; the range ends at {asked}.");
            }

            ranges[s] = (from, to);
            if (from > to)
            {
                continue;
            }

            // Cut a long range into segments; a sink needs the encodings in order, so it gets one pass.
            ulong length = to - from + 1;
            int parts = sink is null ? (int)Math.Clamp(length / (ulong)_limits.SegmentRecordsMin, 1, (ulong)_limits.ParallelReadersMax) : 1;
            for (int i = 0; i < parts; i++)
            {
                segments.Add(new Segment(s, from + length * (ulong)i / (ulong)parts, from + length * (ulong)(i + 1) / (ulong)parts - 1));
            }
        }

        // Longest first, so that a long stream does not start last and run alone.
        segments.Sort((x, y) => (y.Last - y.First).CompareTo(x.Last - x.First));
        var done = new SegmentResult[segments.Count];
        await RunInParallelAsync(segments.Count, sink is null ? _limits.ParallelReadersMax : 1,
            async (i, ct) => done[i] = await VerifySegmentAsync(providerId, states[segments[i].Stream].StreamId, segments[i].First, segments[i].Last, sink, ct),
            cancellationToken);

        var results = new ChainVerification[states.Count];
        for (int s = 0; s < states.Count; s++)
        {
            var parts = Enumerable.Range(0, segments.Count).Where(i => segments[i].Stream == s).OrderBy(i => segments[i].First).Select(i => done[i]).ToList();
            results[s] = Join(providerId, states[s], ranges[s].From, ranges[s].To, parts);
        }

        return results;
    }

    /// <summary>
    /// Runs work items 0 to count - 1, at most <paramref name="threads"/> at once. The first
    /// failure stops the rest and is the one raised.
    /// </summary>
    private static async Task RunInParallelAsync(int count, int threads, Func<int, CancellationToken, Task> work, CancellationToken cancellationToken)
    {
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        int next = -1;
        async Task WorkAsync()
        {
            int item;
            while ((item = Interlocked.Increment(ref next)) < count)
            {
                stop.Token.ThrowIfCancellationRequested();
                try
                {
                    await work(item, stop.Token);
                }
                catch
                {
                    await stop.CancelAsync();
                    throw;
                }
            }
        }

        var workers = new Task[Math.Clamp(count, 0, threads)];
        for (int w = 0; w < workers.Length; w++)
        {
            workers[w] = Task.Run(WorkAsync, CancellationToken.None);
        }

        try
        {
            await Task.WhenAll(workers);
        }
        catch when (!cancellationToken.IsCancellationRequested)
        {
            Exception? first = workers.Where(t => t.IsFaulted).Select(t => t.Exception!.InnerException).FirstOrDefault(e => e is not OperationCanceledException);
            if (first is not null)
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(first);
            }

            throw;
        }
    }

    private static ChainVerification Join(string providerId, StreamState state, ulong from, ulong to, List<SegmentResult> parts)
    {
        if (state.RowsBeyondHead == UnopenedStream)
        {
            return Broken(providerId, state, from, to, 0, 0, (byte[])GenesisHash.Clone(), new ChainBreak(1, ChainBreakKind.RecordBeyondHead, "", "", "", "",
                $"rows are stored under stream {state.StreamId}, which ingest never opened"));
        }

        if (parts.Count == 0)
        {
            // An empty range (or an empty stream) is intact by definition.
            return new ChainVerification(providerId, state.StreamId, 0, to == 0 ? (byte[])GenesisHash.Clone() : [], null, null)
            {
                FromSequence = from,
                ToSequence = to,
                CommittedSequence = state.Committed,
            };
        }

        ulong checkedRecords = 0;
        long canonicalBytes = 0;
        foreach (SegmentResult segment in parts)
        {
            checkedRecords += segment.RecordsChecked;
            canonicalBytes += segment.CanonicalBytes;
            if (segment.Break is not null)
            {
                return Broken(providerId, state, from, to, checkedRecords, canonicalBytes, segment.ComputedHead, segment.Break);
            }
        }

        byte[] head = parts[^1].ComputedHead;
        if (to == state.Committed && !head.AsSpan().SequenceEqual(state.Head))
        {
            var mismatch = new ChainBreak(to, ChainBreakKind.HeadMismatch, "", Hex(state.Head), Hex(head), "",
                $"records {from} to {to} verify, but the stream's acknowledged chain head {Hex(state.Head)} is not the recomputed hash of record {to}");
            return Broken(providerId, state, from, to, checkedRecords, canonicalBytes, head, mismatch);
        }

        if (to == state.Committed && state.RowsBeyondHead > 0)
        {
            var beyond = new ChainBreak(to + 1, ChainBreakKind.RecordBeyondHead, Hex(head), "", "", "",
                $"{state.RowsBeyondHead} row(s) are stored past the committed mark {to}; ingest never writes beyond its head");
            return Broken(providerId, state, from, to, checkedRecords, canonicalBytes, head, beyond);
        }

        return new ChainVerification(providerId, state.StreamId, checkedRecords, head, null, null)
        {
            FromSequence = from,
            ToSequence = to,
            CommittedSequence = state.Committed,
            CanonicalBytes = canonicalBytes,
        };
    }

    private static ChainVerification Broken(string providerId, StreamState state, ulong from, ulong to, ulong checkedRecords, long canonicalBytes, byte[] head, ChainBreak evidence) =>
        new(providerId, state.StreamId, checkedRecords, head, evidence.Sequence, $"record {evidence.Sequence}: {evidence.Detail}")
        {
            FromSequence = from,
            ToSequence = to,
            CommittedSequence = state.Committed,
            CanonicalBytes = canonicalBytes,
            Break = evidence,
        };

    private sealed record SegmentResult(ulong RecordsChecked, long CanonicalBytes, byte[] ComputedHead, ChainBreak? Break);

    /// <summary>
    /// Verifies [first, last] of one stream in one read-only snapshot. Record first - 1, when
    /// there is one, is read too: its stored hash is where the segment starts, and the segment
    /// before checks that very hash.
    /// </summary>
    private async Task<SegmentResult> VerifySegmentAsync(string providerId, string streamId, ulong first, ulong last, ICanonicalSink? sink, CancellationToken cancellationToken)
    {
        await using RowSource source = await OpenRowsAsync(providerId, streamId, first > 1 ? first - 1 : 1, last, cancellationToken);
        RowReader rows = source.Rows;
        byte[] previous = new byte[CanonicalEncoding.HashBytes];
        if (first > 1)
        {
            bool anchored = await rows.ReadAsync(cancellationToken) && !rows.IsNull(0) && rows.Int64(0) == (long)(first - 1);
            if (!anchored || rows.FieldLength(12) != CanonicalEncoding.HashBytes)
            {
                await source.AbandonAsync();
                return new SegmentResult(0, 0, previous, new ChainBreak(first - 1, anchored ? ChainBreakKind.RecordNotEncodable : ChainBreakKind.RecordMissing, "", "", "", "",
                    $"record {first - 1} {(anchored ? "has a hash that is not 32 bytes" : "is missing")}; a range that starts at {first} starts from its stored hash"));
            }

            rows.Field(12).CopyTo(previous);
        }

        var encoder = new RowEncoder(providerId, streamId);
        byte[] computed = new byte[CanonicalEncoding.HashBytes];
        ulong expected = first;
        long canonicalBytes = 0;
        SegmentResult? outcome = null;
        while (await rows.ReadAsync(cancellationToken))
        {
            if (rows.IsNull(0))
            {
                // Only a row written around the table's constraints can get here.
                outcome = new SegmentResult(expected - first, canonicalBytes, previous,
                    new ChainBreak(expected, ChainBreakKind.RecordNotEncodable, Hex(previous), "", "", "", "a row of the range has no sequence number"));
                break;
            }

            ulong sequence = (ulong)rows.Int64(0);
            if (sequence != expected)
            {
                ChainBreak gap = sequence < expected
                    ? new ChainBreak(sequence, ChainBreakKind.RecordDuplicated, Hex(previous), "", "", "", $"record {sequence} is stored more than once")
                    : new ChainBreak(expected, ChainBreakKind.RecordMissing, Hex(previous), "", "", "",
                        expected + 1 == sequence ? $"record {expected} is missing; the next stored record is {sequence}" : $"records {expected} to {sequence - 1} are missing; the next stored record is {sequence}");
                outcome = new SegmentResult(expected - first, canonicalBytes, previous, gap);
                break;
            }

            int length = encoder.Encode(rows, out string? notEncodable);
            if (length < 0)
            {
                outcome = new SegmentResult(expected - first, canonicalBytes, previous,
                    new ChainBreak(sequence, ChainBreakKind.RecordNotEncodable, Hex(previous), Hex(rows.Field(12)), "", "", notEncodable!));
                break;
            }

            Span<byte> link = encoder.Scratch.AsSpan(0, CanonicalEncoding.HashBytes + length);
            previous.CopyTo(link);
            Sha256Digest.Hash(link, computed);
            ReadOnlySpan<byte> stored = rows.Field(12);
            if (!stored.SequenceEqual(computed))
            {
                outcome = new SegmentResult(expected - first, canonicalBytes, previous,
                    new ChainBreak(sequence, ChainBreakKind.HashMismatch, Hex(previous), Hex(stored), Hex(computed), Hex(link[CanonicalEncoding.HashBytes..]),
                        $"stored hash {Hex(stored)} but its content and the previous hash give {Hex(computed)}"));
                break;
            }

            sink?.Write(link[CanonicalEncoding.HashBytes..]);
            canonicalBytes += length;
            (previous, computed) = (computed, previous);
            expected++;
        }

        if (outcome is not null)
        {
            // The rest of the range is not needed.
            await source.AbandonAsync();
            return outcome;
        }

        if (expected <= last)
        {
            return new SegmentResult(expected - first, canonicalBytes, previous, new ChainBreak(expected, ChainBreakKind.RecordMissing, Hex(previous), "", "", "",
                expected == last ? $"record {expected} is missing" : $"records {expected} to {last} are missing; the committed mark is {last}"));
        }

        return new SegmentResult(expected - first, canonicalBytes, previous, null);
    }

    /// <summary>
    /// The rows [from, to] of one stream in sequence order, read through Npgsql in a read-only
    /// repeatable-read transaction on a connection of the pool.
    /// </summary>
    private async Task<RowSource> OpenRowsAsync(string providerId, string streamId, ulong from, ulong to, CancellationToken cancellationToken)
    {
        NpgsqlConnection connection = await _dataSource.OpenConnectionAsync(cancellationToken);
        try
        {
            NpgsqlTransaction transaction = await connection.BeginTransactionAsync(System.Data.IsolationLevel.RepeatableRead, cancellationToken);
            await connection.ExecuteAsync(new CommandDefinition("SET TRANSACTION READ ONLY; " + ReadSettings, transaction: transaction, cancellationToken: cancellationToken));
            await connection.ExecuteAsync(new CommandDefinition(SetKeys, new { providerId, streamId }, transaction, cancellationToken: cancellationToken));
            var command = new NpgsqlCommand(RangeSelect(from, to), connection, transaction) { CommandTimeout = 0 };
            NpgsqlDataReader reader = await command.ExecuteReaderAsync(cancellationToken);
            return new RowSource(new RowReader(reader, FieldCount), reader, command, connection);
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// Settings of every read: the range in primary-key order (a merge of each partition's
    /// index) touches only the range asked for, needs no sort, and streams from the first row.
    /// Left to itself the planner scans whole partitions and sorts on disk, and its parallel
    /// workers compete with the segments that already run side by side. JIT compilation of the
    /// plan costs more than it saves on a scan this simple.
    /// </summary>
    internal const string ReadSettings = "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off; SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL jit = off";

    /// <summary>The rows [from, to] of the stream named by the session settings metering.audit_provider and metering.audit_stream, in the order <see cref="RowEncoder"/> reads their columns.</summary>
    internal static string RangeSelect(ulong from, ulong to) => string.Create(CultureInfo.InvariantCulture, $"""
        SELECT sequence, job_id, holder_code, device_model, device_count, share_numerator, share_denominator,
               start_at, end_at, site, device_uuids, energy_mwh, chain_hash
        FROM usage_records
        WHERE provider_id = current_setting('metering.audit_provider') AND stream_id = current_setting('metering.audit_stream')
          AND sequence BETWEEN {from} AND {to}
        ORDER BY sequence
        """);

    /// <summary>The rows of one segment and what to close when they are read.</summary>
    private sealed class RowSource(RowReader rows, NpgsqlDataReader reader, NpgsqlCommand command, NpgsqlConnection connection) : IAsyncDisposable
    {
        private bool _abandoned;

        public RowReader Rows => rows;

        /// <summary>
        /// Stops the read before its end. Closing a data reader reads its remaining rows, so the
        /// statement is cancelled first; the rest of a long segment is then never sent.
        /// </summary>
        public ValueTask AbandonAsync()
        {
            _abandoned = true;
            command.Cancel();
            return ValueTask.CompletedTask;
        }

        public async ValueTask DisposeAsync()
        {
            try
            {
                await reader.DisposeAsync();
            }
            catch (PostgresException e) when (_abandoned && e.SqlState == PostgresErrorCodes.QueryCanceled)
            {
                // The cancellation asked for in AbandonAsync.
            }
            finally
            {
                await command.DisposeAsync();

                // Closing returns the connection to the pool; its open read-only transaction is rolled back.
                await connection.DisposeAsync();
            }
        }
    }

    private static string Hex(ReadOnlySpan<byte> bytes) => Convert.ToHexStringLower(bytes);
}

/// <summary>
/// Builds the canonical encoding of a stored row behind a 32-byte gap for the previous hash.
/// The provider and stream prefix is encoded once.
/// </summary>
internal sealed class RowEncoder
{
    private const long PostgresEpochUnixMs = 946_684_800_000;

    private readonly byte[] _prefix;

    public RowEncoder(string providerId, string streamId)
    {
        var prefix = new byte[1 + 2 + Encoding.UTF8.GetByteCount(providerId) + 2 + Encoding.UTF8.GetByteCount(streamId)];
        prefix[0] = CanonicalEncoding.FormatVersion;
        int at = 1;
        at += WriteString(Encoding.UTF8.GetBytes(providerId), prefix.AsSpan(at));
        WriteString(Encoding.UTF8.GetBytes(streamId), prefix.AsSpan(at));
        _prefix = prefix;
    }

    /// <summary>The previous hash, then the encoding.</summary>
    public byte[] Scratch { get; } = new byte[CanonicalEncoding.HashBytes + ChainVerifier.CanonicalBytesMax];

    /// <summary>The encoding's length, or -1 with the reason when the row cannot be encoded.</summary>
    public int Encode(RowReader row, out string? notEncodable)
    {
        notEncodable = null;
        for (int i = 0; i < ChainVerifier.FieldCount; i++)
        {
            // device_uuids and energy_mwh may be NULL; nothing else may.
            if (row.IsNull(i) && i is not 10 and not 11)
            {
                notEncodable = $"column {i + 1} of the row is NULL";
                return -1;
            }
        }

        if (row.FieldLength(12) != CanonicalEncoding.HashBytes)
        {
            notEncodable = $"the stored chain hash is {row.FieldLength(12)} bytes, not 32";
            return -1;
        }

        Span<byte> output = Scratch.AsSpan(CanonicalEncoding.HashBytes);
        int fixedBytes = _prefix.Length + 8 + 4 * 3 + 8 * 2 + 2 + 1 + 8 + 2 * 4;
        long length = fixedBytes + (long)row.FieldLength(1) + row.FieldLength(2) + row.FieldLength(3) + row.FieldLength(9) + UuidsBytes(row.Strings(10));
        if (length > ChainVerifier.CanonicalBytesMax)
        {
            notEncodable = $"the row's canonical encoding would exceed {ChainVerifier.CanonicalBytesMax} bytes";
            return -1;
        }

        _prefix.CopyTo(output);
        int at = _prefix.Length;
        row.Field(0).CopyTo(output[at..]);
        at += 8;
        if (!TryString(row.Field(1), output, ref at, "job_id", ref notEncodable)
            || !TryString(row.Field(2), output, ref at, "holder_code", ref notEncodable)
            || !TryString(row.Field(3), output, ref at, "device_model", ref notEncodable))
        {
            return -1;
        }

        // device_count, share_numerator, share_denominator: int4 on disk, u32 in the encoding.
        row.Field(4).CopyTo(output[at..]);
        row.Field(5).CopyTo(output[(at + 4)..]);
        row.Field(6).CopyTo(output[(at + 8)..]);
        at += 12;
        if (!TryTime(row.Int64(7), output, ref at, "start_at", ref notEncodable) || !TryTime(row.Int64(8), output, ref at, "end_at", ref notEncodable))
        {
            return -1;
        }

        if (!TryString(row.Field(9), output, ref at, "site", ref notEncodable) || !TryUuids(row, output, ref at, ref notEncodable))
        {
            return -1;
        }

        if (row.IsNull(11))
        {
            output[at++] = 0;
            BinaryPrimitives.WriteUInt64BigEndian(output[at..], 0);
        }
        else
        {
            output[at++] = 1;
            row.Field(11).CopyTo(output[at..]);
        }

        at += 8;
        return at;
    }

    private static bool TryString(ReadOnlySpan<byte> value, Span<byte> output, ref int at, string column, ref string? notEncodable)
    {
        if (value.Length > ushort.MaxValue)
        {
            notEncodable = $"{column} is {value.Length} bytes; the canonical encoding holds at most 65535";
            return false;
        }

        at += WriteString(value, output[at..]);
        return true;
    }

    /// <summary>A timestamptz (microseconds since 2000-01-01) as Unix milliseconds; the chain covers whole milliseconds only.</summary>
    private static bool TryTime(long postgresMicroseconds, Span<byte> output, ref int at, string column, ref string? notEncodable)
    {
        if (postgresMicroseconds % 1_000 != 0)
        {
            notEncodable = $"{column} has a sub-millisecond part ({postgresMicroseconds % 1_000} µs); ingest stores whole milliseconds";
            return false;
        }

        BinaryPrimitives.WriteInt64BigEndian(output[at..], postgresMicroseconds / 1_000 + PostgresEpochUnixMs);
        at += 8;
        return true;
    }

    /// <summary>A one-dimensional text[] without NULL elements, as the u16 count and the strings.</summary>
    private static bool TryUuids(RowReader row, Span<byte> output, ref int at, ref string? notEncodable)
    {
        string?[]? uuids = row.Strings(10);
        if (uuids is null)
        {
            BinaryPrimitives.WriteUInt16BigEndian(output[at..], 0);
            at += 2;
            return true;
        }

        if (uuids.Length > ushort.MaxValue)
        {
            notEncodable = "device_uuids has more than 65535 elements";
            return false;
        }

        BinaryPrimitives.WriteUInt16BigEndian(output[at..], (ushort)uuids.Length);
        at += 2;
        for (int i = 0; i < uuids.Length; i++)
        {
            if (uuids[i] is not { } uuid)
            {
                notEncodable = $"device_uuids element {i + 1} is NULL";
                return false;
            }

            if (Encoding.UTF8.GetByteCount(uuid) > ushort.MaxValue)
            {
                notEncodable = $"a device UUID is {Encoding.UTF8.GetByteCount(uuid)} bytes; the canonical encoding holds at most 65535";
                return false;
            }

            BinaryPrimitives.WriteUInt16BigEndian(output[at..], (ushort)Encoding.UTF8.GetByteCount(uuid));
            at += 2 + Encoding.UTF8.GetBytes(uuid, output[(at + 2)..]);
        }

        return true;
    }

    /// <summary>Bytes the device UUIDs take in the encoding, past their count.</summary>
    private static long UuidsBytes(string?[]? uuids)
    {
        long bytes = 0;
        foreach (string? uuid in uuids ?? [])
        {
            bytes += 2 + (uuid is null ? 0 : Encoding.UTF8.GetByteCount(uuid));
        }

        return bytes;
    }

    private static int WriteString(ReadOnlySpan<byte> utf8, Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt16BigEndian(destination, (ushort)utf8.Length);
        utf8.CopyTo(destination[2..]);
        return 2 + utf8.Length;
    }
}
