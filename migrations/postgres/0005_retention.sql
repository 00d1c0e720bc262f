-- Retention: the one controlled path by which whole finished units (a job,
-- or a stream) leave the log. A unit may leave only once a `units_removed`
-- record in the log names it: the record is appended, the unit entered in
-- `removed_units` (which names the record), and then, in the same
-- transaction, its events are deleted. Every other DELETE, every UPDATE and
-- TRUNCATE are refused as before.

CREATE TABLE removed_units (
    unit_id         TEXT        NOT NULL,
    kind            TEXT        NOT NULL CHECK (kind IN ('job', 'stream')),
    finished_at     TEXT        NOT NULL,
    events          BIGINT      NOT NULL,
    last_position   BIGINT      NOT NULL,
    record_position BIGINT      NOT NULL,
    PRIMARY KEY (unit_id, record_position)
);

CREATE FUNCTION rejoin_removed_unit_needs_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM events WHERE position = NEW.record_position AND kind = 'units_removed'
    ) THEN
        RAISE EXCEPTION 'a removed unit must be named by a units_removed record in the log';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER removed_units_need_a_record BEFORE INSERT ON removed_units
    FOR EACH ROW EXECUTE FUNCTION rejoin_removed_unit_needs_record();
CREATE TRIGGER removed_units_append_only BEFORE UPDATE OR DELETE ON removed_units
    FOR EACH ROW EXECUTE FUNCTION rejoin_refuse_change();
CREATE TRIGGER removed_units_no_truncate BEFORE TRUNCATE ON removed_units
    FOR EACH STATEMENT EXECUTE FUNCTION rejoin_refuse_change();

CREATE FUNCTION rejoin_guard_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (
        SELECT 1 FROM removed_units r
        WHERE r.unit_id = OLD.job_id
          AND r.last_position >= OLD.position
          AND r.record_position > OLD.position
    ) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the event log is append-only: % on % refused', TG_OP, TG_TABLE_NAME;
END
$$;

DROP TRIGGER events_append_only ON events;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION rejoin_guard_events();

-- A removed job's id never takes events again: checked once per statement.
CREATE FUNCTION rejoin_refuse_archived_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM appended a JOIN removed_units r ON r.unit_id = a.job_id AND r.kind = 'job'
    ) THEN
        RAISE EXCEPTION 'job_archived: a removed job takes no events';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_refuse_archived_jobs AFTER INSERT ON events
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION rejoin_refuse_archived_jobs();

CREATE INDEX events_endings ON events (position)
    WHERE kind IN ('completed', 'failed', 'cancelled', 'stream_deleted');
