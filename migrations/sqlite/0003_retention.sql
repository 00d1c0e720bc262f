-- Retention: the one controlled path by which whole finished units (a job,
-- or a stream) leave the log. A unit may leave only once a `units_removed`
-- record in the log names it: the record is appended, the unit entered in
-- `removed_units` (which names the record), and then, in the same
-- transaction, its events are deleted. Every other DELETE, and every
-- UPDATE, is refused as before.

CREATE TABLE removed_units (
    unit_id         TEXT    NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('job', 'stream')),
    -- RFC 3339: when its terminal event was recorded.
    finished_at     TEXT    NOT NULL,
    events          INTEGER NOT NULL,
    -- The position of its last event: no later event of the unit may go.
    last_position   INTEGER NOT NULL,
    -- The `units_removed` event that records it.
    record_position INTEGER NOT NULL,
    PRIMARY KEY (unit_id, record_position)
) STRICT, WITHOUT ROWID;

CREATE TRIGGER removed_units_need_a_record BEFORE INSERT ON removed_units
WHEN NOT EXISTS (
    SELECT 1 FROM events
    WHERE position = NEW.record_position AND kind = 'units_removed'
)
BEGIN
    SELECT RAISE(ABORT, 'a removed unit must be named by a units_removed record in the log');
END;

CREATE TRIGGER removed_units_refuse_update BEFORE UPDATE ON removed_units
BEGIN
    SELECT RAISE(ABORT, 'removed_units is append-only: UPDATE refused');
END;

CREATE TRIGGER removed_units_refuse_delete BEFORE DELETE ON removed_units
BEGIN
    SELECT RAISE(ABORT, 'removed_units is append-only: DELETE refused');
END;

DROP TRIGGER events_refuse_delete;

CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events
WHEN NOT EXISTS (
    SELECT 1 FROM removed_units r
    WHERE r.unit_id = OLD.job_id
      AND r.last_position >= OLD.position
      AND r.record_position > OLD.position
)
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only: DELETE refused (only retention removes whole units it has recorded)');
END;

-- A removed job's id never takes events again (a stream's path may be
-- created anew: a new stream, its chain from seq 1).
CREATE TRIGGER events_refuse_archived_jobs BEFORE INSERT ON events
WHEN EXISTS (
    SELECT 1 FROM removed_units r WHERE r.unit_id = NEW.job_id AND r.kind = 'job'
)
BEGIN
    SELECT RAISE(ABORT, 'job_archived: a removed job takes no events');
END;

-- The sweep finds units that ended by their terminal events, oldest first.
CREATE INDEX events_endings ON events (position)
    WHERE kind IN ('completed', 'failed', 'cancelled', 'stream_deleted');
