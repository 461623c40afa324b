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
    public required long TotalBytes { get; init; }
    public string? HeaderLine { get; set; }
    public long CommittedOffset { get; set; }
    public long Lines { get; set; }
    public long Records { get; set; }
    public long LinesSkipped { get; set; }
    public long LinesRefused { get; set; }
    public bool Complete => CommittedOffset == TotalBytes;
}

/// <summary>One refused line of an upload.</summary>
public sealed record UploadLineError(long Line, string Reason, string Message);

/// <summary>The progress delta of one flush of an upload, committed atomically with its records.</summary>
public sealed record UploadProgress(long FromOffset, long ToOffset, long Lines, long Records, long Skipped, IReadOnlyList<UploadLineError> Errors, long Refused, string? HeaderLine);

/// <summary>Another writer moved the upload on: this one must stop and the client resume.</summary>
public sealed class UploadMovedException(string message) : Exception(message);

/// <summary>The raw_log_uploads and raw_log_line_errors tables.</summary>
public sealed class UploadStore(NpgsqlDataSource dataSource)
{
    /// <summary>Refused lines kept per upload; the count goes on past it.</summary>
    public const int StoredErrorsMax = 1_000;

    private const string Columns = """
        provider_id AS ProviderId, upload_id AS UploadId, stream_id AS StreamId, format AS Format, total_bytes AS TotalBytes,
        header_line AS HeaderLine, committed_offset AS CommittedOffset, lines AS Lines, records AS Records,
        lines_skipped AS LinesSkipped, lines_refused AS LinesRefused
        """;

    public async Task<UploadState?> GetAsync(string providerId, string uploadId, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await connection.QuerySingleOrDefaultAsync<UploadState>(new CommandDefinition(
            $"SELECT {Columns} FROM raw_log_uploads WHERE provider_id = @providerId AND upload_id = @uploadId",
            new { providerId, uploadId }, cancellationToken: cancellationToken));
    }

    /// <summary>The upload as stored; created first when new.</summary>
    public async Task<UploadState> GetOrCreateAsync(string providerId, string uploadId, string streamId, string format, long totalBytes, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await connection.ExecuteAsync(new CommandDefinition("""
            INSERT INTO raw_log_uploads (provider_id, upload_id, stream_id, format, total_bytes)
            VALUES (@providerId, @uploadId, @streamId, @format, @totalBytes)
            ON CONFLICT (provider_id, upload_id) DO NOTHING
            """, new { providerId, uploadId, streamId, format, totalBytes }, cancellationToken: cancellationToken));
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
        int updated = await connection.ExecuteAsync("""
            UPDATE raw_log_uploads SET
                committed_offset = @ToOffset, lines = lines + @Lines, records = records + @Records,
                lines_skipped = lines_skipped + @Skipped, lines_refused = lines_refused + @Refused,
                header_line = coalesce(header_line, @HeaderLine), updated_at = now(),
                completed_at = CASE WHEN @ToOffset = total_bytes THEN now() END
            WHERE provider_id = @ProviderId AND upload_id = @UploadId AND committed_offset = @FromOffset
            """, new { upload.ProviderId, upload.UploadId, progress.FromOffset, progress.ToOffset, progress.Lines, progress.Records, progress.Skipped, progress.Refused, progress.HeaderLine }, transaction);
        if (updated != 1)
        {
            throw new UploadMovedException($"Upload {upload.UploadId} is no longer at offset {progress.FromOffset}: another call advanced it.");
        }

        long room = StoredErrorsMax - upload.LinesRefused;
        foreach (UploadLineError error in progress.Errors.Take((int)Math.Max(0, Math.Min(room, int.MaxValue))))
        {
            await connection.ExecuteAsync(
                "INSERT INTO raw_log_line_errors (provider_id, upload_id, line, reason, message) VALUES (@ProviderId, @UploadId, @Line, @Reason, @Message)",
                new { upload.ProviderId, upload.UploadId, error.Line, error.Reason, error.Message }, transaction);
        }
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
