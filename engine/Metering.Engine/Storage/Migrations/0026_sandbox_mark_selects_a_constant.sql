-- The sandbox mark's check, as 0013 wrote it, asks `EXISTS (SELECT FROM usage_records)`: a select
-- with an empty target list. On Citus usage_records is distributed, and Citus sends that select to
-- every shard as a statement PostgreSQL refuses ("a column definition list is required for
-- functions returning record"), so the owner's INSERT into sandbox_clock failed with Citus's error
-- instead of the guard's. The same check selecting a constant runs on both layouts. usage_records
-- is asked first, so that a test on Citus reaches the distributed table whatever else is present.
CREATE OR REPLACE FUNCTION sandbox_clock_mark_empty_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM usage_records) OR EXISTS (SELECT 1 FROM organisations) OR EXISTS (SELECT 1 FROM settlement_runs) THEN
        RAISE EXCEPTION 'sandbox_clock: only a database with no organisations, usage or settlements can be made a sandbox'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
