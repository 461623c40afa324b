-- Ingest heartbeats: the minutes, by the server's clock, in which a stream said it was alive with
-- nothing to report. The audit's silent-stream detector counts them as covered, so that an idle
-- platform is told apart from a dead one. Self-contained: it needs only refuse_rewrite() from
-- 0001, so that a merge may renumber it.

-- One row per stream and minute at most: the session writes a minute once, and a reconnect within
-- the minute meets ON CONFLICT DO NOTHING. The table thus grows by at most one row per stream per
-- minute, whatever the clients send. provider_id comes first in the key (the Citus rule), and the
-- key is also the index the detector reads a stream's minutes through.
--
-- There is no foreign key to ingest_streams: checking it would take a KEY SHARE lock on the
-- stream's head row, which every batch commit locks FOR UPDATE, and heartbeats must not touch the
-- record path. Heartbeats are written only on a stream its session has opened (and so created).
CREATE TABLE stream_heartbeats (
    provider_id  text        NOT NULL,
    stream_id    text        NOT NULL,
    -- Start of the server's minute the heartbeat arrived in.
    minute_at    timestamptz NOT NULL CHECK (extract(epoch FROM minute_at) % 60 = 0),
    -- The server's clock when the minute's first heartbeat arrived.
    received_at  timestamptz NOT NULL,
    -- The client's clock in that heartbeat, if it sent one: evidence of clock skew, never used
    -- to decide the minute.
    client_at    timestamptz,
    CHECK (received_at >= minute_at AND received_at < minute_at + interval '1 minute'),
    PRIMARY KEY (provider_id, stream_id, minute_at)
);

COMMENT ON TABLE stream_heartbeats IS 'Minutes (server clock) in which a usage stream sent a heartbeat: alive with nothing to report. At most one row per stream and minute; append-only.';

-- Like the usage log, what a stream said is evidence and is never rewritten.
CREATE TRIGGER stream_heartbeats_append_only BEFORE UPDATE OR DELETE ON stream_heartbeats
    FOR EACH ROW EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER stream_heartbeats_no_truncate BEFORE TRUNCATE ON stream_heartbeats
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
