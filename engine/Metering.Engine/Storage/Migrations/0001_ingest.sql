-- Ingest: streams, the usage log and tamper conflicts.
-- Every provider-keyed table has provider_id first in its primary key, so that a later move to
-- Citus can distribute on it.

CREATE TABLE ingest_streams (
    provider_id         text        NOT NULL,
    stream_id           text        NOT NULL,
    committed_sequence  bigint      NOT NULL DEFAULT 0 CHECK (committed_sequence >= 0),
    chain_head          bytea       NOT NULL CHECK (length(chain_head) = 32),
    opened_at           timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider_id, stream_id)
);

COMMENT ON TABLE ingest_streams IS 'One row per usage stream: the committed high-water mark and the chain hash at it.';

-- The metering log. Rows are written once, by binary COPY, and never updated or deleted.
-- Partitioned by the usage start time, one partition per month, so that nightly settlement
-- and audits of a period touch only that period.
CREATE TABLE usage_records (
    provider_id        text        NOT NULL,
    stream_id          text        NOT NULL,
    sequence           bigint      NOT NULL CHECK (sequence > 0),
    job_id             text        NOT NULL,
    holder_code        text        NOT NULL,
    device_model       text        NOT NULL,
    device_count       integer     NOT NULL CHECK (device_count > 0),
    share_numerator    integer     NOT NULL,
    share_denominator  integer     NOT NULL,
    start_at           timestamptz NOT NULL,
    end_at             timestamptz NOT NULL,
    site               text        NOT NULL,
    device_uuids       text[],
    energy_mwh         bigint      CHECK (energy_mwh >= 0),
    catalog_version    text        NOT NULL,
    usage_npfh         bigint      NOT NULL CHECK (usage_npfh >= 0),
    chain_hash         bytea       NOT NULL,
    committed_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (share_numerator > 0 AND share_numerator <= share_denominator),
    CHECK (end_at > start_at),
    -- The partition key must be part of the primary key; (provider, stream, sequence) is unique
    -- on its own because the stream head admits each sequence once.
    PRIMARY KEY (provider_id, stream_id, sequence, start_at)
) PARTITION BY RANGE (start_at);

COMMENT ON COLUMN usage_records.usage_npfh IS 'FP16 usage in nano-PFLOPS·h (1e-9 PFLOPS·h), rounded down per record.';
COMMENT ON COLUMN usage_records.chain_hash IS 'SHA-256 of the previous record''s chain_hash followed by this record''s canonical encoding (format 1).';

-- Monthly partitions for the programme years; anything else lands in the default partition.
DO $$
DECLARE
    month date := date '2024-01-01';
BEGIN
    WHILE month < date '2028-01-01' LOOP
        EXECUTE format(
            'CREATE TABLE usage_records_%s PARTITION OF usage_records FOR VALUES FROM (%L) TO (%L)',
            to_char(month, 'YYYY_MM'),
            to_char(month, 'YYYY-MM-DD') || ' 00:00:00+00',
            to_char(month + interval '1 month', 'YYYY-MM-DD') || ' 00:00:00+00');
        month := (month + interval '1 month')::date;
    END LOOP;
END $$;

CREATE TABLE usage_records_default PARTITION OF usage_records DEFAULT;

-- Replays of committed sequence numbers whose content differs: evidence for auditors.
CREATE TABLE tamper_conflicts (
    provider_id        text        NOT NULL,
    conflict_id        bigint      GENERATED ALWAYS AS IDENTITY,
    stream_id          text        NOT NULL,
    sequence           bigint      NOT NULL,
    committed_hash     bytea       NOT NULL,
    offered_hash       bytea       NOT NULL,
    offered_canonical  bytea       NOT NULL,
    peer               text,
    detected_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider_id, conflict_id)
);

COMMENT ON TABLE tamper_conflicts IS 'A replayed sequence number arrived with content different from the committed record.';

-- Committed evidence is never rewritten: refuse UPDATE, DELETE and TRUNCATE outright.
CREATE FUNCTION refuse_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only: committed rows are never rewritten', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER usage_records_append_only BEFORE UPDATE OR DELETE ON usage_records
    FOR EACH ROW EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER usage_records_no_truncate BEFORE TRUNCATE ON usage_records
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
-- A stream's head may move forward but never disappear: deleting it would restart the chain.
CREATE TRIGGER ingest_streams_no_delete BEFORE DELETE ON ingest_streams
    FOR EACH ROW EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER ingest_streams_no_truncate BEFORE TRUNCATE ON ingest_streams
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER tamper_conflicts_append_only BEFORE UPDATE OR DELETE ON tamper_conflicts
    FOR EACH ROW EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER tamper_conflicts_no_truncate BEFORE TRUNCATE ON tamper_conflicts
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
