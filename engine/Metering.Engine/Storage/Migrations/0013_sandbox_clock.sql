-- The sandbox clock. A database made with `metering db migrate --sandbox` carries the one row of
-- sandbox_clock; only such a database may be served with `--clock simulated`, whose time is the
-- real time plus offset_ms. An operator moves it forward (SandboxService.AdvanceClock) so that a
-- trial can take a provider from filing through public notice to admission, streaming and
-- settlement in an afternoon. A production database has no row, and the runtime role cannot add
-- one (it holds SELECT and UPDATE of the offset only), so nobody can make production time run
-- ahead to settle a day before it ends.

CREATE TABLE sandbox_clock (
    singleton    boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    offset_ms    bigint      NOT NULL DEFAULT 0 CHECK (offset_ms >= 0),
    marked_at    timestamptz NOT NULL DEFAULT now(),
    advanced_at  timestamptz
);

COMMENT ON TABLE sandbox_clock IS 'Present (one row) only in a sandbox database: the simulated clock''s offset from real time, which only moves forward.';

-- Time only moves forward: an offset that goes back would let a day be settled twice or a notice
-- period be run again, so the database refuses it whoever asks.
CREATE FUNCTION sandbox_clock_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.offset_ms < OLD.offset_ms THEN
        RAISE EXCEPTION 'sandbox_clock: the offset moves only forward (% ms to % ms refused)', OLD.offset_ms, NEW.offset_ms
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.marked_at <> OLD.marked_at THEN
        RAISE EXCEPTION 'sandbox_clock: marked_at does not change' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER sandbox_clock_forward_only BEFORE UPDATE ON sandbox_clock
    FOR EACH ROW EXECUTE FUNCTION sandbox_clock_forward_only();

-- The mark holds whoever asks, the owner too: it is set only on a database with no programme data
-- (so a production database never becomes a sandbox), and never removed (so a sandbox's
-- future-dated evidence never passes for production's).
CREATE FUNCTION sandbox_clock_mark_empty_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM organisations) OR EXISTS (SELECT FROM usage_records) OR EXISTS (SELECT FROM settlement_runs) THEN
        RAISE EXCEPTION 'sandbox_clock: only a database with no organisations, usage or settlements can be made a sandbox'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER sandbox_clock_mark_empty_only BEFORE INSERT ON sandbox_clock
    FOR EACH ROW EXECUTE FUNCTION sandbox_clock_mark_empty_only();
CREATE TRIGGER sandbox_clock_kept BEFORE DELETE ON sandbox_clock
    FOR EACH ROW EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER sandbox_clock_no_truncate BEFORE TRUNCATE ON sandbox_clock
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();

-- Every move, by whom, at what real time: evidence, so a trial's timeline can be read back.
CREATE TABLE sandbox_clock_moves (
    move_id      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    by_ms        bigint      NOT NULL CHECK (by_ms > 0),
    offset_ms    bigint      NOT NULL CHECK (offset_ms > 0),
    moved_by     text        NOT NULL CHECK (octet_length(moved_by) BETWEEN 1 AND 200),
    moved_at     timestamptz NOT NULL
);

COMMENT ON TABLE sandbox_clock_moves IS 'Each forward move of the sandbox clock, with the operator and the real time. Append-only evidence.';

CREATE TRIGGER sandbox_clock_moves_append_only BEFORE UPDATE OR DELETE ON sandbox_clock_moves
    FOR EACH ROW EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER sandbox_clock_moves_no_truncate BEFORE TRUNCATE ON sandbox_clock_moves
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
