-- A server that requires durable replication acknowledges nothing unless a synchronous standby is
-- attached. pg_stat_replication shows a standby's sync_state only to superusers and members of
-- pg_read_all_stats; the runtime role is neither, and granting it pg_monitor would let it read every
-- session's queries. This function, which runs as the role that migrates (its owner), answers the
-- one question the server asks and nothing more. Where its owner cannot read sync_state either, it
-- counts no standby, so the server refuses rather than acknowledges: the failure is the safe one.
CREATE FUNCTION synchronous_standbys_attached() RETURNS integer
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$ SELECT count(*)::integer FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum') $$;

-- Only the runtime role may call it (SchemaGuard grants it), not every role that can log in.
REVOKE ALL ON FUNCTION synchronous_standbys_attached() FROM PUBLIC;
