-- The event log. Append-only: the triggers below refuse UPDATE, DELETE and
-- TRUNCATE on both tables.

CREATE TABLE log_meta (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    -- A random UUID made when the log is created; clients send it back on
    -- reconnect, so a restored or replaced log is recognised.
    epoch      TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

INSERT INTO log_meta (id, epoch) VALUES (1, gen_random_uuid()::text);

CREATE TABLE events (
    -- Global order of the log. Appends hold a transaction-scoped advisory
    -- lock, so positions commit in the order they are assigned and a reader
    -- paging by position never skips one.
    position        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id          TEXT    NOT NULL,
    -- The job's stream position: 1, 2, 3, ... per job.
    seq             BIGINT  NOT NULL,
    session_id      TEXT,
    kind            TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    -- JSON, exactly as hashed (text, not jsonb, so the bytes are kept).
    payload         TEXT    NOT NULL,
    idempotency_key TEXT,
    -- RFC 3339, UTC, microseconds.
    at              TEXT    NOT NULL,
    -- SHA-256 (hex) over the previous event's hash of the same job and this
    -- event's fields.
    hash            TEXT    NOT NULL,
    -- Optimistic concurrency: two appends can never take the same seq.
    UNIQUE (job_id, seq)
);

CREATE FUNCTION rejoin_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only: % on % refused', TG_OP, TG_TABLE_NAME;
END
$$;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION rejoin_refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION rejoin_refuse_change();
CREATE FUNCTION rejoin_refuse_meta_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'log_meta is immutable: % refused', TG_OP;
END
$$;

CREATE TRIGGER log_meta_immutable BEFORE UPDATE OR DELETE ON log_meta
    FOR EACH ROW EXECUTE FUNCTION rejoin_refuse_meta_change();
CREATE TRIGGER log_meta_no_truncate BEFORE TRUNCATE ON log_meta
    FOR EACH STATEMENT EXECUTE FUNCTION rejoin_refuse_meta_change();
