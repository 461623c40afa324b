using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using System.Text;
using Dapper;
using Metering.Engine.Registry;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Audit;

/// <summary>
/// Which committed records of a day are leaves of its tree, beyond the day and the proof-stream
/// rule of proto/metering/v1/merkle-proofs.md.
/// </summary>
public readonly record struct MerkleCutOff
{
    private MerkleCutOff(DateTimeOffset? committedBy, bool settled)
    {
        CommittedBy = committedBy;
        IsSettled = settled;
    }

    /// <summary>Every record committed when the tree is read.</summary>
    public static MerkleCutOff None => default;

    /// <summary>
    /// The records the settlement that closed the day counted: in every stream, those at or below
    /// the committed mark the run recorded in its snapshot. This is the root a provider's
    /// statement publishes.
    /// </summary>
    public static MerkleCutOff AsSettled => new(null, true);

    /// <summary>Only records whose committed_at is at or before the instant; none for everything committed.</summary>
    public static MerkleCutOff AsOf(DateTimeOffset? instant) => instant is { } at ? new(at, false) : None;

    /// <summary>
    /// The instant of an as-of cut-off. A record's committed_at is when the ingest transaction
    /// that wrote it began, not when it committed, so a root as of an instant is not the root of
    /// a snapshot; <see cref="AsSettled"/> is.
    /// </summary>
    public DateTimeOffset? CommittedBy { get; }

    public bool IsSettled { get; }

    public override string ToString() =>
        IsSettled ? "as settled" : CommittedBy is { } at ? $"as of {at.ToString("O", CultureInfo.InvariantCulture)}" : "everything committed";
}

/// <summary>The day asked for as settled has no settlement run.</summary>
public sealed class DayNotSettledException(string message) : Exception(message);

/// <summary>
/// A run of one stream's records as they were read: their 32-byte hashes, chain hashes until
/// <see cref="HashLeaves"/> turns them, in place, into leaf hashes. Their sequences are kept by
/// the pieces that cut the chunk (<see cref="LeafPiece"/>), not per leaf. A chunk is written by
/// the reading thread until full and is then left to a hashing task alone. Only the first
/// <see cref="Count"/> slots hold anything: the array is not cleared when made, so that the
/// runtime does not write memory before the chunk does.
/// </summary>
internal sealed class LeafChunk(int capacity)
{
    public byte[] Hashes { get; } = GC.AllocateUninitializedArray<byte>(capacity * MerkleTree.HashBytes);

    public int Capacity { get; } = capacity;

    public int Count { get; set; }

    public bool Full => Count == Capacity;

    public void HashLeaves()
    {
        Span<byte> hashes = Hashes.AsSpan(0, Count * MerkleTree.HashBytes);
        Sha256Lanes.HashLeaves(hashes, hashes);
    }
}

/// <summary>
/// Leaves <see cref="Start"/> to <see cref="Start"/> + <see cref="Count"/> of a chunk, whose
/// sequences follow one another without a gap from <see cref="FirstSequence"/>: a piece is all a
/// stream keeps of its leaves' sequences, 8 bytes a leaf less to hold.
/// </summary>
internal readonly record struct LeafPiece(LeafChunk Chunk, int Start, int Count, long FirstSequence)
{
    public long LastSequence => FirstSequence + Count - 1;

    /// <summary>The piece's leaf hashes, in its chunk (which the fold overwrites, <see cref="MerkleTree.RootOverwriting"/>).</summary>
    public ArraySegment<byte> Hashes => new(Chunk.Hashes, Start * MerkleTree.HashBytes, Count * MerkleTree.HashBytes);
}

/// <summary>
/// One stream's records of a day as they are read, in chunks that are hashed into leaves as they
/// fill, on the thread pool, while the read is still going on; put in sequence order once
/// all are read and hashed. The leaves are kept as pieces of consecutive sequences
/// (<see cref="LeafPiece"/>), so that a stream whose runs came out of order is most often put in
/// order by sorting its pieces, without moving a leaf. Its per-record loops are compiled fully
/// optimised at first call, as <see cref="Sha256Lanes"/> says why.
/// </summary>
internal sealed class StreamLeaves(string providerId, string streamId, byte[] providerUtf8, byte[] streamUtf8)
{
    /// <summary>Chunks grow from this size, so that the many small streams of a day stay small.</summary>
    public const int ChunkRecordsFirst = 64;

    /// <summary>Chunks stop growing here (16,384 records, 512 KiB).</summary>
    public const int ChunkRecordsMax = 16 * 1024;

    /// <summary>Chunks from this size up are hashed on the thread pool; smaller ones on the reading thread, where a task would cost more than the hashing.</summary>
    public const int ChunkRecordsHashedApart = 2 * 1024;

    /// <summary>
    /// A stream out of order is put in order by placing each leaf at its sequence's offset from
    /// the smallest, when its sequences span at most this many times its leaf count; a sparser
    /// stream is sorted.
    /// </summary>
    public const int PlacedSpreadMax = 4;

    /// <summary>
    /// A stream out of order is put in order by sorting its pieces when it has at most one piece
    /// per this many leaves; a stream cut into smaller pieces (records of other days between
    /// nearly every two of its own) is placed or sorted leaf by leaf.
    /// </summary>
    public const int PieceLeavesMin = 8;

    private List<LeafChunk> _chunks = [new LeafChunk(ChunkRecordsFirst)];
    private List<LeafPiece> _pieces = [];
    private int _pieceStart;
    private long _pieceFirst;
    private long _last = long.MinValue;
    private bool _ordered = true;

    public string ProviderId { get; } = providerId;

    public string StreamId { get; } = streamId;

    public byte[] ProviderUtf8 { get; } = providerUtf8;

    public byte[] StreamUtf8 { get; } = streamUtf8;

    public int Count { get; private set; }

    /// <summary>Sum of the records' usage_npfh.</summary>
    public long UsageNpfh { get; private set; }

    /// <summary>The pieces, once <see cref="Finish"/> has run; once <see cref="Order"/> has run, leaf hashes in leaf order.</summary>
    public IReadOnlyList<LeafPiece> Pieces => _pieces;

    /// <summary>Appends a record; a chunk it fills is hashed, on the thread pool (added to <paramref name="hashing"/>) when it is large.</summary>
    public void Add(long sequence, ReadOnlySpan<byte> chainHash, long usageNpfh, List<Task> hashing)
    {
        if (chainHash.Length != MerkleTree.HashBytes)
        {
            throw new InvalidDataException($"The chain hash of record {sequence} of {ProviderId}/{StreamId} is {chainHash.Length} bytes, not 32; verify the chain.");
        }

        Append(sequence, chainHash, hashing);
        UsageNpfh += usageNpfh;
    }

    /// <summary>
    /// Appends a run of records (<see cref="DailyLeaves.RunsSql"/>): (sequence, chain hash)
    /// pairs back to back, whose usage together is <paramref name="usageNpfh"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void AddRun(ReadOnlySpan<byte> pairs, long usageNpfh, List<Task> hashing)
    {
        for (int at = 0; at < pairs.Length; at += DailyLeaves.RunPairBytes)
        {
            Append(BinaryPrimitives.ReadInt64BigEndian(pairs[at..]), pairs.Slice(at + sizeof(long), MerkleTree.HashBytes), hashing);
        }

        UsageNpfh += usageNpfh;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Append(long sequence, ReadOnlySpan<byte> chainHash, List<Task> hashing)
    {
        LeafChunk chunk = _chunks[^1];
        if (sequence != _last + 1)
        {
            ClosePiece(chunk);
        }

        if (chunk.Count == _pieceStart)
        {
            _pieceFirst = sequence;
        }

        chainHash.CopyTo(chunk.Hashes.AsSpan(chunk.Count * MerkleTree.HashBytes));
        chunk.Count++;
        Count++;
        _ordered &= sequence > _last;
        _last = sequence;
        if (chunk.Full)
        {
            ClosePiece(chunk);
            Hash(chunk, hashing);
            _chunks.Add(new LeafChunk(Math.Min(chunk.Capacity * 2, ChunkRecordsMax)));
            _pieceStart = 0;
        }
    }

    /// <summary>Ends the piece open in the last chunk, if it holds a leaf; the next leaf begins one.</summary>
    private void ClosePiece(LeafChunk chunk)
    {
        if (chunk.Count > _pieceStart)
        {
            _pieces.Add(new LeafPiece(chunk, _pieceStart, chunk.Count - _pieceStart, _pieceFirst));
            _pieceStart = chunk.Count;
        }
    }

    /// <summary>Hashes the last, partly filled chunk (every full one was handed over as it filled) and ends the last piece.</summary>
    public void Finish(List<Task> hashing)
    {
        ClosePiece(_chunks[^1]);
        Hash(_chunks[^1], hashing);
    }

    /// <summary>
    /// Appends the same stream's leaves from a later part of the table (the next segment of a
    /// read split by block ranges), both finished: physical order is kept, so a stream written
    /// in sequence order stays in order and <see cref="Order"/> still costs nothing.
    /// </summary>
    public void Append(StreamLeaves later)
    {
        if (later.Count == 0)
        {
            return;
        }

        _ordered &= later._ordered && later._pieces[0].FirstSequence > _last;
        _chunks.AddRange(later._chunks);
        _pieces.AddRange(later._pieces);
        Count += later.Count;
        UsageNpfh += later.UsageNpfh;
        _last = later._last;
    }

    /// <summary>
    /// Puts the leaves in sequence order, once every chunk is hashed. Rows come in the table's
    /// physical order, which is the order ingest wrote them in, so a stream is nearly always in
    /// order already and this costs nothing. A sequence stored twice (only a rewrite past the
    /// append-only triggers does that) keeps both records, the smaller leaf hash first, so that
    /// the root stays deterministic.
    /// </summary>
    public void Order()
    {
        if (_ordered || Reorder() || Place())
        {
            _ordered = true;
            return;
        }

        var sequences = new long[Count];
        var leaves = new byte[Count * MerkleTree.HashBytes];
        int at = 0;
        foreach (LeafPiece piece in _pieces)
        {
            for (int i = 0; i < piece.Count; i++)
            {
                sequences[at + i] = piece.FirstSequence + i;
            }

            piece.Hashes.AsSpan().CopyTo(leaves.AsSpan(at * MerkleTree.HashBytes));
            at += piece.Count;
        }

        int[] order = Enumerable.Range(0, Count).ToArray();
        Array.Sort(order, (a, b) =>
        {
            int bySequence = sequences[a].CompareTo(sequences[b]);
            return bySequence != 0 ? bySequence
                : leaves.AsSpan(a * MerkleTree.HashBytes, MerkleTree.HashBytes).SequenceCompareTo(leaves.AsSpan(b * MerkleTree.HashBytes, MerkleTree.HashBytes));
        });
        var ordered = new LeafChunk(Count) { Count = Count };
        var pieces = new List<LeafPiece>();
        for (int i = 0; i < Count; i++)
        {
            leaves.AsSpan(order[i] * MerkleTree.HashBytes, MerkleTree.HashBytes).CopyTo(ordered.Hashes.AsSpan(i * MerkleTree.HashBytes));
            Extend(pieces, ordered, i, sequences[order[i]]);
        }

        _chunks = [ordered];
        _pieces = pieces;
        _ordered = true;
    }

    /// <summary>
    /// Puts the leaves in sequence order by putting the pieces in order of their first sequence,
    /// where that leaves every sequence above the one before it, which it does unless a sequence
    /// is stored twice: each piece holds consecutive sequences. Nothing is copied. False, with
    /// nothing changed, where the pieces overlap or are too many (<see cref="PieceLeavesMin"/>).
    /// </summary>
    private bool Reorder()
    {
        if (_pieces.Count > Math.Max(1, Count / PieceLeavesMin))
        {
            return false;
        }

        LeafPiece[] pieces = [.. _pieces];
        Array.Sort(pieces, (a, b) => a.FirstSequence.CompareTo(b.FirstSequence));
        for (int i = 1; i < pieces.Length; i++)
        {
            if (pieces[i].FirstSequence <= pieces[i - 1].LastSequence)
            {
                return false;
            }
        }

        _pieces = [.. pieces];
        return true;
    }

    /// <summary>
    /// Puts the leaves in sequence order by writing each at its sequence's offset from the
    /// smallest, in one pass, where the sequences are dense enough
    /// (<see cref="PlacedSpreadMax"/>) and each stored once: the order of a read that ships
    /// runs of records in no order. False, with nothing changed, where they are not; the sort
    /// then decides, which also orders a sequence stored twice.
    /// </summary>
    private bool Place()
    {
        if (Count == 0)
        {
            return false;
        }

        // The pieces hold every leaf's sequence: the smallest and largest are their ends.
        long smallest = _pieces.Min(p => p.FirstSequence);
        long span = _pieces.Max(p => p.LastSequence) - smallest + 1;
        if (span > (long)Count * PlacedSpreadMax || span > Array.MaxLength / MerkleTree.HashBytes)
        {
            return false;
        }

        var taken = new bool[span];
        var placed = new LeafChunk((int)span);
        foreach (LeafPiece piece in _pieces)
        {
            ReadOnlySpan<byte> hashes = piece.Hashes;
            for (int i = 0; i < piece.Count; i++)
            {
                int slot = (int)(piece.FirstSequence + i - smallest);
                if (taken[slot])
                {
                    return false;
                }

                taken[slot] = true;
                hashes.Slice(i * MerkleTree.HashBytes, MerkleTree.HashBytes).CopyTo(placed.Hashes.AsSpan(slot * MerkleTree.HashBytes));
            }
        }

        // Close the gaps of sequences that are not leaves of the day (other days' records); each gap ends a piece.
        var pieces = new List<LeafPiece>();
        int kept = 0;
        for (int slot = 0; slot < span; slot++)
        {
            if (!taken[slot])
            {
                continue;
            }

            if (kept != slot)
            {
                placed.Hashes.AsSpan(slot * MerkleTree.HashBytes, MerkleTree.HashBytes).CopyTo(placed.Hashes.AsSpan(kept * MerkleTree.HashBytes));
            }

            Extend(pieces, placed, kept, smallest + slot);
            kept++;
        }

        Debug.Assert(kept == Count);
        placed.Count = kept;
        _chunks = [placed];
        _pieces = pieces;
        return true;
    }

    /// <summary>Adds leaf <paramref name="index"/> of <paramref name="chunk"/>, whose sequence is <paramref name="sequence"/>, to the last piece where it follows on from it, else as a piece of its own.</summary>
    private static void Extend(List<LeafPiece> pieces, LeafChunk chunk, int index, long sequence)
    {
        if (pieces.Count > 0 && pieces[^1] is { } last && last.Chunk == chunk && last.Start + last.Count == index && last.LastSequence + 1 == sequence)
        {
            pieces[^1] = last with { Count = last.Count + 1 };
        }
        else
        {
            pieces.Add(new LeafPiece(chunk, index, 1, sequence));
        }
    }

    /// <summary>The position of a sequence among the stream's leaves (the first, should it be stored twice), or -1.</summary>
    public int IndexOf(long sequence)
    {
        int offset = 0;
        foreach (LeafPiece piece in _pieces)
        {
            if (sequence >= piece.FirstSequence && sequence <= piece.LastSequence)
            {
                return offset + (int)(sequence - piece.FirstSequence);
            }

            offset += piece.Count;
        }

        return -1;
    }

    private static void Hash(LeafChunk chunk, List<Task> hashing)
    {
        if (chunk.Capacity >= ChunkRecordsHashedApart)
        {
            hashing.Add(Task.Run(chunk.HashLeaves));
        }
        else
        {
            chunk.HashLeaves();
        }
    }
}

/// <summary>One provider's leaves of a day, in leaf order, with the day's usage they carry.</summary>
internal sealed class ProviderLeaves(string providerId, IReadOnlyList<StreamLeaves> streams)
{
    private bool _folded;

    public string ProviderId { get; } = providerId;

    /// <summary>The provider's streams in leaf order (stream id bytewise), each in sequence order.</summary>
    public IReadOnlyList<StreamLeaves> Streams { get; } = streams;

    public int Count { get; } = streams.Sum(s => s.Count);

    /// <summary>Sum of usage_npfh over the leaves' records: the day's usage counted by this pass.</summary>
    public long UsageNpfh { get; } = streams.Sum(s => s.UsageNpfh);

    /// <summary>The leaf hashes, 32 bytes each, back to back in leaf order, in a new buffer that folding may overwrite.</summary>
    public byte[] LeafHashes()
    {
        ThrowIfFolded();
        var leaves = new byte[(long)Count * MerkleTree.HashBytes];
        int at = 0;
        foreach (LeafPiece piece in Streams.SelectMany(s => s.Pieces))
        {
            piece.Hashes.AsSpan().CopyTo(leaves.AsSpan(at));
            at += piece.Hashes.Count;
        }

        return leaves;
    }

    /// <summary>The leaf index of a record, or -1 when it is not a leaf.</summary>
    public int IndexOf(string streamId, ulong sequence)
    {
        int offset = 0;
        foreach (StreamLeaves stream in Streams)
        {
            if (stream.StreamId == streamId)
            {
                int at = stream.IndexOf((long)sequence);
                return at < 0 ? -1 : offset + at;
            }

            offset += stream.Count;
        }

        return -1;
    }

    /// <summary>Puts each of the provider's streams in sequence order, where <see cref="LeafCollector.Providers"/> was asked not to; each touches only its own leaves.</summary>
    public void Order()
    {
        foreach (StreamLeaves stream in Streams)
        {
            stream.Order();
        }
    }

    /// <summary>
    /// The provider's root, folded straight from its streams' pieces, without a copy of its
    /// leaves: the fold writes each level over the one below (<see cref="MerkleTree.RootOverwriting"/>),
    /// so the leaves are spent, and nothing may read them after.
    /// </summary>
    public DailyRoot Fold(DateOnly day, MerkleCutOff cutOff)
    {
        ThrowIfFolded();
        _folded = true;
        return new(ProviderId, day, cutOff, Count, MerkleTree.RootOverwriting(Streams.SelectMany(s => s.Pieces).Select(p => p.Hashes), Count));
    }

    private void ThrowIfFolded()
    {
        if (_folded)
        {
            throw new InvalidOperationException($"The leaves of {ProviderId} were spent by folding its root.");
        }
    }
}

/// <summary>
/// Reads the leaves of daily trees on the caller's connection, inside the caller's transaction,
/// so that they come from whatever snapshot the caller holds: <see cref="DailyMerkle"/>'s own
/// repeatable-read transaction, or a settlement run's. Every reader goes through the one
/// statement built here, so the leaves a statement publishes and the leaves an auditor
/// recomputes are selected by the same SQL.
/// <para>
/// The statement has no ORDER BY: on a day of ten million records PostgreSQL's sort of them cost
/// more than reading them, so the rows come in physical order and are put in leaf order here,
/// per stream, where they are nearly always in order already. The price is memory: every record
/// of the read (its 32-byte hash; sequences are kept per piece of consecutive ones,
/// <see cref="LeafPiece"/>) is held until the read ends. Leaves are
/// hashed while the rows arrive, a chunk at a time on the thread pool, and the roots are folded
/// at the end, providers side by side.
/// </para>
/// </summary>
internal static class DailyLeaves
{
    /// <summary>Most leaves one read holds (all providers of a day when settlement reads): 1 GiB of leaf hashes.</summary>
    public const int ReadLeavesMax = 32 * 1024 * 1024;

    // The provider, which comes from a caller, travels as a parameter of the statement, as the
    // cut-off does: on Citus a provider named by a parameter routes the read to the one shard
    // that holds it, where a session setting of the coordinator would be unknown. The day's
    // bounds are written into the statement, from a DateOnly, so that the planner prunes
    // partitions and weighs the start_at index on them.
    private const string ProviderParameter = "leaves_provider";
    private const string AsOfParameter = "leaves_as_of";

    /// <summary>
    /// The leaf statement: (provider, stream, sequence, usage, chain hash) of the day's records,
    /// proof streams left out. As settled, a record counts when its sequence is at or below its
    /// stream's mark in the run that closed the day; a stream the run did not know has no mark
    /// and no leaves. With one provider, the statement takes it as the parameter
    /// <c>@leaves_provider</c>; with a committed-by cut-off, that instant as <c>@leaves_as_of</c>
    /// (text of an ISO 8601 instant).
    /// </summary>
    /// <param name="moreColumns">Columns of <c>usage_records u</c> a caller reads beside the leaves, after the five leaf columns.</param>
    /// <param name="segmentCondition">A condition that selects a reader's segment of the rows (a range of block numbers), for a reader that splits the day; null for none.</param>
    public static string Sql(DateOnly day, bool oneProvider, MerkleCutOff cutOff, string? moreColumns = null, string? segmentCondition = null)
    {
        var sql = new StringBuilder("SELECT u.provider_id, u.stream_id, u.sequence, u.usage_npfh, u.chain_hash");
        if (moreColumns is not null)
        {
            sql.Append(", ").Append(moreColumns);
        }

        AppendRows(sql, day, oneProvider, cutOff, segmentCondition);
        return sql.ToString();
    }

    /// <summary>
    /// The leaf statement's records of the whole day (every provider, no cut-off) grouped into
    /// runs: per provider, stream and block of <see cref="RunRecordsMax"/> sequence numbers, the
    /// run's record count, nPFh, count of chain hashes that are not 32 bytes long, and its
    /// (sequence, chain hash) pairs, each the sequence as 8 bytes big-endian then the hash, back
    /// to back in no particular order; then the caller's <paramref name="moreAggregates"/>.
    /// PostgreSQL then sends a row per run instead of a row per record, which on a day of
    /// millions of records costs it far less than formatting every record, and the reader puts
    /// the leaves in sequence order itself (<see cref="LeafCollector.AddRun"/>). The same rows
    /// as <see cref="Sql"/> selects.
    /// </summary>
    public static string RunsSql(DateOnly day, string moreAggregates, string? segmentCondition)
    {
        var sql = new StringBuilder($"""
            SELECT u.provider_id, u.stream_id, count(*)::bigint, sum(u.usage_npfh)::bigint,
                   count(*) FILTER (WHERE octet_length(u.chain_hash) <> {MerkleTree.HashBytes}),
                   string_agg(int8send(u.sequence) || u.chain_hash, ''::bytea), {moreAggregates}
            """);
        AppendRows(sql, day, oneProvider: false, MerkleCutOff.None, segmentCondition);
        sql.Append($"GROUP BY u.provider_id, u.stream_id, u.sequence / {RunRecordsMax}\n");
        return sql.ToString();
    }

    /// <summary>
    /// <see cref="RunsSql"/> over the blocks <paramref name="fromBlock"/> to
    /// <paramref name="untilBlock"/> of the day's partitions (and every block past it too when
    /// <paramref name="openAbove"/>), grouped a chunk of <paramref name="chunkBlocks"/> blocks at
    /// a time: each chunk is a TID range scan of its own with a hash aggregate of its own,
    /// rescanned for the next chunk, so PostgreSQL sends a chunk's runs as soon as it has scanned
    /// it instead of once it has scanned the whole range, and the reader takes in one chunk's
    /// runs while PostgreSQL scans the next. A stream has a run per chunk and block of sequence
    /// numbers it has records in; chunks come in block order. The same rows as
    /// <see cref="RunsSql"/> over the range.
    /// </summary>
    public static string ChunkedRunsSql(DateOnly day, string moreAggregates, long fromBlock, long untilBlock, bool openAbove, int chunkBlocks)
    {
        if (fromBlock < 0 || untilBlock <= fromBlock || untilBlock > MaxBlocks || chunkBlocks < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(untilBlock), $"blocks {fromBlock} to {untilBlock} in chunks of {chunkBlocks}: not a range of a table's blocks");
        }

        // The chunk's bounds are the lateral reference c.first_block, which the subquery sees as a
        // parameter: PostgreSQL scans just the chunk's blocks (a TID range scan) at each rescan.
        // The last chunk of a range open above takes every block past the end as well.
        long lastUpper = openAbove ? MaxBlocks : untilBlock;
        string chunk = $"u.ctid >= ('(' || c.first_block || ',0)')::tid"
            + $" AND u.ctid < ('(' || CASE WHEN c.first_block + {chunkBlocks} >= {untilBlock} THEN {lastUpper} ELSE c.first_block + {chunkBlocks} END || ',0)')::tid";
        return $"""
            SELECT r.* FROM generate_series({fromBlock}::bigint, {untilBlock - 1}::bigint, {chunkBlocks}) AS c(first_block)
            CROSS JOIN LATERAL (
            {RunsSql(day, moreAggregates, chunk)}) AS r
            """;
    }

    /// <summary>Block numbers are 32-bit and unsigned: a TID of this block is past every tuple.</summary>
    private const long MaxBlocks = uint.MaxValue;

    /// <summary>The most records one run of <see cref="RunsSql"/> carries (2.5 MiB of pairs): sequence numbers are grouped in blocks of this many.</summary>
    public const int RunRecordsMax = 64 * 1024;

    /// <summary>Bytes of one (sequence, chain hash) pair of a run.</summary>
    public const int RunPairBytes = sizeof(long) + MerkleTree.HashBytes;

    private static void AppendRows(StringBuilder sql, DateOnly day, bool oneProvider, MerkleCutOff cutOff, string? segmentCondition)
    {
        sql.Append(" FROM usage_records u\n");
        if (cutOff.IsSettled)
        {
            sql.Append($"""
                JOIN settlement_stream_marks m ON m.provider_id = u.provider_id AND m.stream_id = u.stream_id
                 AND m.run_id = (SELECT run_id FROM settlement_runs WHERE day = '{day.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture)}'::date)

                """);
        }

        sql.Append($"""
            WHERE {DayBounds(day)}
              AND u.stream_id NOT LIKE 'proof:%'

            """);
        if (oneProvider)
        {
            sql.Append($"  AND u.provider_id = @{ProviderParameter}\n");
        }

        if (segmentCondition is not null)
        {
            sql.Append("  AND ").Append(segmentCondition).Append('\n');
        }

        if (cutOff.CommittedBy is not null)
        {
            sql.Append($"  AND u.committed_at <= @{AsOfParameter}::timestamptz\n");
        }

        if (cutOff.IsSettled)
        {
            sql.Append("  AND u.sequence <= m.committed_sequence\n");
        }
    }

    /// <summary>The day's bounds on <c>u.start_at</c>, written as literals so that the planner prunes partitions by them.</summary>
    public static string DayBounds(DateOnly day)
    {
        DateTimeOffset from = ShanghaiTime.StartOf(day);
        string Literal(DateTimeOffset instant) => $"'{instant.UtcDateTime.ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture)}+00'::timestamptz";
        return $"u.start_at >= {Literal(from)} AND u.start_at < {Literal(from.AddDays(1))}";
    }

    /// <summary>
    /// Reads the day's leaves, of one provider or of all, in the caller's transaction, and hands
    /// each provider's, in leaf order, to <paramref name="onProvider"/> (in ordinal order of the
    /// providers). With one provider named, it is handed over even when it has no leaves.
    /// </summary>
    /// <exception cref="DayNotSettledException">The cut-off is as settled and the day has not been settled.</exception>
    /// <exception cref="AuditLimitExceededException">A provider has more than <see cref="MerkleTree.LeavesMax"/> leaves, or the read more than <see cref="ReadLeavesMax"/>.</exception>
    public static async Task ReadAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, DateOnly day, string? providerId, MerkleCutOff cutOff,
        Action<ProviderLeaves> onProvider, CancellationToken cancellationToken)
    {
        if (cutOff.IsSettled && !await connection.ExecuteScalarAsync<bool>(new CommandDefinition(
                "SELECT EXISTS (SELECT 1 FROM settlement_runs WHERE day = @day)", new { day }, transaction, cancellationToken: cancellationToken)))
        {
            throw new DayNotSettledException($"{day:yyyy-MM-dd} has not been settled; there is no settled root of it yet");
        }

        string leavesSql = Sql(day, providerId is not null, cutOff);
        var leaves = new LeafCollector(day);
        try
        {
            await using var command = new NpgsqlCommand(leavesSql, connection, transaction) { CommandTimeout = 0 };
            if (providerId is not null)
            {
                command.Parameters.AddWithValue(ProviderParameter, providerId);
            }

            if (cutOff.CommittedBy is { } committedBy)
            {
                command.Parameters.AddWithValue(AsOfParameter, committedBy.ToString("O", CultureInfo.InvariantCulture));
            }

            await using (NpgsqlDataReader reader = await command.ExecuteReaderAsync(cancellationToken))
            {
                var rows = new RowReader(reader, 5);
                while (await rows.ReadAsync(cancellationToken))
                {
                    leaves.Add(rows.Field(0), rows.Field(1), rows.Int64(2), rows.Field(4), rows.Int64(3));
                }
            }

            await leaves.FinishAsync();
        }
        finally
        {
            await leaves.DrainAsync();
        }

        List<ProviderLeaves> providers = leaves.Providers();
        foreach (ProviderLeaves one in providers)
        {
            onProvider(one);
        }

        if (providerId is not null && providers.Count == 0)
        {
            onProvider(new ProviderLeaves(providerId, []));
        }
    }
}

/// <summary>
/// Collects the leaves of a day's rows as they are read, in whatever order they come: each row
/// goes to its stream's <see cref="StreamLeaves"/> (looked up only when the stream changes from
/// one row to the next, which in physical order is once per ingest batch or so), full chunks
/// are hashed on the thread pool while the read goes on, and at the end every provider's streams
/// are put in leaf order. Every reader of leaves (the audit path's, settlement's one pass) goes
/// through it, so they order leaves the same way. Not thread-safe; one per read.
/// </summary>
internal sealed class LeafCollector(DateOnly day)
{
    // Streams by "provider NUL stream" (neither holds a NUL: PostgreSQL text cannot).
    private readonly Dictionary<string, StreamLeaves> _streams = new(StringComparer.Ordinal);
    private readonly List<Task> _hashing = [];
    private char[] _key = new char[256];
    private int _leaves;

    /// <summary>The stream of the row added last.</summary>
    public StreamLeaves? Current { get; private set; }

    /// <summary>Adds one row's leaf; returns its stream.</summary>
    /// <exception cref="AuditLimitExceededException">The read has more than <see cref="DailyLeaves.ReadLeavesMax"/> leaves.</exception>
    public StreamLeaves Add(ReadOnlySpan<byte> providerUtf8, ReadOnlySpan<byte> streamUtf8, long sequence, ReadOnlySpan<byte> chainHash, long usageNpfh)
    {
        StreamLeaves? current = Current;
        if (current is null || !streamUtf8.SequenceEqual(current.StreamUtf8) || !providerUtf8.SequenceEqual(current.ProviderUtf8))
        {
            current = Switch(providerUtf8, streamUtf8);
        }

        if (++_leaves > DailyLeaves.ReadLeavesMax)
        {
            throw new AuditLimitExceededException($"the daily trees of {day:yyyy-MM-dd} have more than {DailyLeaves.ReadLeavesMax} leaves in all; one read takes at most that many.");
        }

        current.Add(sequence, chainHash, usageNpfh, _hashing);
        return current;
    }

    /// <summary>
    /// Adds one run of <see cref="DailyLeaves.RunsSql"/>: <paramref name="records"/> (sequence,
    /// chain hash) pairs of one stream whose usage together is <paramref name="usageNpfh"/>.
    /// </summary>
    /// <exception cref="InvalidDataException">The pairs are not <paramref name="records"/> pairs of a sequence and a 32-byte hash.</exception>
    /// <exception cref="AuditLimitExceededException">The read has more than <see cref="DailyLeaves.ReadLeavesMax"/> leaves.</exception>
    public StreamLeaves AddRun(ReadOnlySpan<byte> providerUtf8, ReadOnlySpan<byte> streamUtf8, long records, long usageNpfh, long otherHashLengths, ReadOnlySpan<byte> pairs)
    {
        StreamLeaves? current = Current;
        if (current is null || !streamUtf8.SequenceEqual(current.StreamUtf8) || !providerUtf8.SequenceEqual(current.ProviderUtf8))
        {
            current = Switch(providerUtf8, streamUtf8);
        }

        if (otherHashLengths != 0 || records < 1 || records > DailyLeaves.RunRecordsMax || pairs.Length != records * DailyLeaves.RunPairBytes)
        {
            throw new InvalidDataException($"A run of {current.ProviderId}/{current.StreamId} has {records} record(s), {otherHashLengths} of them with a chain hash that is not 32 bytes, in {pairs.Length} bytes of pairs; verify the chain.");
        }

        _leaves += (int)records;
        if (_leaves > DailyLeaves.ReadLeavesMax)
        {
            throw new AuditLimitExceededException($"the daily trees of {day:yyyy-MM-dd} have more than {DailyLeaves.ReadLeavesMax} leaves in all; one read takes at most that many.");
        }

        current.AddRun(pairs, usageNpfh, _hashing);
        return current;
    }

    /// <summary>Hashes every stream's last, partly filled chunk and waits for all hashing.</summary>
    public async Task FinishAsync()
    {
        foreach (StreamLeaves stream in _streams.Values)
        {
            stream.Finish(_hashing);
        }

        await Task.WhenAll(_hashing);
    }

    /// <summary>Waits for the hashing tasks, which only read their own chunks, so that none outlives the read, however it ended.</summary>
    public Task DrainAsync() => Task.WhenAll(_hashing);

    /// <summary>
    /// Takes in the leaves of a read of the next block range of the same day, both finished: a
    /// stream in both has the other's leaves appended to its own, so collectors absorbed in
    /// block order keep each stream's rows in physical order. The other is not used afterwards.
    /// </summary>
    /// <exception cref="AuditLimitExceededException">The two reads have more than <see cref="DailyLeaves.ReadLeavesMax"/> leaves together.</exception>
    public void Absorb(LeafCollector later)
    {
        if (_leaves + later._leaves > DailyLeaves.ReadLeavesMax)
        {
            throw new AuditLimitExceededException($"the daily trees of {day:yyyy-MM-dd} have more than {DailyLeaves.ReadLeavesMax} leaves in all; one read takes at most that many.");
        }

        foreach (var (key, stream) in later._streams)
        {
            if (_streams.TryGetValue(key, out StreamLeaves? ours))
            {
                ours.Append(stream);
            }
            else
            {
                _streams.Add(key, stream);
            }
        }

        _leaves += later._leaves;
    }

    /// <summary>
    /// Every provider's leaves, in ordinal order of the providers, each's streams in leaf order;
    /// call after <see cref="FinishAsync"/>. With <paramref name="ordered"/> false the streams'
    /// leaves are left in the order they were read, for a caller that puts each provider's in
    /// order itself (<see cref="ProviderLeaves.Order"/>) before it folds them.
    /// </summary>
    /// <exception cref="AuditLimitExceededException">A provider has more than <see cref="MerkleTree.LeavesMax"/> leaves.</exception>
    public List<ProviderLeaves> Providers(bool ordered = true)
    {
        var providers = new List<ProviderLeaves>();
        foreach (var group in _streams.Values.GroupBy(s => s.ProviderId, StringComparer.Ordinal).OrderBy(g => g.Key, StringComparer.Ordinal))
        {
            List<StreamLeaves> streams = [.. group];
            streams.Sort((a, b) => a.StreamUtf8.AsSpan().SequenceCompareTo(b.StreamUtf8));
            long count = streams.Sum(s => (long)s.Count);
            if (count > MerkleTree.LeavesMax)
            {
                throw new AuditLimitExceededException($"{group.Key} has more than {MerkleTree.LeavesMax} records on {day:yyyy-MM-dd}; the daily tree takes at most that many leaves.");
            }

            providers.Add(new ProviderLeaves(group.Key, streams));
        }

        if (ordered)
        {
            // Streams are put in order side by side: each touches only its own leaves.
            Parallel.ForEach(_streams.Values, stream => stream.Order());
        }

        return providers;
    }

    private StreamLeaves Switch(ReadOnlySpan<byte> provider, ReadOnlySpan<byte> stream)
    {
        int length = Encoding.UTF8.GetCharCount(provider) + 1 + Encoding.UTF8.GetCharCount(stream);
        if (length > _key.Length)
        {
            _key = new char[length];
        }

        int written = Encoding.UTF8.GetChars(provider, _key);
        _key[written++] = '\0';
        written += Encoding.UTF8.GetChars(stream, _key.AsSpan(written));
        if (!_streams.GetAlternateLookup<ReadOnlySpan<char>>().TryGetValue(_key.AsSpan(0, written), out StreamLeaves? current))
        {
            current = new StreamLeaves(Encoding.UTF8.GetString(provider), Encoding.UTF8.GetString(stream), provider.ToArray(), stream.ToArray());
            _streams.Add(new string(_key, 0, written), current);
        }

        Current = current;
        return current;
    }
}
