-- A stream head's check, pruned to one partition. stream_head_moves_forward (0010) looks for the
-- committed record at the new mark by provider, stream and sequence alone, so every commit probes
-- the primary-key index of each of the ~50 usage_records partitions while it holds the stream's
-- head (and plans over all of them on each new connection). Measured on the bench's cluster: the
-- full search took 0.25 ms a check with its plan cached, the search in the named partition 0.02 ms.
-- The writer now also records the start time of the record at the mark, which names its
-- partition; the check tries that partition first and falls back to the full search, so the
-- column is only a hint: a wrong or missing value costs time, never lets a head through.
ALTER TABLE ingest_streams ADD COLUMN head_start_at timestamptz;

COMMENT ON COLUMN ingest_streams.head_start_at IS 'start_at of the committed record at committed_sequence, when the writer gave it: a hint that prunes the head check to one partition.';

CREATE OR REPLACE FUNCTION stream_head_moves_forward() RETURNS trigger LANGUAGE plpgsql AS $$
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
    -- The hinted partition first (a parameter, so the cached plan prunes at executor start-up);
    -- the full search decides whenever the hint is absent or wrong.
    IF NEW.head_start_at IS NOT NULL AND EXISTS (
        SELECT 1 FROM usage_records
        WHERE provider_id = NEW.provider_id AND stream_id = NEW.stream_id
          AND sequence = NEW.committed_sequence AND start_at = NEW.head_start_at AND chain_hash = NEW.chain_head) THEN
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
