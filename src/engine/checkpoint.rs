//! Checkpoints: the live jobs as of a log position, written beside the log so
//! that a start folds only the events after it.
//!
//! A checkpoint is derived and disposable. It is written in parts of
//! [`PART_JOBS`] job states (JSON), each part in a short transaction of its
//! own so appends never wait behind a long write, and its header last. At
//! start the newest checkpoint that passes every check is used; one that
//! fails any (another fold version, another log, a position whose event is
//! not the one it names, a missing part, a digest that does not match, a
//! body that does not decode) is ignored, with the reason in the server's log,
//! and the next older one is tried, down to folding the whole log.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::state::FOLD_VERSION;
use crate::domain::JobState;
use crate::log::{CheckpointHeader, EventLog, Log, StoreError};

/// Job states per part.
pub const PART_JOBS: usize = 1000;

/// Checkpoints kept: the newest and the one before it (a fallback if the
/// newest turns out unreadable).
const KEEP: usize = 2;

/// The live state to write: every live job, as of `position`.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Every event up to this position is folded into `jobs`.
    pub position: i64,
    pub jobs: Vec<Arc<JobState>>,
}

/// A checkpoint read back and checked.
#[derive(Debug)]
pub struct Loaded {
    pub header: CheckpointHeader,
    pub jobs: Vec<JobState>,
}

/// The hash of the event at `position`, or "" for position 0.
async fn hash_at(store: &dyn EventLog, position: i64) -> Result<Option<String>, StoreError> {
    if position == 0 {
        return Ok(Some(String::new()));
    }
    let rows = store.read_log(position - 1, 1).await?;
    Ok(rows
        .into_iter()
        .next()
        .filter(|r| r.position == position)
        .map(|r| r.hash))
}

/// Writes `snapshot` as a new checkpoint, then deletes all but the newest
/// [`KEEP`].
pub async fn write(
    store: &Log,
    epoch: &str,
    snapshot: Snapshot,
    now: DateTime<Utc>,
) -> Result<CheckpointHeader, StoreError> {
    let position_hash = hash_at(store.events.as_ref(), snapshot.position)
        .await?
        .ok_or_else(|| {
            StoreError::Unavailable(format!(
                "no event at position {} to checkpoint",
                snapshot.position
            ))
        })?;
    let jobs = snapshot.jobs.len() as i64;
    // Encoding is CPU work: off the async threads.
    let bodies = tokio::task::spawn_blocking(move || encode(&snapshot.jobs))
        .await
        .map_err(|e| StoreError::Unavailable(format!("encoding a checkpoint failed: {e}")))?;
    let id = Uuid::new_v4().to_string();
    for (part, body) in bodies.iter().enumerate() {
        store
            .checkpoints
            .write_checkpoint_part(&id, part as i32, body)
            .await?;
    }
    let header = CheckpointHeader {
        id,
        position: snapshot.position,
        position_hash,
        epoch: epoch.to_owned(),
        fold_version: FOLD_VERSION,
        created_at: crate::domain::event::format_time(&now),
        jobs,
        parts: bodies.len() as i32,
        digest: digest(&bodies),
    };
    store.checkpoints.write_checkpoint_header(&header).await?;
    let headers = store.checkpoints.checkpoints().await?;
    let keep: Vec<&str> = headers.iter().take(KEEP).map(|h| h.id.as_str()).collect();
    store.checkpoints.delete_checkpoints_except(&keep).await?;
    Ok(header)
}

fn encode(jobs: &[Arc<JobState>]) -> Vec<String> {
    let mut parts: Vec<String> = jobs
        .chunks(PART_JOBS)
        .map(|chunk| {
            let states: Vec<&JobState> = chunk.iter().map(|j| j.as_ref()).collect();
            // Plain structs with string keys: serialising cannot fail.
            serde_json::to_string(&states).expect("job states serialise")
        })
        .collect();
    if parts.is_empty() {
        parts.push("[]".to_owned());
    }
    parts
}

fn digest(bodies: &[String]) -> String {
    let mut h = Sha256::new();
    for body in bodies {
        h.update(body.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The newest checkpoint that passes every check, and why each newer one
/// was ignored. `None` when there is none to use.
pub async fn load_newest(
    store: &Log,
    epoch: &str,
) -> Result<(Option<Loaded>, Vec<String>), StoreError> {
    let mut ignored = Vec::new();
    for header in store.checkpoints.checkpoints().await? {
        match check(store, epoch, &header).await? {
            Ok(jobs) => return Ok((Some(Loaded { header, jobs }), ignored)),
            Err(why) => {
                tracing::warn!(checkpoint = %header.id, position = header.position, reason = %why, "ignoring a checkpoint");
                ignored.push(format!(
                    "checkpoint {} at position {}: {why}",
                    header.id, header.position
                ));
            }
        }
    }
    Ok((None, ignored))
}

/// The checkpoint's jobs, or why it cannot be used.
async fn check(
    store: &Log,
    epoch: &str,
    h: &CheckpointHeader,
) -> Result<Result<Vec<JobState>, String>, StoreError> {
    if h.fold_version != FOLD_VERSION {
        return Ok(Err(format!(
            "written by fold version {}, this server folds with version {FOLD_VERSION}",
            h.fold_version
        )));
    }
    if h.epoch != epoch {
        return Ok(Err(format!("made from another log (epoch {})", h.epoch)));
    }
    match hash_at(store.events.as_ref(), h.position).await? {
        Some(hash) if hash == h.position_hash => {}
        Some(_) => {
            return Ok(Err(
                "the event at its position is not the one it was made after".into(),
            ))
        }
        None => return Ok(Err("its position is past the end of the log".into())),
    }
    let bodies = store.checkpoints.checkpoint_parts(&h.id).await?;
    if bodies.len() != h.parts as usize {
        return Ok(Err(format!(
            "{} of its {} parts are stored",
            bodies.len(),
            h.parts
        )));
    }
    if digest(&bodies) != h.digest {
        return Ok(Err("its digest does not match its parts".into()));
    }
    let decoded = tokio::task::spawn_blocking(move || {
        let mut jobs = Vec::new();
        for body in &bodies {
            let part: Vec<JobState> = serde_json::from_str(body).map_err(|e| e.to_string())?;
            jobs.extend(part);
        }
        Ok::<_, String>(jobs)
    })
    .await
    .map_err(|e| StoreError::Unavailable(format!("decoding a checkpoint failed: {e}")))?;
    Ok(match decoded {
        Ok(jobs) if jobs.len() as i64 == h.jobs => Ok(jobs),
        Ok(jobs) => Err(format!(
            "it holds {} jobs, its header says {}",
            jobs.len(),
            h.jobs
        )),
        Err(e) => Err(format!("a part does not decode: {e}")),
    })
}
