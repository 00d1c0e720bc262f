//! Retention's one path through the log: whole finished units (a job, or a
//! stream) leave it in one transaction that first appends a
//! `units_removed` record naming them (its own hash chain, [`LOG_CHAIN`]),
//! enters them in `removed_units`, and only then deletes their events, index
//! rows and the checkpoints that could still hold them. The database allows
//! a DELETE on `events` only for a unit entered there, and refuses every
//! other one (and every UPDATE) as before; a removed job's id takes no
//! events again.
//!
//! The store decides nothing: which units leave, and that their events are
//! archived first, is the engine's sweep (`engine/retention.rs`). The
//! transaction checks that each unit still ends where the sweep read it
//! (its last seq and hash), so nothing appended meanwhile leaves unarchived.

use chrono::{DateTime, Utc};

use super::chain::event_hash;
use super::store::{EventRow, StoreError};
use crate::domain::event::{RemovedUnit, UnitKind, UnitsRemoved, LOG_CHAIN};
use crate::domain::{Event, EventBody};

/// The kinds of the events that end a unit, as the `events_endings` index
/// lists them (the SQL must name them in this order to use it).
pub(crate) const ENDINGS_SQL: &str =
    "kind IN ('completed', 'failed', 'cancelled', 'stream_deleted')";

/// The `units_removed` row that follows the log chain's head `prev`
/// (`(seq, hash)`, none for the first).
pub(crate) fn record_row(
    prev: Option<(i64, String)>,
    units: &[RemovedUnit],
    archive: Option<&str>,
    at: DateTime<Utc>,
) -> EventRow {
    let (prev_seq, prev_hash) = prev.unwrap_or((0, String::new()));
    let event = Event {
        position: 0,
        job_id: LOG_CHAIN,
        seq: prev_seq + 1,
        session_id: None,
        at,
        idempotency_key: None,
        body: EventBody::UnitsRemoved(UnitsRemoved {
            archive: archive.map(str::to_owned),
            units: units.to_vec(),
        }),
        hash: String::new(),
    };
    let mut row = EventRow::from_event(&event);
    row.hash = event_hash(&prev_hash, &row);
    row
}

/// Checks that a unit still ends where the sweep read it: `head` is its
/// last row's `(seq, hash, position)` in the log now.
pub(crate) fn still_ends(
    unit: &RemovedUnit,
    head: Option<(i64, String, i64)>,
) -> Result<(), StoreError> {
    match head {
        Some((seq, hash, position))
            if seq == unit.events && hash == unit.last_hash && position == unit.last_position =>
        {
            Ok(())
        }
        Some((seq, _, position)) => Err(StoreError::Conflict(format!(
            "{} {} moved on while it was swept: it ends at seq {seq} (position {position}), not {} ({})",
            unit.kind.as_str(),
            unit.id,
            unit.events,
            unit.last_position
        ))),
        None => Err(StoreError::Conflict(format!(
            "{} {} is no longer in the log",
            unit.kind.as_str(),
            unit.id
        ))),
    }
}

/// Parses a stored unit kind.
pub(crate) fn unit_kind(text: &str) -> UnitKind {
    if text == "stream" {
        UnitKind::Stream
    } else {
        UnitKind::Job
    }
}
