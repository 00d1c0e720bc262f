//! The retention sweep: finds units (finished jobs, deleted or expired
//! streams) that ended longer ago than the operator keeps them, archives
//! their events, and has the writer remove them whole through the log's one
//! controlled path (`log/retention.rs`).
//!
//! A round walks the log's endings oldest first (by index) and stops at the
//! first that ended inside the retention window. Each candidate is read back
//! from the log and folded: only a unit that is not live (finished, no
//! session, no pending deadline or notification) leaves. Units go in
//! bounded batches (at most [`BATCH_UNITS`] units and [`BATCH_EVENTS`]
//! events, one day's endings), each its own transaction in the writer
//! between its batches of appends, so appends and fan-out never wait long.
//!
//! With an archive, a batch's steps are: marker, archive files (durable),
//! removal committed, marker gone (`log/archive.rs`). A start resolves a
//! marker left by a crash against the log before sweeping again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::jobs::JobTable;
use super::settings::RetentionSettings;
use crate::clock::Clock;
use crate::domain::event::{format_time, RemovedUnit, UnitKind};
use crate::domain::{Event, EventBody, JobId, JobState};
use crate::log::archive::{Archive, Pending};
use crate::log::{EventRow, Log, Pages, StoreError};
use crate::metrics::Metrics;

/// Most units one removal takes.
pub const BATCH_UNITS: usize = 100;
/// Most events one removal takes (a unit bigger than this goes alone).
pub const BATCH_EVENTS: usize = 1_000;
/// Endings read per query.
const ENDINGS_PAGE: u32 = 512;

/// A batch for the writer to remove; answered with the record's position.
pub struct Removal {
    pub units: Vec<RemovedUnit>,
    pub archive: Option<String>,
    pub reply: oneshot::Sender<Result<i64, StoreError>>,
}

/// The sweep task's parts.
pub struct Sweeper {
    pub store: Log,
    pub jobs: Arc<Mutex<JobTable>>,
    pub clock: Arc<dyn Clock>,
    pub removals: mpsc::Sender<Removal>,
    pub metrics: Arc<Metrics>,
    pub settings: RetentionSettings,
}

/// A unit read back and found ready to leave.
struct Leaving {
    unit: RemovedUnit,
    rows: Vec<EventRow>,
}

impl Sweeper {
    /// Sweeps every `settings.every` until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        if let Err(e) = self.resolve_pending().await {
            tracing::error!(error = %e, "cannot resolve the archive's pending batch; retention is paused");
            shutdown.cancelled().await;
            return;
        }
        let mut growth = Growth::default();
        let mut tick = tokio::time::interval(self.settings.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let started = std::time::Instant::now();
            match self.round(&shutdown).await {
                Ok((0, _)) => {}
                Ok((units, events)) => tracing::info!(
                    units,
                    events,
                    seconds = started.elapsed().as_secs_f64(),
                    "retention removed finished units"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "retention sweep stopped early; it resumes next round")
                }
            }
            self.observe_size(&mut growth).await;
        }
    }

    /// A batch a crash interrupted: kept if its removal committed, else its
    /// files are deleted (its units are still in the log).
    async fn resolve_pending(&self) -> Result<(), StoreError> {
        let Some(archive) = &self.settings.archive else {
            return Ok(());
        };
        let pending = archive.pending().map_err(|e| io_err(archive, e))?;
        let Some(pending) = pending else {
            return Ok(());
        };
        let committed = match pending.units.first() {
            Some(u) => {
                self.store
                    .retention
                    .is_removed(&u.id.to_string(), u.last_position)
                    .await?
            }
            None => false,
        };
        if committed {
            tracing::info!(file = %pending.file, "the archive's last batch was removed from the log before the stop; kept");
        } else {
            tracing::warn!(file = %pending.file, "the archive's last batch was not removed from the log before the stop; its files are deleted and its units archived again");
            archive
                .discard(&pending.file)
                .map_err(|e| io_err(archive, e))?;
        }
        archive.end().map_err(|e| io_err(archive, e))
    }

    /// One round: every unit that ended before the window, in batches.
    /// Returns the units and events removed.
    async fn round(&self, shutdown: &CancellationToken) -> Result<(u64, u64), StoreError> {
        let cutoff = format_time(&(self.clock.now() - self.settings.keep));
        let mut after = 0;
        let mut batch: Vec<Leaving> = Vec::new();
        let mut seen = HashSet::new();
        let mut removed = (0, 0);
        'pages: loop {
            let endings = self.store.retention.endings(after, ENDINGS_PAGE).await?;
            let full = endings.len() == ENDINGS_PAGE as usize;
            for ending in endings {
                after = ending.position;
                if ending.at > cutoff {
                    break 'pages;
                }
                if shutdown.is_cancelled() {
                    return Ok(removed);
                }
                let Ok(id) = ending.unit_id.parse::<JobId>() else {
                    continue;
                };
                if !seen.insert(id) || self.held_live(id) {
                    continue;
                }
                let Some(leaving) = self.read_unit(id).await? else {
                    continue;
                };
                let new_day = batch.first().is_some_and(|b| {
                    b.unit.finished_at.date_naive() != leaving.unit.finished_at.date_naive()
                });
                let events: usize = batch.iter().map(|b| b.rows.len()).sum();
                if !batch.is_empty()
                    && (new_day
                        || batch.len() >= BATCH_UNITS
                        || events + leaving.rows.len() > BATCH_EVENTS)
                {
                    let done = self.remove(std::mem::take(&mut batch)).await?;
                    removed = (removed.0 + done.0, removed.1 + done.1);
                }
                batch.push(leaving);
            }
            if !full {
                break;
            }
        }
        if !batch.is_empty() {
            let done = self.remove(batch).await?;
            removed = (removed.0 + done.0, removed.1 + done.1);
        }
        Ok(removed)
    }

    /// Whether memory holds the unit live (a socket, a pending deadline).
    fn held_live(&self, id: JobId) -> bool {
        let table = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        table.peek(id).is_some_and(|j| j.is_live())
    }

    /// The unit's rows and its fold, if it has ended and is not live.
    async fn read_unit(&self, id: JobId) -> Result<Option<Leaving>, StoreError> {
        let job_id = id.to_string();
        let mut state = JobState::genesis(id);
        let mut finished_at = None;
        let mut rows = Vec::new();
        let mut pages = Pages::job(self.store.events.as_ref(), &job_id, 0, i64::MAX);
        while let Some(page) = pages.next().await? {
            for row in &page {
                let event: Event = row.decode_stored()?;
                if event.body.is_terminal() || matches!(event.body, EventBody::StreamDeleted(_)) {
                    finished_at = Some(event.at);
                }
                state.apply(&event);
            }
            rows.extend(page);
        }
        let (Some(last), Some(finished_at)) = (rows.last(), finished_at) else {
            return Ok(None);
        };
        let kind = match &state.stream {
            Some(s) if s.deleted => UnitKind::Stream,
            Some(_) => return Ok(None),
            None if state.exists() && state.status.is_terminal() => UnitKind::Job,
            None => return Ok(None),
        };
        if state.is_live() || last.seq != rows.len() as i64 {
            return Ok(None);
        }
        let unit = RemovedUnit {
            id,
            kind,
            finished_at,
            events: last.seq,
            last_position: last.position,
            last_hash: last.hash.clone(),
        };
        Ok(Some(Leaving { unit, rows }))
    }

    /// Archives a batch (when on) and has the writer remove it, then rests
    /// as long as the writer spent on it: a sweep takes at most half the
    /// writer's time, however much there is to remove.
    async fn remove(&self, batch: Vec<Leaving>) -> Result<(u64, u64), StoreError> {
        let started = std::time::Instant::now();
        let removed = self.remove_now(batch).await;
        tokio::time::sleep(started.elapsed()).await;
        removed
    }

    async fn remove_now(&self, batch: Vec<Leaving>) -> Result<(u64, u64), StoreError> {
        let units: Vec<RemovedUnit> = batch.iter().map(|b| b.unit.clone()).collect();
        let mut rows: Vec<EventRow> = batch.into_iter().flat_map(|b| b.rows).collect();
        rows.sort_by_key(|r| r.position);
        let events = rows.len() as u64;
        let file = match &self.settings.archive {
            Some(archive) => Some(self.archive(archive, &units, rows).await?),
            None => None,
        };
        let (reply, answer) = oneshot::channel();
        let removal = Removal {
            units: units.clone(),
            archive: file.clone(),
            reply,
        };
        let result = match self.removals.send(removal).await {
            Ok(()) => answer
                .await
                .unwrap_or_else(|_| Err(StoreError::Unavailable("the writer stopped".into()))),
            Err(_) => Err(StoreError::Unavailable("the writer stopped".into())),
        };
        self.crash_at(3);
        if let (Some(archive), Some(file)) = (&self.settings.archive, &file) {
            let settled = match &result {
                Ok(_) => archive.end(),
                Err(_) => archive.discard(file).and_then(|()| archive.end()),
            };
            settled.map_err(|e| io_err(archive, e))?;
        }
        result?;
        let kinds = |k| units.iter().filter(|u| u.kind == k).count() as u64;
        self.metrics
            .observe_removed(kinds(UnitKind::Job), kinds(UnitKind::Stream), events);
        Ok((units.len() as u64, events))
    }

    /// Steps 1 and 2: the marker, then the batch's files, durable. Returns
    /// the data file's name.
    async fn archive(
        &self,
        archive: &Archive,
        units: &[RemovedUnit],
        rows: Vec<EventRow>,
    ) -> Result<String, StoreError> {
        let day = units
            .first()
            .map(|u| u.finished_at.date_naive())
            .unwrap_or_else(|| self.clock.now().date_naive());
        let file = Archive::file_name(day, uuid::Uuid::new_v4());
        let pending = Pending {
            file: file.clone(),
            units: units.to_vec(),
        };
        let (dir, name, crash) = (archive.clone(), file.clone(), self.settings.crash_at_step);
        let written = tokio::task::spawn_blocking(move || {
            dir.begin(&pending)?;
            crash_at(crash, 1);
            dir.write(&name, &rows, &pending.units)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("archive writer: {e}")))?
        .map_err(|e| io_err(archive, e))?;
        self.crash_at(2);
        self.metrics.observe_archived(written);
        Ok(file)
    }

    fn crash_at(&self, step: u8) {
        crash_at(self.settings.crash_at_step, step);
    }

    /// The log's size, for `/metrics`, and a warning when its used bytes
    /// keep growing by more than a tenth an hour with retention on: the
    /// disk fills faster than retention frees it.
    async fn observe_size(&self, growth: &mut Growth) {
        let size = match self.store.retention.size().await {
            Ok(size) => size,
            Err(e) => return tracing::debug!(error = %e, "cannot read the log's size"),
        };
        self.metrics.observe_log_size(size.bytes, size.free_bytes);
        let used = size.bytes.saturating_sub(size.free_bytes);
        let now = std::time::Instant::now();
        let Some((since, then)) = growth.since else {
            growth.since = Some((now, used));
            return;
        };
        let hours = now.duration_since(since).as_secs_f64() / 3600.0;
        if hours < 1.0 {
            return;
        }
        let per_hour = (used as f64 - then as f64) / hours;
        self.metrics.observe_log_growth(per_hour);
        if used as f64 > then as f64 * 1.1 {
            tracing::warn!(
                used_bytes = used,
                bytes_per_hour = per_hour as i64,
                "the log keeps growing with retention on: the disk fills faster than retention frees it (shorten --retain-finished, or give it more disk)"
            );
        }
        growth.since = Some((now, used));
    }
}

/// The log's used bytes an hour ago (or at the first sample).
#[derive(Default)]
struct Growth {
    since: Option<(std::time::Instant, u64)>,
}

/// Kills the process at `step` when the test switch names it: as abrupt
/// as a power cut for the process (SIGKILL, nothing flushed).
fn crash_at(switch: Option<u8>, step: u8) {
    if switch == Some(step) {
        tracing::error!(step, "test switch: killing the process mid-sweep");
        // SAFETY: kill(2) on this process's own id; it does not return.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

fn io_err(archive: &Archive, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("archive {}: {e}", archive.dir().display()))
}
