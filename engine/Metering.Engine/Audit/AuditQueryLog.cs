using Dapper;
using Metering.Engine.Access;
using Npgsql;

namespace Metering.Engine.Audit;

/// <summary>One audit query as the log keeps it.</summary>
public sealed record AuditQueryEntry(long QueryId, string Actor, string Role, string Via, DateTimeOffset AskedAt, string Query, string? ProviderId, string Parameters);

/// <summary>Where an audit query came from.</summary>
public enum AuditChannel
{
    /// <summary>The AuditService; `metering audit` calls it too, so every query is logged this way.</summary>
    Grpc,

    /// <summary>
    /// The CLI of earlier versions, which read the database directly under a name it was told;
    /// entries it wrote keep this channel, and nothing writes it any more.
    /// </summary>
    Cli,
}

/// <summary>
/// The append-only log of audit queries: who asked what, and when. Every audit query writes its
/// entry before it runs, in its own transaction, so that a query that fails or is cancelled
/// half way is still on record.
/// </summary>
public sealed class AuditQueryLog(NpgsqlDataSource dataSource, TimeProvider time)
{
    /// <summary>Most entries one listing returns.</summary>
    public const int ListLimitMax = 10_000;

    /// <summary>
    /// Most characters of JSON parameters one entry keeps. The server refuses an audit request
    /// over 4 KiB before logging it, whose JSON (at most six characters per byte, for escaped
    /// control characters) stays under this; anything longer is refused here, not stored.
    /// </summary>
    public const int ParametersCharsMax = 32 * 1024;

    /// <summary>Most characters of the query name, the actor and the provider id an entry keeps.</summary>
    public const int NameCharsMax = 128;

    /// <summary>Records a query whose parameters are already JSON (a gRPC request in protobuf's JSON form).</summary>
    /// <exception cref="ArgumentException">A field is longer than the log keeps; nothing is written.</exception>
    public async Task<long> RecordJsonAsync(Actor actor, AuditChannel via, string query, string? providerId, string parametersJson, CancellationToken cancellationToken)
    {
        if (parametersJson.Length > ParametersCharsMax || query.Length > NameCharsMax || actor.Subject.Length > NameCharsMax || providerId?.Length > NameCharsMax)
        {
            throw new ArgumentException($"an audit query's parameters are at most {ParametersCharsMax:N0} characters of JSON, and its name, actor and provider at most {NameCharsMax} each");
        }

        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await connection.ExecuteScalarAsync<long>(new CommandDefinition("""
            INSERT INTO audit_query_log (actor, role, via, asked_at, query, provider_id, parameters)
            VALUES (@actor, @role, @via, @at, @query, @providerId, @parameters::jsonb) RETURNING query_id
            """, new
        {
            actor = actor.Subject,
            role = actor.RoleName,
            via = via == AuditChannel.Grpc ? "grpc" : "cli",
            at = time.GetUtcNow().UtcDateTime,
            query,
            providerId,
            parameters = parametersJson,
        }, cancellationToken: cancellationToken));
    }

    /// <summary>The newest entries first, optionally of one actor.</summary>
    public async Task<IReadOnlyList<AuditQueryEntry>> ListAsync(string? actor, int limit, CancellationToken cancellationToken)
    {
        limit = limit <= 0 ? 100 : Math.Min(limit, ListLimitMax);
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var rows = await connection.QueryAsync<(long Id, string Actor, string Role, string Via, DateTime At, string Query, string? Provider, string Parameters)>(new CommandDefinition("""
            SELECT query_id, actor, role, via, asked_at, query, provider_id, parameters::text FROM audit_query_log
            WHERE @actor::text IS NULL OR actor = @actor ORDER BY query_id DESC LIMIT @limit
            """, new { actor, limit }, cancellationToken: cancellationToken));
        return rows.Select(r => new AuditQueryEntry(r.Id, r.Actor, r.Role, r.Via, new DateTimeOffset(DateTime.SpecifyKind(r.At, DateTimeKind.Utc)), r.Query, r.Provider, r.Parameters)).ToList();
    }
}
