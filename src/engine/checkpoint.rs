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

use crate::domain::state::{JobView, FOLD_VERSION, VIEW_VERSION};
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
    /// The jobs' views were folded by another version: they are empty here,
    /// and each job is to be folded again from the log.
    pub stale_views: bool,
}

/// One job as a checkpoint part holds it: the state decisions need, and
/// its view, decoded only under the part's view version.
#[derive(serde::Serialize)]
struct JobOut<'a> {
    state: &'a JobState,
    view: &'a JobView,
}

#[derive(serde::Serialize)]
struct PartOut<'a> {
    views: i32,
    jobs: Vec<JobOut<'a>>,
}

#[derive(serde::Deserialize)]
struct JobIn {
    state: JobState,
    view: serde_json::Value,
}

#[derive(serde::Deserialize)]
struct PartIn {
    views: i32,
    jobs: Vec<JobIn>,
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
    let part = |chunk: &[Arc<JobState>]| {
        let jobs = chunk
            .iter()
            .map(|j| JobOut {
                state: j.as_ref(),
                view: &j.view,
            })
            .collect();
        // Plain structs with string keys: serialising cannot fail.
        serde_json::to_string(&PartOut {
            views: VIEW_VERSION,
            jobs,
        })
        .expect("job states serialise")
    };
    let mut parts: Vec<String> = jobs.chunks(PART_JOBS).map(part).collect();
    if parts.is_empty() {
        parts.push(part(&[]));
    }
    parts
}

/// A checkpoint's jobs from its parts' bodies, and whether their views were
/// written under another view version (and are left empty).
fn decode(bodies: &[String]) -> Result<(Vec<JobState>, bool), String> {
    let mut jobs = Vec::new();
    let mut stale_views = false;
    for body in bodies {
        let part: PartIn = serde_json::from_str(body).map_err(|e| e.to_string())?;
        stale_views |= part.views != VIEW_VERSION;
        for JobIn { mut state, view } in part.jobs {
            if part.views == VIEW_VERSION {
                state.view = serde_json::from_value(view).map_err(|e| e.to_string())?;
            }
            jobs.push(state);
        }
    }
    Ok((jobs, stale_views))
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
            Ok((jobs, stale_views)) => {
                let loaded = Loaded {
                    header,
                    jobs,
                    stale_views,
                };
                return Ok((Some(loaded), ignored));
            }
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
) -> Result<Result<(Vec<JobState>, bool), String>, StoreError> {
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
    let decoded = tokio::task::spawn_blocking(move || decode(&bodies))
        .await
        .map_err(|e| StoreError::Unavailable(format!("decoding a checkpoint failed: {e}")))?;
    Ok(match decoded {
        Ok(decoded) if decoded.0.len() as i64 == h.jobs => Ok(decoded),
        Ok((jobs, _)) => Err(format!(
            "it holds {} jobs, its header says {}",
            jobs.len(),
            h.jobs
        )),
        Err(e) => Err(format!("a part does not decode: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{Client, Connected, Event, EventBody, JobCreated};

    /// A job with a session, so that its view has counts.
    fn watched_job() -> JobState {
        let id = Uuid::new_v4();
        let mut job = JobState::genesis(id);
        let created = EventBody::JobCreated(JobCreated::default());
        let connected = EventBody::Connected(Connected {
            client: Client::default(),
            last_seq: 0,
        });
        for (seq, (session, body)) in [(None, created), (Some(Uuid::new_v4()), connected)]
            .into_iter()
            .enumerate()
        {
            job.apply(&Event {
                seq: seq as i64 + 1,
                ..Event::new(id, session, Utc::now(), body)
            });
        }
        job
    }

    #[test]
    fn a_checkpoint_keeps_the_state_and_the_view() {
        let job = watched_job();
        assert_eq!(job.view.counts.connects, 1);
        let (jobs, stale) = decode(&encode(&[Arc::new(job.clone())])).unwrap();
        assert_eq!((jobs, stale), (vec![job], false));
    }

    #[test]
    fn views_of_another_version_leave_the_decision_state_whole() {
        let job = watched_job();
        let bodies: Vec<String> = encode(&[Arc::new(job.clone())])
            .into_iter()
            .map(|b| {
                // Another version's views, in a shape this one cannot read.
                let mut part: serde_json::Value = serde_json::from_str(&b).unwrap();
                part["views"] = (VIEW_VERSION + 1).into();
                part["jobs"][0]["view"] = serde_json::json!({"renamed": [1, 2]});
                part.to_string()
            })
            .collect();
        let (jobs, stale) = decode(&bodies).unwrap();
        assert!(stale, "the views are to be folded again");
        let expected = JobState {
            view: JobView::default(),
            ..job
        };
        assert_eq!(jobs, vec![expected]);
    }
}
