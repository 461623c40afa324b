using System.Diagnostics;
using Dapper;
using Npgsql;

namespace Metering.Bench.Load;

/// <summary>
/// The limit of this PostgreSQL for the ingest bench: the rows the streams committed, already
/// encoded in binary COPY format, loaded back by one COPY session per stream, all at once.
/// The bytes are prepared before the clock starts: PostgreSQL's own binary COPY output of each
/// stream's rows (the format <c>Storage/BinaryCopyWriter</c> writes on the ingest path), held in
/// memory. The copies go to a fresh partition, a year after the streamed day, so that they meet
/// empty indexes as the streams did, and under their own stream ids (a <c>binary-</c> prefix).
/// </summary>
internal static class BinaryCopyBaseline
{
    private const string StreamPrefix = "binary-";

    // A year later lands in an empty monthly partition (or the default one past the programme
    // years), so that the copies meet a fresh table and fresh indexes, as the streams did.
    private const string Shift = "interval '1 year'";

    // Chunks of the encoded rows; a stream of any length fits without one huge array.
    private const int ChunkBytes = 1024 * 1024;

    private const string Columns =
        "provider_id, stream_id, sequence, job_id, holder_code, device_model, device_count, share_numerator, share_denominator, "
        + "start_at, end_at, site, device_uuids, energy_mwh, catalog_version, usage_npfh, chain_hash";

    /// <summary>One stream's rows as binary COPY bytes, in chunks, and how many rows they hold.</summary>
    private sealed record Encoded(string StreamId, List<byte[]> Chunks, int LastChunkBytes, long Rows)
    {
        public long Bytes => (Chunks.Count - 1L) * ChunkBytes + LastChunkBytes;
    }

    /// <summary>
    /// Encodes each stream's committed rows (not timed), then times the parallel copies from the
    /// first COPY started to the last one committed; returns rows per second.
    /// </summary>
    public static async Task<double> RunAsync(NpgsqlDataSource dataSource, string providerId, IReadOnlyList<string> streamIds)
    {
        var encoded = new Encoded[streamIds.Count];
        for (int i = 0; i < encoded.Length; i++)
        {
            encoded[i] = await EncodeAsync(dataSource, providerId, streamIds[i]);
        }

        long rows = encoded.Sum(e => e.Rows);
        Console.WriteLine($"binary: encoded {rows:N0} rows of {encoded.Length} streams in memory ({encoded.Sum(e => e.Bytes) / (1024.0 * 1024.0):N0} MiB), "
            + $"{encoded.Length} parallel COPY … FROM STDIN (FORMAT binary) into a fresh partition");
        if (await CountAsync(dataSource) != 0)
        {
            throw new InvalidOperationException("The table already holds binary baseline rows.");
        }

        // Every connection is open before the clock starts, as the server's pool is during ingest.
        var connections = new NpgsqlConnection[encoded.Length];
        for (int i = 0; i < connections.Length; i++)
        {
            connections[i] = await dataSource.OpenConnectionAsync();
        }

        try
        {
            await IngestLoad.CheckpointAsync(dataSource);
            var clock = Stopwatch.StartNew();
            await Task.WhenAll(encoded.Select((e, i) => CopyAsync(connections[i], e)));
            double seconds = clock.Elapsed.TotalSeconds;
            long copied = await CountAsync(dataSource);
            if (copied != rows)
            {
                throw new InvalidOperationException($"The binary copies loaded {copied} rows, not {rows}.");
            }

            double perSecond = copied / seconds;
            Console.WriteLine($"binary: {copied:N0} rows in {seconds:0.00} s = {perSecond:N0} records/s");
            return perSecond;
        }
        finally
        {
            foreach (NpgsqlConnection connection in connections)
            {
                await connection.DisposeAsync();
            }
        }
    }

    /// <summary>PostgreSQL's binary COPY output of one stream's rows in sequence order, renamed and shifted a year.</summary>
    private static async Task<Encoded> EncodeAsync(NpgsqlDataSource dataSource, string providerId, string streamId)
    {
        string select = $"SELECT provider_id, {Literal(StreamPrefix)} || stream_id, sequence, job_id, holder_code, device_model, device_count, share_numerator, share_denominator, "
            + $"start_at + {Shift}, end_at + {Shift}, site, device_uuids, energy_mwh, catalog_version, usage_npfh, chain_hash "
            + $"FROM usage_records WHERE provider_id = {Literal(providerId)} AND stream_id = {Literal(streamId)} ORDER BY sequence";
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync();
        long rows = await connection.ExecuteScalarAsync<long>(
            "SELECT count(*) FROM usage_records WHERE provider_id = @providerId AND stream_id = @streamId", new { providerId, streamId });
        var chunks = new List<byte[]>();
        int filled = ChunkBytes;
        await using (NpgsqlRawCopyStream copy = await connection.BeginRawBinaryCopyAsync($"COPY ({select}) TO STDOUT (FORMAT BINARY)"))
        {
            while (true)
            {
                if (filled == ChunkBytes)
                {
                    chunks.Add(new byte[ChunkBytes]);
                    filled = 0;
                }

                int read = await copy.ReadAsync(chunks[^1].AsMemory(filled), CancellationToken.None);
                if (read == 0)
                {
                    break;
                }

                filled += read;
            }
        }

        return new Encoded(streamId, chunks, filled, rows);
    }

    private static async Task CopyAsync(NpgsqlConnection connection, Encoded encoded)
    {
        await using NpgsqlRawCopyStream copy = await connection.BeginRawBinaryCopyAsync($"COPY usage_records ({Columns}) FROM STDIN (FORMAT BINARY)");
        for (int i = 0; i < encoded.Chunks.Count; i++)
        {
            await copy.WriteAsync(encoded.Chunks[i].AsMemory(0, i == encoded.Chunks.Count - 1 ? encoded.LastChunkBytes : ChunkBytes));
        }
    }

    private static async Task<long> CountAsync(NpgsqlDataSource dataSource)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync();
        return await connection.ExecuteScalarAsync<long>($"SELECT count(*) FROM usage_records WHERE stream_id LIKE '{StreamPrefix}%'");
    }

    private static string Literal(string value) => "'" + value.Replace("'", "''", StringComparison.Ordinal) + "'";
}
