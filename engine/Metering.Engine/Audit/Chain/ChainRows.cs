using System.Globalization;
using Dapper;
using Metering.Engine.Storage;
using Npgsql;

namespace Metering.Engine.Audit;

/// <summary>
/// How the verifier reads a stream's stored rows: one <c>COPY (SELECT …) TO STDOUT</c> in binary
/// over a range in primary-key order, in a read-only repeatable-read transaction on a pooled
/// Npgsql connection, parsed straight from Npgsql's raw COPY stream by a
/// <see cref="BinaryCopyReader"/>. The rows then arrive in PostgreSQL's binary representation,
/// which is what the canonical encoding is built from, with no per-field conversion and nothing
/// allocated per row. The bench runs the same query text into the server's /dev/null.
/// </summary>
internal static class ChainRows
{
    /// <summary>Columns of the verifier's read, in the order <see cref="RowEncoder"/> reads them.</summary>
    internal const int FieldCount = 14;

    /// <summary>
    /// The reader's buffer: a row may take half of it, which is more than the longest canonical
    /// encoding the verifier accepts (<see cref="ChainVerifier.CanonicalBytesMax"/>), so an
    /// over-long row is reported as not encodable rather than refused by the reader.
    /// </summary>
    internal const int ReadBufferBytes = 4 * ChainVerifier.CanonicalBytesMax;

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
            NpgsqlRawCopyStream copy = await connection.BeginRawBinaryCopyAsync($"COPY ({RangeSelect(providerId, streamId, from, to)}) TO STDOUT (FORMAT BINARY)", cancellationToken);
            return new ChainRowSource(new BinaryCopyReader(copy, FieldCount, ReadBufferBytes), copy, connection);
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
    /// plan costs more than it saves on a scan this simple. Standard-conforming strings are
    /// required because the range's provider and stream are written into the statement as
    /// literals (<see cref="SqlLiteral"/>).
    /// </summary>
    internal const string ReadSettings = "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off; SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL jit = off; SET LOCAL standard_conforming_strings = on";

    /// <summary>
    /// The rows [from, to] of one stream, in the order <see cref="RowEncoder"/> reads their
    /// columns. COPY takes no parameters, so the provider and the stream are written into the
    /// statement as quoted literals. They are not carried in session settings: on Citus the
    /// statement runs on the worker that holds the provider's shard, which never sees a setting
    /// of the coordinator's session, while a literal provider routes the read to that one shard.
    /// </summary>
    internal static string RangeSelect(string providerId, string streamId, ulong from, ulong to) => string.Create(CultureInfo.InvariantCulture, $"""
        SELECT sequence, job_id, holder_code, device_model, device_count, share_numerator, share_denominator,
               start_at, end_at, site, device_uuids, energy_mwh, chain_hash, sm_active_bp
        FROM usage_records
        WHERE provider_id = {SqlLiteral.Text(providerId)} AND stream_id = {SqlLiteral.Text(streamId)}
          AND sequence BETWEEN {from} AND {to}
        ORDER BY sequence
        """);
}

/// <summary>The rows of one segment and what to close when they are read.</summary>
internal sealed class ChainRowSource(BinaryCopyReader rows, NpgsqlRawCopyStream copy, NpgsqlConnection connection) : IAsyncDisposable
{
    private int _abandoned;

    public BinaryCopyReader Rows => rows;

    /// <summary>
    /// Stops the read before its end. Closing a COPY that is still sending reads the rest of it,
    /// so the statement is cancelled first; the rest of a long segment is then never sent. Only
    /// the first call cancels.
    /// </summary>
    public async ValueTask AbandonAsync()
    {
        if (Interlocked.Exchange(ref _abandoned, 1) == 0)
        {
            await copy.CancelAsync();
        }
    }

    /// <summary>
    /// <see cref="AbandonAsync"/> for a cancellation callback, on whichever thread cancels, while
    /// a read may wait for rows (the read then fails with the server's cancellation). It must not
    /// throw into whoever cancelled: a cancellation that cannot be sent leaves the read to run on.
    /// </summary>
    public void AbandonQuietly()
    {
        try
        {
            if (Interlocked.Exchange(ref _abandoned, 1) == 0)
            {
                copy.Cancel();
            }
        }
        catch (Exception e) when (e is NpgsqlException or InvalidOperationException or IOException or System.Net.Sockets.SocketException)
        {
            // The reading side ends or fails on its own.
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await copy.DisposeAsync();
        }
        catch (PostgresException e) when (Volatile.Read(ref _abandoned) == 1 && e.SqlState == PostgresErrorCodes.QueryCanceled)
        {
            // The cancellation asked for in AbandonAsync.
        }
        finally
        {
            // Closing returns the connection to the pool; its open read-only transaction is rolled back.
            await connection.DisposeAsync();
        }
    }
}
