-- Audit: the log of audit queries. Auditors read everything and change nothing; what they asked,
-- and when, is itself evidence, so every audit query (gRPC or CLI) is written here before it
-- runs, and the table is append-only like the usage log (refuse_rewrite() comes from 0001).
-- Numbered 0006 because 0004 (capacity) and 0005 (vouchers) are taken by other branches.

CREATE TABLE audit_query_log (
    query_id     bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor        text        NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
    role         text        NOT NULL CHECK (role IN ('provider', 'operator', 'auditor', 'settlement')),
    via          text        NOT NULL CHECK (via IN ('grpc', 'cli')),
    asked_at     timestamptz NOT NULL,
    query        text        NOT NULL CHECK (length(query) BETWEEN 1 AND 64),
    -- The provider the query was about, when it named one; null for a query over all providers.
    provider_id  text,
    parameters   jsonb       NOT NULL
);

COMMENT ON TABLE audit_query_log IS 'Every audit query: who asked (actor, role, channel), what (query and parameters) and when. Append-only.';

CREATE INDEX audit_query_log_by_time ON audit_query_log (asked_at, query_id);

CREATE TRIGGER audit_query_log_append_only BEFORE UPDATE OR DELETE ON audit_query_log
    FOR EACH ROW EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER audit_query_log_no_truncate BEFORE TRUNCATE ON audit_query_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
