-- The transparency log (proto/metering/v1/transparency-log.md): each settled day's provider
-- Merkle roots become leaves of one append-only, RFC 9162-style Merkle tree, and the server signs
-- a head of that tree for every new size it sees. Both tables are evidence: append-only like the
-- usage log (refuse_rewrite() comes from 0001). Neither is keyed by provider: the log is one for
-- the whole programme, like settlement_runs, and is a reference table under Citus.

-- One leaf per provider statement of a settled day, appended by the settlement run that closed
-- the day, in its own transaction. Indexes are contiguous from 0; the canonical leaf bytes are
-- rebuilt from these columns (LogLeaf.Encode), so there is no second copy to disagree with them.
CREATE TABLE transparency_log_leaves (
    leaf_index         bigint      PRIMARY KEY CHECK (leaf_index >= 0),
    day                date        NOT NULL,
    provider_id        text        NOT NULL CHECK (octet_length(provider_id) BETWEEN 1 AND 64),
    leaf_count         bigint      NOT NULL CHECK (leaf_count >= 0),
    daily_root         bytea       NOT NULL CHECK (length(daily_root) = 32),
    settlement_sha256  bytea       NOT NULL CHECK (length(settlement_sha256) = 32),
    run_id             bigint      NOT NULL REFERENCES settlement_runs (run_id),
    appended_at        timestamptz NOT NULL,
    UNIQUE (day, provider_id)
);

COMMENT ON TABLE transparency_log_leaves IS 'Leaves of the transparency log: a provider''s daily Merkle root as its statement published it, with the run''s settlement hash. Append-only evidence.';

-- Tree heads the server signed with its key (kept outside the database): one per size and key.
-- A head signed here cannot be forged by whoever writes this table; outsiders keep copies.
CREATE TABLE transparency_tree_heads (
    tree_size          bigint      NOT NULL CHECK (tree_size >= 0),
    key_id             text        NOT NULL CHECK (key_id ~ '^[0-9a-f]{16}$'),
    root               bytea       NOT NULL CHECK (length(root) = 32),
    timestamp_unix_ms  bigint      NOT NULL CHECK (timestamp_unix_ms >= 0),
    signature          bytea       NOT NULL CHECK (length(signature) BETWEEN 8 AND 80),
    PRIMARY KEY (tree_size, key_id)
);

COMMENT ON TABLE transparency_tree_heads IS 'Signed tree heads of the transparency log, one per size and signing key. Append-only evidence.';

CREATE TRIGGER transparency_log_leaves_append_only BEFORE UPDATE OR DELETE ON transparency_log_leaves
    FOR EACH ROW EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER transparency_log_leaves_no_truncate BEFORE TRUNCATE ON transparency_log_leaves
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER transparency_tree_heads_append_only BEFORE UPDATE OR DELETE ON transparency_tree_heads
    FOR EACH ROW EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER transparency_tree_heads_no_truncate BEFORE TRUNCATE ON transparency_tree_heads
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
