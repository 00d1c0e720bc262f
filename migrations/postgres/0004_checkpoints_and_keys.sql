-- Idempotency keys are looked up in the log, by index, when a keyed append
-- arrives: a retry days later still finds its first answer. Partial, so
-- events without a key cost the index nothing.
CREATE INDEX events_idempotency_key ON events (job_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Checkpoints: the live state (every job a node keeps in memory) as of a log
-- position, so a start folds only the events after it. Derived and
-- disposable: not part of the log, never the truth, deleted freely; a start
-- with none folds the whole log. Any node may write one: written part by
-- part, each in a short transaction of its own, and its header last, so a
-- header names a complete checkpoint; its digest covers the parts in order.

CREATE TABLE checkpoints (
    id            TEXT    PRIMARY KEY,
    -- Every event up to this position is folded into the state.
    position      BIGINT  NOT NULL,
    -- The hash of the event at `position`, so a checkpoint of another log
    -- (or of a log restored to an older state) is recognised.
    position_hash TEXT    NOT NULL,
    epoch         TEXT    NOT NULL,
    fold_version  INTEGER NOT NULL,
    created_at    TEXT    NOT NULL,
    jobs          BIGINT  NOT NULL,
    parts         INTEGER NOT NULL,
    -- SHA-256 (hex) over the parts' bodies in order.
    digest        TEXT    NOT NULL
);

CREATE INDEX checkpoints_by_position ON checkpoints (position);

CREATE TABLE checkpoint_parts (
    checkpoint_id TEXT    NOT NULL,
    part          INTEGER NOT NULL,
    -- A JSON array of job states.
    body          TEXT    NOT NULL,
    PRIMARY KEY (checkpoint_id, part)
);
