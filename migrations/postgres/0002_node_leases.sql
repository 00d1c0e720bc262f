-- Nodes sharing this log. Each renews its lease while it runs; the sessions
-- of a node whose lease ran out are recorded as disconnected by another.
-- (Not part of the event log: rows here are updated and deleted.)

CREATE TABLE node_leases (
    node_id     TEXT PRIMARY KEY,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_until TIMESTAMPTZ NOT NULL
);
