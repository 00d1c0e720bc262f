//! The live sockets, one per watcher of a job, and the fan-out of committed
//! job events to them. Only the writer registers sockets and publishes, after a commit, so a
//! socket sees exactly the events committed after its snapshot.
//!
//! Nothing is delivered while this node does not hold its lease (the whole
//! hub is fenced instead), nor to a session the log no longer shows
//! connected on this node (its socket is closed instead).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::lease::Lease;
use crate::domain::{Event, JobId, SessionId};

/// Why the server closes a socket from outside its task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The session's next socket took over (`replaced` is already recorded).
    Replaced,
    /// Its send queue filled up: the client is not keeping up.
    SlowConsumer,
    /// The server is stopping.
    Shutdown,
    /// Dropped on purpose without a close frame (the demo's "drop" button).
    Dropped,
    /// This node lost its lease, or the log shows the session lost: the
    /// client is to reconnect (to any node) and resume from the log.
    Fenced,
}

/// The handle the server holds on one socket's task.
#[derive(Debug)]
pub struct SocketControl {
    token: CancellationToken,
    reason: OnceLock<CloseReason>,
}

impl SocketControl {
    /// A control cancelled also when `shutdown` is.
    pub fn new(shutdown: &CancellationToken) -> Arc<Self> {
        Arc::new(SocketControl {
            token: shutdown.child_token(),
            reason: OnceLock::new(),
        })
    }

    /// Asks the socket to close; the first reason given wins.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    pub async fn closed(&self) -> CloseReason {
        self.token.cancelled().await;
        self.reason.get().copied().unwrap_or(CloseReason::Shutdown)
    }
}

/// What the writer needs to feed a socket.
#[derive(Clone, Debug)]
pub struct Registration {
    pub tx: mpsc::Sender<Arc<Event>>,
    pub control: Arc<SocketControl>,
}

#[derive(Debug)]
struct Live {
    session_id: SessionId,
    socket: u32,
    reg: Registration,
}

/// Every job's live sockets: one per watcher that has one.
#[derive(Debug)]
pub struct Hub {
    live: Mutex<HashMap<JobId, Vec<Live>>>,
    lease: Arc<Lease>,
}

impl Hub {
    pub fn new(lease: Arc<Lease>) -> Self {
        Hub {
            live: Mutex::default(),
            lease,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Vec<Live>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `reg` the live socket of its session; the session's previous
    /// socket, if any, is told to close. Other sessions are not touched.
    /// A node without its lease takes no socket: it is closed at once.
    pub fn register(&self, job: JobId, session_id: SessionId, socket: u32, reg: Registration) {
        if !self.lease.holds() {
            reg.control.close(CloseReason::Fenced);
            return;
        }
        let mut live = self.lock();
        // Most jobs have one socket: room for exactly as many as they have.
        let sockets = live.entry(job).or_insert_with(|| Vec::with_capacity(1));
        sockets.reserve_exact(1);
        if let Some(i) = sockets.iter().position(|l| l.session_id == session_id) {
            let old = sockets.swap_remove(i);
            old.reg.control.close(CloseReason::Replaced);
        }
        sockets.push(Live {
            session_id,
            socket,
            reg,
        });
    }

    /// Forgets the socket if it is still its session's live one.
    pub fn unregister(&self, job: JobId, session_id: SessionId, socket: u32) {
        let mut live = self.lock();
        if let Some(sockets) = live.get_mut(&job) {
            sockets.retain(|l| !(l.session_id == session_id && l.socket == socket));
            if sockets.is_empty() {
                live.remove(&job);
            }
        }
    }

    /// Queues a committed job event for each of the job's live sockets whose
    /// session `owned` says the log shows connected on this node, each at
    /// its own pace: a socket whose queue is full is closed (1013) and
    /// dropped (it resumes from its lastSeq); the others are not held up. A
    /// socket whose session is not owned any more is closed (fenced).
    pub fn publish(&self, event: &Arc<Event>, owned: &[SessionId]) {
        if !self.lease.holds() {
            self.close_every(CloseReason::Fenced);
            return;
        }
        let mut live = self.lock();
        let Some(sockets) = live.get_mut(&event.job_id) else {
            return;
        };
        sockets.retain(|l| {
            if !owned.contains(&l.session_id) {
                l.reg.control.close(CloseReason::Fenced);
                return false;
            }
            match l.reg.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(e) => {
                    if matches!(e, mpsc::error::TrySendError::Full(_)) {
                        l.reg.control.close(CloseReason::SlowConsumer);
                    }
                    false
                }
            }
        });
        if sockets.is_empty() {
            live.remove(&event.job_id);
        }
    }

    /// Whether the session has a live socket here.
    pub fn holds(&self, job: JobId, session_id: SessionId) -> bool {
        self.lock()
            .get(&job)
            .is_some_and(|sockets| sockets.iter().any(|l| l.session_id == session_id))
    }

    /// Closes every socket of every job (the node fenced itself).
    pub fn close_every(&self, reason: CloseReason) -> usize {
        let all = std::mem::take(&mut *self.lock());
        let mut closed = 0;
        for l in all.into_values().flatten() {
            l.reg.control.close(reason);
            closed += 1;
        }
        closed
    }

    /// Closes the live socket of one session of the job, if it has one.
    pub fn close_session(&self, job: JobId, session_id: SessionId, reason: CloseReason) -> bool {
        let mut live = self.lock();
        let Some(sockets) = live.get_mut(&job) else {
            return false;
        };
        let Some(i) = sockets.iter().position(|l| l.session_id == session_id) else {
            return false;
        };
        sockets.swap_remove(i).reg.control.close(reason);
        if sockets.is_empty() {
            live.remove(&job);
        }
        true
    }

    /// Closes every live socket of the job.
    pub fn close_all(&self, job: JobId, reason: CloseReason) -> bool {
        match self.lock().remove(&job) {
            Some(sockets) => {
                for l in sockets {
                    l.reg.control.close(reason);
                }
                true
            }
            None => false,
        }
    }

    /// Sockets open now.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Wakes the long-lived readers of one job or stream (long-polls, stream
/// SSE readers) when an event of it commits: a commit elsewhere wakes none
/// of them, so an idle reader costs nothing per commit.
#[derive(Debug, Default)]
pub struct Wakeups {
    watched: Mutex<HashMap<JobId, tokio::sync::watch::Sender<i64>>>,
    /// Subscriptions since the last sweep of ids nobody watches any more.
    since_sweep: std::sync::atomic::AtomicUsize,
}

/// Subscriptions between two sweeps of the ids nobody watches.
const SWEEP_EVERY: usize = 1024;

impl Wakeups {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, tokio::sync::watch::Sender<i64>>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows the position of `id`'s last committed event (from now on:
    /// subscribe before reading the state it guards, and a commit in
    /// between is not missed).
    pub fn watch(&self, id: JobId) -> tokio::sync::watch::Receiver<i64> {
        let mut watched = self.lock();
        if self
            .since_sweep
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            >= SWEEP_EVERY
        {
            self.since_sweep
                .store(0, std::sync::atomic::Ordering::Relaxed);
            watched.retain(|_, tx| tx.receiver_count() > 0);
        }
        match watched.get(&id) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = tokio::sync::watch::channel(0);
                watched.insert(id, tx);
                rx
            }
        }
    }

    /// Wakes the readers of each id these committed events belong to.
    pub fn wake(&self, committed: &[Arc<Event>]) {
        let mut watched = self.lock();
        if watched.is_empty() {
            return;
        }
        for event in committed {
            if let Some(tx) = watched.get(&event.job_id) {
                if tx.send(event.position).is_err() {
                    watched.remove(&event.job_id);
                }
            }
        }
    }
}
