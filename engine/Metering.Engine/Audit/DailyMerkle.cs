using Dapper;
using Metering.Engine.Ingest;
using Metering.Engine.Registry;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Audit;

/// <summary>A provider's Merkle root for one Asia/Shanghai day.</summary>
/// <param name="CutOff">Which committed records are leaves: everything, those committed by an instant, or those its settlement counted.</param>
public sealed record DailyRoot(string ProviderId, DateOnly Day, MerkleCutOff CutOff, int LeafCount, byte[] Root)
{
    /// <summary>The root of a provider-day without records: SHA-256 of no bytes, as merkle-proofs.md defines it.</summary>
    public static DailyRoot Empty(string providerId, DateOnly day, MerkleCutOff cutOff) => new(providerId, day, cutOff, 0, MerkleTree.Root([], -1, null));
}

/// <summary>
/// Everything a third party needs to check that one record is in a provider's daily root with
/// nothing but SHA-256: the record's canonical bytes and the previous chain hash give the
/// record's chain hash; that gives the leaf; the steps fold the leaf up to the root.
/// </summary>
public sealed record InclusionProof(
    string ProviderId,
    DateOnly Day,
    MerkleCutOff CutOff,
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
/// by stream id (bytewise) and then sequence (<see cref="DailyLeaves"/> reads them). Settlement publishes each provider's root as
/// settled in its statement (folded from the leaves of its one read of the day, selected by the
/// same statement); anyone holding a proof can check a record against it.
/// </summary>
public sealed class DailyMerkle(NpgsqlDataSource dataSource)
{
    public async Task<DailyRoot> RootAsync(string providerId, DateOnly day, MerkleCutOff cutOff, CancellationToken cancellationToken)
    {
        DailyRoot? root = null;
        await ReadLeavesAsync(providerId, day, cutOff, leaves => root = leaves.Fold(day, cutOff), cancellationToken);
        return root ?? throw new InvalidOperationException($"the leaves of {providerId} on {day:yyyy-MM-dd} were never folded");
    }

    /// <summary>The proof that record <paramref name="sequence"/> of a stream is a leaf of its day's root under <paramref name="cutOff"/>.</summary>
    /// <exception cref="RecordNotFoundException">No such record, or it is in a proof stream, or the cut-off leaves it out.</exception>
    /// <exception cref="DayNotSettledException">The cut-off is as settled and the record's day has not been settled.</exception>
    public async Task<InclusionProof> ProveAsync(string providerId, string streamId, ulong sequence, MerkleCutOff cutOff, CancellationToken cancellationToken)
    {
        if (streamId.StartsWith(ProofStreams.Prefix, StringComparison.Ordinal))
        {
            throw new RecordNotFoundException($"{streamId} is a proof stream; its records are never settled and are not leaves of the daily roots");
        }

        var (fields, chainHash, committedAt) = await ReadRecordAsync(providerId, streamId, sequence, cancellationToken)
            ?? throw new RecordNotFoundException($"{providerId} has no record {sequence} in stream {streamId}");
        if (cutOff.CommittedBy is { } asOf && committedAt > asOf)
        {
            throw new RecordNotFoundException($"record {sequence} of {streamId} was committed at {committedAt:O}, after {asOf:O}");
        }

        DateOnly day = ShanghaiTime.DateOf(DateTimeOffset.FromUnixTimeMilliseconds(fields.StartUnixMs));
        byte[] previous = sequence == 1 ? new byte[CanonicalEncoding.HashBytes] : await ReadChainHashAsync(providerId, streamId, sequence - 1, cancellationToken);
        var canonical = new byte[CanonicalEncoding.Length(fields)];
        CanonicalEncoding.Encode(fields, canonical);

        InclusionProof? proof = null;
        await ReadLeavesAsync(providerId, day, cutOff, leaves =>
        {
            int index = leaves.IndexOf(streamId, sequence);
            if (index < 0)
            {
                return;
            }

            byte[] all = leaves.LeafHashes();
            byte[] leaf = all.AsSpan(index * MerkleTree.HashBytes, MerkleTree.HashBytes).ToArray();
            var steps = new List<ProofStep>();
            byte[] root = MerkleTree.Root(all, index, steps);
            proof = new InclusionProof(providerId, day, cutOff, streamId, sequence, index, leaves.Count, previous, canonical, chainHash, leaf, steps, root);
        }, cancellationToken);
        return proof ?? throw new RecordNotFoundException(cutOff.IsSettled
            ? $"record {sequence} of {streamId} was committed after the settlement of {day:yyyy-MM-dd} counted its stream, so it is in no settled root; a later run settled it as an adjustment"
            : $"record {sequence} of {streamId} is not among the leaves of {day:yyyy-MM-dd}");
    }

    /// <summary>One provider's leaves of a day, read in a repeatable-read transaction of their own.</summary>
    private async Task ReadLeavesAsync(string providerId, DateOnly day, MerkleCutOff cutOff, Action<ProviderLeaves> onProvider, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(System.Data.IsolationLevel.RepeatableRead, cancellationToken);
        await DailyLeaves.ReadAsync(connection, transaction, day, providerId, cutOff, onProvider, cancellationToken);
        await transaction.CommitAsync(cancellationToken);
    }

    private async Task<(RecordFields Fields, byte[] ChainHash, DateTimeOffset CommittedAt)?> ReadRecordAsync(string providerId, string streamId, ulong sequence, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using var command = new NpgsqlCommand("""
            SELECT job_id, holder_code, device_model, device_count, share_numerator, share_denominator,
                   start_at, end_at, site, device_uuids, energy_mwh, chain_hash, committed_at, sm_active_bp
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
            SmActiveBp = reader.IsDBNull(13) ? null : (uint)reader.GetInt32(13),
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
