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
//!
//! An event that cannot be read (a payload this version cannot decode,
//! written by another version or by a bug) or whose fold fails puts its one
//! job or stream aside: it is not held, its later events are skipped, the
//! server log names it, and every request for it is refused until the log
//! is repaired; everything else is served. A start is never stopped by one
//! unit's events.

use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use super::checkpoint;
use super::jobs::{load_job, JobTable, Logged};
use crate::domain::{Event, EventBody, JobId};
use crate::log::{for_each_row, CheckpointHeader, Log, StoreError};

/// Puts the job or stream stored under `id` aside: not held, named in the
/// server's log.
fn put_aside(
    table: &mut JobTable,
    aside: &mut HashMap<String, SetAside>,
    id: &str,
    position: i64,
    problem: String,
) {
    if let Ok(id) = id.parse::<JobId>() {
        table.remove(id);
    }
    tracing::error!(
        job = %id,
        position,
        %problem,
        "an event cannot be folded: its job or stream is set aside (refused until the log is repaired; `rejoin verify` names it), everything else is served"
    );
    aside.insert(
        id.to_owned(),
        SetAside {
            id: id.to_owned(),
            position,
            problem,
        },
    );
}

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
    /// The jobs and streams put aside: the id as stored, and why.
    pub set_aside: Vec<SetAside>,
}

/// A job or stream whose events could not be folded.
#[derive(Clone, Debug)]
pub struct SetAside {
    /// The id as the log stores it (it may not even be a UUID).
    pub id: String,
    /// The position of the event that could not be read or folded.
    pub position: i64,
    pub problem: String,
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
    let mut aside: HashMap<String, SetAside> = HashMap::new();
    for_each_row(store.events.as_ref(), from, |row| {
        position = row.position;
        folded += 1;
        if aside.contains_key(&row.job_id) {
            return Ok(());
        }
        let event = match row.decode() {
            Ok(event) => event,
            Err(e) => {
                let problem = format!("it cannot be decoded: {e}");
                put_aside(&mut table, &mut aside, &row.job_id, row.position, problem);
                return Ok(());
            }
        };
        match catch_unwind(AssertUnwindSafe(|| table.apply_logged(&event))) {
            Ok(logged) if needs_reload(logged, &event) => {
                to_load.insert(event.job_id);
            }
            Ok(_) => {}
            Err(_) => put_aside(
                &mut table,
                &mut aside,
                &row.job_id,
                row.position,
                "folding it failed".into(),
            ),
        }
        Ok(())
    })
    .await?;
    for id in to_load {
        if aside.contains_key(&id.to_string()) {
            continue;
        }
        match load_job(store.events.as_ref(), id).await {
            Ok(job) => table.put(std::sync::Arc::new(job)),
            Err(StoreError::Corrupt { position, source }) => {
                let problem = format!("it cannot be decoded: {source}");
                put_aside(&mut table, &mut aside, &id.to_string(), position, problem);
            }
            Err(e) => return Err(e),
        }
    }
    tracing::info!(
        checkpoint = header.as_ref().map(|h| h.position),
        events = folded,
        live = table.live_count(),
        set_aside = aside.len(),
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
        set_aside: aside.into_values().collect(),
    })
}
