//! The per-job hash chain: each event's SHA-256 covers its content and the hash
//! of the job's previous event, so any edit to a stored event breaks the chain
//! from that event on. The first event of a job chains to the empty string.

use sha2::{Digest, Sha256};

use super::EventRow;
use crate::domain::{Event, JobState};

/// Adds `event` to the end of its job's chain: gives it the next seq and its
/// hash, moves `state` past it, and returns the row to store. The writer seals
/// every append this way, and so does anything that fills a log directly.
pub fn seal(state: &mut JobState, event: &mut Event) -> EventRow {
    event.seq = state.head_seq + 1;
    let mut row = EventRow::from_event(event);
    row.hash = event_hash(&state.head_hash, &row);
    event.hash.clone_from(&row.hash);
    state.apply(event);
    row
}

/// The hash an event must carry, given its job's previous hash.
pub fn event_hash(prev_hash: &str, row: &EventRow) -> String {
    let mut h = Sha256::new();
    // Newline-separated fields; only the payload (last) may contain newlines,
    // and the idempotency key is restricted to visible ASCII.
    for field in [
        prev_hash,
        row.job_id.as_str(),
        &row.seq.to_string(),
        row.session_id.as_deref().unwrap_or(""),
        row.kind.as_str(),
        &row.schema_version.to_string(),
        row.idempotency_key.as_deref().unwrap_or(""),
        row.at.as_str(),
    ] {
        h.update(field.as_bytes());
        h.update(b"\n");
    }
    h.update(row.payload.as_bytes());
    hex::encode(h.finalize())
}
