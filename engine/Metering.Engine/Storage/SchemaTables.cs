namespace Metering.Engine.Storage;

/// <summary>What a table holds, and so what the runtime role may do to it.</summary>
public enum TableKind
{
    /// <summary>Written once, never changed: the runtime role may SELECT and INSERT, nothing else; triggers refuse UPDATE, DELETE and TRUNCATE.</summary>
    Evidence,

    /// <summary>Evidence with a progress mark: INSERT, SELECT and UPDATE of the named columns only, which a trigger of its migration keeps one-way; triggers refuse DELETE and TRUNCATE.</summary>
    AdvancingEvidence,

    /// <summary>Workflow state and reference data: the privileges its rule names, never TRUNCATE.</summary>
    Mutable,

    /// <summary>The runtime role may only read it (the migration bookkeeping, which `serve` checks).</summary>
    ReadOnly,

    /// <summary>The runtime role gets nothing.</summary>
    OwnerOnly,
}

/// <summary>One table of the engine's schema, its kind and the privileges the runtime role holds on it.</summary>
internal sealed record TableRule(string Table, TableKind Kind, string RuntimePrivileges)
{
    public static TableRule Evidence(string table) => new(table, TableKind.Evidence, "SELECT, INSERT");

    public static TableRule Advancing(string table, params string[] updatableColumns) =>
        new(table, TableKind.AdvancingEvidence, $"SELECT, INSERT, UPDATE ({string.Join(", ", updatableColumns)})");

    public static TableRule Mutable(string table, bool update = false, bool delete = false) =>
        new(table, TableKind.Mutable, "SELECT, INSERT" + (update ? ", UPDATE" : "") + (delete ? ", DELETE" : ""));

    public static TableRule ReadOnly(string table) => new(table, TableKind.ReadOnly, "SELECT");

    public static TableRule OwnerOnly(string table) => new(table, TableKind.OwnerOnly, "");

    /// <summary>The row-changing statements that guard triggers refuse on the table and on each of its partitions.</summary>
    public IReadOnlyList<string> RefusedEvents => Kind switch
    {
        TableKind.Evidence => ["UPDATE", "DELETE", "TRUNCATE"],
        TableKind.AdvancingEvidence => ["DELETE", "TRUNCATE"],
        _ => [],
    };
}

/// <summary>
/// Every table of the engine's schema, classified. <see cref="SchemaGuard"/> grants and guards
/// from this list after every migration, and refuses a schema that has a table the list does not
/// name: a migration that adds a table adds its line here, in the same change. Privileges follow
/// what the engine's code runs (UPDATE only where a row legitimately changes, DELETE only for
/// released redemptions); see Storage/README.md for the reasons per table.
/// </summary>
internal static class SchemaTables
{
    public static IReadOnlyList<TableRule> All { get; } =
    [
        // 0001 ingest
        TableRule.Advancing("ingest_streams", "committed_sequence", "chain_head", "head_start_at", "updated_at"),
        TableRule.Evidence("usage_records"),
        TableRule.Evidence("tamper_conflicts"),
        // 0002 raw logs
        TableRule.Advancing("raw_log_uploads", "committed_offset", "lines", "records", "lines_skipped", "lines_refused", "lines_duplicate",
            "header_line", "updated_at", "completed_at"),
        TableRule.Evidence("raw_log_line_errors"),
        TableRule.Evidence("raw_log_jobs"),
        // 0003 registry
        TableRule.Mutable("organisations", update: true),
        TableRule.Mutable("licences"),
        TableRule.Mutable("integrity_listings"),
        TableRule.Mutable("admission_batches", update: true),
        TableRule.Mutable("voucher_holders", update: true),
        TableRule.Mutable("applications", update: true),
        TableRule.Mutable("application_materials"),
        TableRule.Mutable("application_capacity"),
        TableRule.Mutable("application_stages"),
        TableRule.Advancing("stage_proposals", "closed_as", "closed_by", "closed_at"),
        TableRule.Mutable("service_items", update: true),
        TableRule.Mutable("service_item_suspensions", update: true),
        TableRule.Mutable("fee_schedules"),
        TableRule.Mutable("credentials", update: true),
        TableRule.Evidence("registry_history"),
        // 0004 capacity
        TableRule.Evidence("capacity_node_keys"),
        TableRule.Mutable("capacity_inventories"),
        TableRule.Mutable("capacity_inventory_nodes"),
        TableRule.Advancing("capacity_validations", "state", "passed_nodes", "failed_nodes", "nonconforming_nodes_bound", "pass_rate_lower_bound_ppm",
            "verified_fp16_gflops", "completed_at", "expires_at", "abandoned_nodes"),
        TableRule.Mutable("capacity_sample_nodes", update: true),
        TableRule.Advancing("capacity_nonces", "used_at", "attestation_id"),
        TableRule.Evidence("capacity_attestations"),
        TableRule.Mutable("capacity_device_results", update: true),
        TableRule.Mutable("capacity_model_aliases", update: true),
        TableRule.Mutable("usage_concurrency", update: true),
        // 0005 vouchers and settlement
        TableRule.Mutable("programme_parameters"),
        TableRule.Mutable("contracts"),
        TableRule.Mutable("contract_other_support"),
        TableRule.Mutable("vouchers", update: true),
        TableRule.Mutable("claims"),
        TableRule.Mutable("claim_lines"),
        TableRule.Mutable("voucher_holds", update: true),
        TableRule.Mutable("redeemed_usage", delete: true),
        TableRule.Evidence("settlement_runs"),
        TableRule.Evidence("settlement_stream_marks"),
        TableRule.Evidence("settlement_lines"),
        TableRule.Evidence("settlement_statements"),
        TableRule.Evidence("ledger_entries"),
        TableRule.Evidence("ledger_lines"),
        // 0006 audit
        TableRule.Evidence("audit_query_log"),
        TableRule.Evidence("transparency_log_leaves"),
        TableRule.Evidence("transparency_tree_heads"),
        // 0007 heartbeats
        TableRule.Evidence("stream_heartbeats"),
        // 0013 sandbox clock: the runtime role moves the offset but cannot mark a database a sandbox.
        new TableRule("sandbox_clock", TableKind.Mutable, "SELECT, UPDATE (offset_ms, advanced_at)"),
        TableRule.Evidence("sandbox_clock_moves"),
        // payouts and year-end releases: each row is written once with its ledger entry; a payout is never edited, a mistake is corrected by the bank.
        TableRule.Evidence("payouts"),
        TableRule.Evidence("year_end_releases"),
        // reconsideration: a request is written once and decided once.
        TableRule.Advancing("reconsiderations", "outcome", "decided_by", "decided_at", "reasons", "state_after"),
        // batch rules: every version of a batch's rules is written once and never changed.
        TableRule.Evidence("admission_batch_versions"),
        // 0019 server-timed challenges
        TableRule.Evidence("capacity_challenges"),
        TableRule.Evidence("capacity_commitments"),
        // 0020 verification in parts: a stage's parts and a proposal's parts are written once with it.
        TableRule.Evidence("verification_parts"),
        TableRule.Evidence("stage_proposal_parts"),
        // 0021 node key approvals: an operator's approval of one key version is written once and never changed.
        TableRule.Evidence("capacity_node_key_approvals"),
        // 0028 admission notice numbers: registered once, programme-wide, with the admission that carries the number.
        TableRule.Evidence("admission_notice_numbers"),
        // The migrator's own bookkeeping; serve reads it to check the schema's version.
        TableRule.ReadOnly("schema_migrations"),
    ];
}
