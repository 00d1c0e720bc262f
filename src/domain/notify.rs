//! Webhook notifications as the log tells them: when one is due, what it
//! says, how long until its next attempt, and how an attempt ends.
//!
//! A notification is due when a job event that ends the job (or a `stalled`)
//! is committed and the job's `notify` asks for one. From then on it is
//! events of the job: `notification_due`, then per attempt a
//! `notification_attempt` claim (committed before the request is sent) and
//! its result, until `notification_delivered` or `notification_abandoned`.
//! When one is due, and what it says, is in `reaction`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::event::{EventBody, JobId};

/// A notification not yet delivered or abandoned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingNotification {
    pub id: String,
    pub for_seq: i64,
    pub kind: String,
    pub status: String,
    pub progress: f64,
    /// When it became due: the time of the event it notifies.
    pub due_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Attempts claimed so far.
    pub attempts: u32,
    /// The attempt claimed and not yet settled, if any.
    pub in_flight: Option<u32>,
    /// When something next comes due: the first attempt, a retry, or the
    /// expiry of the claim in flight.
    pub next_at: DateTime<Utc>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// The last notification delivered, as the job state shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notified {
    pub at: DateTime<Utc>,
    pub id: String,
    pub kind: String,
}

/// How an attempt ended, as the sender saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptResult {
    /// A 2xx.
    Delivered { status: u16 },
    /// A 410: the endpoint wants no more.
    Gone,
    /// Another answer, a timeout, a refused connection.
    Failed { status: Option<u16>, error: String },
}

/// The retry schedule: exponential from `base`, capped, with full jitter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The wait after failed attempt `attempt` (1-based): a uniform draw
    /// (`jitter` in 0..1) below `min(cap, base * 2^(attempt-1))`.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        self.ceiling(attempt).mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// The longest wait after failed attempt `attempt`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(32);
        self.base
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.cap)
    }
}

/// The `webhook-id` of the notification of the job's event at `seq`: the
/// same on every node and across restarts, derived from the log.
pub fn webhook_id(job_id: JobId, seq: i64) -> String {
    format!("msg_{}_{}", job_id.simple(), seq)
}

/// The notification type of a job event that can be notified.
pub fn notifiable_kind(body: &EventBody) -> Option<&'static str> {
    match body {
        EventBody::JobCompleted(_) => Some("job.completed"),
        EventBody::JobFailed(_) => Some("job.failed"),
        EventBody::JobCancelled(_) => Some("job.cancelled"),
        EventBody::JobStalled(_) => Some("job.stalled"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_jitter_scales_it() {
        let b = Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
        };
        assert_eq!(b.ceiling(1), Duration::from_secs(1));
        assert_eq!(b.ceiling(3), Duration::from_secs(4));
        assert_eq!(b.ceiling(7), Duration::from_secs(60));
        assert_eq!(b.ceiling(500), Duration::from_secs(60));
        assert_eq!(b.delay(3, 0.5), Duration::from_secs(2));
        assert_eq!(b.delay(3, 7.0), Duration::from_secs(4));
    }

    #[test]
    fn webhook_ids_are_stable_per_job_event() {
        let job = uuid::Uuid::new_v4();
        assert_eq!(webhook_id(job, 7), webhook_id(job, 7));
        assert_ne!(webhook_id(job, 7), webhook_id(job, 8));
    }
}
