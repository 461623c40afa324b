using System.Globalization;
using Dapper;
using Npgsql;

namespace Metering.Engine.Audit;

/// <summary>
/// How the verifier reads a stream's stored rows: one range query in primary-key order, in a
/// read-only repeatable-read transaction on a pooled Npgsql connection, streamed into a
/// <see cref="RowReader"/>. The bench runs the same query text through a server-side COPY.
/// </summary>
internal static class ChainRows
{
    /// <summary>Columns of the verifier's read, in the order <see cref="RowEncoder"/> reads them.</summary>
    internal const int FieldCount = 14;

    // Session settings carry the provider and stream into the range query, so that the same
    // text serves the bench's server-side COPY, which takes no parameters; the
    // values never become SQL text.
    private const string SetKeys = "SELECT set_config('metering.audit_provider', @providerId, true), set_config('metering.audit_stream', @streamId, true)";

    /// <summary>
    /// The rows [from, to] of one stream in sequence order, read through Npgsql in a read-only
    /// repeatable-read transaction on a connection of the pool.
    /// </summary>
    public static async Task<ChainRowSource> OpenAsync(NpgsqlDataSource dataSource, string providerId, string streamId, ulong from, ulong to, CancellationToken cancellationToken)
    {
        NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        try
        {
            NpgsqlTransaction transaction = await connection.BeginTransactionAsync(System.Data.IsolationLevel.RepeatableRead, cancellationToken);
            await connection.ExecuteAsync(new CommandDefinition("SET TRANSACTION READ ONLY; " + ReadSettings, transaction: transaction, cancellationToken: cancellationToken));
            await connection.ExecuteAsync(new CommandDefinition(SetKeys, new { providerId, streamId }, transaction, cancellationToken: cancellationToken));
            var command = new NpgsqlCommand(RangeSelect(from, to), connection, transaction) { CommandTimeout = 0 };
            NpgsqlDataReader reader = await command.ExecuteReaderAsync(cancellationToken);
            return new ChainRowSource(new RowReader(reader, FieldCount), reader, command, connection);
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// Settings of every read: the range in primary-key order (a merge of each partition's
    /// index) touches only the range asked for, needs no sort, and streams from the first row.
    /// Left to itself the planner scans whole partitions and sorts on disk, and its parallel
    /// workers compete with the segments that already run side by side. JIT compilation of the
    /// plan costs more than it saves on a scan this simple.
    /// </summary>
    internal const string ReadSettings = "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off; SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL jit = off";

    /// <summary>The rows [from, to] of the stream named by the session settings metering.audit_provider and metering.audit_stream, in the order <see cref="RowEncoder"/> reads their columns.</summary>
    internal static string RangeSelect(ulong from, ulong to) => string.Create(CultureInfo.InvariantCulture, $"""
        SELECT sequence, job_id, holder_code, device_model, device_count, share_numerator, share_denominator,
               start_at, end_at, site, device_uuids, energy_mwh, chain_hash, sm_active_bp
        FROM usage_records
        WHERE provider_id = current_setting('metering.audit_provider') AND stream_id = current_setting('metering.audit_stream')
          AND sequence BETWEEN {from} AND {to}
        ORDER BY sequence
        """);
}

/// <summary>The rows of one segment and what to close when they are read.</summary>
internal sealed class ChainRowSource(RowReader rows, NpgsqlDataReader reader, NpgsqlCommand command, NpgsqlConnection connection) : IAsyncDisposable
{
    private bool _abandoned;

    public RowReader Rows => rows;

    /// <summary>
    /// Stops the read before its end. Closing a data reader reads its remaining rows, so the
    /// statement is cancelled first; the rest of a long segment is then never sent.
    /// </summary>
    public ValueTask AbandonAsync()
    {
        _abandoned = true;
        command.Cancel();
        return ValueTask.CompletedTask;
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await reader.DisposeAsync();
        }
        catch (PostgresException e) when (_abandoned && e.SqlState == PostgresErrorCodes.QueryCanceled)
        {
            // The cancellation asked for in AbandonAsync.
        }
        finally
        {
            await command.DisposeAsync();

            // Closing returns the connection to the pool; its open read-only transaction is rolled back.
            await connection.DisposeAsync();
        }
    }
}
