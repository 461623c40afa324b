using Dapper;
using Npgsql;

namespace Metering.Engine.Registry;

/// <summary>One organisation's service item as the bureau posts it: no materials, fees or usage.</summary>
public sealed record PublishedItem(
    string CreditCode,
    string Name,
    string ServiceItem,
    string BatchId,
    long DeclaredFp16Gflops,
    long? VerifiedFp16Gflops,
    DateTimeOffset? NoticeEndsAt,
    string? NoticeNumber,
    DateTimeOffset? ValidFrom,
    DateTimeOffset? ValidUntil,
    bool Suspended);

/// <summary>
/// What the bureau publishes (publication.proto): the public notice of a batch, and the admitted
/// list. Read-only; the lists name only what an admission notice and a public notice carry.
/// </summary>
public sealed class Publication(NpgsqlDataSource dataSource, TimeProvider time)
{
    /// <summary>Applications of <paramref name="batchId"/> whose notice period runs now (one that ended awaits its decision and is off the notice).</summary>
    public async Task<IReadOnlyList<PublishedItem>> NoticeAsync(string batchId, CancellationToken cancellationToken)
    {
        Names.CheckBatchId(batchId);
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await RequireBatchAsync(connection, batchId, cancellationToken);
        var rows = await connection.QueryAsync<Row>(new CommandDefinition("""
            SELECT a.provider_id AS CreditCode, o.name AS Name, a.service_item AS ServiceItem, a.batch_id AS BatchId,
                   a.declared_fp16_gflops AS DeclaredFp16Gflops, a.verified_fp16_gflops AS VerifiedFp16Gflops, a.notice_ends_at AS NoticeEndsAt
            FROM applications a JOIN organisations o USING (provider_id)
            WHERE a.batch_id = @batchId AND a.state = 'in_public_notice' AND a.notice_ends_at > @now
            ORDER BY a.provider_id, a.service_item
            """, new { batchId, now = time.GetUtcNow().UtcDateTime }, cancellationToken: cancellationToken));
        return [.. rows.Select(r => new PublishedItem(r.CreditCode, r.Name, r.ServiceItem, r.BatchId, r.DeclaredFp16Gflops, r.VerifiedFp16Gflops,
            Utc(r.NoticeEndsAt), null, null, null, false))];
    }

    /// <summary>
    /// Service items admitted and not ended whose admission has not run out: in force now, or
    /// starting later (a renewal that continues one in force); of one batch or of all.
    /// </summary>
    public async Task<IReadOnlyList<PublishedItem>> AdmittedAsync(string? batchId, CancellationToken cancellationToken)
    {
        if (batchId is not null)
        {
            Names.CheckBatchId(batchId);
        }

        // Npgsql writes a timestamptz only from UTC; a clock may report another offset.
        DateTime now = time.GetUtcNow().UtcDateTime;
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        if (batchId is not null)
        {
            await RequireBatchAsync(connection, batchId, cancellationToken);
        }

        var rows = await connection.QueryAsync<Row>(new CommandDefinition("""
            SELECT s.provider_id AS CreditCode, o.name AS Name, s.service_item AS ServiceItem, a.batch_id AS BatchId,
                   a.declared_fp16_gflops AS DeclaredFp16Gflops, a.verified_fp16_gflops AS VerifiedFp16Gflops,
                   s.notice_number AS NoticeNumber, s.valid_from AS ValidFrom, s.validity_ends_at AS ValidUntil,
                   EXISTS (SELECT FROM service_item_suspensions p
                           WHERE (p.provider_id, p.service_item, p.application_id) = (s.provider_id, s.service_item, s.application_id)
                             AND p.suspended_at <= @now AND (p.reinstated_at IS NULL OR p.reinstated_at > @now)) AS Suspended
            FROM service_items s
            JOIN applications a ON (a.provider_id, a.application_id) = (s.provider_id, s.application_id)
            JOIN organisations o ON o.provider_id = s.provider_id
            WHERE s.validity_ends_at > @now AND (s.ended_at IS NULL OR s.ended_at > @now)
              AND (@batchId::text IS NULL OR a.batch_id = @batchId)
            ORDER BY s.provider_id, s.service_item, s.valid_from
            """, new { now, batchId }, cancellationToken: cancellationToken));
        return [.. rows.Select(r => new PublishedItem(r.CreditCode, r.Name, r.ServiceItem, r.BatchId, r.DeclaredFp16Gflops, r.VerifiedFp16Gflops,
            null, r.NoticeNumber, Utc(r.ValidFrom), Utc(r.ValidUntil), r.Suspended))];
    }

    /// <summary>A timestamptz as Npgsql reads it (a UTC DateTime) as an instant.</summary>
    private static DateTimeOffset? Utc(DateTime? value) => value is { } utc ? new DateTimeOffset(DateTime.SpecifyKind(utc, DateTimeKind.Utc)) : null;

    /// <summary>Every batch id there is.</summary>
    public async Task<IReadOnlyList<string>> BatchIdsAsync(CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return [.. await connection.QueryAsync<string>(new CommandDefinition("SELECT batch_id FROM admission_batches", cancellationToken: cancellationToken))];
    }

    private static async Task RequireBatchAsync(NpgsqlConnection connection, string batchId, CancellationToken cancellationToken)
    {
        if (!await connection.ExecuteScalarAsync<bool>(new CommandDefinition("SELECT EXISTS (SELECT FROM admission_batches WHERE batch_id = @batchId)", new { batchId }, cancellationToken: cancellationToken)))
        {
            throw new RegistryRefusedException(RegistryRefusalReason.BatchUnknown, $"no admission batch '{batchId}'");
        }
    }

    private sealed class Row
    {
        public string CreditCode { get; init; } = "";

        public string Name { get; init; } = "";

        public string ServiceItem { get; init; } = "";

        public string BatchId { get; init; } = "";

        public long DeclaredFp16Gflops { get; init; }

        public long? VerifiedFp16Gflops { get; init; }

        public DateTime? NoticeEndsAt { get; init; }

        public string? NoticeNumber { get; init; }

        public DateTime? ValidFrom { get; init; }

        public DateTime? ValidUntil { get; init; }

        public bool Suspended { get; init; }
    }
}
