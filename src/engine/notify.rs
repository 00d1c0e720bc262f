//! The notifier: sends each claimed webhook attempt and records its result.
//!
//! The scheduler claims an attempt through the log (`notification_attempt`,
//! committed before anything is sent, so on a shared log only the node whose
//! claim won sends it) and hands the claim here. This task builds the body
//! from the job's state, signs and POSTs it, and has the writer record the
//! result: delivered, abandoned (410, or past max age) or a retry at a
//! backed-off time that the scheduler keeps like any other deadline. A node
//! that dies mid-attempt leaves a claim that runs out; the next attempt is
//! then due, on whichever node holds its lease.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::jobs::JobTable;
use super::queue::Queue;
use crate::clock::Clock;
use crate::domain::notify::AttemptResult;
use crate::domain::reaction::webhook_body;
use crate::domain::{Command, JobId};
use crate::webhook::Endpoint;

/// An attempt this node claimed and must make.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Claimed {
    pub job_id: JobId,
    pub for_seq: i64,
    pub attempt: u32,
}

/// Attempts in flight at once; more wait for a slot. (One that waits past
/// its claim may be made twice: delivery is at least once.)
const IN_FLIGHT: usize = 64;

/// How long a claim holds: an attempt's timeout, plus room to record its
/// result.
pub(crate) fn claim_for(endpoint: &Endpoint) -> std::time::Duration {
    endpoint.timeout + std::time::Duration::from_secs(5)
}

pub(crate) struct Notifier {
    pub queue: Queue,
    pub jobs: Arc<Mutex<JobTable>>,
    pub endpoint: Arc<Endpoint>,
    pub clock: Arc<dyn Clock>,
}

impl Notifier {
    /// Makes each claimed attempt until `shutdown`. Attempts in flight then
    /// are left to their claims' expiry.
    pub async fn run(
        self,
        mut claims: mpsc::UnboundedReceiver<Claimed>,
        shutdown: CancellationToken,
    ) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        loop {
            let claimed = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = claims.recv() => match next {
                    Some(c) => c,
                    None => break,
                },
            };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let this = this.clone();
            tokio::spawn(async move {
                this.attempt(claimed).await;
                drop(slot);
            });
        }
        tracing::debug!("notifier stopped");
    }

    async fn attempt(&self, c: Claimed) {
        let prepared = {
            let table = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            table.peek(c.job_id).and_then(|state| {
                let n = state.notification(c.for_seq)?;
                let body = serde_json::to_vec(&webhook_body(state, n)).ok()?;
                Some((n.id.clone(), body))
            })
        };
        // Settled meanwhile (a late result of an earlier attempt).
        let Some((id, body)) = prepared else { return };
        let timestamp = self.clock.now().timestamp();
        let result = self.endpoint.send(&id, timestamp, body).await;
        match &result {
            AttemptResult::Delivered { status } => {
                tracing::debug!(job = %c.job_id, id, attempt = c.attempt, status, "webhook delivered");
            }
            AttemptResult::Gone => tracing::warn!(
                job = %c.job_id, id, attempt = c.attempt, endpoint = %self.endpoint.display_url(),
                "webhook endpoint answered 410 Gone; notification abandoned"
            ),
            AttemptResult::Failed { error, .. } => tracing::warn!(
                job = %c.job_id, id, attempt = c.attempt, endpoint = %self.endpoint.display_url(),
                error, "webhook attempt failed; it will be retried"
            ),
        }
        let command = Command::SettleNotification {
            for_seq: c.for_seq,
            attempt: c.attempt,
            result,
            backoff: self.endpoint.backoff,
            jitter: jitter(),
        };
        if let Err(e) = self.queue.execute(c.job_id, command).await {
            tracing::warn!(job = %c.job_id, id, attempt = c.attempt, error = %e, "cannot record a webhook attempt's result; its claim will run out and the attempt be made again");
        }
    }
}

/// A uniform draw in 0..1: the jitter of a retry's backoff.
pub fn jitter() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}
