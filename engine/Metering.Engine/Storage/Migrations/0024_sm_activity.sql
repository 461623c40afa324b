-- The mean SM activity a record may report (ingest.proto sm_active_bp), in basis points. NULL
-- where the record reported none, which is every record before this column and every raw-log
-- line: absent stays absent and is never read as 0. A present value is covered by the chain
-- hash (canonical-encoding.md), so rewriting it later breaks verification. Adding a nullable
-- column without a default rewrites no partition.
ALTER TABLE usage_records ADD COLUMN sm_active_bp integer CHECK (sm_active_bp BETWEEN 0 AND 10000);

COMMENT ON COLUMN usage_records.sm_active_bp IS 'Mean SM activity of the record''s devices over its span, in basis points (0 to 10000); NULL when not reported. Hashed when present.';
