using Dapper;
using Metering.Engine.Ingest;
using Metering.Protocol.V1;
using Npgsql;

namespace Metering.Fixtures;

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
        int count = checked((int)(last - rewritten + 1));
        long[] sequences = new long[count];
        string[] hashes = new string[count];
        int[] devices = new int[count];
        for (int i = 0; i < count; i++)
        {
            ulong sequence = rewritten + (ulong)i;
            UsageRecord record = recordAt(sequence);
            if (sequence == rewritten)
            {
                change(record);
            }

            CanonicalEncoding.ChainHash(previous, RecordFields.From(providerId, streamId, EngineRecords.Of(record)), scratch, hash);
            (sequences[i], hashes[i], devices[i]) = ((long)sequence, Convert.ToHexStringLower(hash), (int)record.DeviceCount);
            previous = (byte[])hash.Clone();
        }

        // One statement for the whole tail: row by row it takes seconds on a busy machine.
        int updated = await connection.ExecuteAsync("""
            UPDATE usage_records u SET chain_hash = decode(n.hash, 'hex'), device_count = n.devices,
                   usage_npfh = CASE WHEN u.device_count = n.devices THEN u.usage_npfh ELSE u.usage_npfh * n.devices / u.device_count END
            FROM unnest(@sequences, @hashes, @devices) AS n(sequence, hash, devices)
            WHERE u.provider_id = @providerId AND u.stream_id = @streamId AND u.sequence = n.sequence
            """, new { sequences, hashes, devices, providerId, streamId }, transaction);
        if (updated != count)
        {
            throw new InvalidOperationException($"The rewrite found {updated} of the {count} records {rewritten} to {last} of {providerId}/{streamId}.");
        }

        await connection.ExecuteAsync("UPDATE ingest_streams SET chain_head = @previous WHERE provider_id = @providerId AND stream_id = @streamId",
            new { previous, providerId, streamId }, transaction);
        await transaction.CommitAsync();
        return previous;
    }
}
