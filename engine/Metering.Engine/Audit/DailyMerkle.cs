using System.Globalization;
using System.Text;
using Dapper;
using Metering.Engine.Ingest;
using Metering.Engine.Registry;
using Metering.Engine.Storage;
using Npgsql;

namespace Metering.Engine.Audit;

/// <summary>A provider's Merkle root for one Asia/Shanghai day.</summary>
/// <param name="AsOf">Only records committed at or before this instant are leaves; null for everything committed.</param>
public sealed record DailyRoot(string ProviderId, DateOnly Day, DateTimeOffset? AsOf, int LeafCount, byte[] Root);

/// <summary>
/// Everything a third party needs to check that one record is in a provider's daily root with
/// nothing but SHA-256: the record's canonical bytes and the previous chain hash give the
/// record's chain hash; that gives the leaf; the steps fold the leaf up to the root.
/// </summary>
public sealed record InclusionProof(
    string ProviderId,
    DateOnly Day,
    DateTimeOffset? AsOf,
    string StreamId,
    ulong Sequence,
    int LeafIndex,
    int LeafCount,
    byte[] PreviousHash,
    byte[] Canonical,
    byte[] ChainHash,
    byte[] LeafHash,
    IReadOnlyList<ProofStep> Steps,
    byte[] Root);

/// <summary>The record a proof was asked for is not a leaf of any daily tree.</summary>
public sealed class RecordNotFoundException(string message) : Exception(message);

/// <summary>An audit request would go past one of the audit path's limits; narrow it.</summary>
public sealed class AuditLimitExceededException(string message) : Exception(message);

/// <summary>
/// Daily Merkle roots per provider and inclusion proofs, as proto/metering/v1/merkle-proofs.md
/// specifies: the leaves are the chain hashes of the provider's usage records (proof streams
/// excluded, since they are never settled) whose start falls in the Asia/Shanghai day, ordered
/// by stream id (bytewise) and then sequence. Settlement publishes the root in its statement;
/// anyone holding a proof can check a record against it.
/// </summary>
public sealed class DailyMerkle(NpgsqlDataSource dataSource)
{
    private const string SetKeys = "SELECT set_config('metering.audit_provider', @providerId, true), set_config('metering.audit_from', @from, true), "
        + "set_config('metering.audit_until', @until, true), set_config('metering.audit_as_of', @asOf, true)";

    public async Task<DailyRoot> RootAsync(string providerId, DateOnly day, DateTimeOffset? asOf, CancellationToken cancellationToken)
    {
        var (leaves, count, _) = await LeavesAsync(providerId, day, asOf, null, 0, cancellationToken);
        return new DailyRoot(providerId, day, asOf, count, MerkleTree.Root(leaves.AsSpan(0, count * MerkleTree.HashBytes), -1, null));
    }

    /// <summary>The proof that record <paramref name="sequence"/> of a stream is a leaf of its day's root.</summary>
    /// <exception cref="RecordNotFoundException">No such record, or it is in a proof stream, or it was committed after <paramref name="asOf"/>.</exception>
    public async Task<InclusionProof> ProveAsync(string providerId, string streamId, ulong sequence, DateTimeOffset? asOf, CancellationToken cancellationToken)
    {
        if (streamId.StartsWith(ProofStreams.Prefix, StringComparison.Ordinal))
        {
            throw new RecordNotFoundException($"{streamId} is a proof stream; its records are never settled and are not leaves of the daily roots");
        }

        var (fields, chainHash, committedAt) = await ReadRecordAsync(providerId, streamId, sequence, cancellationToken)
            ?? throw new RecordNotFoundException($"{providerId} has no record {sequence} in stream {streamId}");
        if (asOf is { } cutOff && committedAt > cutOff)
        {
            throw new RecordNotFoundException($"record {sequence} of {streamId} was committed at {committedAt:O}, after {cutOff:O}");
        }

        DateOnly day = ShanghaiTime.DateOf(DateTimeOffset.FromUnixTimeMilliseconds(fields.StartUnixMs));
        byte[] previous = sequence == 1 ? new byte[CanonicalEncoding.HashBytes] : await ReadChainHashAsync(providerId, streamId, sequence - 1, cancellationToken);
        var canonical = new byte[CanonicalEncoding.Length(fields)];
        CanonicalEncoding.Encode(fields, canonical);

        var (leaves, count, index) = await LeavesAsync(providerId, day, asOf, streamId, sequence, cancellationToken);
        if (index < 0)
        {
            throw new RecordNotFoundException($"record {sequence} of {streamId} is not among the leaves of {day:yyyy-MM-dd}");
        }

        byte[] leaf = leaves.AsSpan(index * MerkleTree.HashBytes, MerkleTree.HashBytes).ToArray();
        var steps = new List<ProofStep>();
        byte[] root = MerkleTree.Root(leaves.AsSpan(0, count * MerkleTree.HashBytes), index, steps);
        return new InclusionProof(providerId, day, asOf, streamId, sequence, index, count, previous, canonical, chainHash, leaf, steps, root);
    }

    /// <summary>The day's leaf hashes in order, their count, and the index of the record asked for (or -1).</summary>
    private async Task<(byte[] Leaves, int Count, int Index)> LeavesAsync(string providerId, DateOnly day, DateTimeOffset? asOf, string? streamId, ulong sequence, CancellationToken cancellationToken)
    {
        DateTimeOffset from = ShanghaiTime.StartOf(day);
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(System.Data.IsolationLevel.RepeatableRead, cancellationToken);
        await connection.ExecuteAsync(new CommandDefinition(SetKeys, new
        {
            providerId,
            from = from.ToString("O", CultureInfo.InvariantCulture),
            until = from.AddDays(1).ToString("O", CultureInfo.InvariantCulture),
            asOf = asOf?.ToString("O", CultureInfo.InvariantCulture) ?? "infinity",
        }, transaction, cancellationToken: cancellationToken));

        byte[] target = streamId is null ? [] : Encoding.UTF8.GetBytes(streamId);
        var leaves = new byte[64 * MerkleTree.HashBytes];
        int count = 0;
        int index = -1;
        await using (NpgsqlRawCopyStream stream = await connection.BeginRawBinaryCopyAsync("""
            COPY (SELECT stream_id, sequence, chain_hash FROM usage_records
                  WHERE provider_id = current_setting('metering.audit_provider')
                    AND start_at >= current_setting('metering.audit_from')::timestamptz
                    AND start_at < current_setting('metering.audit_until')::timestamptz
                    AND committed_at <= current_setting('metering.audit_as_of')::timestamptz
                    AND stream_id NOT LIKE 'proof:%'
                  ORDER BY stream_id COLLATE "C", sequence) TO STDOUT (FORMAT BINARY)
            """, cancellationToken))
        {
            var rows = new CopyRowReader(stream, 3);
            while (await rows.ReadAsync(cancellationToken))
            {
                if (count == MerkleTree.LeavesMax)
                {
                    throw new AuditLimitExceededException($"{providerId} has more than {MerkleTree.LeavesMax} records on {day:yyyy-MM-dd}; the daily tree takes at most that many leaves.");
                }

                if (rows.FieldLength(2) != MerkleTree.HashBytes)
                {
                    throw new InvalidDataException($"A chain hash of {providerId} on {day:yyyy-MM-dd} is {rows.FieldLength(2)} bytes, not 32; verify the chain.");
                }

                if ((count + 1) * MerkleTree.HashBytes > leaves.Length)
                {
                    Array.Resize(ref leaves, (int)Math.Min((long)leaves.Length * 2, (long)MerkleTree.LeavesMax * MerkleTree.HashBytes));
                }

                if (index < 0 && streamId is not null && (ulong)rows.Int64(1) == sequence && rows.Field(0).SequenceEqual(target))
                {
                    index = count;
                }

                MerkleTree.LeafHash(rows.Field(2), leaves.AsSpan(count * MerkleTree.HashBytes, MerkleTree.HashBytes));
                count++;
            }
        }

        await transaction.CommitAsync(cancellationToken);
        return (leaves, count, index);
    }

    private async Task<(RecordFields Fields, byte[] ChainHash, DateTimeOffset CommittedAt)?> ReadRecordAsync(string providerId, string streamId, ulong sequence, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using var command = new NpgsqlCommand("""
            SELECT job_id, holder_code, device_model, device_count, share_numerator, share_denominator,
                   start_at, end_at, site, device_uuids, energy_mwh, chain_hash, committed_at
            FROM usage_records WHERE provider_id = $1 AND stream_id = $2 AND sequence = $3
            """, connection)
        {
            Parameters = { new() { Value = providerId }, new() { Value = streamId }, new() { Value = (long)sequence } },
        };
        await using NpgsqlDataReader reader = await command.ExecuteReaderAsync(cancellationToken);
        if (!await reader.ReadAsync(cancellationToken))
        {
            return null;
        }

        var fields = new RecordFields
        {
            ProviderId = providerId,
            StreamId = streamId,
            Sequence = sequence,
            JobId = reader.GetString(0),
            HolderCode = reader.GetString(1),
            DeviceModel = reader.GetString(2),
            DeviceCount = (uint)reader.GetInt32(3),
            ShareNumerator = (uint)reader.GetInt32(4),
            ShareDenominator = (uint)reader.GetInt32(5),
            StartUnixMs = UnixMs.FromDateTime(reader.GetDateTime(6)),
            EndUnixMs = UnixMs.FromDateTime(reader.GetDateTime(7)),
            Site = reader.GetString(8),
            DeviceUuids = reader.IsDBNull(9) ? [] : reader.GetFieldValue<string[]>(9),
            EnergyMwh = reader.IsDBNull(10) ? null : (ulong)reader.GetInt64(10),
        };
        return (fields, reader.GetFieldValue<byte[]>(11), new DateTimeOffset(DateTime.SpecifyKind(reader.GetDateTime(12), DateTimeKind.Utc)));
    }

    private async Task<byte[]> ReadChainHashAsync(string providerId, string streamId, ulong sequence, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await connection.QueryFirstOrDefaultAsync<byte[]>(new CommandDefinition(
            "SELECT chain_hash FROM usage_records WHERE provider_id = @providerId AND stream_id = @streamId AND sequence = @sequence",
            new { providerId, streamId, sequence = (long)sequence }, cancellationToken: cancellationToken))
            ?? throw new RecordNotFoundException($"record {sequence} of {streamId}, the one before the record proved, is missing; verify the chain");
    }
}

/// <summary>Streams whose id starts with "proof:" carry an applicant's metering-log proof: chained and auditable, never settled.</summary>
public static class ProofStreams
{
    public const string Prefix = "proof:";

    public static bool Is(string streamId) => streamId.StartsWith(Prefix, StringComparison.Ordinal);
}
