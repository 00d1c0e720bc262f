//! The engine's start: the state rebuilt from the newest checkpoint and the
//! log after it, and the tasks that keep it (writer, scheduler, checkpoints,
//! job index, and on a shared log the follower and the lease keeper).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt as _;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::api::{Engine, Inner};
use super::checkpoint::{self, Snapshot};
use super::hub::{Hub, Wakeups};
use super::jobs::JobTable;
use super::lease::Lease;
use super::queue::{Closes, Health, Queue, StreamReads, WriteRequest, WriterStats};
use super::settings::{EngineSettings, Startup};
use super::writer::{CheckpointPolicy, Writer};
use super::{index, membership, notify, recover, retention, scheduler};
use crate::clock::{Clock, Corrected};
use crate::domain::deadline::{self, Schedule};
use crate::domain::{JobId, SessionId, SessionPhase};
use crate::log::{Log, StoreError};
use crate::metrics::Metrics;

/// The ends of the engine's channels its tasks take at start.
struct Wiring {
    requests: mpsc::Receiver<WriteRequest>,
    head: watch::Sender<i64>,
    decided: watch::Sender<chrono::DateTime<chrono::Utc>>,
}

/// A started engine: the engine, its tasks, and the clock it decides by (on
/// a shared log, the database's as this node measures it), which whatever
/// reads deadlines beside it should read too.
pub struct Started {
    pub engine: Engine,
    pub tasks: EngineTasks,
    pub clock: Arc<dyn Clock>,
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
        store: Log,
        clock: Arc<dyn Clock>,
        settings: EngineSettings,
        shutdown: CancellationToken,
    ) -> Result<Started, StoreError> {
        let epoch = store.events.epoch().await?;
        let horizon = store.retention.horizon().await?;
        let recovered = recover::recover(&store, &epoch, settings.job_cache_entries).await?;
        let (waiting, orphaned) = sessions_to_resume(&recovered.table, store.shared());
        // On a shared log this process is a node with a lease, taken before
        // any socket can name it, and its clock is the database's.
        let (clock, shared_clock, lease) = if let Some(members) = &store.members {
            let corrected = Arc::new(Corrected::new(clock));
            let lease = Lease::shared();
            let node =
                membership::take(members.as_ref(), &lease, &corrected, settings.node_lease).await?;
            tracing::info!(node = %node, offset_ms = corrected.offset().num_milliseconds(), "joined the shared log");
            (corrected.clone() as Arc<dyn Clock>, Some(corrected), lease)
        } else {
            (clock, None, Lease::sole())
        };
        let (engine, wiring) = Engine::assemble(
            store,
            (clock, shared_clock),
            &settings,
            (epoch, horizon),
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
        if let Err(e) = engine.inner.closes.record_lost(orphaned).await {
            return Err(StoreError::Unavailable(e.to_string()));
        }
        let clock = engine.inner.clock.clone();
        Ok(Started {
            engine,
            tasks,
            clock,
        })
    }

    /// The engine over the rebuilt state, and the ends of its channels that
    /// its tasks take.
    fn assemble(
        store: Log,
        (clock, shared_clock): (Arc<dyn Clock>, Option<Arc<Corrected>>),
        settings: &EngineSettings,
        (epoch, horizon): (String, i64),
        recovered: recover::Recovered,
        lease: Arc<Lease>,
    ) -> (Engine, Wiring) {
        let metrics = Arc::new(Metrics::default());
        metrics.observe_horizon(horizon);
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
        let (decided_tx, decided_rx) = watch::channel(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let queue = Queue {
            tx,
            stats: stats.clone(),
        };
        let hub = Arc::new(Hub::new(lease.clone()));
        let closes = Closes {
            queue: queue.clone(),
            hub: hub.clone(),
            grace: chrono::Duration::from_std(settings.grace).unwrap_or(chrono::Duration::MAX),
        };
        let engine = Engine {
            inner: Arc::new(Inner {
                store,
                jobs: Arc::new(Mutex::new(recovered.table)),
                applied: Arc::new(AtomicI64::new(head)),
                horizon: Arc::new(AtomicI64::new(horizon)),
                queue,
                epoch,
                clock,
                stats,
                hub,
                closes,
                windows: settings.windows,
                metrics,
                head: head_rx,
                decided: decided_rx,
                lease,
                shared_clock,
                startup,
                reads: Arc::new(StreamReads::default()),
                health: Arc::new(Health::default()),
                wakeups: Arc::new(Wakeups::default()),
            }),
        };
        (
            engine,
            Wiring {
                requests,
                head: head_tx,
                decided: decided_tx,
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
        let health = &inner.health;
        let (deadline_tx, deadline_rx) = mpsc::unbounded_channel();
        let (checkpoint_tx, checkpoint_rx) = mpsc::channel(1);
        let writer = Writer {
            horizon: inner.horizon.clone(),
            metrics: inner.metrics.clone(),
            head: wiring.head,
            wakeups: inner.wakeups.clone(),
            health: inner.health.clone(),
            store: inner.store.clone(),
            jobs: inner.jobs.clone(),
            applied: inner.applied.clone(),
            hub: inner.hub.clone(),
            deadlines: deadline_tx,
            clock: inner.clock.clone(),
            stats: inner.stats.clone(),
            max_batch: settings.max_batch,
            lease: inner.lease.clone(),
            policy: crate::domain::Policy {
                notify_max_age: settings.webhook.as_ref().map(|w| w.max_age),
            },
            own: inner.store.shared().then(Arc::default),
        };
        // On a shared log, a follower reads what other nodes append and the
        // writer absorbs it between its own batches.
        let own = writer.own.clone();
        let absorb = inner.store.members.clone().zip(own).map(|(members, own)| {
            let (absorb_tx, absorb_rx) = mpsc::channel(64);
            let from = inner.applied.load(Ordering::Relaxed);
            supervised(
                health,
                &shutdown,
                "shared log's follower",
                membership::follow(
                    inner.store.events.clone(),
                    members,
                    from,
                    (absorb_tx, own),
                    shutdown.clone(),
                ),
            );
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
        let removals = settings.retention.clone().map(|settings| {
            let (tx, rx) = mpsc::channel(1);
            let sweeper = retention::Sweeper {
                store: inner.store.clone(),
                jobs: inner.jobs.clone(),
                clock: inner.clock.clone(),
                removals: tx,
                metrics: inner.metrics.clone(),
                settings,
            };
            supervised(
                health,
                &shutdown,
                "retention sweeper",
                sweeper.run(shutdown.clone()),
            );
            rx
        });
        let writer = supervised(
            health,
            &shutdown,
            "log writer",
            writer.run(wiring.requests, absorb, removals, policy, shutdown.clone()),
        );
        let checkpoints = supervised(
            health,
            &shutdown,
            "checkpoint writer",
            self.clone().write_checkpoints(checkpoint_rx),
        );
        let notifier = settings.webhook.clone().map(|endpoint| {
            let (tx, rx) = mpsc::unbounded_channel();
            let claim = notify::claim_for(&endpoint);
            let notifier = notify::Notifier {
                queue: inner.queue.clone(),
                jobs: inner.jobs.clone(),
                endpoint,
                clock: inner.clock.clone(),
            };
            supervised(
                health,
                &shutdown,
                "webhook notifier",
                notifier.run(rx, shutdown.clone()),
            );
            scheduler::Claims { claim, tx }
        });
        let scheduler = supervised(
            health,
            &shutdown,
            "scheduler",
            scheduler::run(
                scheduler::Expiry {
                    queue: inner.queue.clone(),
                    clock: inner.clock.clone(),
                    decided: wiring.decided,
                    lease: inner.lease.clone(),
                    notifier,
                    reads: inner.reads.clone(),
                    jobs: inner.jobs.clone(),
                },
                waiting,
                deadline_rx,
                shutdown.clone(),
            ),
        );
        let index = supervised(
            health,
            &shutdown,
            "job indexer",
            index::run(inner.store.clone(), inner.head.clone(), shutdown.clone()),
        );
        let leases = inner.store.members.clone().zip(inner.shared_clock.clone());
        let leases = leases.map(|(members, clock)| {
            supervised(
                health,
                &shutdown,
                "lease keeper",
                membership::keep_lease(
                    membership::Member {
                        members,
                        lease: inner.lease.clone(),
                        jobs: inner.jobs.clone(),
                        hub: inner.hub.clone(),
                        closes: inner.closes.clone(),
                        metrics: inner.metrics.clone(),
                    },
                    clock,
                    settings.node_lease,
                    shutdown.clone(),
                ),
            )
        });
        EngineTasks {
            writer,
            scheduler,
            checkpoints,
            leases,
            index,
        }
    }

    /// The checkpoint task: writes each snapshot the writer hands it, one at
    /// a time, until the writer stops.
    async fn write_checkpoints(self, mut snapshots: mpsc::Receiver<Snapshot>) {
        while let Some(snapshot) = snapshots.recv().await {
            let started = std::time::Instant::now();
            let jobs = snapshot.jobs.len();
            match checkpoint::write(
                &self.inner.store,
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
}

/// Spawns one of the engine's essential tasks, watched: a task that panics,
/// or ends while the engine is not shutting down, is recorded in `health`
/// (the node stops being ready and the process stops).
fn supervised(
    health: &Arc<Health>,
    shutdown: &CancellationToken,
    name: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    let (health, shutdown) = (health.clone(), shutdown.clone());
    tokio::spawn(async move {
        match AssertUnwindSafe(task).catch_unwind().await {
            Ok(()) if shutdown.is_cancelled() => {}
            Ok(()) => health.fail(format!(
                "the {name} stopped: it ended while the server was running"
            )),
            Err(panic) => health.panicked(name, panic.as_ref()),
        }
    })
}

/// The scheduler's first deadlines: every live job's (sessions waiting in
/// a grace window, stall, timeout, notifications); and, on a log of one,
/// sessions the log shows connected: their sockets died with the previous
/// process, and they are recorded as disconnected. On a shared log other
/// nodes may hold them; a node that died with sockets open is found by its
/// lease instead (`keep_lease`). Only live jobs have either.
fn sessions_to_resume(
    table: &JobTable,
    shared: bool,
) -> (Vec<Schedule>, Vec<(JobId, SessionId, u32)>) {
    let waiting: Vec<Schedule> = table.live().flat_map(|job| deadline::of_job(job)).collect();
    let orphaned = if shared {
        Vec::new()
    } else {
        table
            .live()
            .flat_map(|job| job.watchers.iter().map(move |s| (job, s)))
            .filter(|(_, s)| s.phase == SessionPhase::Connected)
            .map(|(job, s)| (job.job_id, s.session_id, s.sockets))
            .collect()
    };
    (waiting, orphaned)
}
