using Dapper;
using Metering.Engine.Ingest;
using Metering.Engine.Storage;
using Metering.Engine.Telemetry;
using Npgsql;

namespace Metering.Engine.Audit;

/// <summary>
/// Recomputes hash chains from the stored rows, exactly as an auditor would with sha256sum
/// (proto/metering/v1/canonical-encoding.md), and reports the first broken link with its evidence.
///
/// Rows stream out of PostgreSQL as one binary COPY per segment, parsed straight from Npgsql's
/// raw COPY stream into one large reused buffer (<see cref="ChainRows"/>): the fields arrive in
/// the byte order and representation the encoding wants, so no string or array is allocated per
/// record, and SHA-256 runs over the previous hash and the encoding in one span. A long range is
/// cut into segments that are verified side by side on their own
/// connections: a segment starts from the stored hash of the record before it, and the segment
/// before checks that very hash, so the segments together prove exactly what one pass would.
/// Streams of a provider are verified in parallel the same way.
/// </summary>
public sealed class ChainVerifier
{
    /// <summary>The longest canonical record the verifier encodes; any record ingest accepts is far shorter.</summary>
    public const int CanonicalBytesMax = 1024 * 1024;

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

        return await VerifyAsync(providerId, state ?? new StreamState(streamId, 0, UsageStore.GenesisHash, 0), range, sink, cancellationToken);
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
                   (SELECT count(*) FROM usage_records r WHERE r.provider_id = @providerId AND r.stream_id = s.stream_id AND r.sequence > s.committed_sequence)
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
        states.AddRange(stored.Where(id => !known.Contains(id)).Select(id => new StreamState(id, 0, UsageStore.GenesisHash, UnopenedStream)));
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
        // make its own new rows look as if they lay beyond the head. The subquery names the
        // provider itself: correlated on s.provider_id, Citus sends it to every shard.
        var rows = (await connection.QueryAsync<(long Committed, byte[] Head, long Beyond)>(new CommandDefinition("""
            SELECT s.committed_sequence, s.chain_head,
                   (SELECT count(*) FROM usage_records r WHERE r.provider_id = @providerId AND r.stream_id = s.stream_id AND r.sequence > s.committed_sequence)
            FROM ingest_streams s WHERE s.provider_id = @providerId AND s.stream_id = @streamId
            """, new { providerId, streamId }, cancellationToken: cancellationToken))).AsList();
        if (rows.Count == 0)
        {
            bool stored = await connection.ExecuteScalarAsync<bool>(new CommandDefinition(
                "SELECT EXISTS (SELECT 1 FROM usage_records WHERE provider_id = @providerId AND stream_id = @streamId)",
                new { providerId, streamId }, cancellationToken: cancellationToken));
            return stored ? new StreamState(streamId, 0, UsageStore.GenesisHash, UnopenedStream) : null;
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
        await ParallelWork.RunAsync(segments.Count, sink is null ? _limits.ParallelReadersMax : 1,
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

    private static ChainVerification Join(string providerId, StreamState state, ulong from, ulong to, List<SegmentResult> parts)
    {
        if (state.RowsBeyondHead == UnopenedStream)
        {
            return Broken(providerId, state, from, to, 0, 0, (byte[])UsageStore.GenesisHash.Clone(), new ChainBreak(1, ChainBreakKind.RecordBeyondHead, "", "", "", "",
                $"rows are stored under stream {state.StreamId}, which ingest never opened"));
        }

        if (parts.Count == 0)
        {
            // An empty range (or an empty stream) is intact by definition.
            return new ChainVerification(providerId, state.StreamId, 0, to == 0 ? (byte[])UsageStore.GenesisHash.Clone() : [], null, null)
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

        MeteringTelemetry.ChainVerified(checkedRecords, canonicalBytes);
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
        await using ChainRowSource source = await ChainRows.OpenAsync(_dataSource, providerId, streamId, first > 1 ? first - 1 : 1, last, cancellationToken);

        // Cancellation cancels the statement once, which fails a read that waits for rows; the
        // reads themselves go without a token, since Npgsql registers and unregisters a token on
        // every read, and a read here returns one row.
        await using CancellationTokenRegistration cancel = cancellationToken.Register(static state => ((ChainRowSource)state!).AbandonQuietly(), source);
        try
        {
            return await ReadSegmentAsync(source, providerId, streamId, first, last, sink, cancellationToken);
        }
        catch (Exception e) when (cancellationToken.IsCancellationRequested && e is NpgsqlException or InvalidOperationException or IOException)
        {
            throw new OperationCanceledException("The verification was cancelled.", e, cancellationToken);
        }
    }

    private static async Task<SegmentResult> ReadSegmentAsync(ChainRowSource source, string providerId, string streamId, ulong first, ulong last, ICanonicalSink? sink, CancellationToken cancellationToken)
    {
        BinaryCopyReader rows = source.Rows;
        byte[] previous = new byte[CanonicalEncoding.HashBytes];
        if (first > 1)
        {
            bool anchored = await rows.ReadAsync(CancellationToken.None) && !rows.IsNull(0) && rows.Int64(0) == (long)(first - 1);
            if (!anchored || rows.Field(12).Length != CanonicalEncoding.HashBytes)
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
        while (await rows.ReadAsync(CancellationToken.None))
        {
            // Rows already in the reader's buffer come without a read that could fail.
            cancellationToken.ThrowIfCancellationRequested();
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

    private static string Hex(ReadOnlySpan<byte> bytes) => Convert.ToHexStringLower(bytes);
}
