//! The engine as its callers see it: one method per command, each with its
//! own reply, and the reads of the state it holds.

use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::checkpoint::{self, Snapshot};
use super::hub::{self, Hub, Registration, Wakeups};
use super::jobs::{self, load_job, JobTable};
use super::lease::Lease;
use super::membership;
use super::queue::{
    Appended, Attached, Closes, Created, EngineError, Health, Queue, StreamDone, StreamReads,
    WriterStats,
};
use super::settings::{JobOptions, Startup};
use super::writer;
use crate::clock::{Clock, Corrected};
use crate::domain::decide::Attach;
use crate::domain::history::{History, HistoryBuilder};
use crate::domain::stream::StreamCommand;
use crate::domain::{Command, EventBody, JobId, JobState, SessionId, SessionPhase};
use crate::log::{
    for_each_job_event, for_each_job_event_after, CheckpointHeader, EventLog, Log, Pages, Removed,
    StoreError,
};
use crate::metrics::Metrics;

/// Why a node without its lease refuses sockets.
pub const NOT_SERVING: &str =
    "this node does not hold its lease on the shared log; reconnect to another node or retry";

#[derive(Clone)]
pub struct Engine {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) store: Log,
    pub(super) jobs: Arc<Mutex<JobTable>>,
    /// Every event up to this position is applied to `jobs`.
    pub(super) applied: Arc<AtomicI64>,
    /// The last position retention removed (0: none): every event after it
    /// is in the log.
    pub(super) horizon: Arc<AtomicI64>,
    pub(super) queue: Queue,
    pub(super) epoch: String,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) stats: Arc<WriterStats>,
    pub(super) hub: Arc<Hub>,
    pub(super) closes: Closes,
    pub(super) windows: JobOptions,
    pub(super) metrics: Arc<Metrics>,
    pub(super) head: watch::Receiver<i64>,
    /// The clock's time through which the scheduler has decided every due
    /// deadline.
    pub(super) decided: watch::Receiver<chrono::DateTime<chrono::Utc>>,
    /// This node's lease on a shared log (always held on a log of one).
    pub(super) lease: Arc<Lease>,
    /// On a shared log: the clock every node writes and compares deadlines
    /// on, the database's (`clock` reads it too).
    pub(super) shared_clock: Option<Arc<Corrected>>,
    pub(super) startup: Startup,
    /// The last read served of each stream (reads keep a TTL alive).
    pub(super) reads: Arc<StreamReads>,
    /// Whether every essential task still runs.
    pub(super) health: Arc<Health>,
    /// The long-lived readers of each job and stream.
    pub(super) wakeups: Arc<Wakeups>,
}

impl Engine {
    /// Creates a job (or finds it) with the server's stall and timeout
    /// windows.
    pub async fn create_job(
        &self,
        job_id: JobId,
        metadata: Option<serde_json::Value>,
    ) -> Result<Created, EngineError> {
        self.create_job_with(job_id, metadata, JobOptions::default())
            .await
    }

    /// Creates a job (or finds it); `options` overrides the server's stall
    /// and timeout windows (0: none) and sets when its end is notified.
    pub async fn create_job_with(
        &self,
        job_id: JobId,
        metadata: Option<serde_json::Value>,
        options: JobOptions,
    ) -> Result<Created, EngineError> {
        let command = Command::CreateJob {
            metadata,
            stall_after_secs: options
                .stall_after_secs
                .unwrap_or(self.inner.windows.stall_after_secs.unwrap_or(0)),
            timeout_secs: options
                .timeout_secs
                .unwrap_or(self.inner.windows.timeout_secs.unwrap_or(0)),
            notify: options.notify.unwrap_or_default(),
        };
        self.inner.queue.create(job_id, command).await
    }

    /// Appends one job event.
    pub async fn append(
        &self,
        job_id: JobId,
        body: EventBody,
        idempotency_key: Option<String>,
    ) -> Result<Appended, EngineError> {
        let command = Command::AppendJobEvent {
            body,
            idempotency_key,
        };
        self.inner.queue.append(job_id, command).await
    }

    /// Records an observed connection event (`ws_error`, `connect_rejected`).
    pub async fn record(
        &self,
        job_id: JobId,
        session_id: Option<SessionId>,
        body: EventBody,
    ) -> Result<(), EngineError> {
        self.inner
            .queue
            .execute(job_id, Command::Record { session_id, body })
            .await
            .map(drop)
    }

    /// Attaches a socket: records the connect (and the replaced socket, or the
    /// expired session, before it) and, once committed, feeds `registration`
    /// with every later job event.
    /// A node that does not hold its lease attaches nothing.
    pub async fn attach(
        &self,
        job_id: JobId,
        mut attach: Attach,
        registration: Registration,
    ) -> Result<Attached, EngineError> {
        if !self.serving() {
            return Err(EngineError::Unavailable(NOT_SERVING.into()));
        }
        attach.node = self.inner.lease.node().map(|n| n.to_string());
        self.inner
            .queue
            .attach(job_id, Command::Attach(attach), registration)
            .await
    }

    /// Records that socket `socket` of the session closed, opening its grace
    /// window; nothing if it was no longer the live socket.
    pub async fn detach(
        &self,
        job_id: JobId,
        session_id: SessionId,
        socket: u32,
        code: u16,
        reason: &str,
        acked_seq: Option<i64>,
    ) -> Result<(), EngineError> {
        self.inner
            .closes
            .detach((job_id, session_id, socket), code, reason, acked_seq)
            .await
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Waits until every deadline due by `at` on the engine's clock (grace
    /// windows, stalls, timeouts, notification attempts) is decided: its
    /// events committed, or found no longer due. With a clock that is set,
    /// what a test waits on after moving it.
    pub async fn deadlines_decided_through(&self, at: chrono::DateTime<chrono::Utc>) {
        let mut decided = self.inner.decided.clone();
        let _ = decided.wait_for(|through| *through >= at).await;
    }

    /// Follows the position of the last committed event.
    pub fn watch_head(&self) -> watch::Receiver<i64> {
        self.inner.head.clone()
    }

    /// Follows the position of the last committed event of one job or
    /// stream: what a long-lived reader of it waits on.
    pub fn watch(&self, id: JobId) -> watch::Receiver<i64> {
        self.inner.wakeups.watch(id)
    }

    /// The job's state and connection history as of now, folded from its
    /// events in one read of the log; `None` for an unknown job.
    pub async fn history(&self, job_id: JobId) -> Result<Option<(JobState, History)>, StoreError> {
        history(
            self.inner.store.events.as_ref(),
            job_id,
            self.inner.clock.now(),
        )
        .await
    }

    /// Drops the job's live sockets without a close frame, as a network
    /// would.
    pub fn drop_socket(&self, job_id: JobId) -> bool {
        self.inner.hub.close_all(job_id, hub::CloseReason::Dropped)
    }

    /// Live sockets, one per watcher at most.
    pub fn live_sockets(&self) -> usize {
        self.inner.hub.len()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, JobTable> {
        self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The job's current state, if it exists: from memory, or read back from
    /// the log (by index) and kept in the cache of finished jobs.
    pub async fn job(&self, job_id: JobId) -> Result<Option<Arc<JobState>>, StoreError> {
        Ok(self.held(job_id).await?.filter(|j| j.exists()))
    }

    /// What the log holds of an id (a job, or a stream), from memory or
    /// read back from the log.
    async fn held(&self, job_id: JobId) -> Result<Option<Arc<JobState>>, StoreError> {
        let token = {
            let mut table = self.table();
            if let Some((job, held)) = table.get(job_id) {
                if held == jobs::Held::Cached {
                    self.inner.metrics.observe_cache_hit();
                }
                return Ok(Some(job));
            }
            table.begin_load(job_id)
        };
        self.inner.metrics.observe_job_loaded();
        let loaded = load_job(self.inner.store.events.as_ref(), job_id).await;
        let mut table = self.table();
        match loaded {
            Ok(state) if state.is_known() => {
                let state = Arc::new(state);
                table.finish_load(token, state.clone());
                Ok(Some(state))
            }
            Ok(_) => {
                table.cancel_load(job_id, token);
                Ok(None)
            }
            Err(e) => {
                table.cancel_load(job_id, token);
                Err(e)
            }
        }
    }

    /// The last position retention removed (0: nothing was): every event
    /// after it is still in the log.
    pub fn horizon(&self) -> i64 {
        self.inner
            .horizon
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The job retention removed under this id, if one was (only asked of
    /// the log once retention has removed anything).
    pub async fn archived(&self, job_id: JobId) -> Result<Option<Removed>, StoreError> {
        if self.horizon() == 0 {
            return Ok(None);
        }
        self.inner
            .store
            .retention
            .removed_job(&job_id.to_string())
            .await
    }

    pub async fn job_exists(&self, job_id: JobId) -> Result<bool, StoreError> {
        Ok(self.job(job_id).await?.is_some())
    }

    /// The job's watchers (sessions that have not ended). A job with any is
    /// live, so always held: one not held has none.
    pub fn watcher_count(&self, job_id: JobId) -> usize {
        self.table().peek(job_id).map_or(0, |j| j.watchers.len())
    }

    /// Jobs held in memory: (live, cached).
    pub fn jobs_in_memory(&self) -> (usize, usize) {
        let table = self.table();
        (table.live_count(), table.cached_count())
    }

    /// Watchers of live jobs now: (connected, in grace, the most one job has).
    pub fn watchers(&self) -> (usize, usize, usize) {
        let table = self.table();
        let (mut connected, mut grace, mut most) = (0, 0, 0);
        for job in table.live() {
            most = most.max(job.watchers.len());
            for s in &job.watchers {
                match s.phase {
                    SessionPhase::Connected => connected += 1,
                    SessionPhase::Grace { .. } => grace += 1,
                    SessionPhase::Ended { .. } => {}
                }
            }
        }
        (connected, grace, most)
    }

    /// Webhook notifications pending (every such job is live), and when the
    /// oldest became due.
    pub fn notifications_pending(&self) -> (usize, Option<chrono::DateTime<chrono::Utc>>) {
        let table = self.table();
        let pending = table.live().flat_map(|job| job.notifications.iter());
        pending.fold((0, None), |(n, oldest), p| {
            let oldest = match oldest {
                Some(o) if o <= p.due_at => Some(o),
                _ => Some(p.due_at),
            };
            (n + 1, oldest)
        })
    }

    /// How the state was rebuilt at start.
    pub fn startup(&self) -> &Startup {
        &self.inner.startup
    }

    /// Every live job as of the last applied position.
    pub fn snapshot(&self) -> Snapshot {
        writer::snapshot(&self.inner.jobs, &self.inner.applied)
    }

    /// Writes a checkpoint of the live state now (at shutdown, after the
    /// writer has stopped; or from `rejoin checkpoint`).
    pub async fn checkpoint_now(&self) -> Result<CheckpointHeader, StoreError> {
        let header = checkpoint::write(
            &self.inner.store,
            &self.inner.epoch,
            self.snapshot(),
            self.inner.clock.now(),
        )
        .await?;
        self.inner.metrics.observe_checkpoint(&header);
        Ok(header)
    }

    /// The job's state as it stood at `seq`, folded from the log.
    pub async fn job_as_of(&self, job_id: JobId, seq: i64) -> Result<Option<JobState>, StoreError> {
        let mut state = JobState::genesis(job_id);
        for_each_job_event(
            self.inner.store.events.as_ref(),
            &job_id.to_string(),
            seq,
            |e| state.apply(&e),
        )
        .await?;
        Ok(state.exists().then_some(state))
    }

    pub fn epoch(&self) -> &str {
        &self.inner.epoch
    }

    /// Whether this node may take sockets: always on a log of one; on a
    /// shared log, while it holds its lease.
    pub fn serving(&self) -> bool {
        self.inner.lease.holds() && self.inner.health.failure().is_none()
    }

    /// The essential task that stopped, if one has: the node is not ready
    /// and is stopping.
    pub fn failure(&self) -> Option<String> {
        self.inner.health.failure()
    }

    /// Resolves when an essential task has stopped.
    pub async fn died(&self) {
        self.inner.health.died().cancelled().await
    }

    /// This node's id on a shared log, while it holds a lease.
    pub fn node(&self) -> Option<Arc<str>> {
        self.inner.lease.node()
    }

    /// On a shared log: the database's clock less this node's, as last
    /// measured.
    pub fn clock_offset(&self) -> Option<chrono::Duration> {
        self.inner.shared_clock.as_ref().map(|c| c.offset())
    }

    /// Stops speaking for this node's sessions: retires its lease and
    /// closes every socket it holds (1012, reconnect), so that no other node
    /// acts on them while this one still does. The first call does it.
    pub fn fence(&self, why: &str) {
        membership::fence(&self.inner.lease, &self.inner.hub, &self.inner.metrics, why);
    }

    /// The job's events after `after` through `through`, a page at a time
    /// (a socket's replay).
    pub fn replay<'a>(&'a self, job: &'a str, after: i64, through: i64) -> Pages<'a> {
        Pages::job(self.inner.store.events.as_ref(), job, after, through)
    }

    /// A Durable Streams stream's command (a create or an append),
    /// decided by the writer.
    pub async fn stream_command(
        &self,
        id: JobId,
        command: StreamCommand,
    ) -> Result<StreamDone, EngineError> {
        let last_read = self.inner.reads.last(id);
        self.inner
            .queue
            .stream(id, Command::Stream { command, last_read })
            .await
    }

    /// Deletes a stream (retained while streams fork it).
    pub async fn delete_stream(&self, id: JobId) -> Result<StreamDone, EngineError> {
        // A closed stream may not be held (its forks always are): read back.
        self.stream(id)
            .await
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        let delete = |forks| StreamCommand::Delete { forks };
        jobs::end_stream(
            &self.inner.queue,
            &self.inner.jobs,
            &self.inner.reads,
            id,
            delete,
        )
        .await
    }

    /// The stream with this id as this node holds it (any incarnation,
    /// deleted ones too), or `None` if there never was one. Writes start
    /// from it: the writer decides them on the log's latest word.
    pub async fn stream(&self, id: JobId) -> Result<Option<Arc<JobState>>, StoreError> {
        Ok(self.held(id).await?.filter(|s| s.stream.is_some()))
    }

    /// The same, and on a shared log brought up to the log's latest word:
    /// what reads answer from.
    pub async fn stream_latest(&self, id: JobId) -> Result<Option<Arc<JobState>>, StoreError> {
        let Some(held) = self.held(id).await? else {
            return Ok(None);
        };
        if !self.inner.store.shared() {
            return Ok(Some(held).filter(|s| s.stream.is_some()));
        }
        // On a shared log another node may have appended since this node's
        // follower last read: a copy brought up to the log's latest word,
        // so a write acknowledged by any node is read by every node.
        let mut fresh = JobState::clone(&held);
        for_each_job_event_after(
            self.inner.store.events.as_ref(),
            &id.to_string(),
            held.head_seq,
            |e| fresh.apply(&e),
        )
        .await?;
        Ok(Some(Arc::new(fresh)).filter(|s| s.stream.is_some()))
    }

    /// Records a read of the stream, which keeps its TTL alive: in memory
    /// (the scheduler weighs it when the TTL would end), and in the log once
    /// half the TTL has passed since the stream's last recorded activity, so
    /// that other nodes and a restart know of it too. The read does not
    /// wait for that commit.
    pub fn stream_read(&self, id: JobId, state: &JobState) {
        let now = self.inner.clock.now();
        self.inner.reads.record(id, now);
        let Some(s) = &state.stream else { return };
        let Some(ttl) = s.ttl_secs else { return };
        let half = chrono::Duration::milliseconds((ttl.min(i64::MAX as u64 / 1000) as i64) * 500);
        if now - s.active_at < half || !self.inner.reads.begin_touch(id) {
            return;
        }
        let (queue, reads) = (self.inner.queue.clone(), self.inner.reads.clone());
        tokio::spawn(async move {
            let command = Command::Stream {
                command: StreamCommand::Touch { at: now },
                last_read: None,
            };
            if let Err(e) = queue.stream(id, command).await {
                tracing::debug!(error = %e, "a stream's read could not be recorded");
            }
            reads.end_touch(id);
        });
    }

    /// The last read of the stream this node served.
    pub fn stream_last_read(&self, id: JobId) -> Option<chrono::DateTime<chrono::Utc>> {
        self.inner.reads.last(id)
    }

    /// The engine's clock.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.inner.clock.now()
    }

    /// The writer's counts, exact at any moment.
    pub fn stats(&self) -> &WriterStats {
        &self.inner.stats
    }
}

/// A job's state and connection history as of `now`, from one read of its
/// events (by index); `None` when the job does not exist.
pub async fn history(
    store: &dyn EventLog,
    job_id: JobId,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<(JobState, History)>, StoreError> {
    let mut state = JobState::genesis(job_id);
    let mut builder = HistoryBuilder::default();
    for_each_job_event(store, &job_id.to_string(), i64::MAX, |e| {
        state.apply(&e);
        builder.apply(&e);
    })
    .await?;
    Ok(state.exists().then(|| (state, builder.finish(now))))
}
