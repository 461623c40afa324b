using Dapper;
using Npgsql;

namespace Metering.Engine.Storage;

/// <summary>Where one raw-log upload stands.</summary>
public sealed class UploadState
{
    public required string ProviderId { get; init; }
    public required string UploadId { get; init; }
    public required string StreamId { get; init; }
    public required string Format { get; init; }
    public required string MappingSha256 { get; init; }
    public required long TotalBytes { get; init; }
    public string? HeaderLine { get; set; }
    public long CommittedOffset { get; set; }
    public long Lines { get; set; }
    public long Records { get; set; }
    public long LinesSkipped { get; set; }
    public long LinesRefused { get; set; }
    public long LinesDuplicate { get; set; }
    public bool Complete => CommittedOffset == TotalBytes;
}

/// <summary>One refused line of an upload.</summary>
public sealed record UploadLineError(long Line, string Reason, string Message);

/// <summary>
/// The progress delta of one flush of an upload, committed atomically with its records.
/// <paramref name="RefusedBefore"/> is the lines refused by the upload's flushes before this one,
/// which decides how many of its errors are still kept: the flushes before it may still be
/// committing when it is made.
/// </summary>
public sealed record UploadProgress(long FromOffset, long ToOffset, long Lines, long Records, long Skipped, IReadOnlyList<UploadLineError> Errors, long Refused, long Duplicates, string? HeaderLine, long RefusedBefore);

/// <summary>The identity of a metered raw log job within its stream.</summary>
public readonly record struct RawLogJob(string JobId, long StartUnixMs, long Sequence);

/// <summary>Another writer moved the upload on: this one must stop and the client resume.</summary>
public sealed class UploadMovedException(string message) : Exception(message);

/// <summary>The raw_log_uploads and raw_log_line_errors tables.</summary>
public sealed class UploadStore(NpgsqlDataSource dataSource)
{
    /// <summary>Refused lines kept per upload; the count goes on past it.</summary>
    public const int StoredErrorsMax = 1_000;

    private const string Columns = """
        provider_id AS ProviderId, upload_id AS UploadId, stream_id AS StreamId, format AS Format, mapping_sha256 AS MappingSha256, total_bytes AS TotalBytes,
        header_line AS HeaderLine, committed_offset AS CommittedOffset, lines AS Lines, records AS Records,
        lines_skipped AS LinesSkipped, lines_refused AS LinesRefused, lines_duplicate AS LinesDuplicate
        """;

    public async Task<UploadState?> GetAsync(string providerId, string uploadId, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await connection.QuerySingleOrDefaultAsync<UploadState>(new CommandDefinition(
            $"SELECT {Columns} FROM raw_log_uploads WHERE provider_id = @providerId AND upload_id = @uploadId",
            new { providerId, uploadId }, cancellationToken: cancellationToken));
    }

    /// <summary>The upload as stored; created first when new.</summary>
    public async Task<UploadState> GetOrCreateAsync(string providerId, string uploadId, string streamId, string format, string mappingSha256, long totalBytes, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await connection.ExecuteAsync(new CommandDefinition("""
            INSERT INTO raw_log_uploads (provider_id, upload_id, stream_id, format, mapping_sha256, total_bytes)
            VALUES (@providerId, @uploadId, @streamId, @format, @mappingSha256, @totalBytes)
            ON CONFLICT (provider_id, upload_id) DO NOTHING
            """, new { providerId, uploadId, streamId, format, mappingSha256, totalBytes }, cancellationToken: cancellationToken));
        return await connection.QuerySingleAsync<UploadState>(new CommandDefinition(
            $"SELECT {Columns} FROM raw_log_uploads WHERE provider_id = @providerId AND upload_id = @uploadId",
            new { providerId, uploadId }, cancellationToken: cancellationToken));
    }

    public async Task<IReadOnlyList<UploadLineError>> ErrorsAsync(string providerId, string uploadId, int limit, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return (await connection.QueryAsync<UploadLineError>(new CommandDefinition(
            "SELECT line AS Line, reason AS Reason, message AS Message FROM raw_log_line_errors WHERE provider_id = @providerId AND upload_id = @uploadId ORDER BY line LIMIT @limit",
            new { providerId, uploadId, limit }, cancellationToken: cancellationToken))).AsList();
    }

    /// <summary>Records a flush inside the caller's transaction (the one that commits its records).</summary>
    public static async Task AdvanceAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, UploadState upload, UploadProgress progress)
    {
        // Whether this flush completes the upload is decided here, from the upload's size (which
        // never changes), so that the statement sets completed_at to now() or to NULL outright:
        // Citus evaluates now() once for a distributed table, but refuses it inside a CASE.
        string completedAt = progress.ToOffset == upload.TotalBytes ? "now()" : "NULL";
        int updated = await connection.ExecuteAsync($"""
            UPDATE raw_log_uploads SET
                committed_offset = @ToOffset, lines = lines + @Lines, records = records + @Records,
                lines_skipped = lines_skipped + @Skipped, lines_refused = lines_refused + @Refused, lines_duplicate = lines_duplicate + @Duplicates,
                header_line = coalesce(header_line, @HeaderLine), updated_at = now(),
                completed_at = {completedAt}
            WHERE provider_id = @ProviderId AND upload_id = @UploadId AND committed_offset = @FromOffset
            """, new { upload.ProviderId, upload.UploadId, progress.FromOffset, progress.ToOffset, progress.Lines, progress.Records, progress.Skipped, progress.Refused, progress.Duplicates, progress.HeaderLine }, transaction);
        if (updated != 1)
        {
            throw new UploadMovedException($"Upload {upload.UploadId} is no longer at offset {progress.FromOffset}: another call advanced it.");
        }

        long room = StoredErrorsMax - progress.RefusedBefore;
        foreach (UploadLineError error in progress.Errors.Take((int)Math.Max(0, Math.Min(room, int.MaxValue))))
        {
            await connection.ExecuteAsync(
                "INSERT INTO raw_log_line_errors (provider_id, upload_id, line, reason, message) VALUES (@ProviderId, @UploadId, @Line, @Reason, @Message)",
                new { upload.ProviderId, upload.UploadId, error.Line, error.Reason, Message = Printable(error.Message) }, transaction);
        }
    }

    /// <summary>Which of these jobs the stream has already metered from a raw log.</summary>
    public async Task<HashSet<(string JobId, long StartUnixMs)>> MeteredJobsAsync(string providerId, string streamId, IReadOnlyList<RawLogJob> jobs, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        // One primary key lookup per candidate, whatever the planner thinks of the unnest: as a
        // join it hashed every job the stream ever metered, on every flush, so an upload slowed
        // with each batch it committed. OFFSET 0 keeps the lateral lookup from being flattened.
        var found = await connection.QueryAsync<(string JobId, DateTime StartAt)>(new CommandDefinition("""
            SELECT c.job_id, c.start_at FROM unnest(@jobIds::text[], @starts::timestamptz[]) AS c(job_id, start_at)
            CROSS JOIN LATERAL (
                SELECT 1 FROM raw_log_jobs j
                WHERE j.provider_id = @providerId AND j.stream_id = @streamId AND j.job_id = c.job_id AND j.start_at = c.start_at OFFSET 0) AS j
            """, new
            {
                providerId,
                streamId,
                jobIds = jobs.Select(j => j.JobId).ToArray(),
                starts = jobs.Select(j => UnixMs.ToDateTime(j.StartUnixMs)).ToArray(),
            }, cancellationToken: cancellationToken));
        return found.Select(row => (row.JobId, UnixMs.FromDateTime(row.StartAt))).ToHashSet();
    }

    /// <summary>
    /// Remembers jobs as metered, inside the transaction that commits their records. Returns false
    /// when the stream metered one of them before: the primary key refused the rows, which leaves
    /// the transaction aborted, so the caller must roll back. A plain binary COPY, not an insert
    /// with ON CONFLICT: a speculative insertion per row costs about as much as looking every job
    /// up first, and jobs metered before are the exception; and COPY writes the heap rows in
    /// batches, where an INSERT from unnest paid the executor per row, which made this insert cost
    /// nearly as much as the usage rows' own COPY.
    /// </summary>
    public static async Task<bool> RecordJobsAsync(NpgsqlConnection connection, UploadState upload, IReadOnlyList<RawLogJob> jobs, CancellationToken cancellationToken)
    {
        try
        {
            await using NpgsqlRawCopyStream copy = await connection.BeginRawBinaryCopyAsync(JobsCopyCommand, cancellationToken);
            try
            {
                using var rows = new BinaryCopyWriter();
                rows.WriteHeader();
                foreach (RawLogJob job in jobs)
                {
                    rows.StartRow(6);
                    rows.WriteTextField(upload.ProviderId);
                    rows.WriteTextField(upload.StreamId);
                    rows.WriteTextField(job.JobId);
                    rows.WriteTimestampField(job.StartUnixMs);
                    rows.WriteInt64Field(job.Sequence);
                    rows.WriteTextField(upload.UploadId);
                    if (rows.Length >= BinaryCopyWriter.ChunkBytes)
                    {
                        await copy.WriteAsync(rows.Written, cancellationToken);
                        rows.Clear();
                    }
                }

                rows.WriteTrailer();
                await copy.WriteAsync(rows.Written, cancellationToken);
            }
            catch (Exception e) when (e is not PostgresException)
            {
                // Disposal would end the COPY normally and submit the rows sent so far; cancel it
                // instead. The transaction is rolled back either way.
                await copy.CancelAsync();
                throw;
            }

            // The COPY ends, and the primary key's verdict arrives, when the stream is disposed.
        }
        catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.UniqueViolation && e.ConstraintName == "raw_log_jobs_pkey")
        {
            return false;
        }

        return true;
    }

    private const string JobsCopyCommand = "COPY raw_log_jobs (provider_id, stream_id, job_id, start_at, sequence, upload_id) FROM STDIN (FORMAT BINARY)";

    /// <summary>Messages quote the offending input; keep them storable (PostgreSQL text holds no NUL) and short.</summary>
    private static string Printable(string message)
    {
        string text = message.Replace("\0", "\\0", StringComparison.Ordinal);
        return text.Length <= 500 ? text : string.Concat(text.AsSpan(0, 500), "…");
    }

    /// <summary>Records a flush that carries no records, in a transaction of its own.</summary>
    public async Task AdvanceAloneAsync(UploadState upload, UploadProgress progress, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(cancellationToken);
        await AdvanceAsync(connection, transaction, upload, progress);
        await transaction.CommitAsync(cancellationToken);
    }
}
