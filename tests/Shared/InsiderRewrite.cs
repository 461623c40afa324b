using Dapper;
using Metering.Engine.Ingest;
using Metering.Protocol.V1;
using Npgsql;

namespace Metering.Tests.Shared;

/// <summary>
/// The strongest insider of the issue: the database superuser, who switches the guard triggers
/// off for the session and rewrites a committed usage record, then recomputes every chain hash
/// after it and the stream's head with the engine's own canonical encoding, so that the chain
/// verifies again. The receipt tests and the trust bench both play this insider.
/// </summary>
internal static class InsiderRewrite
{
    /// <summary>
    /// Applies <paramref name="change"/> to the record at <paramref name="rewritten"/> (its device
    /// count, with the stored usage scaled to match) and recomputes the hashes from there to
    /// <paramref name="last"/>, in one transaction as the superuser of
    /// <paramref name="superuserConnectionString"/>. <paramref name="recordAt"/> gives the records
    /// as they were sent. Returns the stream's new head.
    /// </summary>
    public static async Task<byte[]> RewriteChainAsync(string superuserConnectionString, string providerId, string streamId, ulong rewritten, ulong last,
        Func<ulong, UsageRecord> recordAt, Action<UsageRecord> change)
    {
        // The first record's predecessor is the stream's genesis, which this insider does not need.
        ArgumentOutOfRangeException.ThrowIfLessThan(rewritten, 2UL);
        ArgumentOutOfRangeException.ThrowIfLessThan(last, rewritten);
        await using var connection = new NpgsqlConnection(superuserConnectionString);
        await connection.OpenAsync();
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync();
        await connection.ExecuteAsync("SET LOCAL session_replication_role = replica", transaction: transaction);
        byte[] previous = await connection.QuerySingleAsync<byte[]>(
                "SELECT chain_hash FROM usage_records WHERE provider_id = @providerId AND stream_id = @streamId AND sequence = @sequence",
                new { providerId, streamId, sequence = (long)rewritten - 1 }, transaction);
        byte[] scratch = new byte[4096];
        byte[] hash = new byte[CanonicalEncoding.HashBytes];
        for (ulong sequence = rewritten; sequence <= last; sequence++)
        {
            UsageRecord record = recordAt(sequence);
            if (sequence == rewritten)
            {
                change(record);
            }

            CanonicalEncoding.ChainHash(previous, RecordFields.From(providerId, streamId, record), scratch, hash);
            await connection.ExecuteAsync("""
                UPDATE usage_records SET chain_hash = @hash, device_count = @devices,
                       usage_npfh = CASE WHEN device_count = @devices THEN usage_npfh ELSE usage_npfh * @devices / device_count END
                WHERE provider_id = @providerId AND stream_id = @streamId AND sequence = @sequence
                """, new { hash, devices = (int)record.DeviceCount, providerId, streamId, sequence = (long)sequence }, transaction);
            previous = (byte[])hash.Clone();
        }

        await connection.ExecuteAsync("UPDATE ingest_streams SET chain_head = @previous WHERE provider_id = @providerId AND stream_id = @streamId",
            new { previous, providerId, streamId }, transaction);
        await transaction.CommitAsync();
        return previous;
    }
}
