//! The per-job hash chain: each event's SHA-256 covers its content and the hash
//! of the job's previous event, so any edit to a stored event breaks the chain
//! from that event on. The first event of a job chains to the empty string.

use sha2::{Digest, Sha256};

use super::event::{format_time, Event, SCHEMA_VERSION};
use super::state::JobState;

/// The fields of a stored event that its hash covers, as stored.
pub struct Hashed<'a> {
    pub job_id: &'a str,
    pub seq: i64,
    pub session_id: Option<&'a str>,
    pub kind: &'a str,
    pub schema_version: i32,
    pub idempotency_key: Option<&'a str>,
    pub at: &'a str,
    pub payload: &'a str,
}

/// The hash an event must carry, given its job's previous hash.
pub fn event_hash(prev_hash: &str, fields: &Hashed<'_>) -> String {
    let mut h = Sha256::new();
    // Newline-separated fields; only the payload (last) may contain newlines,
    // and the idempotency key is restricted to visible ASCII.
    for field in [
        prev_hash,
        fields.job_id,
        &fields.seq.to_string(),
        fields.session_id.unwrap_or(""),
        fields.kind,
        &fields.schema_version.to_string(),
        fields.idempotency_key.unwrap_or(""),
        fields.at,
    ] {
        h.update(field.as_bytes());
        h.update(b"\n");
    }
    h.update(fields.payload.as_bytes());
    hex::encode(h.finalize())
}

/// An event sealed into its job's chain, with its payload as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Sealed {
    pub event: Event,
    pub payload: String,
}

/// Adds `event` to the end of its job's chain: gives it the next seq and its
/// hash, and moves `state` past it.
pub fn seal(state: &mut JobState, mut event: Event) -> Sealed {
    event.seq = state.head_seq + 1;
    let payload = event.body.encode();
    let job_id = event.job_id.to_string();
    let session_id = event.session_id.map(|s| s.to_string());
    event.hash = event_hash(
        &state.head_hash,
        &Hashed {
            job_id: &job_id,
            seq: event.seq,
            session_id: session_id.as_deref(),
            kind: event.body.kind(),
            schema_version: SCHEMA_VERSION,
            idempotency_key: event.idempotency_key.as_deref(),
            at: &format_time(&event.at),
            payload: &payload,
        },
    );
    state.apply(&event);
    Sealed { event, payload }
}
