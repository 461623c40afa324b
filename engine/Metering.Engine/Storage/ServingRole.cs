using Dapper;
using Npgsql;

namespace Metering.Engine.Storage;

/// <summary>The server was asked to run as a role that could rewrite evidence.</summary>
public sealed class PrivilegedRoleException(string message) : Exception(message);

/// <summary>
/// Tells whether the role a connection logs in as could rewrite evidence: a superuser, a role
/// that may create roles, or one that owns (or can become the owner of) the engine's tables, its
/// schema or its database, and so could drop a trigger or a table.
/// </summary>
public static class ServingRole
{
    /// <summary>Why the connection's role is privileged, or null when it is a plain runtime role.</summary>
    public static async Task<string?> WhyPrivilegedAsync(NpgsqlDataSource dataSource, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var row = await connection.QuerySingleAsync<(string Role, bool Super, bool CreateRole, string? Owners, bool SchemaOwner, bool DatabaseOwner)>(new CommandDefinition("""
            SELECT current_user::text, r.rolsuper, r.rolcreaterole,
                   (SELECT string_agg(DISTINCT pg_get_userbyid(c.relowner), ', ') FROM pg_class c
                    WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') AND pg_has_role(current_user, c.relowner, 'MEMBER')),
                   pg_has_role(current_user, (SELECT nspowner FROM pg_namespace WHERE oid = current_schema()::regnamespace), 'MEMBER'),
                   pg_has_role(current_user, (SELECT datdba FROM pg_database WHERE datname = current_database()), 'MEMBER')
            FROM pg_roles r WHERE r.rolname = current_user
            """, cancellationToken: cancellationToken));
        string? why = row.Super ? "is a superuser"
            : row.CreateRole ? "may create roles (CREATEROLE)"
            : row.Owners is not null ? $"owns the engine's tables or can act as their owner ({row.Owners})"
            : row.SchemaOwner ? "owns the schema (or can act as its owner)"
            : row.DatabaseOwner ? "owns the database (or can act as its owner)"
            : null;
        return why is null ? null
            : $"refusing to serve as database role '{row.Role}': it {why}, so whoever controls the server could drop the evidence guards and rewrite committed usage. "
              + $"Run `metering db migrate` as the owner (it creates the runtime role {SchemaGuard.DefaultRuntimeRole}, or the one --runtime-role names), give that role a password "
              + $"(ALTER ROLE {SchemaGuard.DefaultRuntimeRole} PASSWORD '…') and serve with a connection string that logs in as it; "
              + "or pass --allow-privileged-role to serve as this role anyway.";
    }
}
