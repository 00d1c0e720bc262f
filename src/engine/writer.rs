//! The single writer: group commit.
//!
//! Every change to the log goes through one task. It takes whatever requests are
//! queued (up to a batch limit), decides each against the state as it will be
//! after the requests before it, appends all resulting events in one
//! transaction, and only after the commit applies them to the in-memory state
//! and answers each request. A failed commit answers every request of the batch
//! with an error and leaves the state untouched.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{EngineError, Outcome, WriterStats};
use crate::clock::Clock;
use crate::domain::state::{fingerprint, IdempotentAppend};
use crate::domain::{decide, Command, Decision, Event, JobId, JobState, World};
use crate::log::chain::event_hash;
use crate::log::{EventRow, LogStore};

/// One queued command and where to send its answer.
pub(crate) struct WriteRequest {
    pub job_id: JobId,
    pub session_id: Option<crate::domain::SessionId>,
    pub command: Command,
    pub reply: oneshot::Sender<Result<Outcome, EngineError>>,
}

/// How a request will be answered once the batch is committed.
enum Pending {
    /// Events `range` of the batch were appended for it.
    Appended(std::ops::Range<usize>),
    AlreadyExists,
    Duplicate {
        seq: i64,
    },
}

pub(crate) struct Writer {
    pub store: Arc<dyn LogStore>,
    pub world: Arc<RwLock<World>>,
    pub clock: Arc<dyn Clock>,
    pub stats: Arc<WriterStats>,
    pub max_batch: usize,
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
                match decide(state, prior.as_ref(), &req.command) {
                    Err(e) => {
                        let _ = req.reply.send(Err(EngineError::Domain(e)));
                    }
                    Ok(Decision::AlreadyExists) => {
                        pending.push((req.reply, Pending::AlreadyExists))
                    }
                    Ok(Decision::Duplicate { seq }) => {
                        pending.push((req.reply, Pending::Duplicate { seq }))
                    }
                    Ok(Decision::Append(bodies)) => {
                        let start = events.len();
                        for body in bodies {
                            let mut event = Event {
                                position: 0,
                                job_id: req.job_id,
                                seq: state.head_seq + 1,
                                session_id: req.session_id,
                                at: now,
                                idempotency_key: key.clone(),
                                body,
                                hash: String::new(),
                            };
                            let mut row = EventRow::from_event(&event);
                            row.hash = event_hash(&state.head_hash, &row);
                            event.hash.clone_from(&row.hash);
                            state.apply(&event);
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
                        pending.push((req.reply, Pending::Appended(start..events.len())));
                    }
                }
            }
        }

        if !rows.is_empty() {
            let started = Instant::now();
            match self.store.append(&rows).await {
                Ok(positions) => {
                    self.stats.record_commit(rows.len(), started.elapsed());
                    for (event, position) in events.iter_mut().zip(positions) {
                        event.position = position;
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
                    self.stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                    for (reply, _) in pending {
                        let _ = reply.send(Err(EngineError::Unavailable(e.to_string())));
                    }
                    return;
                }
            }
        }

        for (reply, answer) in pending {
            let outcome = match answer {
                Pending::Appended(range) => Outcome::Appended(events[range].to_vec()),
                Pending::AlreadyExists => Outcome::AlreadyExists,
                Pending::Duplicate { seq } => Outcome::Duplicate { seq },
            };
            let _ = reply.send(Ok(outcome));
        }
    }
}
