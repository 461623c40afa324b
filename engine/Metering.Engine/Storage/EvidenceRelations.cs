using Dapper;
using Npgsql;

namespace Metering.Engine.Storage;

/// <summary>One relation that holds evidence: an evidence table of <see cref="SchemaTables"/> itself, or one of its partitions.</summary>
/// <param name="Relation">The table's or partition's name.</param>
/// <param name="Table">The evidence table it belongs to (itself, for a table).</param>
/// <param name="Kind"><see cref="TableKind.Evidence"/> or <see cref="TableKind.AdvancingEvidence"/>.</param>
public sealed record EvidenceRelation(string Relation, string Table, TableKind Kind)
{
    public bool IsPartition => Relation != Table;
}

/// <summary>
/// Every relation the runtime role must not rewrite, read from pg_catalog at the time of asking:
/// each evidence table of <see cref="SchemaTables"/> and every partition under it, so that a
/// check of the guards covers partitions made after the schema was written. The runtime-role
/// tests and the trust bench both try their rewrites on this list.
/// </summary>
public static class EvidenceRelations
{
    /// <summary>The evidence relations in the connection's current schema, ordered by name.</summary>
    public static async Task<List<EvidenceRelation>> ListAsync(NpgsqlConnection connection, CancellationToken cancellationToken)
    {
        TableRule[] evidence = SchemaTables.All.Where(r => r.Kind is TableKind.Evidence or TableKind.AdvancingEvidence).ToArray();
        var kinds = evidence.ToDictionary(r => r.Table, r => r.Kind, StringComparer.Ordinal);
        // pg_partition_tree reaches partitions of partitions too; the tables are named on their own
        // as well, so that no version's answer for a plain table can leave one out.
        var rows = await connection.QueryAsync<(string Relation, string Table)>(new CommandDefinition("""
            SELECT e.name, e.name FROM unnest(@tables) AS e(name)
            UNION
            SELECT c.relname, e.name FROM unnest(@tables) AS e(name)
            CROSS JOIN LATERAL pg_partition_tree((quote_ident(current_schema()) || '.' || quote_ident(e.name))::regclass) t
            JOIN pg_class c ON c.oid = t.relid
            ORDER BY 1
            """, new { tables = kinds.Keys.ToArray() }, cancellationToken: cancellationToken));
        return rows.Select(r => new EvidenceRelation(r.Relation, r.Table, kinds[r.Table])).ToList();
    }
}
