using Metering.Engine.Ingest;
using Npgsql;

namespace Metering.Engine.Audit;

/// <summary>The outcome of re-verifying one stream's chain from its first record.</summary>
/// <param name="FirstBrokenSequence">The first record whose stored hash does not match the recomputed one, or whose sequence is missing.</param>
public sealed record ChainVerification(string ProviderId, string StreamId, ulong RecordsChecked, byte[] ComputedHead, ulong? FirstBrokenSequence, string? Evidence)
{
    public bool Intact => FirstBrokenSequence is null;
}

/// <summary>Recomputes a stream's hash chain from the stored rows, exactly as an auditor would with sha256sum.</summary>
public sealed class ChainVerifier(NpgsqlDataSource dataSource)
{
    public async Task<ChainVerification> VerifyStreamAsync(string providerId, string streamId, CancellationToken cancellationToken = default)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using var command = new NpgsqlCommand("""
            SELECT sequence, job_id, holder_code, device_model, device_count, share_numerator, share_denominator,
                   start_at, end_at, site, device_uuids, energy_mwh, chain_hash
            FROM usage_records WHERE provider_id = $1 AND stream_id = $2 ORDER BY sequence
            """, connection)
        {
            Parameters = { new() { Value = providerId }, new() { Value = streamId } },
        };
        await using NpgsqlDataReader reader = await command.ExecuteReaderAsync(cancellationToken);
        var scratch = new byte[CanonicalEncoding.HashBytes + 1024 * 1024];
        byte[] previous = new byte[CanonicalEncoding.HashBytes];
        byte[] computed = new byte[CanonicalEncoding.HashBytes];
        ulong expected = 1;
        while (await reader.ReadAsync(cancellationToken))
        {
            ulong sequence = (ulong)reader.GetInt64(0);
            if (sequence != expected)
            {
                return new ChainVerification(providerId, streamId, expected - 1, previous, expected, $"record {expected} is missing; the next stored record is {sequence}");
            }

            var fields = new RecordFields
            {
                ProviderId = providerId,
                StreamId = streamId,
                Sequence = sequence,
                JobId = reader.GetString(1),
                HolderCode = reader.GetString(2),
                DeviceModel = reader.GetString(3),
                DeviceCount = (uint)reader.GetInt32(4),
                ShareNumerator = (uint)reader.GetInt32(5),
                ShareDenominator = (uint)reader.GetInt32(6),
                StartUnixMs = Storage.UnixMs.FromDateTime(reader.GetDateTime(7)),
                EndUnixMs = Storage.UnixMs.FromDateTime(reader.GetDateTime(8)),
                Site = reader.GetString(9),
                DeviceUuids = reader.IsDBNull(10) ? [] : reader.GetFieldValue<string[]>(10),
                EnergyMwh = reader.IsDBNull(11) ? null : (ulong)reader.GetInt64(11),
            };
            byte[] stored = reader.GetFieldValue<byte[]>(12);
            CanonicalEncoding.ChainHash(previous, fields, scratch, computed);
            if (!computed.AsSpan().SequenceEqual(stored))
            {
                return new ChainVerification(providerId, streamId, expected - 1, previous, sequence,
                    $"record {sequence}: stored hash {Convert.ToHexStringLower(stored)} but its content and the previous hash give {Convert.ToHexStringLower(computed)}");
            }

            (previous, computed) = (computed, previous);
            expected++;
        }

        return new ChainVerification(providerId, streamId, expected - 1, previous, null, null);
    }
}
