//! The single writer: group commit.
//!
//! Every change to the log goes through one task. It takes whatever requests are
//! queued (up to a batch limit), decides each against the state as it will be
//! after the requests before it, appends all resulting events in one
//! transaction, and only after the commit applies them to the in-memory state,
//! hands job events to the live sockets and answers each request. A failed
//! commit answers every request of the batch with an error and leaves the state
//! untouched.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::hub::{CloseReason, Hub, Registration};
use super::{Attached, EngineError, Outcome, WriterStats};
use crate::clock::Clock;
use crate::domain::decide::{AttachPlan, Planned};
use crate::domain::event::Disconnected;
use crate::domain::state::{fingerprint, IdempotentAppend};
use crate::domain::{
    decide, Command, Decision, DomainError, Event, EventBody, JobId, JobState, World,
};
use crate::log::chain::seal;
use crate::log::{for_each_job_event_after, EventRow, LogStore, StoreError};
use crate::metrics::Metrics;
use crate::scheduler::Deadline;

/// One queued command and where to send its answer.
pub(crate) struct WriteRequest {
    pub job_id: JobId,
    pub command: Command,
    /// For `Attach`: the socket to feed once the attach is committed.
    pub registration: Option<Registration>,
    pub reply: oneshot::Sender<Result<Outcome, EngineError>>,
}

/// How a request will be answered once the batch is committed.
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

pub(crate) struct Writer {
    pub store: Arc<dyn LogStore>,
    pub world: Arc<RwLock<World>>,
    pub hub: Arc<Hub>,
    pub deadlines: mpsc::UnboundedSender<Deadline>,
    pub clock: Arc<dyn Clock>,
    pub stats: Arc<WriterStats>,
    pub metrics: Arc<Metrics>,
    /// The position of the last committed event, for the live tails.
    pub head: watch::Sender<i64>,
    pub max_batch: usize,
    /// Test-only: answer appends before the commit, then commit late.
    pub unsafe_ack_before_commit: bool,
}

impl Writer {
    /// Runs until `shutdown`, taking batches of requests and, on a shared log,
    /// the events other nodes appended (`absorb`).
    pub async fn run(
        self,
        mut rx: mpsc::Receiver<WriteRequest>,
        mut absorb: Option<mpsc::Receiver<Vec<Event>>>,
        shutdown: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(self.max_batch);
        let mut closing = false;
        loop {
            let n = if closing {
                rx.recv_many(&mut batch, self.max_batch).await
            } else {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {
                        // Refuse new requests, then drain the queued ones.
                        rx.close();
                        closing = true;
                        continue;
                    }
                    Some(events) = async { absorb.as_mut()?.recv().await } => {
                        self.absorb(events).await;
                        continue;
                    }
                    n = rx.recv_many(&mut batch, self.max_batch) => n,
                }
            };
            if n == 0 {
                break;
            }
            self.stats.queued.fetch_sub(n as u64, Ordering::Relaxed);
            self.stats.taken.fetch_add(n as u64, Ordering::Relaxed);
            let requests = std::mem::replace(&mut batch, Vec::with_capacity(self.max_batch));
            self.process(requests).await;
        }
        tracing::debug!("log writer stopped");
    }

    /// Decides, commits and answers one batch. On a shared log another node
    /// may have taken a seq this batch wanted: the jobs it touched are caught
    /// up from the log and the batch decided again.
    async fn process(&self, mut requests: Vec<WriteRequest>) {
        const ATTEMPTS: usize = 8;
        for attempt in 1..=ATTEMPTS {
            match self.try_batch(&mut requests).await {
                Ok(()) => return,
                Err(touched) if attempt < ATTEMPTS => {
                    tracing::debug!(
                        jobs = touched.len(),
                        attempt,
                        "appended elsewhere first; catching up"
                    );
                    if let Err(e) = self.catch_up(&touched).await {
                        return self.refuse(requests, &e.to_string());
                    }
                }
                Err(_) => {
                    return self.refuse(requests, "appends kept conflicting with other nodes'")
                }
            }
        }
    }

    /// Answers every request with `log_unavailable`.
    fn refuse(&self, requests: Vec<WriteRequest>, why: &str) {
        for req in requests {
            let _ = req
                .reply
                .send(Err(EngineError::Unavailable(why.to_owned())));
        }
    }

    /// One attempt at a batch. `Err` carries the jobs it touched when the
    /// store refused it as conflicting (nothing was answered or applied).
    async fn try_batch(&self, requests: &mut Vec<WriteRequest>) -> Result<(), HashSet<JobId>> {
        if self.store.shared() {
            // Another node may have created the job or moved its session on:
            // an attach, a refresh or an unknown job is decided on the log's
            // latest word (appends find out by conflict, at no cost otherwise).
            let stale: HashSet<JobId> = {
                let world = self.world.read().unwrap_or_else(|p| p.into_inner());
                requests
                    .iter()
                    .filter(|r| {
                        matches!(r.command, Command::Attach(_) | Command::Refresh)
                            || !world.jobs.get(&r.job_id).is_some_and(JobState::exists)
                    })
                    .map(|r| r.job_id)
                    .collect()
            };
            if let Err(e) = self.catch_up(&stale).await {
                tracing::warn!(error = %e, "cannot catch up from the shared log");
            }
        }
        let now = self.clock.now();
        // Copies of the jobs this batch touches, moved forward as it is decided.
        let mut staged: HashMap<JobId, JobState> = HashMap::new();
        let mut touched: HashSet<JobId> = HashSet::new();
        let mut staged_keys: HashMap<(JobId, String), IdempotentAppend> = HashMap::new();
        let mut events: Vec<Event> = Vec::new();
        let mut rows: Vec<EventRow> = Vec::new();
        let mut answers: Vec<Result<Pending, DomainError>> = Vec::with_capacity(requests.len());

        {
            let world = self.world.read().unwrap_or_else(|p| p.into_inner());
            for req in requests.iter_mut() {
                let state = staged.entry(req.job_id).or_insert_with(|| {
                    world
                        .jobs
                        .get(&req.job_id)
                        .cloned()
                        .unwrap_or_else(|| JobState::genesis(req.job_id))
                });
                let key = match &req.command {
                    Command::AppendJobEvent {
                        idempotency_key: Some(k),
                        ..
                    } => Some(k.clone()),
                    _ => None,
                };
                let prior = key.as_ref().and_then(|k| {
                    let id = (req.job_id, k.clone());
                    staged_keys
                        .get(&id)
                        .or_else(|| world.idempotency.get(&id))
                        .copied()
                });
                let mut stage = |planned: Vec<Planned>, state: &mut JobState| {
                    let start = events.len();
                    for p in planned {
                        let mut event = Event::new(req.job_id, p.session_id, now, p.body);
                        event.idempotency_key.clone_from(&key);
                        let row = seal(state, &mut event);
                        if let Some(k) = &key {
                            staged_keys.insert(
                                (req.job_id, k.clone()),
                                IdempotentAppend {
                                    seq: event.seq,
                                    fingerprint: fingerprint(&event.body),
                                },
                            );
                        }
                        events.push(event);
                        rows.push(row);
                    }
                    touched.insert(req.job_id);
                    start..events.len()
                };
                let answer = match decide(state, prior.as_ref(), &req.command, now) {
                    Err(e) => Err(e),
                    Ok(Decision::AlreadyExists) => Ok(Pending::AlreadyExists),
                    Ok(Decision::Duplicate { seq }) => Ok(Pending::Duplicate { seq }),
                    Ok(Decision::Nothing) => Ok(Pending::Nothing),
                    Ok(Decision::Append(planned)) => Ok(Pending::Appended(stage(planned, state))),
                    Ok(Decision::Attach {
                        events: planned,
                        plan,
                    }) => {
                        stage(planned, state);
                        let socket = state.session.as_ref().map_or(0, |s| s.sockets);
                        Ok(Pending::Attached {
                            job_id: req.job_id,
                            plan,
                            snapshot: Box::new(state.clone()),
                            socket,
                        })
                    }
                };
                answers.push(answer);
            }
        }

        if self.unsafe_ack_before_commit && !rows.is_empty() {
            // The bug the crash harness must catch: an answer before the commit
            // (as a write-behind buffer would give), the commit 50 ms later.
            for (req, answer) in requests.iter_mut().zip(&mut answers) {
                if let Ok(Pending::Appended(range)) = answer {
                    let (early, _) = oneshot::channel();
                    let reply = std::mem::replace(&mut req.reply, early);
                    let _ = reply.send(Ok(Outcome::Appended(events[range.clone()].to_vec())));
                    *answer = Ok(Pending::Nothing);
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }

        let mut committed: Vec<Arc<Event>> = Vec::with_capacity(events.len());
        if !rows.is_empty() {
            let started = Instant::now();
            match self.store.append(&rows).await {
                Ok(positions) => {
                    self.stats.record_commit(rows.len());
                    self.metrics
                        .observe_commit(rows.len(), started.elapsed().as_secs_f64());
                    for (mut event, position) in events.into_iter().zip(positions) {
                        event.position = position;
                        committed.push(Arc::new(event));
                    }
                    let mut world = self.world.write().unwrap_or_else(|p| p.into_inner());
                    for id in touched {
                        if let Some(state) = staged.remove(&id) {
                            world.jobs.insert(id, state);
                        }
                    }
                    world.idempotency.extend(staged_keys);
                }
                Err(StoreError::Conflict(_)) if self.store.shared() => return Err(touched),
                Err(e) => {
                    tracing::error!(error = %e, events = rows.len(), "append failed; batch refused");
                    self.metrics.observe_failed_commit();
                    for (req, answer) in requests.drain(..).zip(answers) {
                        let error = match answer {
                            Err(domain) => EngineError::Domain(domain),
                            Ok(_) => EngineError::Unavailable(e.to_string()),
                        };
                        let _ = req.reply.send(Err(error));
                    }
                    return Ok(());
                }
            }
        }

        self.after_commit(&committed, true);
        for (req, answer) in requests.drain(..).zip(answers) {
            let outcome = match answer {
                Err(e) => Err(EngineError::Domain(e)),
                Ok(Pending::Appended(range)) => Ok(Outcome::Appended(
                    committed[range].iter().map(|e| Event::clone(e)).collect(),
                )),
                Ok(Pending::Attached {
                    job_id,
                    plan,
                    snapshot,
                    socket,
                }) => {
                    if let Some(reg) = req.registration {
                        self.attach(job_id, &plan, &snapshot, socket, reg, &committed);
                    }
                    Ok(Outcome::Attached(Box::new(Attached {
                        plan,
                        snapshot: *snapshot,
                        socket,
                    })))
                }
                Ok(Pending::AlreadyExists) => Ok(Outcome::AlreadyExists),
                Ok(Pending::Duplicate { seq }) => Ok(Outcome::Duplicate { seq }),
                Ok(Pending::Nothing) => Ok(Outcome::Nothing),
            };
            let _ = req.reply.send(outcome);
        }
        Ok(())
    }

    /// Reads from the log what other nodes appended to `jobs` since this
    /// node's state of them, and absorbs it.
    async fn catch_up(&self, jobs: &HashSet<JobId>) -> Result<(), StoreError> {
        for job in jobs {
            let head = self.head_seq(*job);
            let mut events = Vec::new();
            for_each_job_event_after(self.store.as_ref(), &job.to_string(), head, |e| {
                events.push(e)
            })
            .await?;
            self.apply_absorbed(events);
        }
        Ok(())
    }

    fn head_seq(&self, job: JobId) -> i64 {
        let world = self.world.read().unwrap_or_else(|p| p.into_inner());
        world.jobs.get(&job).map_or(0, |j| j.head_seq)
    }

    /// Events read from the shared log, in position order. Those this node
    /// already has are skipped; a job whose next event is missing (this node
    /// fell behind on it) is caught up from the log.
    async fn absorb(&self, events: Vec<Event>) {
        let behind = self.apply_absorbed(events);
        if let Err(e) = self.catch_up(&behind).await {
            tracing::warn!(error = %e, "cannot catch up from the shared log");
        }
    }

    /// Applies events another node committed, each in its job's order: the
    /// state moves on, job events reach this node's live sockets, grace
    /// deadlines reach the scheduler, and a socket another node took over is
    /// closed here. Returns the jobs whose next event was not among them.
    fn apply_absorbed(&self, events: Vec<Event>) -> HashSet<JobId> {
        let mut fresh = Vec::with_capacity(events.len());
        let mut behind = HashSet::new();
        {
            let mut world = self.world.write().unwrap_or_else(|p| p.into_inner());
            for event in events {
                let head = world.jobs.get(&event.job_id).map_or(0, |j| j.head_seq);
                if event.seq == head + 1 {
                    world.apply(&event);
                    fresh.push(Arc::new(event));
                } else if event.seq > head + 1 {
                    behind.insert(event.job_id);
                }
            }
        }
        for event in &fresh {
            if matches!(
                event.body,
                EventBody::Connected(_) | EventBody::Reconnected(_)
            ) {
                self.hub.close(event.job_id, CloseReason::Replaced);
            }
        }
        self.after_commit(&fresh, false);
        behind
    }

    /// Fans committed job events out to the sockets that were live before this
    /// batch, and hands new grace deadlines to the scheduler.
    /// `own`: appended by this node (counted in its metrics).
    fn after_commit(&self, committed: &[Arc<Event>], own: bool) {
        if let Some(last) = committed.last() {
            self.head.send_if_modified(|head| {
                let moved = last.position > *head;
                *head = (*head).max(last.position);
                moved
            });
        }
        for event in committed {
            if own {
                self.metrics.observe(event);
            }
            match &event.body {
                body if body.is_job_event() => self.hub.publish(event),
                EventBody::Disconnected(Disconnected { grace_until, .. }) => {
                    if let Some(session_id) = event.session_id {
                        let _ = self.deadlines.send(Deadline {
                            at: *grace_until,
                            job_id: event.job_id,
                            session_id,
                        });
                    }
                }
                _ => {}
            }
        }
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
