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
use crate::domain::{decide, Command, Decision, Event, EventBody, JobId, JobState, World};
use crate::log::chain::seal;
use crate::log::{EventRow, LogStore};
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
        registration: Option<Registration>,
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
    pub async fn run(self, mut rx: mpsc::Receiver<WriteRequest>, shutdown: CancellationToken) {
        let mut batch = Vec::with_capacity(self.max_batch);
        let mut closing = false;
        loop {
            let n = if closing {
                rx.recv_many(&mut batch, self.max_batch).await
            } else {
                tokio::select! {
                    biased;
                    n = rx.recv_many(&mut batch, self.max_batch) => n,
                    _ = shutdown.cancelled() => {
                        // Refuse new requests, then drain the queued ones.
                        rx.close();
                        closing = true;
                        continue;
                    }
                }
            };
            if n == 0 {
                break;
            }
            self.stats.queued.fetch_sub(n as u64, Ordering::Relaxed);
            self.stats.taken.fetch_add(n as u64, Ordering::Relaxed);
            self.process(&mut batch).await;
        }
        tracing::debug!("log writer stopped");
    }

    async fn process(&self, batch: &mut Vec<WriteRequest>) {
        let now = self.clock.now();
        // Copies of the jobs this batch touches, moved forward as it is decided.
        let mut staged: HashMap<JobId, JobState> = HashMap::new();
        let mut touched: HashSet<JobId> = HashSet::new();
        let mut staged_keys: HashMap<(JobId, String), IdempotentAppend> = HashMap::new();
        let mut events: Vec<Event> = Vec::new();
        let mut rows: Vec<EventRow> = Vec::new();
        let mut pending = Vec::with_capacity(batch.len());

        {
            let world = self.world.read().unwrap_or_else(|p| p.into_inner());
            for req in batch.drain(..) {
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
                    Err(e) => {
                        let _ = req.reply.send(Err(EngineError::Domain(e)));
                        continue;
                    }
                    Ok(Decision::AlreadyExists) => Pending::AlreadyExists,
                    Ok(Decision::Duplicate { seq }) => Pending::Duplicate { seq },
                    Ok(Decision::Nothing) => Pending::Nothing,
                    Ok(Decision::Append(planned)) => Pending::Appended(stage(planned, state)),
                    Ok(Decision::Attach {
                        events: planned,
                        plan,
                    }) => {
                        stage(planned, state);
                        let socket = state.session.as_ref().map_or(0, |s| s.sockets);
                        Pending::Attached {
                            job_id: req.job_id,
                            plan,
                            snapshot: Box::new(state.clone()),
                            socket,
                            registration: req.registration,
                        }
                    }
                };
                pending.push((req.reply, answer));
            }
        }

        if self.unsafe_ack_before_commit && !rows.is_empty() {
            // The bug the crash harness must catch: an answer before the commit
            // (as a write-behind buffer would give), the commit 50 ms later.
            let (early, rest): (Vec<_>, Vec<_>) = pending
                .into_iter()
                .partition(|(_, answer)| matches!(answer, Pending::Appended(_)));
            pending = rest;
            for (reply, answer) in early {
                if let Pending::Appended(range) = answer {
                    let _ = reply.send(Ok(Outcome::Appended(events[range].to_vec())));
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
                Err(e) => {
                    tracing::error!(error = %e, events = rows.len(), "append failed; batch refused");
                    self.metrics.observe_failed_commit();
                    for (reply, _) in pending {
                        let _ = reply.send(Err(EngineError::Unavailable(e.to_string())));
                    }
                    return;
                }
            }
        }

        self.after_commit(&committed);
        for (reply, answer) in pending {
            let outcome = match answer {
                Pending::Appended(range) => {
                    Outcome::Appended(committed[range].iter().map(|e| Event::clone(e)).collect())
                }
                Pending::Attached {
                    job_id,
                    plan,
                    snapshot,
                    socket,
                    registration,
                } => {
                    if let Some(reg) = registration {
                        self.attach(job_id, &plan, &snapshot, socket, reg, &committed);
                    }
                    Outcome::Attached(Box::new(Attached {
                        plan,
                        snapshot: *snapshot,
                        socket,
                    }))
                }
                Pending::AlreadyExists => Outcome::AlreadyExists,
                Pending::Duplicate { seq } => Outcome::Duplicate { seq },
                Pending::Nothing => Outcome::Nothing,
            };
            let _ = reply.send(Ok(outcome));
        }
    }

    /// Fans committed job events out to the sockets that were live before this
    /// batch, and hands new grace deadlines to the scheduler.
    fn after_commit(&self, committed: &[Arc<Event>]) {
        if let Some(last) = committed.last() {
            self.head.send_replace(last.position);
        }
        for event in committed {
            self.metrics.observe(event);
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
