-- One round trip per append: the advisory lock that keeps positions in
-- commit order, the insert and the notification, in one function called as a
-- single statement (its own transaction). Returns the new positions in order.

CREATE FUNCTION rejoin_append(
    lock_key    BIGINT,
    job_ids     TEXT[],
    seqs        BIGINT[],
    session_ids TEXT[],
    kinds       TEXT[],
    versions    INTEGER[],
    payloads    TEXT[],
    keys        TEXT[],
    ats         TEXT[],
    hashes      TEXT[]
) RETURNS SETOF BIGINT LANGUAGE plpgsql AS $$
DECLARE
    positions BIGINT[];
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    WITH ins AS (
        INSERT INTO events (job_id, seq, session_id, kind, schema_version, payload, idempotency_key, at, hash)
        SELECT * FROM unnest(job_ids, seqs, session_ids, kinds, versions, payloads, keys, ats, hashes)
        RETURNING position
    )
    SELECT array_agg(position ORDER BY position) INTO positions FROM ins;
    IF positions IS NOT NULL THEN
        PERFORM pg_notify('rejoin_log', positions[array_length(positions, 1)]::text);
        RETURN QUERY SELECT unnest(positions);
    END IF;
END
$$;
