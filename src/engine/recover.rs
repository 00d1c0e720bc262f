//! Start-up: the held jobs rebuilt from the newest usable checkpoint and the
//! events after it, or from the whole log when there is none.
//!
//! Events are applied by [`JobTable::apply_logged`], the rule the follower
//! uses for other nodes' events too: an event a held job already has is
//! skipped, the next one is applied, and an event of a job not held is
//! skipped unless it makes the job live again (a socket, a grace window), in
//! which case the job is read back from the log whole. Finished jobs leave
//! the live set as they finish, so memory stays bounded by live work even
//! while the whole log is folded.

use std::collections::HashSet;
use std::time::Instant;

use super::checkpoint;
use super::jobs::{load_job, JobTable, Logged};
use crate::domain::{Event, EventBody, JobId};
use crate::log::{for_each_event, CheckpointHeader, Log, StoreError};

/// What start-up rebuilt.
#[derive(Debug)]
pub struct Recovered {
    pub table: JobTable,
    /// Every event up to this position is applied.
    pub position: i64,
    /// Events folded after the checkpoint (or from the start).
    pub folded: u64,
    /// The checkpoint started from, if any.
    pub checkpoint: Option<CheckpointHeader>,
    /// Why newer checkpoints were ignored.
    pub ignored: Vec<String>,
}

/// Whether applying `event` left its job to be read back from the log whole:
/// a held job that lacks events before it, or a job not held that the event
/// makes live again (a socket opened, a grace window began).
pub fn needs_reload(logged: Logged, event: &Event) -> bool {
    match logged {
        Logged::Behind => true,
        Logged::Unheld => matches!(
            event.body,
            EventBody::Connected(_)
                | EventBody::Reconnected(_)
                | EventBody::Disconnected(_)
                | EventBody::NotificationDue(_)
        ),
        Logged::Applied | Logged::Known => false,
    }
}

pub async fn recover(
    store: &Log,
    epoch: &str,
    cache_entries: usize,
) -> Result<Recovered, StoreError> {
    let started = Instant::now();
    let mut table = JobTable::new(cache_entries);
    let (loaded, ignored) = checkpoint::load_newest(store, epoch).await?;
    // Jobs whose views the checkpoint holds under another version: folded
    // again from the log, whole, once the tail is folded.
    let mut to_load: HashSet<JobId> = HashSet::new();
    let (from, header) = match loaded {
        Some(cp) => {
            if cp.stale_views {
                tracing::info!(
                    jobs = cp.jobs.len(),
                    "the checkpoint's views were folded by another version; refolding its jobs from the log"
                );
                to_load.extend(cp.jobs.iter().map(|j| j.job_id));
            }
            for job in cp.jobs {
                table.put(std::sync::Arc::new(job));
            }
            (cp.header.position, Some(cp.header))
        }
        None => {
            if ignored.is_empty() {
                tracing::info!("no checkpoint: folding the whole log");
            } else {
                tracing::warn!(
                    ignored = ignored.len(),
                    "no usable checkpoint: folding the whole log"
                );
            }
            (0, None)
        }
    };
    let mut position = from;
    let mut folded = 0u64;
    for_each_event(store.events.as_ref(), from, |_, event| {
        position = event.position;
        folded += 1;
        if needs_reload(table.apply_logged(&event), &event) {
            to_load.insert(event.job_id);
        }
        Ok(())
    })
    .await?;
    for id in to_load {
        table.put(std::sync::Arc::new(
            load_job(store.events.as_ref(), id).await?,
        ));
    }
    tracing::info!(
        checkpoint = header.as_ref().map(|h| h.position),
        events = folded,
        live = table.live_count(),
        cached = table.cached_count(),
        seconds = started.elapsed().as_secs_f64(),
        "state rebuilt from the log"
    );
    Ok(Recovered {
        table,
        position,
        folded,
        checkpoint: header,
        ignored,
    })
}
