//! The grace scheduler: one task that sleeps until the next grace deadline and
//! expires the sessions whose windows have passed.
//!
//! Deadlines live in the log (`disconnected.graceUntil`); this task only keeps
//! them in a sorted set, filled from the rebuilt state at start and from the
//! writer after each committed disconnect. Expiry goes through the writer like
//! any other change, and `decide` ignores a deadline whose session has resumed
//! or already ended, so each window expires at most once. Only a node that
//! holds its lease decides a deadline; with several nodes each commit is
//! decided against the log's latest word, so it is written once.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use super::lease::Lease;
use super::{EngineError, Queue};
use crate::clock::Clock;
use crate::domain::{Command, JobId, SessionId};

/// What the scheduler may do: read the clock and ask the writer to expire a
/// session's grace window (which `decide` refuses unless it is due).
pub(super) struct Expiry {
    pub queue: Queue,
    pub clock: Arc<dyn Clock>,
    /// Only a node that holds its lease decides a deadline.
    pub lease: Arc<Lease>,
}

impl Expiry {
    async fn expire(&self, d: &Deadline) -> Result<(), EngineError> {
        let command = Command::ExpireGrace {
            session_id: d.session_id,
        };
        self.queue.execute(d.job_id, command, None).await.map(drop)
    }
}

/// A session's grace window closes at `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline {
    pub at: DateTime<Utc>,
    pub job_id: JobId,
    pub session_id: SessionId,
}

/// Retry delay when the log cannot be written.
const RETRY: Duration = Duration::from_secs(1);

pub(super) async fn run(
    expiry: Expiry,
    initial: Vec<Deadline>,
    mut incoming: mpsc::UnboundedReceiver<Deadline>,
    shutdown: CancellationToken,
) {
    let mut deadlines: BTreeSet<Deadline> = initial.into_iter().collect();
    loop {
        let wait = deadlines.first().map(|d| {
            (d.at - expiry.clock.now())
                .to_std()
                .unwrap_or(Duration::ZERO)
        });
        tokio::select! {
            _ = shutdown.cancelled() => break,
            next = incoming.recv() => match next {
                Some(d) => { deadlines.insert(d); }
                None => break,
            },
            _ = sleep_or_forever(wait) => {
                let now = expiry.clock.now();
                while let Some(d) = deadlines.first().copied().filter(|d| d.at <= now) {
                    if !expiry.lease.holds() {
                        // Fenced: another node decides it, or this one once
                        // it holds a lease again.
                        deadlines.pop_first();
                        deadlines.insert(Deadline { at: now + RETRY, ..d });
                        break;
                    }
                    deadlines.pop_first();
                    match expiry.expire(&d).await {
                        Ok(_) => {}
                        Err(EngineError::Unavailable(e)) => {
                            tracing::warn!(error = %e, job = %d.job_id, "cannot expire grace window yet; retrying");
                            deadlines.insert(Deadline { at: now + RETRY, ..d });
                            break;
                        }
                        Err(e) => tracing::warn!(error = %e, job = %d.job_id, "grace expiry refused"),
                    }
                }
            }
        }
    }
    tracing::debug!("grace scheduler stopped");
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
