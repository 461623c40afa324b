-- Evidence a caller can make the server write is kept bounded, so that no key can grow an
-- append-only table by megabytes per call. New rows only: the checks are NOT VALID, so rows
-- written before this migration stay as they are and valid.

-- A differing replay keeps the offered record's chain hash (offered_hash, which commits to the
-- whole record) and at most its first 1,024 canonical bytes; offered_canonical_bytes is the full
-- length. NULL on rows from before, which hold the whole encoding.
ALTER TABLE tamper_conflicts ADD COLUMN offered_canonical_bytes integer CHECK (offered_canonical_bytes >= 0);
ALTER TABLE tamper_conflicts ADD CONSTRAINT tamper_conflicts_canonical_bounded
    CHECK (octet_length(offered_canonical) <= 1024) NOT VALID;
COMMENT ON COLUMN tamper_conflicts.offered_canonical IS 'The first bytes (at most 1,024) of the offered record''s canonical encoding; offered_hash covers all of it.';

-- A refused attestation keeps the report's SHA-256 (report_sha256) and at most its first 4,096
-- canonical bytes; report_bytes is the full length. An accepted one keeps its whole report, which
-- the device results are read from.
ALTER TABLE capacity_attestations ADD COLUMN report_bytes integer CHECK (report_bytes >= 0);
ALTER TABLE capacity_attestations ADD CONSTRAINT capacity_attestations_refused_report_bounded
    CHECK (accepted OR octet_length(report_encoded) <= 4096) NOT VALID;
COMMENT ON COLUMN capacity_attestations.report_encoded IS 'The canonical report; of a refused attestation only its first 4,096 bytes (report_sha256 covers all of it, report_bytes is its length).';
