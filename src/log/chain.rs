//! The hash chain as the log stores it: rows sealed and checked with the
//! domain's chain (`domain::chain`), for whatever fills or verifies a log
//! directly.

use super::store::EventRow;
use crate::domain::chain::{self, Hashed};
use crate::domain::{Event, JobState};

/// Adds `event` to the end of its job's chain (the next seq, its hash,
/// `state` moved past it) and returns the row to store.
pub fn seal(state: &mut JobState, event: &mut Event) -> EventRow {
    let sealed = chain::seal(state, event.clone());
    let row = EventRow::sealed(&sealed.event, sealed.payload);
    *event = sealed.event;
    row
}

/// The hash a stored row must carry, given its job's previous hash.
pub fn event_hash(prev_hash: &str, row: &EventRow) -> String {
    chain::event_hash(
        prev_hash,
        &Hashed {
            job_id: &row.job_id,
            seq: row.seq,
            session_id: row.session_id.as_deref(),
            kind: &row.kind,
            schema_version: row.schema_version,
            idempotency_key: row.idempotency_key.as_deref(),
            at: &row.at,
            payload: &row.payload,
        },
    )
}
