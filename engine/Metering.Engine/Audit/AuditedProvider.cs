using Dapper;
using Npgsql;

namespace Metering.Engine.Audit;

/// <summary>
/// Whether an audit names a provider the bureau knows. A query about a code nobody registered
/// and nobody streamed under finds nothing, and "nothing found" must not read as "all clean":
/// an auditor's typo in a valid-looking code is refused instead of answered with zeros.
/// </summary>
public sealed class AuditedProvider(NpgsqlDataSource dataSource)
{
    /// <summary>
    /// Throws unless the provider is registered, has opened a stream, or has rows stored under
    /// its code (rows written around ingest are exactly what verification must still report).
    /// </summary>
    /// <exception cref="RecordNotFoundException">Neither the registry nor the usage tables know the code.</exception>
    public async Task RequireKnownAsync(string providerId, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        bool known = await connection.ExecuteScalarAsync<bool>(new CommandDefinition("""
            SELECT EXISTS (SELECT 1 FROM organisations WHERE provider_id = @providerId)
                OR EXISTS (SELECT 1 FROM ingest_streams WHERE provider_id = @providerId)
                OR EXISTS (SELECT 1 FROM usage_records WHERE provider_id = @providerId)
            """, new { providerId }, cancellationToken: cancellationToken));
        if (!known)
        {
            throw new RecordNotFoundException($"no provider {providerId} is registered, and no usage is stored under that code");
        }
    }
}
