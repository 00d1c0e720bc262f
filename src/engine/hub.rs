//! The live sockets, one per job, and the fan-out of committed job events to
//! them. Only the writer registers sockets and publishes, after a commit, so a
//! socket sees exactly the events committed after its snapshot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::domain::{Event, JobId, SessionId};

/// Why the server closes a socket from outside its task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Another connection took over the job (`replaced` is already recorded).
    Replaced,
    /// Its send queue filled up: the client is not keeping up.
    SlowConsumer,
    /// The server is stopping.
    Shutdown,
    /// Dropped on purpose without a close frame (the demo's "drop" button).
    Dropped,
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

#[derive(Debug, Default)]
pub struct Hub {
    live: Mutex<HashMap<JobId, Live>>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `reg` the job's live socket; the one it replaces is told to close.
    pub fn register(&self, job: JobId, session_id: SessionId, socket: u32, reg: Registration) {
        let old = self.lock().insert(
            job,
            Live {
                session_id,
                socket,
                reg,
            },
        );
        if let Some(old) = old {
            old.reg.control.close(CloseReason::Replaced);
        }
    }

    /// Forgets the socket if it is still the job's live one.
    pub fn unregister(&self, job: JobId, session_id: SessionId, socket: u32) {
        let mut live = self.lock();
        if live
            .get(&job)
            .is_some_and(|l| l.session_id == session_id && l.socket == socket)
        {
            live.remove(&job);
        }
    }

    /// Queues a committed job event for the job's live socket. A socket whose
    /// queue is full is closed (1013) and dropped: it resumes from its lastSeq.
    pub fn publish(&self, event: &Arc<Event>) {
        let mut live = self.lock();
        let Some(l) = live.get(&event.job_id) else {
            return;
        };
        if let Err(e) = l.reg.tx.try_send(event.clone()) {
            if matches!(e, mpsc::error::TrySendError::Full(_)) {
                l.reg.control.close(CloseReason::SlowConsumer);
            }
            live.remove(&event.job_id);
        }
    }

    /// Closes the job's live socket, if it has one.
    pub fn close(&self, job: JobId, reason: CloseReason) -> bool {
        match self.lock().remove(&job) {
            Some(live) => {
                live.reg.control.close(reason);
                true
            }
            None => false,
        }
    }

    /// Sockets open now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
