using Dapper;
using Npgsql;

namespace Metering.Bench.Load;

/// <summary>
/// What the metering log takes on disk per stored record, for the capacity model
/// (samples/deploy/CITY.md): the heap (with its TOAST, free-space and visibility maps) and the
/// indexes of `usage_records` and every partition under it, after a VACUUM so that the maps exist
/// as they do on a table autovacuum has visited, divided by the rows the table holds. Integers
/// only: bytes and rows are counted, the quotient rounded down.
/// </summary>
internal sealed record StorageFootprint(long Rows, long HeapBytes, long IndexBytes)
{
    public long BytesPerRecord => Rows == 0 ? 0 : (HeapBytes + IndexBytes) / Rows;

    public static async Task<StorageFootprint> MeasureAsync(NpgsqlDataSource dataSource)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync();
        await connection.ExecuteAsync("VACUUM (ANALYZE) usage_records", commandTimeout: 0);
        var footprint = await connection.QuerySingleAsync<StorageFootprint>(
            """
            SELECT (SELECT count(*) FROM usage_records) AS Rows,
                   coalesce(sum(pg_table_size(t.relid)), 0)::bigint AS HeapBytes,
                   coalesce(sum(pg_indexes_size(t.relid)), 0)::bigint AS IndexBytes
            FROM pg_partition_tree('usage_records'::regclass) t
            """);
        // What the rows hold, so that the figure can be scaled to another record mix: device UUIDs
        // are the one field whose size varies much (the load's jobs list up to 8).
        var mix = await connection.QuerySingleAsync<(decimal UuidsPerRecord, decimal RowBytes)>(
            "SELECT round(avg(coalesce(cardinality(device_uuids), 0)), 2), round(avg(pg_column_size(u.*)), 1) FROM usage_records u", commandTimeout: 0);
        Console.WriteLine($"footprint: {mix.UuidsPerRecord} device UUIDs and {mix.RowBytes} bytes of row data (pg_column_size) per record on average");
        Console.WriteLine($"footprint: usage_records holds {footprint.Rows:N0} rows in {footprint.HeapBytes:N0} bytes of heap and {footprint.IndexBytes:N0} bytes of indexes: "
            + $"{footprint.HeapBytes / Math.Max(footprint.Rows, 1):N0} + {footprint.IndexBytes / Math.Max(footprint.Rows, 1):N0} = {footprint.BytesPerRecord:N0} bytes per record");
        return footprint;
    }
}
