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
use crate::domain::event::{format_time, removed_through, RemovedUnit, UnitsRemoved, LOG_CHAIN};
use crate::domain::{Event, EventBody};

/// The statements both backends run, in `$n` placeholders (which SQLite
/// reads too).
///
/// The events that end units after a position, oldest first: the query
/// names the kinds exactly as the `events_endings` partial index does, so
/// it is read by that index.
pub(crate) const ENDINGS: &str = "SELECT position, job_id AS unit_id, at FROM events
    WHERE kind IN ('completed', 'failed', 'cancelled', 'stream_deleted') AND position > $1
    ORDER BY position LIMIT $2";
/// The job removed under an id, most recently.
pub(crate) const REMOVED_JOB: &str = "SELECT finished_at, events FROM removed_units
    WHERE unit_id = $1 AND kind = 'job' ORDER BY record_position DESC LIMIT 1";
pub(crate) const IS_REMOVED: &str =
    "SELECT EXISTS (SELECT 1 FROM removed_units WHERE unit_id = $1 AND last_position = $2)";
pub(crate) const HORIZON: &str = "SELECT coalesce(max(last_position), 0) FROM removed_units";
/// A chain's last row: `(seq, hash, position)`.
pub(crate) const HEAD: &str =
    "SELECT seq, hash, position FROM events WHERE job_id = $1 ORDER BY seq DESC LIMIT 1";
pub(crate) const INSERT_REMOVED: &str = "INSERT INTO removed_units
    (unit_id, kind, finished_at, events, last_position, record_position)
    VALUES ($1, $2, $3, $4, $5, $6)";
pub(crate) const DELETE_EVENTS: &str = "DELETE FROM events WHERE job_id = $1 AND position <= $2";
pub(crate) const DELETE_INDEX_ROW: &str = "DELETE FROM job_index WHERE job_id = $1";
/// Checkpoints older than a removal's last event may hold its units.
pub(crate) const DELETE_OLD_CHECKPOINT_PARTS: &str = "DELETE FROM checkpoint_parts
    WHERE checkpoint_id IN (SELECT id FROM checkpoints WHERE position < $1)";
pub(crate) const DELETE_OLD_CHECKPOINTS: &str = "DELETE FROM checkpoints WHERE position < $1";

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
/// last row's `(seq, hash, position)` in the log now ([`HEAD`]).
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

/// After the record at `record_position`: enters each unit in
/// `removed_units`, deletes its events and its index row, then the
/// checkpoints older than the last of them. One body for both backends, on
/// the transaction's connection.
pub(crate) async fn forget_units<DB>(
    conn: &mut DB::Connection,
    units: &[RemovedUnit],
    record_position: i64,
) -> Result<(), sqlx::Error>
where
    DB: sqlx::Database,
    for<'e> &'e mut DB::Connection: sqlx::Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    for unit in units {
        let id = unit.id.to_string();
        sqlx::query::<DB>(INSERT_REMOVED)
            .bind(id.clone())
            .bind(unit.kind.as_str())
            .bind(format_time(&unit.finished_at))
            .bind(unit.events)
            .bind(unit.last_position)
            .bind(record_position)
            .execute(&mut *conn)
            .await?;
        sqlx::query::<DB>(DELETE_EVENTS)
            .bind(id.clone())
            .bind(unit.last_position)
            .execute(&mut *conn)
            .await?;
        sqlx::query::<DB>(DELETE_INDEX_ROW)
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    for old_checkpoints in [DELETE_OLD_CHECKPOINT_PARTS, DELETE_OLD_CHECKPOINTS] {
        sqlx::query::<DB>(old_checkpoints)
            .bind(removed_through(units))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
