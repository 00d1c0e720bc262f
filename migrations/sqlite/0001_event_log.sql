-- The event log. Append-only: the triggers below refuse UPDATE and DELETE.

CREATE TABLE log_meta (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    -- A random UUID made when the log is created; clients send it back on
    -- reconnect, so a restored or replaced log is recognised.
    epoch      TEXT NOT NULL,
    created_at TEXT NOT NULL
) STRICT;

INSERT INTO log_meta (id, epoch, created_at) VALUES (
    1,
    lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' ||
        substr(lower(hex(randomblob(2))), 2) || '-' ||
        substr('89ab', 1 + (abs(random()) % 4), 1) ||
        substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6))),
    strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
);

CREATE TRIGGER log_meta_refuse_update BEFORE UPDATE ON log_meta
BEGIN
    SELECT RAISE(ABORT, 'log_meta is immutable: UPDATE refused');
END;

CREATE TRIGGER log_meta_refuse_delete BEFORE DELETE ON log_meta
BEGIN
    SELECT RAISE(ABORT, 'log_meta is immutable: DELETE refused');
END;

CREATE TABLE events (
    -- Global order of the log.
    position        INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id          TEXT    NOT NULL,
    -- The job's stream position: 1, 2, 3, ... per job.
    seq             INTEGER NOT NULL,
    session_id      TEXT,
    kind            TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    -- JSON, exactly as hashed.
    payload         TEXT    NOT NULL,
    idempotency_key TEXT,
    -- RFC 3339, UTC, microseconds.
    at              TEXT    NOT NULL,
    -- SHA-256 (hex) over the previous event's hash of the same job and this
    -- event's fields.
    hash            TEXT    NOT NULL,
    -- Optimistic concurrency: two appends can never take the same seq.
    UNIQUE (job_id, seq)
) STRICT;

CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only: UPDATE refused');
END;

CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only: DELETE refused');
END;
