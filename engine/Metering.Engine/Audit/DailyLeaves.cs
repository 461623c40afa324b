using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Dapper;
using Metering.Engine.Registry;
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
/// One stream's records of a day as they are read: sequences and chain hashes, put in order
/// once all are read. Hashing them into leaves waits until then too, so that it can run on every
/// core, provider by provider, rather than on the thread that drains the COPY.
/// </summary>
internal sealed class StreamLeaves(string providerId, string streamId, byte[] providerUtf8, byte[] streamUtf8)
{
    private long[] _sequences = new long[64];
    private byte[] _chainHashes = new byte[64 * MerkleTree.HashBytes];
    private bool _ordered = true;

    public string ProviderId { get; } = providerId;

    public string StreamId { get; } = streamId;

    public byte[] ProviderUtf8 { get; } = providerUtf8;

    public byte[] StreamUtf8 { get; } = streamUtf8;

    public int Count { get; private set; }

    /// <summary>Sum of the records' usage_npfh.</summary>
    public long UsageNpfh { get; private set; }

    public ReadOnlySpan<long> Sequences => _sequences.AsSpan(0, Count);

    /// <summary>The records' chain hashes, 32 bytes each, back to back.</summary>
    public ReadOnlySpan<byte> ChainHashes => _chainHashes.AsSpan(0, Count * MerkleTree.HashBytes);

    public void Add(long sequence, ReadOnlySpan<byte> chainHash, long usageNpfh)
    {
        if (chainHash.Length != MerkleTree.HashBytes)
        {
            throw new InvalidDataException($"The chain hash of record {sequence} of {ProviderId}/{StreamId} is {chainHash.Length} bytes, not 32; verify the chain.");
        }

        if (Count == _sequences.Length)
        {
            // The provider's limit, checked by the reader, keeps this far below int.MaxValue.
            Array.Resize(ref _sequences, Count * 2);
            Array.Resize(ref _chainHashes, Count * 2 * MerkleTree.HashBytes);
        }

        if (Count > 0 && sequence <= _sequences[Count - 1])
        {
            _ordered = false;
        }

        _sequences[Count] = sequence;
        UsageNpfh += usageNpfh;
        chainHash.CopyTo(_chainHashes.AsSpan(Count * MerkleTree.HashBytes));
        Count++;
    }

    /// <summary>
    /// Puts the leaves in sequence order. Rows come in the table's physical order, which is the
    /// order ingest wrote them in, so a stream is nearly always in order already and this costs
    /// one look. A sequence stored twice (only a rewrite past the append-only triggers does that)
    /// keeps both records, ordered by chain hash so that the root stays deterministic.
    /// </summary>
    public void Order()
    {
        if (_ordered)
        {
            return;
        }

        long[] sequences = _sequences;
        byte[] hashes = _chainHashes;
        int[] order = Enumerable.Range(0, Count).ToArray();
        Array.Sort(order, (a, b) =>
        {
            int bySequence = sequences[a].CompareTo(sequences[b]);
            return bySequence != 0 ? bySequence
                : hashes.AsSpan(a * MerkleTree.HashBytes, MerkleTree.HashBytes).SequenceCompareTo(hashes.AsSpan(b * MerkleTree.HashBytes, MerkleTree.HashBytes));
        });
        var orderedSequences = new long[Count];
        var orderedHashes = new byte[Count * MerkleTree.HashBytes];
        for (int i = 0; i < Count; i++)
        {
            orderedSequences[i] = sequences[order[i]];
            hashes.AsSpan(order[i] * MerkleTree.HashBytes, MerkleTree.HashBytes).CopyTo(orderedHashes.AsSpan(i * MerkleTree.HashBytes));
        }

        _sequences = orderedSequences;
        _chainHashes = orderedHashes;
        _ordered = true;
    }
}

/// <summary>One provider's leaves of a day, in leaf order, with the day's usage they carry.</summary>
internal sealed class ProviderLeaves(string providerId, IReadOnlyList<StreamLeaves> streams)
{
    public string ProviderId { get; } = providerId;

    /// <summary>The provider's streams in leaf order (stream id bytewise), each in sequence order.</summary>
    public IReadOnlyList<StreamLeaves> Streams { get; } = streams;

    public int Count { get; } = streams.Sum(s => s.Count);

    /// <summary>Sum of usage_npfh over the leaves' records: the day's usage counted by this pass.</summary>
    public long UsageNpfh { get; } = streams.Sum(s => s.UsageNpfh);

    /// <summary>The leaf hashes, 32 bytes each, back to back in leaf order, in a new buffer that folding may overwrite.</summary>
    public byte[] LeafHashes()
    {
        var leaves = new byte[(long)Count * MerkleTree.HashBytes];
        using var sha256 = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        int at = 0;
        foreach (StreamLeaves stream in Streams)
        {
            ReadOnlySpan<byte> chainHashes = stream.ChainHashes;
            for (int i = 0; i < chainHashes.Length; i += MerkleTree.HashBytes, at += MerkleTree.HashBytes)
            {
                MerkleTree.LeafHash(sha256, chainHashes.Slice(i, MerkleTree.HashBytes), leaves.AsSpan(at, MerkleTree.HashBytes));
            }
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
                int at = stream.Sequences.BinarySearch((long)sequence);
                // The first of equal sequences, should a rewrite have stored one twice.
                while (at > 0 && stream.Sequences[at - 1] == (long)sequence)
                {
                    at--;
                }

                return at < 0 ? -1 : offset + at;
            }

            offset += stream.Count;
        }

        return -1;
    }

    public DailyRoot Fold(DateOnly day, MerkleCutOff cutOff) =>
        new(ProviderId, day, cutOff, Count, MerkleTree.Root(LeafHashes(), -1, null));
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
/// of the read (its 32-byte chain hash and 8-byte sequence) is held until the read ends.
/// </para>
/// </summary>
internal static class DailyLeaves
{
    /// <summary>Most leaves one read holds (all providers of a day when settlement reads): 1.25 GiB of leaves and sequences.</summary>
    public const int ReadLeavesMax = 32 * 1024 * 1024;

    // COPY takes no bind parameters. The provider, which comes from a caller, travels as a
    // transaction-local setting; the day's bounds are written into the statement, from a
    // DateOnly, so that the planner prunes partitions and weighs the start_at index on them.
    private const string SetKeys = "SELECT set_config('metering.leaves_provider', @providerId, true), set_config('metering.leaves_as_of', @asOf, true)";

    /// <summary>
    /// The leaf statement: (provider, stream, sequence, usage, chain hash) of the day's records,
    /// proof streams left out. As settled, a record counts when its sequence is at or below its
    /// stream's mark in the run that closed the day; a stream the run did not know has no mark
    /// and no leaves.
    /// </summary>
    public static string Sql(DateOnly day, bool oneProvider, MerkleCutOff cutOff)
    {
        DateTimeOffset from = ShanghaiTime.StartOf(day);
        string Literal(DateTimeOffset instant) => $"'{instant.UtcDateTime.ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture)}+00'::timestamptz";

        var sql = new StringBuilder("COPY (SELECT u.provider_id, u.stream_id, u.sequence, u.usage_npfh, u.chain_hash FROM usage_records u\n");
        if (cutOff.IsSettled)
        {
            sql.Append($"""
                JOIN settlement_stream_marks m ON m.provider_id = u.provider_id AND m.stream_id = u.stream_id
                 AND m.run_id = (SELECT run_id FROM settlement_runs WHERE day = '{day.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture)}'::date)

                """);
        }

        sql.Append($"""
            WHERE u.start_at >= {Literal(from)}
              AND u.start_at < {Literal(from.AddDays(1))}
              AND u.stream_id NOT LIKE 'proof:%'

            """);
        if (oneProvider)
        {
            sql.Append("  AND u.provider_id = current_setting('metering.leaves_provider')\n");
        }

        if (cutOff.CommittedBy is not null)
        {
            sql.Append("  AND u.committed_at <= current_setting('metering.leaves_as_of')::timestamptz\n");
        }

        if (cutOff.IsSettled)
        {
            sql.Append("  AND u.sequence <= m.committed_sequence\n");
        }

        sql.Append(") TO STDOUT (FORMAT BINARY)");
        return sql.ToString();
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

        await connection.ExecuteAsync(new CommandDefinition(SetKeys, new
        {
            providerId = providerId ?? "",
            asOf = cutOff.CommittedBy?.ToString("O", CultureInfo.InvariantCulture) ?? "infinity",
        }, transaction, cancellationToken: cancellationToken));

        // Streams by "provider NUL stream" (neither holds a NUL: PostgreSQL text cannot), looked
        // up only when the stream changes from one row to the next, which in physical order is
        // once per ingest batch or so.
        var streams = new Dictionary<string, StreamLeaves>(StringComparer.Ordinal);
        var byKey = streams.GetAlternateLookup<ReadOnlySpan<char>>();
        char[] key = new char[256];
        StreamLeaves? current = null;
        int leaves = 0;
        void Switch(ReadOnlySpan<byte> provider, ReadOnlySpan<byte> stream)
        {
            int length = Encoding.UTF8.GetCharCount(provider) + 1 + Encoding.UTF8.GetCharCount(stream);
            if (length > key.Length)
            {
                key = new char[length];
            }

            int written = Encoding.UTF8.GetChars(provider, key);
            key[written++] = '\0';
            written += Encoding.UTF8.GetChars(stream, key.AsSpan(written));
            if (!byKey.TryGetValue(key.AsSpan(0, written), out current))
            {
                current = new StreamLeaves(Encoding.UTF8.GetString(provider), Encoding.UTF8.GetString(stream), provider.ToArray(), stream.ToArray());
                streams.Add(new string(key, 0, written), current);
            }
        }

        await using (NpgsqlRawCopyStream copy = await connection.BeginRawBinaryCopyAsync(Sql(day, providerId is not null, cutOff), cancellationToken))
        {
            var rows = new CopyRowReader(copy, 5);
            while (await rows.ReadAsync(cancellationToken))
            {
                if (current is null || !rows.Field(1).SequenceEqual(current.StreamUtf8) || !rows.Field(0).SequenceEqual(current.ProviderUtf8))
                {
                    Switch(rows.Field(0), rows.Field(1));
                }

                if (++leaves > ReadLeavesMax)
                {
                    throw new AuditLimitExceededException($"the daily trees of {day:yyyy-MM-dd} have more than {ReadLeavesMax} leaves in all; one read takes at most that many.");
                }

                current!.Add(rows.Int64(2), rows.Field(4), rows.Int64(3));
            }
        }

        foreach (var group in streams.Values.GroupBy(s => s.ProviderId, StringComparer.Ordinal).OrderBy(g => g.Key, StringComparer.Ordinal))
        {
            List<StreamLeaves> ordered = [.. group];
            ordered.Sort((a, b) => a.StreamUtf8.AsSpan().SequenceCompareTo(b.StreamUtf8));
            long count = ordered.Sum(s => (long)s.Count);
            if (count > MerkleTree.LeavesMax)
            {
                throw new AuditLimitExceededException($"{group.Key} has more than {MerkleTree.LeavesMax} records on {day:yyyy-MM-dd}; the daily tree takes at most that many leaves.");
            }

            foreach (StreamLeaves stream in ordered)
            {
                stream.Order();
            }

            onProvider(new ProviderLeaves(group.Key, ordered));
        }

        if (providerId is not null && streams.Count == 0)
        {
            onProvider(new ProviderLeaves(providerId, []));
        }
    }
}
