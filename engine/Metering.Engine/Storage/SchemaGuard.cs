using System.Text.RegularExpressions;
using Dapper;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Metering.Engine.Storage;

/// <summary>The schema has a table that <see cref="SchemaTables"/> does not classify, or the runtime role is unfit.</summary>
public sealed class SchemaGuardException(string message) : Exception(message);

/// <summary>
/// Gives the runtime role exactly what serving needs and guards the evidence, from
/// <see cref="SchemaTables"/>. Run by the owner after every migration, in the migration lock;
/// every step is idempotent. The role is created when missing and checked when it exists: it
/// must own nothing, be no superuser, and be unable to become the owner.
/// </summary>
public static partial class SchemaGuard
{
    /// <summary>The runtime role `metering db migrate` creates unless told another.</summary>
    public const string DefaultRuntimeRole = "metering_runtime";

    // The functions that refuse a rewrite (0001 and 0003); a trigger on one of them guards its events.
    private static readonly string[] RefusingFunctions = ["refuse_rewrite", "registry_history_is_append_only"];

    /// <summary>A role name the guard accepts: plain lower-case SQL identifiers only, so that quoting is never in doubt.</summary>
    public static bool IsValidRoleName(string name) => RoleName().IsMatch(name);

    public static async Task ApplyAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string runtimeRole, ILogger logger, CancellationToken cancellationToken)
    {
        if (!IsValidRoleName(runtimeRole))
        {
            throw new SchemaGuardException($"Runtime role name '{runtimeRole}' is not a plain SQL identifier (lower-case letters, digits and _, at most 63).");
        }

        string role = Quote(runtimeRole);
        var (schema, owner, database) = await connection.QuerySingleAsync<(string, string, string)>(
            "SELECT current_schema(), current_user::text, current_database()::text", transaction: transaction);
        await EnsureRoleAsync(connection, transaction, runtimeRole, owner, schema, logger);

        // Relations an extension owns (pg_stat_statements' views, which pg_autoctl installs, or Citus's
        // citus_tables and citus_schemas)
        // are the extension's: its script made them, DROP EXTENSION removes them, and they hold no
        // evidence. Every other relation, a hand-added table above all, must be classified.
        var tables = (await connection.QueryAsync<(string Name, bool Partitioned)>("""
            SELECT c.relname, c.relkind = 'p' FROM pg_class c
            WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
            ORDER BY c.relname
            """, transaction: transaction)).ToList();
        var rules = SchemaTables.All.ToDictionary(r => r.Table, StringComparer.Ordinal);
        string[] unclassified = tables.Select(t => t.Name).Where(n => !rules.ContainsKey(n)).ToArray();
        if (unclassified.Length > 0)
        {
            throw new SchemaGuardException(
                $"Table(s) {string.Join(", ", unclassified)} in schema {schema} are not classified: add each to Storage/SchemaTables.cs as evidence, advancing evidence, mutable, read-only or owner-only, so that the runtime role's grants and the evidence guards cover it.");
        }

        string[] missing = rules.Keys.Where(k => !tables.Any(t => t.Name == k)).Order(StringComparer.Ordinal).ToArray();
        if (missing.Length > 0)
        {
            throw new SchemaGuardException($"Storage/SchemaTables.cs classifies table(s) {string.Join(", ", missing)} that schema {schema} does not have.");
        }

        // Granted only where missing: an owner that does not own the database or the schema may
        // not grant on them, and PUBLIC usually holds both already.
        if (!await connection.ExecuteScalarAsync<bool>("SELECT has_database_privilege(@runtimeRole, current_database(), 'CONNECT')", new { runtimeRole }, transaction))
        {
            await connection.ExecuteAsync($"GRANT CONNECT ON DATABASE {Quote(database)} TO {role}", transaction: transaction);
        }

        if (!await connection.ExecuteScalarAsync<bool>("SELECT has_schema_privilege(@runtimeRole, current_schema(), 'USAGE')", new { runtimeRole }, transaction))
        {
            await connection.ExecuteAsync($"GRANT USAGE ON SCHEMA {Quote(schema)} TO {role}", transaction: transaction);
        }

        await connection.ExecuteAsync($"""
            REVOKE CREATE ON SCHEMA {Quote(schema)} FROM PUBLIC, {role};
            REVOKE ALL ON ALL SEQUENCES IN SCHEMA {Quote(schema)} FROM PUBLIC, {role};
            """, transaction: transaction);

        int guards = 0;
        foreach (var (name, partitioned) in tables)
        {
            TableRule rule = rules[name];
            string table = Quote(schema) + "." + Quote(name);
            await connection.ExecuteAsync($"REVOKE ALL ON TABLE {table} FROM PUBLIC, {role}", transaction: transaction);
            if (rule.RuntimePrivileges.Length > 0)
            {
                await connection.ExecuteAsync($"GRANT {rule.RuntimePrivileges} ON TABLE {table} TO {role}", transaction: transaction);
            }

            // Partitions are reached through their parent, whose privileges PostgreSQL checks; the
            // runtime role gets nothing on a partition itself, so a partition created later is
            // closed to it until granted, which never happens.
            var relations = new List<string> { name };
            if (partitioned)
            {
                relations.AddRange(await connection.QueryAsync<string>("""
                    SELECT c.relname FROM pg_partition_tree(@parent::regclass) t JOIN pg_class c ON c.oid = t.relid
                    WHERE t.level > 0 ORDER BY t.level, c.relname
                    """, new { parent = table }, transaction));
                foreach (string partition in relations.Skip(1))
                {
                    await connection.ExecuteAsync($"REVOKE ALL ON TABLE {Quote(schema)}.{Quote(partition)} FROM PUBLIC, {role}", transaction: transaction);
                }
            }

            // Parent first: PostgreSQL clones a parent's row triggers onto its partitions, but not
            // its TRUNCATE trigger, which each partition gets for itself.
            foreach (string relation in relations)
            {
                guards += await GuardAsync(connection, transaction, schema, relation, rule.RefusedEvents);
            }

            await CheckPrivilegesAsync(connection, transaction, runtimeRole, schema, rule, relations);
        }

        // The one function the runtime role calls directly: the replication check of a server
        // that requires durable replication (migration replication_durability).
        await connection.ExecuteAsync($"GRANT EXECUTE ON FUNCTION {Quote(schema)}.synchronous_standbys_attached() TO {role}", transaction: transaction);

        if (await connection.ExecuteScalarAsync<bool>("SELECT has_schema_privilege(@role, current_schema(), 'CREATE')", new { role = runtimeRole }, transaction))
        {
            throw new SchemaGuardException($"Role {runtimeRole} may still CREATE in schema {schema} (through a role it belongs to); revoke that as the schema's owner and migrate again.");
        }

        LogGuarded(logger, runtimeRole, tables.Count, guards);
    }

    private static async Task EnsureRoleAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string runtimeRole, string owner, string schema, ILogger logger)
    {
        if (runtimeRole == owner)
        {
            throw new SchemaGuardException($"The runtime role {runtimeRole} is the role migrating the schema; name a role of its own (--runtime-role).");
        }

        var existing = await connection.QuerySingleOrDefaultAsync<(bool Super, bool CreateRole, bool Replication, bool BypassRls)?>(
            "SELECT rolsuper, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles WHERE rolname = @runtimeRole", new { runtimeRole }, transaction);
        if (existing is null)
        {
            await connection.ExecuteAsync($"CREATE ROLE {Quote(runtimeRole)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS", transaction: transaction);
            LogRoleCreated(logger, runtimeRole);
            return;
        }

        if (existing.Value.Super || existing.Value.CreateRole || existing.Value.Replication || existing.Value.BypassRls)
        {
            throw new SchemaGuardException($"The runtime role {runtimeRole} is a superuser or may create roles, replicate or bypass row security; it must be a plain login role.");
        }

        string? owned = await connection.ExecuteScalarAsync<string?>("""
            SELECT string_agg(c.relname, ', ' ORDER BY c.relname) FROM pg_class c
            WHERE c.relnamespace = current_schema()::regnamespace AND pg_has_role(@runtimeRole, c.relowner, 'MEMBER')
            """, new { runtimeRole }, transaction);
        if (owned is not null)
        {
            throw new SchemaGuardException($"The runtime role {runtimeRole} owns, or can act as the owner of, {owned} in schema {schema}; it must own nothing.");
        }

        if (await connection.ExecuteScalarAsync<bool>("""
            SELECT pg_has_role(@runtimeRole, current_user, 'MEMBER')
                OR pg_has_role(@runtimeRole, (SELECT nspowner FROM pg_namespace WHERE oid = current_schema()::regnamespace), 'MEMBER')
                OR pg_has_role(@runtimeRole, (SELECT datdba FROM pg_database WHERE datname = current_database()), 'MEMBER')
            """, new { runtimeRole }, transaction))
        {
            throw new SchemaGuardException($"The runtime role {runtimeRole} is a member of the owner ({owner}), of schema {schema}'s owner or of the database's owner, so it could act as them; revoke that membership.");
        }
    }

    /// <summary>Adds a refusing trigger for each event in <paramref name="events"/> that no enabled refusing trigger on the relation covers; returns how many it added.</summary>
    private static async Task<int> GuardAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string schema, string relation, IReadOnlyList<string> events)
    {
        if (events.Count == 0)
        {
            return 0;
        }

        string qualified = Quote(schema) + "." + Quote(relation);
        // pg_trigger.tgtype bits: 2 BEFORE, 8 DELETE, 16 UPDATE, 32 TRUNCATE.
        int covered = await connection.ExecuteScalarAsync<int>("""
            SELECT coalesce(bit_or(t.tgtype::int), 0) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
            WHERE t.tgrelid = @relation::regclass AND t.tgenabled <> 'D' AND (t.tgtype::int & 2) <> 0 AND p.proname = ANY(@functions)
            """, new { relation = qualified, functions = RefusingFunctions }, transaction);
        int added = 0;
        foreach (string refused in events)
        {
            int bit = refused switch { "DELETE" => 8, "UPDATE" => 16, _ => 32 };
            if ((covered & bit) != 0)
            {
                continue;
            }

            string level = refused == "TRUNCATE" ? "STATEMENT" : "ROW";
            await connection.ExecuteAsync(
                $"CREATE TRIGGER {Quote("evidence_refuses_" + refused.ToLowerInvariant())} BEFORE {refused} ON {qualified} FOR EACH {level} EXECUTE FUNCTION {Quote(schema)}.refuse_rewrite()",
                transaction: transaction);
            added++;
        }

        return added;
    }

    /// <summary>Checks the effective privileges, through every role the runtime role belongs to, against the rule.</summary>
    private static async Task CheckPrivilegesAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string runtimeRole, string schema, TableRule rule, List<string> relations)
    {
        for (int i = 0; i < relations.Count; i++)
        {
            string qualified = Quote(schema) + "." + Quote(relations[i]);
            var held = await connection.QuerySingleAsync<(bool Update, bool AnyColumnUpdate, bool Delete, bool Truncate, bool Trigger, bool References)>("""
                SELECT has_table_privilege(@runtimeRole, @relation, 'UPDATE'), has_any_column_privilege(@runtimeRole, @relation, 'UPDATE'),
                       has_table_privilege(@runtimeRole, @relation, 'DELETE'), has_table_privilege(@runtimeRole, @relation, 'TRUNCATE'),
                       has_table_privilege(@runtimeRole, @relation, 'TRIGGER'), has_table_privilege(@runtimeRole, @relation, 'REFERENCES')
                """, new { runtimeRole, relation = qualified }, transaction);
            bool partition = i > 0;
            bool evidence = rule.Kind is TableKind.Evidence or TableKind.AdvancingEvidence;
            bool refused = held.Truncate || held.Trigger || held.References
                || (partition && (held.AnyColumnUpdate || held.Delete))
                || (evidence && (held.Update || held.Delete))
                || (rule.Kind == TableKind.Evidence && held.AnyColumnUpdate);
            if (refused)
            {
                throw new SchemaGuardException(
                    $"Role {runtimeRole} still holds UPDATE, DELETE, TRUNCATE, TRIGGER or REFERENCES on {relations[i]} beyond its rule (through a role it belongs to, or a grant to PUBLIC); revoke it and migrate again.");
            }
        }
    }

    private static string Quote(string identifier) => "\"" + identifier.Replace("\"", "\"\"", StringComparison.Ordinal) + "\"";

    [GeneratedRegex("^[a-z_][a-z0-9_]{0,62}$")]
    private static partial Regex RoleName();

    [LoggerMessage(EventId = 1011, Level = LogLevel.Information, Message = "Created the runtime role {Role}: it owns nothing and has no password; set one (ALTER ROLE … PASSWORD) before serving over a password-authenticated connection")]
    private static partial void LogRoleCreated(ILogger logger, string role);

    [LoggerMessage(EventId = 1012, Level = LogLevel.Information, Message = "Granted the runtime role {Role} its privileges on {Tables} tables; added {Guards} evidence guard trigger(s)")]
    private static partial void LogGuarded(ILogger logger, string role, int tables, int guards);
}
