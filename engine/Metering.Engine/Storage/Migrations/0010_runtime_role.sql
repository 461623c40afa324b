-- Evidence that moves forward. The serving process runs as a runtime role that may UPDATE a few
-- evidence tables, but only in the columns that record progress (the grants are in
-- Storage/SchemaGuard.cs, rerun after every migration). These triggers make that progress
-- one-way, for the runtime role and the owner alike. Self-contained apart from the tables of
-- 0001, 0002 and 0004, so that a merge may renumber it.

-- A stream's head moves only forward: the committed mark never goes back, the head never changes
-- without the mark advancing, and the new head is the chain hash of the committed record at the
-- new mark (the records are written before the head in the same transaction).
CREATE FUNCTION stream_head_moves_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.provider_id <> OLD.provider_id OR NEW.stream_id <> OLD.stream_id OR NEW.opened_at <> OLD.opened_at THEN
        RAISE EXCEPTION 'ingest_streams: a stream''s identity never changes'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.committed_sequence < OLD.committed_sequence THEN
        RAISE EXCEPTION 'ingest_streams: the committed mark of %/% may not go back from % to %',
            OLD.provider_id, OLD.stream_id, OLD.committed_sequence, NEW.committed_sequence
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.committed_sequence = OLD.committed_sequence THEN
        IF NEW.chain_head <> OLD.chain_head THEN
            RAISE EXCEPTION 'ingest_streams: the chain head of %/% may not change without the committed mark advancing',
                OLD.provider_id, OLD.stream_id
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN NEW;
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM usage_records
        WHERE provider_id = NEW.provider_id AND stream_id = NEW.stream_id
          AND sequence = NEW.committed_sequence AND chain_hash = NEW.chain_head) THEN
        RAISE EXCEPTION 'ingest_streams: %/% may only advance to a committed record: none at sequence % with that chain hash',
            NEW.provider_id, NEW.stream_id, NEW.committed_sequence
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER ingest_streams_forward_only BEFORE UPDATE ON ingest_streams
    FOR EACH ROW EXECUTE FUNCTION stream_head_moves_forward();

-- A raw-log upload's committed offset and its counters only grow; what was uploaded, and how it
-- was mapped, never changes.
CREATE FUNCTION raw_log_upload_moves_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.provider_id, NEW.upload_id, NEW.stream_id, NEW.format, NEW.mapping_sha256, NEW.total_bytes, NEW.created_at)
       IS DISTINCT FROM (OLD.provider_id, OLD.upload_id, OLD.stream_id, OLD.format, OLD.mapping_sha256, OLD.total_bytes, OLD.created_at)
       OR (OLD.header_line IS NOT NULL AND NEW.header_line IS DISTINCT FROM OLD.header_line)
       OR (OLD.completed_at IS NOT NULL AND NEW.completed_at IS NULL)
       OR NEW.committed_offset < OLD.committed_offset
       OR NEW.lines < OLD.lines OR NEW.records < OLD.records OR NEW.lines_skipped < OLD.lines_skipped
       OR NEW.lines_refused < OLD.lines_refused OR NEW.lines_duplicate < OLD.lines_duplicate THEN
        RAISE EXCEPTION 'raw_log_uploads: upload %/% only moves forward', OLD.provider_id, OLD.upload_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER raw_log_uploads_forward_only BEFORE UPDATE ON raw_log_uploads
    FOR EACH ROW EXECUTE FUNCTION raw_log_upload_moves_forward();

-- A capacity nonce is spent once, and what it was issued for never changes.
CREATE FUNCTION capacity_nonce_spent_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.used_at IS NOT NULL
       OR (NEW.provider_id, NEW.nonce, NEW.validation_id, NEW.node_id, NEW.issued_at, NEW.expires_at)
          IS DISTINCT FROM (OLD.provider_id, OLD.nonce, OLD.validation_id, OLD.node_id, OLD.issued_at, OLD.expires_at) THEN
        RAISE EXCEPTION 'capacity_nonces: a nonce is spent once and never rewritten'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER capacity_nonces_spent_once BEFORE UPDATE ON capacity_nonces
    FOR EACH ROW EXECUTE FUNCTION capacity_nonce_spent_once();

-- A fleet validation changes only while it collects attestations; a completed or superseded one
-- is a result, and its draw (seed, sample, levels) never changes.
CREATE FUNCTION capacity_validation_closes_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state <> 'collecting'
       OR (NEW.provider_id, NEW.validation_id, NEW.inventory_version, NEW.drawn_at, NEW.sample_seed, NEW.sample_size,
           NEW.confidence_percent, NEW.conforming_percent, NEW.catalog_version)
          IS DISTINCT FROM (OLD.provider_id, OLD.validation_id, OLD.inventory_version, OLD.drawn_at, OLD.sample_seed, OLD.sample_size,
           OLD.confidence_percent, OLD.conforming_percent, OLD.catalog_version) THEN
        RAISE EXCEPTION 'capacity_validations: validation %/% is closed or its draw would change', OLD.provider_id, OLD.validation_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER capacity_validations_close_once BEFORE UPDATE ON capacity_validations
    FOR EACH ROW EXECUTE FUNCTION capacity_validation_closes_once();

-- A four-eyes proposal closes once, and only its closing columns change: the figure or decision a
-- second operator approves is exactly what the first proposed.
CREATE FUNCTION stage_proposal_closes_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.closed_as IS NOT NULL
       OR (NEW.provider_id, NEW.application_id, NEW.proposal_no, NEW.stage, NEW.pass, NEW.verified_fp16_gflops, NEW.reasons, NEW.proposed_by, NEW.proposed_at)
          IS DISTINCT FROM (OLD.provider_id, OLD.application_id, OLD.proposal_no, OLD.stage, OLD.pass, OLD.verified_fp16_gflops, OLD.reasons, OLD.proposed_by, OLD.proposed_at) THEN
        RAISE EXCEPTION 'stage_proposals: proposal %/% is closed or its content would change', OLD.application_id, OLD.proposal_no
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER stage_proposals_close_once BEFORE UPDATE ON stage_proposals
    FOR EACH ROW EXECUTE FUNCTION stage_proposal_closes_once();
