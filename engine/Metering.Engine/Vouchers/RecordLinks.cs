using Metering.Engine.Ingest;
using Metering.Engine.Storage;
using Npgsql;

namespace Metering.Engine.Vouchers;

/// <summary>
/// Checks the hash-chain links around chosen records of one stream, for a claim: each chosen
/// record must hash from its predecessor's stored hash and its own canonical encoding to its
/// stored hash, and its successor must hash from it in turn; the last record of the stream must
/// carry the stream head. A record whose content was changed breaks its own link; one whose
/// content and hash were both changed breaks its successor's. The cost is bounded by the claim,
/// not the stream; the whole stream is the auditor's (<see cref="Audit.ChainVerifier"/>).
/// </summary>
internal static class RecordLinks
{
    /// <summary>The first broken link among the chosen records, or null when all hold.</summary>
    public static async Task<(long Sequence, string Evidence)?> FirstBrokenAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string providerId, string streamId,
        IReadOnlyList<long> sequences, CancellationToken cancellationToken)
    {
        var wanted = new SortedSet<long>();
        foreach (long sequence in sequences)
        {
            wanted.Add(sequence - 1);
            wanted.Add(sequence);
            wanted.Add(sequence + 1);
        }

        var rows = new Dictionary<long, (RecordFields Fields, byte[] Hash)>();
        await using (var command = new NpgsqlCommand("""
            SELECT sequence, job_id, holder_code, device_model, device_count, share_numerator, share_denominator,
                   start_at, end_at, site, device_uuids, energy_mwh, chain_hash, sm_active_bp
            FROM usage_records WHERE provider_id = $1 AND stream_id = $2 AND sequence = ANY($3)
            """, connection, transaction)
        {
            Parameters = { new() { Value = providerId }, new() { Value = streamId }, new() { Value = wanted.Where(s => s > 0).ToArray() } },
        })
        await using (NpgsqlDataReader reader = await command.ExecuteReaderAsync(cancellationToken))
        {
            while (await reader.ReadAsync(cancellationToken))
            {
                long sequence = reader.GetInt64(0);
                rows[sequence] = (new RecordFields
                {
                    ProviderId = providerId,
                    StreamId = streamId,
                    Sequence = (ulong)sequence,
                    JobId = reader.GetString(1),
                    HolderCode = reader.GetString(2),
                    DeviceModel = reader.GetString(3),
                    DeviceCount = (uint)reader.GetInt32(4),
                    ShareNumerator = (uint)reader.GetInt32(5),
                    ShareDenominator = (uint)reader.GetInt32(6),
                    StartUnixMs = UnixMs.FromDateTime(reader.GetDateTime(7)),
                    EndUnixMs = UnixMs.FromDateTime(reader.GetDateTime(8)),
                    Site = reader.GetString(9),
                    DeviceUuids = reader.IsDBNull(10) ? [] : reader.GetFieldValue<string[]>(10),
                    EnergyMwh = reader.IsDBNull(11) ? null : (ulong)reader.GetInt64(11),
                    SmActiveBp = reader.IsDBNull(13) ? null : (uint)reader.GetInt32(13),
                }, reader.GetFieldValue<byte[]>(12));
            }
        }

        long committed;
        byte[] head;
        await using (var command = new NpgsqlCommand("SELECT committed_sequence, chain_head FROM ingest_streams WHERE provider_id = $1 AND stream_id = $2", connection, transaction)
        {
            Parameters = { new() { Value = providerId }, new() { Value = streamId } },
        })
        await using (NpgsqlDataReader reader = await command.ExecuteReaderAsync(cancellationToken))
        {
            if (!await reader.ReadAsync(cancellationToken))
            {
                return (sequences[0], $"stream {streamId} has no head: its records were not written through ingest");
            }

            committed = reader.GetInt64(0);
            head = reader.GetFieldValue<byte[]>(1);
        }

        int scratchBytes = CanonicalEncoding.HashBytes + rows.Values.Select(r => CanonicalEncoding.Length(r.Fields)).DefaultIfEmpty(0).Max();
        var scratch = new byte[scratchBytes];
        var computed = new byte[CanonicalEncoding.HashBytes];
        foreach (long sequence in sequences)
        {
            foreach (long link in new[] { sequence, sequence + 1 })
            {
                if (link > committed)
                {
                    // The chosen record is the stream's last: its hash is the head.
                    if (!rows[sequence].Hash.AsSpan().SequenceEqual(head))
                    {
                        return (sequence, $"record {sequence} is the last of stream {streamId} but its hash {Hex(rows[sequence].Hash)} is not the stream head {Hex(head)}");
                    }

                    continue;
                }

                if (!rows.TryGetValue(link, out var record))
                {
                    return (link, $"record {link} of stream {streamId} is missing below the committed mark {committed}");
                }

                byte[] previous;
                if (link == 1)
                {
                    previous = UsageStore.GenesisHash;
                }
                else if (rows.TryGetValue(link - 1, out var before))
                {
                    previous = before.Hash;
                }
                else
                {
                    return (link - 1, $"record {link - 1} of stream {streamId} is missing below the committed mark {committed}");
                }

                CanonicalEncoding.ChainHash(previous, record.Fields, scratch, computed);
                if (!computed.AsSpan().SequenceEqual(record.Hash))
                {
                    return (link, $"record {link} of stream {streamId}: stored hash {Hex(record.Hash)} but its content and the previous hash give {Hex(computed)}");
                }
            }
        }

        return null;
    }

    private static string Hex(byte[] bytes) => Convert.ToHexStringLower(bytes);
}
