//! The engine: the in-memory fold of the log, kept current by the single
//! writer, and the one way to change the log.
//!
//! Data flows one way: a command is queued to the writer, decided, appended
//! durably, applied to the [`World`], and only then answered. Reads clone state
//! out of the `World` under a short read lock; they never wait for the writer.

mod checkpoint;
pub mod hub;
pub mod index;
pub mod jobs;
pub mod lease;
mod membership;
mod notify;
pub mod recover;
mod scheduler;
mod writer;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, Corrected};
use crate::domain::close;
use crate::domain::decide::{Attach, AttachPlan};
use crate::domain::event::Notify;
use crate::domain::history::{History, HistoryBuilder};
use crate::domain::{
    Command, DomainError, Event, EventBody, JobId, JobState, SessionId, SessionPhase,
};
use crate::log::{for_each_job_event, CheckpointHeader, LogStore, StoreError};
use crate::metrics::Metrics;
use crate::webhook::Endpoint;
pub use checkpoint::{write as write_checkpoint, Snapshot};
use hub::{Hub, Registration};
use jobs::{load_job, JobTable};
use lease::Lease;
pub use notify::jitter;
use scheduler::{Deadline, Due, Schedule};
use writer::{CheckpointPolicy, WriteRequest, Writer};

/// Why a node without its lease refuses sockets.
pub const NOT_SERVING: &str =
    "this node does not hold its lease on the shared log; reconnect to another node or retry";

/// A socket attached to a job: how to serve it.
#[derive(Clone, Debug, PartialEq)]
pub struct Attached {
    pub plan: AttachPlan,
    /// The job as it stood when the socket attached: the first message is built
    /// from it, and the replay reads the log up to its `head_seq`.
    pub snapshot: JobState,
    /// The socket's ordinal within its session; its close names it.
    pub socket: u32,
}

/// What a committed command produced.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// These events are in the log (positions assigned).
    Appended(Vec<Event>),
    /// `CreateJob` on a job that exists.
    AlreadyExists,
    /// A retried keyed append: the seq the first attempt got.
    Duplicate { seq: i64 },
    /// A socket was attached.
    Attached(Box<Attached>),
    /// Nothing needed doing (a stale close or deadline).
    Nothing,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The log cannot be written (database error, or the server is stopping).
    #[error("{0}")]
    Unavailable(String),
}

/// The writer's queue and commit counts, exact and readable at any moment (for
/// tests that watch group commit happen; `/metrics` has the histograms).
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Requests waiting in the writer's queue.
    pub queued: AtomicU64,
    /// Requests the writer has taken off the queue.
    pub taken: AtomicU64,
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Events appended.
    pub events: AtomicU64,
}

impl WriterStats {
    fn record_commit(&self, events: usize) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(events as u64, Ordering::Relaxed);
    }
}

/// What a job may set at creation beside its metadata: its stall and
/// timeout windows, in seconds (0: off), and when its end is notified. None:
/// the server's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobOptions {
    pub stall_after_secs: Option<u64>,
    pub timeout_secs: Option<u64>,
    pub notify: Option<Notify>,
}

/// Tuning for the writer.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// Requests that may wait for the writer before callers are slowed down.
    pub queue_capacity: usize,
    /// Most requests decided and committed in one transaction.
    pub max_batch: usize,
    /// How long a session survives without a socket.
    pub grace: Duration,
    /// On a shared log: how long a node's lease lasts without renewal.
    pub node_lease: Duration,
    /// Finished jobs kept in memory besides the live ones.
    pub job_cache_entries: usize,
    /// A checkpoint after this many events (0: only by time).
    pub checkpoint_every_events: u64,
    /// A checkpoint this long after the last, if anything happened since.
    pub checkpoint_every: Duration,
    /// The windows of jobs created without their own.
    pub windows: JobOptions,
    /// The operator's webhook endpoint, when notifications are on.
    pub webhook: Option<Arc<Endpoint>>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            queue_capacity: 8192,
            max_batch: 1024,
            grace: Duration::from_secs(60),
            node_lease: Duration::from_secs(10),
            job_cache_entries: 10_000,
            checkpoint_every_events: 100_000,
            checkpoint_every: Duration::from_secs(300),
            windows: JobOptions::default(),
            webhook: None,
        }
    }
}

/// How the state was rebuilt at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Startup {
    /// The checkpoint's position, when one was used.
    pub checkpoint: Option<i64>,
    /// Events folded after it (or from the start of the log).
    pub folded: u64,
    /// Why newer checkpoints were ignored.
    pub ignored: Vec<String>,
}

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn LogStore>,
    jobs: Arc<Mutex<JobTable>>,
    /// Every event up to this position is applied to `jobs`.
    applied: Arc<AtomicI64>,
    queue: Queue,
    epoch: String,
    clock: Arc<dyn Clock>,
    stats: Arc<WriterStats>,
    hub: Arc<Hub>,
    grace: chrono::Duration,
    windows: JobOptions,
    metrics: Arc<Metrics>,
    head: watch::Receiver<i64>,
    /// This node's lease on a shared log (always held on a log of one).
    lease: Arc<Lease>,
    /// On a shared log: the clock every node writes and compares deadlines
    /// on, the database's (`clock` reads it too).
    shared_clock: Option<Arc<Corrected>>,
    startup: Startup,
}

/// The writer's queue: the one way to ask for a change.
#[derive(Clone)]
struct Queue {
    tx: mpsc::Sender<WriteRequest>,
    stats: Arc<WriterStats>,
}

impl Queue {
    /// Queues a command and waits until its events are durable.
    async fn execute(
        &self,
        job_id: JobId,
        command: Command,
        registration: Option<Registration>,
    ) -> Result<Outcome, EngineError> {
        let (reply, answer) = oneshot::channel();
        let request = WriteRequest {
            job_id,
            command,
            registration,
            reply,
        };
        let stopping = || EngineError::Unavailable("the server is shutting down".into());
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(request).await.is_err() {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(stopping());
        }
        answer.await.map_err(|_| stopping())?
    }
}

/// The ends of the engine's channels its tasks take at start.
struct Wiring {
    requests: mpsc::Receiver<WriteRequest>,
    head: watch::Sender<i64>,
}

/// The engine's background tasks, stopped by the token given to `start`.
pub struct EngineTasks {
    pub writer: JoinHandle<()>,
    pub scheduler: JoinHandle<()>,
    /// Writes the checkpoints the writer hands it; ends after the writer.
    pub checkpoints: JoinHandle<()>,
    /// On a shared log: keeps this node's lease and records the sessions of
    /// nodes whose leases ran out.
    pub leases: Option<JoinHandle<()>>,
    /// Keeps the job index folded up to the log.
    pub index: JoinHandle<()>,
}

impl Engine {
    /// Rebuilds the state from the newest checkpoint and the log after it,
    /// and starts the writer. The writer stops when `shutdown` is cancelled,
    /// after answering what was already queued.
    pub async fn start(
        store: Arc<dyn LogStore>,
        clock: Arc<dyn Clock>,
        settings: EngineSettings,
        shutdown: CancellationToken,
    ) -> Result<(Engine, EngineTasks), StoreError> {
        let epoch = store.epoch().await?;
        let recovered =
            recover::recover(store.as_ref(), &epoch, settings.job_cache_entries).await?;
        let (waiting, orphaned) = sessions_to_resume(&recovered.table, store.shared());
        // On a shared log this process is a node with a lease, taken before
        // any socket can name it, and its clock is the database's.
        let (clock, shared_clock, lease) = if store.shared() {
            let corrected = Arc::new(Corrected::new(clock));
            let lease = Lease::shared();
            let node =
                membership::take(store.as_ref(), &lease, &corrected, settings.node_lease).await?;
            tracing::info!(node = %node, offset_ms = corrected.offset().num_milliseconds(), "joined the shared log");
            (corrected.clone() as Arc<dyn Clock>, Some(corrected), lease)
        } else {
            (clock, None, Lease::sole())
        };
        let (engine, wiring) = Engine::assemble(
            store,
            (clock, shared_clock),
            &settings,
            epoch,
            recovered,
            Arc::new(lease),
        );
        let tasks = engine.spawn_tasks(wiring, waiting, &settings, shutdown);
        if !orphaned.is_empty() {
            tracing::warn!(
                sessions = orphaned.len(),
                "recording sessions left connected by the previous process as disconnected (1012 server restart)"
            );
        }
        if let Err(e) = engine.record_lost(orphaned).await {
            return Err(StoreError::Unavailable(e.to_string()));
        }
        Ok((engine, tasks))
    }

    /// The engine over the rebuilt state, and the ends of its channels that
    /// its tasks take.
    fn assemble(
        store: Arc<dyn LogStore>,
        (clock, shared_clock): (Arc<dyn Clock>, Option<Arc<Corrected>>),
        settings: &EngineSettings,
        epoch: String,
        recovered: recover::Recovered,
        lease: Arc<Lease>,
    ) -> (Engine, Wiring) {
        let metrics = Arc::new(Metrics::default());
        metrics.observe_startup(recovered.folded);
        if let Some(h) = &recovered.checkpoint {
            metrics.observe_checkpoint(h);
        }
        let startup = Startup {
            checkpoint: recovered.checkpoint.as_ref().map(|h| h.position),
            folded: recovered.folded,
            ignored: recovered.ignored,
        };
        let head = recovered.position;
        let stats = Arc::new(WriterStats::default());
        let (tx, requests) = mpsc::channel(settings.queue_capacity);
        let (head_tx, head_rx) = watch::channel(head);
        let engine = Engine {
            inner: Arc::new(Inner {
                store,
                jobs: Arc::new(Mutex::new(recovered.table)),
                applied: Arc::new(AtomicI64::new(head)),
                queue: Queue {
                    tx,
                    stats: stats.clone(),
                },
                epoch,
                clock,
                stats,
                hub: Arc::new(Hub::new(lease.clone())),
                grace: chrono::Duration::from_std(settings.grace).unwrap_or(chrono::Duration::MAX),
                windows: settings.windows,
                metrics,
                head: head_rx,
                lease,
                shared_clock,
                startup,
            }),
        };
        (
            engine,
            Wiring {
                requests,
                head: head_tx,
            },
        )
    }

    /// Starts the writer (and, on a shared log, the follower feeding it), the
    /// checkpoint task, the grace scheduler and, on a shared log, the lease
    /// keeper.
    fn spawn_tasks(
        &self,
        wiring: Wiring,
        waiting: Vec<Schedule>,
        settings: &EngineSettings,
        shutdown: CancellationToken,
    ) -> EngineTasks {
        let inner = &self.inner;
        let (deadline_tx, deadline_rx) = mpsc::unbounded_channel();
        let (checkpoint_tx, checkpoint_rx) = mpsc::channel(1);
        let writer = Writer {
            metrics: inner.metrics.clone(),
            head: wiring.head,
            store: inner.store.clone(),
            jobs: inner.jobs.clone(),
            applied: inner.applied.clone(),
            hub: inner.hub.clone(),
            deadlines: deadline_tx,
            clock: inner.clock.clone(),
            stats: inner.stats.clone(),
            max_batch: settings.max_batch,
            lease: inner.lease.clone(),
            notify_max_age: settings.webhook.as_ref().map(|w| w.max_age),
        };
        // On a shared log, a follower reads what other nodes append and the
        // writer absorbs it between its own batches.
        let absorb = inner.store.shared().then(|| {
            let (absorb_tx, absorb_rx) = mpsc::channel(64);
            let from = inner.applied.load(Ordering::Relaxed);
            tokio::spawn(membership::follow(
                inner.store.clone(),
                from,
                absorb_tx,
                shutdown.clone(),
            ));
            absorb_rx
        });
        if inner.startup.checkpoint.is_none() || inner.startup.folded > 0 {
            // The next start, even after a crash, folds only what follows.
            let _ = checkpoint_tx.try_send(self.snapshot());
        }
        let policy = CheckpointPolicy {
            every_events: settings.checkpoint_every_events,
            every: settings.checkpoint_every,
            tx: checkpoint_tx,
        };
        let writer = tokio::spawn(writer.run(wiring.requests, absorb, policy, shutdown.clone()));
        let checkpoints = tokio::spawn(self.clone().write_checkpoints(checkpoint_rx));
        let notifier = settings.webhook.clone().map(|endpoint| {
            let (tx, rx) = mpsc::unbounded_channel();
            let claim = notify::claim_for(&endpoint);
            let notifier = notify::Notifier {
                queue: inner.queue.clone(),
                jobs: inner.jobs.clone(),
                endpoint,
                clock: inner.clock.clone(),
            };
            tokio::spawn(notifier.run(rx, shutdown.clone()));
            scheduler::Claims { claim, tx }
        });
        let scheduler = tokio::spawn(scheduler::run(
            scheduler::Expiry {
                queue: inner.queue.clone(),
                clock: inner.clock.clone(),
                lease: inner.lease.clone(),
                notifier,
            },
            waiting,
            deadline_rx,
            shutdown.clone(),
        ));
        let index = tokio::spawn(index::run(
            inner.store.clone(),
            inner.head.clone(),
            shutdown.clone(),
        ));
        let leases = inner.shared_clock.clone().map(|clock| {
            tokio::spawn(membership::keep_lease(
                self.clone(),
                clock,
                settings.node_lease,
                shutdown,
            ))
        });
        EngineTasks {
            writer,
            scheduler,
            checkpoints,
            leases,
            index,
        }
    }

    /// Creates a job (or finds it) with the server's stall and timeout
    /// windows.
    pub async fn create_job(
        &self,
        job_id: JobId,
        metadata: Option<serde_json::Value>,
    ) -> Result<Outcome, EngineError> {
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
    ) -> Result<Outcome, EngineError> {
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
        self.inner.queue.execute(job_id, command, None).await
    }

    /// Appends one job event.
    pub async fn append(
        &self,
        job_id: JobId,
        body: EventBody,
        idempotency_key: Option<String>,
    ) -> Result<Outcome, EngineError> {
        self.inner
            .queue
            .execute(
                job_id,
                Command::AppendJobEvent {
                    body,
                    idempotency_key,
                },
                None,
            )
            .await
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
            .execute(job_id, Command::Record { session_id, body }, None)
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
        match self
            .inner
            .queue
            .execute(job_id, Command::Attach(attach), Some(registration))
            .await?
        {
            Outcome::Attached(a) => Ok(*a),
            other => Err(EngineError::Unavailable(format!(
                "unexpected outcome of attach: {other:?}"
            ))),
        }
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
        self.inner.hub.unregister(job_id, session_id, socket);
        let command = Command::Detach {
            session_id,
            socket,
            code,
            reason: reason.to_owned(),
            acked_seq,
            grace: self.inner.grace,
        };
        self.inner
            .queue
            .execute(job_id, command, None)
            .await
            .map(drop)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Follows the position of the last committed event.
    pub fn watch_head(&self) -> watch::Receiver<i64> {
        self.inner.head.clone()
    }

    /// The job's state and connection history as of now, folded from its
    /// events in one read of the log; `None` for an unknown job.
    pub async fn history(&self, job_id: JobId) -> Result<Option<(JobState, History)>, StoreError> {
        history(self.inner.store.as_ref(), job_id, self.inner.clock.now()).await
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
        let loaded = load_job(self.inner.store.as_ref(), job_id).await;
        let mut table = self.table();
        match loaded {
            Ok(state) if state.exists() => {
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
            self.inner.store.as_ref(),
            &self.inner.epoch,
            self.snapshot(),
            self.inner.clock.now(),
        )
        .await?;
        self.inner.metrics.observe_checkpoint(&header);
        Ok(header)
    }

    /// The checkpoint task: writes each snapshot the writer hands it, one at
    /// a time, until the writer stops.
    async fn write_checkpoints(self, mut snapshots: mpsc::Receiver<Snapshot>) {
        while let Some(snapshot) = snapshots.recv().await {
            let started = std::time::Instant::now();
            let jobs = snapshot.jobs.len();
            match checkpoint::write(
                self.inner.store.as_ref(),
                &self.inner.epoch,
                snapshot,
                self.inner.clock.now(),
            )
            .await
            {
                Ok(h) => {
                    self.inner.metrics.observe_checkpoint(&h);
                    tracing::info!(
                        position = h.position,
                        jobs,
                        seconds = started.elapsed().as_secs_f64(),
                        "checkpoint written"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "cannot write a checkpoint"),
            }
        }
    }

    /// The job's state as it stood at `seq`, folded from the log.
    pub async fn job_as_of(&self, job_id: JobId, seq: i64) -> Result<Option<JobState>, StoreError> {
        let mut state = JobState::genesis(job_id);
        for_each_job_event(self.inner.store.as_ref(), &job_id.to_string(), seq, |e| {
            state.apply(&e)
        })
        .await?;
        Ok(state.exists().then_some(state))
    }

    pub fn epoch(&self) -> &str {
        &self.inner.epoch
    }

    /// Records sessions whose sockets died with their server (this process's
    /// predecessor, or a node whose lease ran out) as disconnected with 1012
    /// `server restart`.
    async fn record_lost(&self, sessions: Vec<(JobId, SessionId, u32)>) -> Result<(), EngineError> {
        self.record_closes(sessions, close::SERVICE_RESTART, close::SERVER_RESTART)
            .await
    }

    /// Records closes whose `disconnected` could not be written when they
    /// happened (the log was unavailable): as 1006.
    async fn record_unrecorded(
        &self,
        sessions: Vec<(JobId, SessionId, u32)>,
    ) -> Result<(), EngineError> {
        self.record_closes(sessions, close::ABNORMAL, close::UNRECORDED)
            .await
    }

    /// Records each session's socket as closed with `code` and `reason`.
    /// Concurrently, so the writer commits them in a few transactions; a
    /// session that moved on meanwhile is left alone.
    async fn record_closes(
        &self,
        sessions: Vec<(JobId, SessionId, u32)>,
        code: u16,
        reason: &str,
    ) -> Result<(), EngineError> {
        let recorded =
            futures_util::future::join_all(sessions.into_iter().map(|(job, session, socket)| {
                self.detach(job, session, socket, code, reason, None)
            }))
            .await;
        recorded.into_iter().find(Result::is_err).unwrap_or(Ok(()))
    }

    /// Whether this node may take sockets: always on a log of one; on a
    /// shared log, while it holds its lease.
    pub fn serving(&self) -> bool {
        self.inner.lease.holds()
    }

    pub fn lease(&self) -> &Arc<Lease> {
        &self.inner.lease
    }

    pub(crate) fn hub(&self) -> &Hub {
        &self.inner.hub
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
        if self.inner.lease.fence() {
            let sockets = self.inner.hub.close_every(hub::CloseReason::Fenced);
            self.inner.metrics.observe_fenced();
            tracing::error!(
                sockets,
                "fenced: {why}; closing every socket and taking a new lease"
            );
        }
    }

    pub fn store(&self) -> &Arc<dyn LogStore> {
        &self.inner.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    pub fn stats(&self) -> &WriterStats {
        &self.inner.stats
    }
}

/// A job's state and connection history as of `now`, from one read of its
/// events (by index); `None` when the job does not exist.
pub async fn history(
    store: &dyn LogStore,
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

/// The scheduler's first deadlines: sessions waiting in a grace window and
/// every live job's stall and timeout; and,
/// on a log of one, sessions the log shows connected: their sockets died with
/// the previous process, and they are recorded as disconnected. On a shared
/// log other nodes may hold them; a node that died with sockets open is found
/// by its lease instead (`keep_lease`). Only live jobs have either.
fn sessions_to_resume(
    table: &JobTable,
    shared: bool,
) -> (Vec<Schedule>, Vec<(JobId, SessionId, u32)>) {
    let mut waiting: Vec<Schedule> = table
        .live()
        .flat_map(|job| Schedule::job(job))
        .filter(|s| matches!(s, Schedule::At(_)))
        .collect();
    let mut orphaned = Vec::new();
    for (job, s) in table
        .live()
        .flat_map(|job| job.watchers.iter().map(move |s| (job, s)))
    {
        match s.phase {
            SessionPhase::Grace { until } => waiting.push(Schedule::At(Deadline {
                at: until,
                job_id: job.job_id,
                due: Due::Grace(s.session_id),
            })),
            SessionPhase::Connected if !shared => {
                orphaned.push((job.job_id, s.session_id, s.sockets))
            }
            SessionPhase::Connected | SessionPhase::Ended { .. } => {}
        }
    }
    (waiting, orphaned)
}
