//! The single writer: group commit.
//!
//! Every change to the log goes through one task. It takes whatever requests are
//! queued (up to a batch limit) and handles them in named steps:
//!
//! 1. [`Writer::prepare`]: the jobs the batch touches, from memory or read
//!    back from the log by index (a finished job, an unknown id), and what
//!    its idempotency keys produced before, looked up in the log;
//! 2. [`Writer::stage`]: each request decided against the state as it will be
//!    after the requests before it, its events sealed into their chains;
//! 3. [`Writer::commit`]: all the batch's events appended in one transaction;
//! 4. only then the states stored, job events handed to the live sockets and
//!    each request answered ([`Writer::answer`]).
//!
//! A failed commit answers every request of the batch with an error and
//! leaves the state untouched.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::checkpoint::Snapshot;
use super::hub::{CloseReason, Hub, Registration, Wakeups};
use super::jobs::{load_job, Held, JobTable, Logged};
use super::lease::Lease;
use super::queue::{
    by_weight, Answer, Appended, Attached, Created, EngineError, Health, StreamDone, WriteRequest,
    WriterStats,
};
use super::recover::needs_reload;
use super::retention::Removal;
use crate::clock::Clock;
use crate::domain::deadline::{self, Schedule};
use crate::domain::decide::{AttachPlan, Counted};
use crate::domain::event::removed_through;
use crate::domain::state::{fingerprint, IdempotentAppend};
use crate::domain::{
    plan, Command, DomainError, Event, EventBody, JobId, JobState, Policy, Reply, SessionId,
    SessionPhase,
};
use crate::log::{
    count_job_events, for_each_job_event_after, EventRow, Log, Pages, Removed, StoreError,
};
use crate::metrics::Metrics;

/// The most payload one commit carries: a batch over it is committed in
/// parts (PostgreSQL binds a batch's payloads as one array, whose value may
/// not pass 1 GB; SQLite's statement holds them in memory too).
const BATCH_BYTES: usize = 32 << 20;

/// How a request will be answered once the batch is committed.
#[derive(Debug)]
enum Pending {
    /// Events `range` of the batch were appended for it.
    Appended(std::ops::Range<usize>),
    Attached {
        job_id: JobId,
        plan: AttachPlan,
        snapshot: Box<JobState>,
        socket: u32,
    },
    AlreadyExists,
    Duplicate {
        seq: i64,
    },
    Nothing,
}

/// What a batch needs before it is decided.
struct Prepared {
    /// The state of every job the batch names, as the log has it.
    jobs: HashMap<JobId, JobState>,
    /// Jobs read back from the log for this batch (not held before).
    loaded: HashSet<JobId>,
    /// What each keyed append's key produced before, from the log.
    priors: HashMap<(JobId, String), IdempotentAppend>,
    /// Jobs retention removed, by id.
    archived: HashMap<JobId, Removed>,
}

/// A batch decided: the events to append and how to answer each request.
struct Staged {
    states: HashMap<JobId, JobState>,
    touched: HashSet<JobId>,
    loaded: HashSet<JobId>,
    events: Vec<Event>,
    rows: Vec<EventRow>,
    answers: Vec<Result<Pending, DomainError>>,
}

/// When to take a checkpoint: after so many events, or so long after the
/// last one if anything happened since.
pub(crate) struct CheckpointPolicy {
    pub every_events: u64,
    pub every: Duration,
    pub tx: mpsc::Sender<Snapshot>,
}

struct CheckpointDue {
    policy: CheckpointPolicy,
    since_events: u64,
    last: Instant,
    /// When a due checkpoint found the checkpoint task busy: when to offer
    /// it again (nothing else may come along to trigger it).
    retry: Option<Instant>,
}

/// How soon a due checkpoint is offered again when the checkpoint task was
/// still busy with the one before.
const CHECKPOINT_RETRY: Duration = Duration::from_millis(200);

impl CheckpointDue {
    fn due(&self) -> bool {
        self.since_events > 0
            && ((self.policy.every_events > 0 && self.since_events >= self.policy.every_events)
                || self.last.elapsed() >= self.policy.every)
    }

    /// When the time trigger fires next, if anything waits for it.
    fn next_deadline(&self) -> Option<tokio::time::Instant> {
        (self.since_events > 0).then(|| {
            let at = self.last + self.policy.every;
            tokio::time::Instant::from_std(self.retry.map_or(at, |r| r.min(at)))
        })
    }
}

pub(crate) struct Writer {
    pub store: Log,
    /// The last position retention removed (see `Engine::horizon`).
    pub horizon: Arc<AtomicI64>,
    pub jobs: Arc<Mutex<JobTable>>,
    pub hub: Arc<Hub>,
    pub deadlines: mpsc::UnboundedSender<Schedule>,
    pub clock: Arc<dyn Clock>,
    pub stats: Arc<WriterStats>,
    pub metrics: Arc<Metrics>,
    /// The position of the last committed event, for the live tails.
    pub head: watch::Sender<i64>,
    /// The long-lived readers of each job and stream, woken by its commits.
    pub wakeups: Arc<Wakeups>,
    /// Where the writer's own death is recorded, before any request hears.
    pub health: Arc<Health>,
    /// Every event up to this position is applied (what a checkpoint covers).
    pub applied: Arc<AtomicI64>,
    pub max_batch: usize,
    /// This node's lease: whose sessions it may deliver to.
    pub lease: Arc<Lease>,
    /// The server's settings that plans depend on.
    pub policy: Policy,
    /// On a shared log: what this node appended, for its follower to skip.
    pub own: Option<Arc<OwnAppends>>,
}

/// The positions this node appended to a shared log that its follower has
/// not read past yet. The follower skips them rather than decoding them and
/// handing them back to the writer, which applied them when it committed.
#[derive(Default)]
pub(crate) struct OwnAppends(Mutex<BTreeSet<i64>>);

impl OwnAppends {
    fn record(&self, positions: &[i64]) {
        let mut own = self.0.lock().unwrap_or_else(|p| p.into_inner());
        own.extend(positions);
    }

    /// Takes the recorded positions up to `through` (the follower read that
    /// far; anything recorded later below it is taken on its next page).
    pub(crate) fn take_through(&self, through: i64) -> BTreeSet<i64> {
        let mut own = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let later = own.split_off(&through.saturating_add(1));
        std::mem::replace(&mut *own, later)
    }
}

/// Events another node appended, read by the follower, and the position it
/// read through.
pub(crate) type Absorbed = (Vec<Event>, i64);

impl Writer {
    fn table(&self) -> std::sync::MutexGuard<'_, JobTable> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs until `shutdown`, taking batches of requests and, on a shared log,
    /// the events other nodes appended (`absorb`).
    pub async fn run(
        self,
        mut rx: mpsc::Receiver<WriteRequest>,
        mut absorb: Option<mpsc::Receiver<Absorbed>>,
        mut removals: Option<mpsc::Receiver<Removal>>,
        checkpoints: CheckpointPolicy,
        shutdown: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(self.max_batch);
        let mut closing = false;
        let mut due = CheckpointDue {
            policy: checkpoints,
            since_events: 0,
            last: Instant::now(),
            retry: None,
        };
        loop {
            let committed_before = self.stats.events.load(Ordering::Relaxed);
            let n = if closing {
                rx.recv_many(&mut batch, self.max_batch).await
            } else {
                let timer = due.next_deadline();
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {
                        // Refuse new requests, then drain the queued ones.
                        rx.close();
                        closing = true;
                        continue;
                    }
                    Some((events, through)) = async { absorb.as_mut()?.recv().await } => {
                        // On a shared log a checkpoint covers what the
                        // follower has read through (this node's appends
                        // included), so that is what counts towards the next.
                        let before = self.applied.load(Ordering::Relaxed);
                        self.absorb(events, through).await;
                        let read = self.applied.load(Ordering::Relaxed) - before;
                        due.since_events += read.max(0) as u64;
                        self.maybe_checkpoint(&mut due);
                        continue;
                    }
                    // Retention's removals go between batches of appends,
                    // each a bounded transaction of its own.
                    Some(removal) = async { removals.as_mut()?.recv().await } => {
                        self.remove_units(removal).await;
                        continue;
                    }
                    n = rx.recv_many(&mut batch, self.max_batch) => n,
                    _ = async { tokio::time::sleep_until(timer?).await; Some(()) }, if timer.is_some() => {
                        self.maybe_checkpoint(&mut due);
                        continue;
                    }
                }
            };
            if n == 0 {
                self.settle().await;
                break;
            }
            self.stats.queued.fetch_sub(n as u64, Ordering::Relaxed);
            self.stats.taken.fetch_add(n as u64, Ordering::Relaxed);
            let requests = std::mem::replace(&mut batch, Vec::with_capacity(self.max_batch));
            for mut part in by_weight(requests, BATCH_BYTES) {
                let done = AssertUnwindSafe(self.process(&mut part))
                    .catch_unwind()
                    .await;
                if let Err(panic) = done {
                    // Recorded while the batch's requests still wait: by
                    // the time a client hears 503, /readyz says why.
                    self.health.panicked("log writer", panic.as_ref());
                    drop(part);
                    std::panic::resume_unwind(panic);
                }
            }
            if self.own.is_none() {
                due.since_events += self.stats.events.load(Ordering::Relaxed) - committed_before;
            }
            if !closing {
                self.maybe_checkpoint(&mut due);
            }
        }
        tracing::debug!("log writer stopped");
    }

    /// On a shared log, a stopping writer (its queue drained) reads the log
    /// through its end itself, as the follower would (the follower stops
    /// with it, maybe behind): the checkpoint written at shutdown then
    /// covers everything committed before it, this node's last appends
    /// included, and the next start folds nothing twice.
    async fn settle(&self) {
        let Some(own) = &self.own else { return };
        let mut cursor = self.applied.load(Ordering::Relaxed);
        loop {
            let mut page = Pages::log(self.store.events.as_ref(), cursor);
            match page.next().await {
                Ok(Some(rows)) => {
                    let through = page.cursor();
                    let mine = own.take_through(through);
                    let events = rows
                        .iter()
                        .filter(|r| !mine.contains(&r.position))
                        .filter_map(|r| r.decode_stored().ok())
                        .collect();
                    self.absorb(events, through).await;
                    if through <= cursor {
                        return;
                    }
                    cursor = through;
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the shared log at shutdown");
                    return;
                }
            }
        }
    }

    /// Hands a snapshot of the live jobs to the checkpoint task when one is
    /// due and the last one is written (a snapshot copies pointers, not
    /// states; encoding and writing happen there).
    fn maybe_checkpoint(&self, due: &mut CheckpointDue) {
        if !due.due() {
            return;
        }
        match due.policy.tx.try_send(snapshot(&self.jobs, &self.applied)) {
            Ok(()) => {
                due.since_events = 0;
                due.last = Instant::now();
                due.retry = None;
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                due.retry = Some(Instant::now() + CHECKPOINT_RETRY);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => due.retry = None,
        }
    }

    /// Decides, commits and answers one batch. When the log already holds a
    /// seq this batch wanted (another node on a shared log took it, or
    /// something wrote a SQLite log behind this process's back), the jobs it
    /// touched are caught up from the log and the batch decided again: the
    /// log is the truth, memory a cache.
    async fn process(&self, requests: &mut Vec<WriteRequest>) {
        const ATTEMPTS: usize = 8;
        let mut caught_up = HashSet::new();
        for attempt in 1..=ATTEMPTS {
            match self.try_batch(requests, &caught_up).await {
                Ok(()) => return,
                Err(touched) if attempt < ATTEMPTS => {
                    tracing::debug!(
                        jobs = touched.len(),
                        attempt,
                        "the log moved on behind this writer; catching up"
                    );
                    if let Err(e) = self.catch_up(&touched).await {
                        return self.refuse(std::mem::take(requests), &e.to_string());
                    }
                    caught_up.extend(touched);
                }
                Err(_) => {
                    return self.refuse(
                        std::mem::take(requests),
                        "appends kept conflicting with other nodes'",
                    )
                }
            }
        }
    }

    /// Answers every request with `log_unavailable`.
    fn refuse(&self, requests: Vec<WriteRequest>, why: &str) {
        for req in requests {
            req.refuse(EngineError::Unavailable(why.to_owned()));
        }
    }

    /// One attempt at a batch. `Err` carries the jobs it touched when the
    /// store refused it as conflicting (nothing was answered or applied).
    async fn try_batch(
        &self,
        requests: &mut Vec<WriteRequest>,
        caught_up: &HashSet<JobId>,
    ) -> Result<(), HashSet<JobId>> {
        let prepared = match self.prepare(requests).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the jobs of a batch; batch refused");
                self.refuse(std::mem::take(requests), &e.to_string());
                return Ok(());
            }
        };
        let now = self.clock.now();
        let mut staged = stage(requests, prepared, now, &self.policy);
        if self.store.shared() {
            // A stream command that appends nothing (refused, a producer's
            // duplicate, a stream found already there) may have been
            // decided on a state another node has moved on from: it is
            // decided again on the log's latest word, once. One that
            // appends finds out by conflict below.
            let stale: HashSet<JobId> = requests
                .iter()
                .zip(&staged.answers)
                .filter(|(r, a)| {
                    matches!(r.command, Command::Stream { .. })
                        && !matches!(a, Ok(Pending::Appended(_)))
                        && !caught_up.contains(&r.job_id)
                })
                .map(|(r, _)| r.job_id)
                .collect();
            if !stale.is_empty() {
                return Err(stale);
            }
        }
        let committed = match self.commit(&staged).await {
            Ok(committed) => committed,
            Err(StoreError::Conflict(_)) => return Err(staged.touched),
            Err(e) => {
                tracing::error!(error = %e, events = staged.rows.len(), "append failed; batch refused");
                self.metrics.observe_failed_commit();
                for (req, answer) in requests.drain(..).zip(staged.answers) {
                    req.refuse(match answer {
                        Err(domain) => EngineError::Domain(domain),
                        Ok(_) => EngineError::Unavailable(e.to_string()),
                    });
                }
                return Ok(());
            }
        };
        self.store_states(&mut staged);
        self.publish(&committed, true);
        self.schedule(&staged.touched);
        self.answer(requests, staged.answers, &committed);
        Ok(())
    }

    /// Step 1: the state of every job the batch names and its keys' earlier
    /// answers. Jobs not held are read back from the log whole; on a shared
    /// log, the jobs of attaches are first brought up to the log's latest
    /// word (appends find out by conflict, at no cost otherwise; a stream
    /// command refused is decided again once caught up).
    async fn prepare(&self, requests: &mut [WriteRequest]) -> Result<Prepared, StoreError> {
        if self.store.shared() {
            let stale: HashSet<JobId> = requests
                .iter()
                .filter(|r| matches!(r.command, Command::Attach(_)))
                .map(|r| r.job_id)
                .collect();
            if let Err(e) = self.catch_up(&stale).await {
                tracing::warn!(error = %e, "cannot catch up from the shared log");
            }
        }
        let mut jobs = HashMap::new();
        let mut missing = Vec::new();
        {
            let mut table = self.table();
            for req in requests.iter() {
                if jobs.contains_key(&req.job_id) || missing.contains(&req.job_id) {
                    continue;
                }
                match table.get(req.job_id) {
                    Some((job, held)) => {
                        if held == Held::Cached {
                            self.metrics.observe_cache_hit();
                        }
                        jobs.insert(req.job_id, JobState::clone(&job));
                    }
                    None => missing.push(req.job_id),
                }
            }
        }
        let mut archived = HashMap::new();
        for id in &missing {
            self.metrics.observe_job_loaded();
            match load_job(self.store.events.as_ref(), *id).await {
                Ok(job) => {
                    // An id the log holds nothing of may be a job retention
                    // removed: it is answered as archived, never created again.
                    if !job.is_known() && self.horizon.load(Ordering::Relaxed) > 0 {
                        if let Some(r) = self.store.retention.removed_job(&id.to_string()).await? {
                            archived.insert(*id, r);
                        }
                    }
                    jobs.insert(*id, job);
                }
                // Its requests are refused; the rest of the batch goes on.
                Err(StoreError::Corrupt { position, source }) => {
                    tracing::warn!(job = %id, position, problem = %source, "a request for a job or stream set aside is refused");
                }
                Err(e) => return Err(e),
            }
        }
        // A client resuming from further back than a job's state counts
        // from: its missed events are counted in the log, once.
        for req in requests.iter_mut() {
            let (Command::Attach(a), Some(job)) = (&mut req.command, jobs.get(&req.job_id)) else {
                continue;
            };
            let after = a.replay_after(job);
            if job.job_events_after(after).is_none() {
                let counted = count_job_events(
                    self.store.events.as_ref(),
                    &req.job_id.to_string(),
                    after,
                    job.head_seq,
                )
                .await?;
                a.counted = Some(Counted {
                    after,
                    job_events: counted,
                    job_events_then: job.job_events,
                });
            }
        }
        let mut keys: HashMap<JobId, Vec<&str>> = HashMap::new();
        for req in requests.iter() {
            if let Command::AppendJobEvent {
                idempotency_key: Some(k),
                ..
            } = &req.command
            {
                keys.entry(req.job_id).or_default().push(k);
            }
        }
        let mut priors = HashMap::new();
        for (job, keys) in keys {
            for row in self
                .store
                .events
                .find_keyed(&job.to_string(), &keys)
                .await?
            {
                let event = row.decode_stored()?;
                if let Some(key) = event.idempotency_key.clone() {
                    priors.insert(
                        (job, key),
                        IdempotentAppend {
                            seq: event.seq,
                            fingerprint: fingerprint(&event.body),
                        },
                    );
                }
            }
        }
        Ok(Prepared {
            jobs,
            loaded: missing.into_iter().collect(),
            priors,
            archived,
        })
    }

    /// Step 3: appends the batch's events in one transaction; returns them
    /// with their positions.
    async fn commit(&self, staged: &Staged) -> Result<Vec<Arc<Event>>, StoreError> {
        if staged.rows.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let positions = self.store.events.append(&staged.rows).await?;
        self.stats.record_commit(staged.rows.len());
        self.metrics
            .observe_commit(staged.rows.len(), started.elapsed().as_secs_f64());
        match &self.own {
            Some(own) => own.record(&positions),
            None => {
                if let Some(last) = positions.last() {
                    self.applied.fetch_max(*last, Ordering::Relaxed);
                }
            }
        }
        Ok(staged
            .events
            .iter()
            .zip(positions)
            .map(|(event, position)| {
                let mut event = event.clone();
                event.position = position;
                Arc::new(event)
            })
            .collect())
    }

    /// Stores the committed states, and the jobs read back for the batch.
    fn store_states(&self, staged: &mut Staged) {
        let mut table = self.table();
        for id in staged.touched.iter().chain(&staged.loaded) {
            if let Some(state) = staged.states.remove(id) {
                table.put(Arc::new(state));
            }
        }
    }

    /// Step 4: answers each request; attached sockets are registered first.
    fn answer(
        &self,
        requests: &mut Vec<WriteRequest>,
        answers: Vec<Result<Pending, DomainError>>,
        committed: &[Arc<Event>],
    ) {
        for (req, answer) in requests.drain(..).zip(answers) {
            let pending = match answer {
                Ok(pending) => pending,
                Err(e) => {
                    req.refuse(EngineError::Domain(e));
                    continue;
                }
            };
            let events = |range: std::ops::Range<usize>| -> Vec<Event> {
                committed[range].iter().map(|e| Event::clone(e)).collect()
            };
            match (req.reply, pending) {
                (Answer::Events(tx), Pending::Appended(range)) => {
                    let _ = tx.send(Ok(events(range)));
                }
                (Answer::Events(tx), Pending::Nothing) => {
                    let _ = tx.send(Ok(Vec::new()));
                }
                (Answer::Create(tx), Pending::Appended(range)) => {
                    let created = events(range).into_iter().next();
                    let _ = tx.send(created.map(|e| Created::New(Box::new(e))).ok_or_else(|| {
                        EngineError::Internal("a job was created with no event".into())
                    }));
                }
                (Answer::Create(tx), Pending::AlreadyExists) => {
                    let _ = tx.send(Ok(Created::Existing));
                }
                (Answer::Append(tx), Pending::Appended(range)) => {
                    let seq = committed[range].last().map(|e| e.seq);
                    let _ = tx.send(
                        seq.map(|seq| Appended {
                            seq,
                            replayed: false,
                        })
                        .ok_or_else(|| EngineError::Internal("an append with no event".into())),
                    );
                }
                (Answer::Append(tx), Pending::Duplicate { seq }) => {
                    let _ = tx.send(Ok(Appended {
                        seq,
                        replayed: true,
                    }));
                }
                (Answer::Stream(tx), Pending::Appended(range)) => {
                    let _ = tx.send(Ok(StreamDone::Appended(committed[range].to_vec())));
                }
                (Answer::Stream(tx), Pending::AlreadyExists) => {
                    let _ = tx.send(Ok(StreamDone::Existing));
                }
                (Answer::Stream(tx), Pending::Duplicate { seq }) => {
                    let _ = tx.send(Ok(StreamDone::Duplicate(seq as u64)));
                }
                (Answer::Stream(tx), Pending::Nothing) => {
                    let _ = tx.send(Ok(StreamDone::Nothing));
                }
                (
                    Answer::Attach(reg, tx),
                    Pending::Attached {
                        job_id,
                        plan,
                        snapshot,
                        socket,
                    },
                ) => {
                    self.attach(job_id, &plan, &snapshot, socket, reg, committed);
                    let _ = tx.send(Ok(Attached {
                        plan,
                        snapshot: *snapshot,
                        socket,
                    }));
                }
                (reply, pending) => {
                    tracing::error!(?pending, "a plan's answer does not fit its command");
                    reply.refuse(EngineError::Internal(
                        "the engine answered a command with what it cannot produce".into(),
                    ));
                }
            }
        }
    }

    /// Reads from the log what other nodes appended to `jobs` since this
    /// node's state of them (all of a job not held), and absorbs it.
    async fn catch_up(&self, jobs: &HashSet<JobId>) -> Result<(), StoreError> {
        for job in jobs {
            let head = self.table().peek(*job).map_or(0, |j| j.head_seq);
            let mut events = Vec::new();
            for_each_job_event_after(self.store.events.as_ref(), &job.to_string(), head, |e| {
                events.push(e)
            })
            .await?;
            self.apply_absorbed(events);
        }
        Ok(())
    }

    /// Removes a retention batch through the log's controlled path, unless
    /// one of its units became live again since the sweep read it; the
    /// units leave memory and the record is published like any event.
    async fn remove_units(&self, removal: Removal) {
        let Removal {
            units,
            archive,
            reply,
        } = removal;
        let live = {
            let table = self.table();
            units
                .iter()
                .find(|u| table.peek(u.id).is_some_and(|j| j.is_live()))
                .map(|u| u.id)
        };
        if let Some(id) = live {
            let _ = reply.send(Err(StoreError::Conflict(format!(
                "{id} is live again; it stays"
            ))));
            return;
        }
        let now = self.clock.now();
        let row = match self
            .store
            .retention
            .remove(&units, archive.as_deref(), now)
            .await
        {
            Ok(row) => row,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        match &self.own {
            Some(own) => own.record(&[row.position]),
            None => {
                self.applied.fetch_max(row.position, Ordering::Relaxed);
            }
        }
        {
            let mut table = self.table();
            for unit in &units {
                table.remove(unit.id);
            }
        }
        self.move_horizon(removed_through(&units));
        if let Ok(event) = row.decode_stored() {
            self.publish(&[Arc::new(event)], true);
        }
        let _ = reply.send(Ok(row.position));
    }

    /// Retention removed events through `through` (this node's sweep, or
    /// another node's record read from the shared log).
    fn move_horizon(&self, through: i64) {
        let before = self.horizon.fetch_max(through, Ordering::Relaxed);
        self.metrics.observe_horizon(before.max(through));
    }

    /// Events read from the shared log, in position order, through position
    /// `through`. Those this node already has are skipped; a job whose next
    /// event is missing (this node fell behind on it), or a job not held that
    /// an event makes live again, is read back from the log.
    async fn absorb(&self, events: Vec<Event>, through: i64) {
        let behind = self.apply_absorbed(events);
        match self.catch_up(&behind).await {
            Ok(()) => {
                self.applied.fetch_max(through, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "cannot catch up from the shared log"),
        }
    }

    /// Applies events another node committed, each in its job's order: the
    /// state moves on, job events reach this node's live sockets, grace
    /// deadlines reach the scheduler, and a socket another node took over is
    /// closed here. Returns the jobs to read back from the log.
    fn apply_absorbed(&self, events: Vec<Event>) -> HashSet<JobId> {
        let mut fresh = Vec::with_capacity(events.len());
        let mut behind = HashSet::new();
        {
            let mut table = self.table();
            for event in events {
                if let EventBody::UnitsRemoved(r) = &event.body {
                    self.move_horizon(r.through());
                }
                let logged = table.apply_logged(&event);
                if needs_reload(logged, &event) {
                    behind.insert(event.job_id);
                } else if logged == Logged::Applied {
                    fresh.push(Arc::new(event));
                }
            }
        }
        for event in &fresh {
            let Some(session) = event.session_id else {
                continue;
            };
            match &event.body {
                // Another node took one of this node's sessions over: that
                // session's socket here closes; no other watcher is touched.
                EventBody::Reconnected(_) => {
                    self.hub
                        .close_session(event.job_id, session, CloseReason::Replaced);
                }
                // Another node recorded a session held here as lost (this
                // node's lease ran out): the socket closes before anything
                // more is sent on it.
                EventBody::Disconnected(_)
                    if self
                        .hub
                        .close_session(event.job_id, session, CloseReason::Fenced) =>
                {
                    tracing::warn!(job = %event.job_id, session = %session, "another node recorded a session held here as lost; socket closed");
                }
                _ => {}
            }
        }
        self.publish(&fresh, false);
        self.schedule(&fresh.iter().map(|e| e.job_id).collect());
        behind
    }

    /// Hands the scheduler the deadlines of the jobs committed events moved,
    /// once per job, from the state they left.
    fn schedule(&self, jobs: &HashSet<JobId>) {
        let table = self.table();
        for state in jobs.iter().filter_map(|job| table.peek(*job)) {
            for d in deadline::of_job(state) {
                let _ = self.deadlines.send(d);
            }
        }
    }

    /// Moves the head and fans committed job events out to the sockets
    /// that were live before this batch. `own`: appended by this node
    /// (counted in its metrics).
    fn publish(&self, committed: &[Arc<Event>], own: bool) {
        self.wakeups.wake(committed);
        if let Some(last) = committed.last() {
            self.head.send_if_modified(|head| {
                let moved = last.position > *head;
                *head = (*head).max(last.position);
                moved
            });
        }
        let mut owned: Option<(JobId, Vec<SessionId>)> = None;
        for event in committed {
            if own {
                self.metrics.observe(event);
            }
            if event.body.is_job_event() {
                if owned.as_ref().is_none_or(|(job, _)| *job != event.job_id) {
                    owned = Some((event.job_id, self.owned_sessions(event.job_id)));
                }
                let sessions = owned.as_ref().map_or(&[][..], |(_, s)| s);
                self.hub.publish(event, sessions);
            }
        }
    }

    /// The job's sessions that the log (as folded here) shows connected on
    /// this node: the only ones it may deliver to.
    fn owned_sessions(&self, job_id: JobId) -> Vec<SessionId> {
        let node = self.lease.node();
        let table = self.table();
        table.peek(job_id).map_or_else(Vec::new, |job| {
            job.watchers
                .iter()
                .filter(|s| {
                    s.phase == SessionPhase::Connected && s.node.as_deref() == node.as_deref()
                })
                .map(|s| s.session_id)
                .collect()
        })
    }

    /// Makes a newly attached socket the job's live one, and queues for it the
    /// job events of this batch that came after its snapshot: everything up to
    /// the snapshot it reads from the log, everything after arrives here.
    fn attach(
        &self,
        job_id: JobId,
        plan: &AttachPlan,
        snapshot: &JobState,
        socket: u32,
        reg: Registration,
        committed: &[Arc<Event>],
    ) {
        let later = committed
            .iter()
            .filter(|e| e.job_id == job_id && e.seq > snapshot.head_seq && e.body.is_job_event());
        for event in later {
            if reg.tx.try_send(event.clone()).is_err() {
                reg.control.close(CloseReason::SlowConsumer);
                return;
            }
        }
        self.hub.register(job_id, plan.session_id, socket, reg);
    }
}

/// Every live job as of the last applied position.
pub(crate) fn snapshot(jobs: &Mutex<JobTable>, applied: &AtomicI64) -> Snapshot {
    let table = jobs.lock().unwrap_or_else(|p| p.into_inner());
    Snapshot {
        position: applied.load(Ordering::Relaxed),
        jobs: table.live().cloned().collect(),
    }
}

/// Step 2: plans each request against the state as it will be after the
/// requests before it.
fn stage(
    requests: &[WriteRequest],
    prepared: Prepared,
    now: chrono::DateTime<chrono::Utc>,
    policy: &Policy,
) -> Staged {
    let Prepared {
        jobs: mut states,
        loaded,
        mut priors,
        archived,
    } = prepared;
    let mut staged = Staged {
        states: HashMap::new(),
        touched: HashSet::new(),
        loaded,
        events: Vec::new(),
        rows: Vec::new(),
        answers: Vec::with_capacity(requests.len()),
    };
    for req in requests {
        if let Some(removed) = archived.get(&req.job_id) {
            staged.answers.push(Err(removed.clone().refusal()));
            continue;
        }
        // Prepare reads every job the batch names; one it could not read
        // (put aside at start-up) is refused, not decided.
        let Some(state) = states.get_mut(&req.job_id) else {
            staged.answers.push(Err(DomainError::Unreadable));
            continue;
        };
        let prior = match &req.command {
            Command::AppendJobEvent {
                idempotency_key: Some(k),
                ..
            } => priors.get(&(req.job_id, k.clone())).copied(),
            _ => None,
        };
        let answer = plan(state, prior.as_ref(), &req.command, now, policy).map(|plan| {
            if let Some((key, remembered)) = plan.keyed {
                // A retry later in the same batch finds it.
                priors.insert((req.job_id, key), remembered);
            }
            let start = staged.events.len();
            if !plan.events.is_empty() {
                staged.touched.insert(req.job_id);
            }
            for sealed in plan.events {
                staged
                    .rows
                    .push(EventRow::sealed(&sealed.event, sealed.payload));
                staged.events.push(sealed.event);
            }
            match plan.reply {
                Reply::Appended => Pending::Appended(start..start + plan.own),
                Reply::Attached { plan, socket } => Pending::Attached {
                    job_id: req.job_id,
                    plan,
                    snapshot: Box::new(state.clone()),
                    socket,
                },
                Reply::AlreadyExists => Pending::AlreadyExists,
                Reply::Duplicate { seq } => Pending::Duplicate { seq },
                Reply::Nothing => Pending::Nothing,
            }
        });
        staged.answers.push(answer);
    }
    staged.states = states;
    staged
}
