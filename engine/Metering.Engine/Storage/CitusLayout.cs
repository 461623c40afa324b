using Dapper;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Metering.Engine.Storage;

/// <summary>`metering db migrate --distributed` asked for Citus on a server that cannot give it.</summary>
public sealed class CitusUnavailableException(string message) : Exception(message);

/// <summary>Where a table of the schema lives on a Citus cluster.</summary>
public enum TablePlacement
{
    /// <summary>Sharded on provider_id, co-located with usage_records: a provider's rows of every such table are on one worker.</summary>
    Distributed,

    /// <summary>A full copy on every node, so that any shard joins it locally and a distributed table may reference it.</summary>
    Reference,

    /// <summary>Stays on the coordinator (as a Citus local table when it references a reference table).</summary>
    Coordinator,
}

/// <summary>
/// The schema's layout on Citus, applied after the migrations by `metering db migrate
/// --distributed` and idempotent like them: every step checks Citus's metadata first, so a second
/// run changes nothing. The lists are the layout; Storage/README.md ("Citus") gives the reason for
/// each table. A table in neither list stays on the coordinator; so does every table the engine
/// still reads with a unique key or a lock that does not name provider_id, or that takes part in
/// a foreign key with such a table, until that is changed.
/// </summary>
public static partial class CitusLayout
{
    /// <summary>
    /// Distributed on provider_id and co-located, in this order (the first sets the co-location
    /// group): the ingest tables, raw-log uploads, the registry's per-provider licences and
    /// listings, node keys with their approvals (which reference them), the fleet validation's
    /// tables (inventories, validations, sampled nodes, nonces, commitments, challenges,
    /// attestations and their device results, which reference each other), the fleet's
    /// per-second device levels that ingest writes (usage_concurrency), and the applications
    /// component: applications and the tables that hang off them, with the contract and voucher
    /// tables (their keys name provider_id since migration 0028).
    /// </summary>
    public static IReadOnlyList<string> Distributed { get; } =
    [
        "usage_records", "ingest_streams", "tamper_conflicts", "stream_heartbeats",
        "raw_log_uploads", "raw_log_line_errors", "raw_log_jobs",
        "licences", "integrity_listings",
        "capacity_node_keys", "capacity_node_key_approvals",
        "capacity_inventories", "capacity_inventory_nodes", "capacity_validations", "capacity_sample_nodes", "capacity_nonces", "capacity_commitments",
        "capacity_challenges", "capacity_attestations", "capacity_device_results",
        "usage_concurrency",
        "applications", "application_materials", "application_capacity", "application_stages", "verification_parts", "stage_proposals", "stage_proposal_parts",
        "reconsiderations", "service_items", "service_item_suspensions", "fee_schedules",
        "contracts", "contract_other_support", "vouchers", "claims", "claim_lines", "redeemed_usage", "voucher_holds",
    ];

    /// <summary>Registry-wide tables, read by every shard and referenced by distributed ones.</summary>
    public static IReadOnlyList<string> Reference { get; } =
    [
        "organisations", "admission_batches", "voucher_holders", "credentials", "capacity_model_aliases", "programme_parameters", "schema_migrations",
        "admission_notice_numbers",
    ];

    /// <summary>Where <paramref name="table"/> goes.</summary>
    public static TablePlacement PlacementOf(string table) =>
        Distributed.Contains(table) ? TablePlacement.Distributed : Reference.Contains(table) ? TablePlacement.Reference : TablePlacement.Coordinator;

    /// <summary>
    /// Creates the citus extension in the database when it is missing, then makes the reference
    /// and distributed tables that are not yet so, and moves every identity counter of a converted
    /// table past its highest value. Returns how many tables it converted now.
    /// </summary>
    /// <exception cref="CitusUnavailableException">The server has no citus extension, or does not preload it.</exception>
    public static async Task<int> ApplyAsync(NpgsqlConnection connection, ILogger logger, CancellationToken cancellationToken)
    {
        if (!await connection.ExecuteScalarAsync<bool>(new CommandDefinition(
                "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'citus')", cancellationToken: cancellationToken)))
        {
            throw new CitusUnavailableException("--distributed needs Citus, and this PostgreSQL server has no citus extension installed; install it, preload it (shared_preload_libraries = 'citus') and add the workers, or migrate without --distributed.");
        }

        try
        {
            await connection.ExecuteAsync(new CommandDefinition("CREATE EXTENSION IF NOT EXISTS citus", cancellationToken: cancellationToken));
        }
        catch (PostgresException e)
        {
            throw new CitusUnavailableException($"--distributed could not create the citus extension: {e.MessageText} (is citus first in shared_preload_libraries?)");
        }

        // The guards of evidence are triggers; Citus copies them onto every shard only when told
        // that they touch nothing but their own row (refuse_rewrite only raises an error).
        await connection.ExecuteAsync(new CommandDefinition("SET citus.enable_unsafe_triggers = on", cancellationToken: cancellationToken));
        try
        {
            // Citus's own names: 'h' hash distributed; 'n' with 't' a reference table, 'n' with
            // 's' a local table in its metadata (which a foreign key to a reference table makes
            // of a coordinator table, and which may still become a reference table).
            var placed = (await connection.QueryAsync<(string Table, string Kind)>(new CommandDefinition(
                "SELECT c.relname::text, p.partmethod::text || p.repmodel::text FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid WHERE c.relnamespace = current_schema()::regnamespace",
                cancellationToken: cancellationToken))).ToDictionary(p => p.Table, p => p.Kind, StringComparer.Ordinal);

            // Citus refuses to distribute a table that a coordinator table references, and a
            // distributed table may not reference a coordinator table; so a foreign key between
            // two tables of the list, or from a table of the list to a reference table, whose
            // referencing table is not distributed yet, is dropped first and added again once the
            // tables are placed (it then holds shard by shard, or against each node's copy). It
            // is dropped before any reference table is made: a table that references a reference
            // table, or a table that does, becomes a Citus local table of Citus's own accord, and
            // Citus can neither distribute nor turn back such a table that has an identity column
            // ("cannot complete operation on a table with identity column"); with the keys gone
            // first, only the tables that reference organisations themselves become local tables
            // before they are distributed.
            var pendingKeys = (await connection.QueryAsync<(string Table, string Name, string Definition)>(new CommandDefinition("""
                SELECT c.conrelid::regclass::text, c.conname::text, pg_get_constraintdef(c.oid) FROM pg_constraint c
                WHERE c.contype = 'f' AND c.conrelid::regclass::text = ANY(@tables) AND c.confrelid::regclass::text = ANY(@tables || @references)
                  AND NOT EXISTS (SELECT 1 FROM pg_dist_partition p WHERE p.logicalrelid = c.conrelid AND p.partmethod = 'h')
                  AND c.conparentid = 0
                ORDER BY 1, 2
                """, new { tables = Distributed.ToArray(), references = Reference.ToArray() }, cancellationToken: cancellationToken))).ToList();
            foreach (var (table, name, _) in pendingKeys)
            {
                await connection.ExecuteAsync(new CommandDefinition($"ALTER TABLE {Quote(table)} DROP CONSTRAINT {Quote(name)}", cancellationToken: cancellationToken));
            }

            int converted = 0;
            foreach (string table in Reference)
            {
                if (placed.TryGetValue(table, out string? kind) && kind == "nt")
                {
                    continue;
                }

                await connection.ExecuteAsync(new CommandDefinition("SELECT create_reference_table(@table::regclass)", new { table }, commandTimeout: 0, cancellationToken: cancellationToken));
                await DropLocalCopyAsync(connection, table, cancellationToken);
                LogPlaced(logger, table, "a reference table");
                converted++;
            }

            foreach (string table in Distributed)
            {
                if (placed.TryGetValue(table, out string? kind) && kind[0] == 'h')
                {
                    continue;
                }

                if (kind == "nt")
                {
                    throw new CitusUnavailableException($"Table {table} is a reference table, placed by hand, where the engine distributes it on provider_id; undistribute it and migrate again.");
                }

                string colocateWith = table == Distributed[0] ? "none" : Distributed[0];
                await connection.ExecuteAsync(new CommandDefinition(
                    "SELECT create_distributed_table(@table::regclass, 'provider_id', colocate_with => @colocateWith)", new { table, colocateWith }, commandTimeout: 0, cancellationToken: cancellationToken));
                await DropLocalCopyAsync(connection, table, cancellationToken);
                LogPlaced(logger, table, "distributed on provider_id");
                converted++;
            }

            foreach (var (table, name, definition) in pendingKeys)
            {
                await connection.ExecuteAsync(new CommandDefinition($"ALTER TABLE {Quote(table)} ADD CONSTRAINT {Quote(name)} {definition}", commandTimeout: 0, cancellationToken: cancellationToken));
            }

            await ResyncIdentitiesAsync(connection, cancellationToken);
            return converted;
        }
        finally
        {
            await connection.ExecuteAsync(new CommandDefinition("RESET citus.enable_unsafe_triggers", cancellationToken: CancellationToken.None));
        }
    }

    /// <summary>
    /// Citus copies a table's rows into its shards and leaves the originals in the coordinator's
    /// shell table, where nothing reads them. They are removed with the evidence guards held off
    /// for this one statement (replica mode fires no ordinary trigger), since the rows are not
    /// deleted but moved.
    /// </summary>
    private static async Task DropLocalCopyAsync(NpgsqlConnection connection, string table, CancellationToken cancellationToken)
    {
        if (!await connection.ExecuteScalarAsync<bool>(new CommandDefinition($"SELECT EXISTS (SELECT 1 FROM ONLY {Quote(table)})", cancellationToken: cancellationToken))
            && !await connection.ExecuteScalarAsync<bool>(new CommandDefinition(
                "SELECT EXISTS (SELECT 1 FROM pg_partition_tree(@table::regclass) t JOIN pg_class c ON c.oid = t.relid WHERE t.level > 0 AND c.reltuples > 0)", new { table }, cancellationToken: cancellationToken)))
        {
            return;
        }

        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(cancellationToken);
        await connection.ExecuteAsync(new CommandDefinition("SET LOCAL session_replication_role = replica", transaction: transaction, cancellationToken: cancellationToken));
        await connection.ExecuteAsync(new CommandDefinition("SELECT truncate_local_data_after_distributing_table(@table::regclass)", new { table }, transaction, cancellationToken: cancellationToken));
        await transaction.CommitAsync(cancellationToken);
    }

    /// <summary>
    /// Moves the counter of every identity column of a Citus table past the column's highest
    /// value: converting a table that holds rows can leave the coordinator's counter behind them,
    /// and the next insert would then collide with a row that exists.
    /// </summary>
    private static async Task ResyncIdentitiesAsync(NpgsqlConnection connection, CancellationToken cancellationToken)
    {
        var identities = await connection.QueryAsync<(string Table, string Column)>(new CommandDefinition("""
            SELECT c.relname::text, a.attname::text FROM pg_attribute a
            JOIN pg_class c ON c.oid = a.attrelid
            JOIN pg_dist_partition p ON p.logicalrelid = c.oid
            WHERE c.relnamespace = current_schema()::regnamespace AND a.attidentity <> '' AND NOT a.attisdropped
            ORDER BY 1, 2
            """, cancellationToken: cancellationToken));
        foreach (var (table, column) in identities)
        {
            string quotedTable = Quote(table);
            string quotedColumn = Quote(column);
            await connection.ExecuteAsync(new CommandDefinition(
                $"SELECT setval(pg_get_serial_sequence(@table, @column), m) FROM (SELECT max({quotedColumn}) AS m FROM {quotedTable}) t WHERE m IS NOT NULL",
                new { table = quotedTable, column }, cancellationToken: cancellationToken));
        }
    }

    private static string Quote(string identifier) => "\"" + identifier.Replace("\"", "\"\"", StringComparison.Ordinal) + "\"";

    [LoggerMessage(EventId = 1021, Level = LogLevel.Information, Message = "Citus: {Table} is now {Placement}")]
    private static partial void LogPlaced(ILogger logger, string table, string placement);
}
