//! The scheduler: one task that sleeps until the next deadline and has the
//! writer decide it. Deadlines are grace windows (a session's), a job's
//! stall and timeout, and the next attempt of each pending webhook
//! notification (handed to the notifier once its claim is committed).
//!
//! Deadlines live in the log (`disconnected.graceUntil`, and the job's
//! windows in `job_created` with its last job event) and come from the
//! domain (`deadline::of_job`); this task only keeps them in a sorted set,
//! filled from the rebuilt state at start and from the writer after each
//! committed event. A job has at most one stall and one
//! timeout deadline here (a newer one replaces it; a finished job's are
//! dropped), so the set is bounded by live work. Each deadline goes through
//! the writer like any other change, and `decide` ignores one that is not due
//! on the job's latest state (the session resumed or ended, a job event came,
//! the job finished), so each fires at most once. Only a node that holds its
//! lease decides a deadline; with several nodes each commit is decided
//! against the log's latest word, so it is written once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::jobs::{end_stream, JobTable};
use super::lease::Lease;
use super::notify::Claimed;
use super::queue::{EngineError, Queue, StreamReads};
use crate::clock::Clock;
use crate::domain::deadline::{Deadline, Due, Schedule};
use crate::domain::stream::StreamCommand;
use crate::domain::{Command, EventBody, JobId};

/// What the scheduler may do: read the clock and ask the writer to decide a
/// deadline (which `decide` refuses unless it is due).
pub(super) struct Expiry {
    pub queue: Queue,
    pub clock: Arc<dyn Clock>,
    /// The clock's time through which every due deadline is decided.
    pub decided: watch::Sender<DateTime<Utc>>,
    /// Only a node that holds its lease decides a deadline.
    pub lease: Arc<Lease>,
    /// Where committed claims go to be sent; none when this node has no
    /// webhook endpoint (notifications then wait, pending, for one that has).
    pub notifier: Option<Claims>,
    /// The reads served of each stream, which may have kept it alive.
    pub reads: Arc<StreamReads>,
    /// The held jobs and streams (a stream's forks are counted there).
    pub jobs: Arc<std::sync::Mutex<JobTable>>,
}

/// The notifier's end of the scheduler: how long a claim lasts, and where
/// each committed claim is handed.
pub(super) struct Claims {
    pub claim: Duration,
    pub tx: mpsc::UnboundedSender<Claimed>,
}

impl Expiry {
    async fn decide(&self, d: &Deadline) -> Result<(), EngineError> {
        let command = match d.due {
            Due::Grace(session_id) => Command::ExpireGrace { session_id },
            Due::Stall => Command::MarkStalled,
            Due::Timeout => Command::TimeOut,
            Due::StreamExpiry => {
                let expire = |forks| StreamCommand::Expire { forks };
                end_stream(&self.queue, &self.jobs, &self.reads, d.job_id, expire).await?;
                return Ok(());
            }
            Due::Notify(for_seq) => {
                let Some(claims) = &self.notifier else {
                    return Ok(());
                };
                let command = Command::ClaimNotification {
                    for_seq,
                    node: self.lease.node().map(|n| n.to_string()),
                    claim: claims.claim,
                };
                for event in self.queue.execute(d.job_id, command).await? {
                    if let EventBody::NotificationAttempt(a) = &event.body {
                        let _ = claims.tx.send(Claimed {
                            job_id: d.job_id,
                            for_seq,
                            attempt: a.attempt,
                        });
                    }
                }
                return Ok(());
            }
        };
        self.queue.execute(d.job_id, command).await.map(drop)
    }

    /// Whether this node acts on such a deadline at all.
    fn keeps(&self, due: Due) -> bool {
        !matches!(due, Due::Notify(_)) || self.notifier.is_some()
    }
}

/// The deadlines held, with each job's one stall and one timeout.
#[derive(Default)]
struct Deadlines {
    sorted: BTreeSet<Deadline>,
    /// Where each job's stall and timeout deadline sits in `sorted`.
    keyed: HashMap<(JobId, Due), DateTime<Utc>>,
}

impl Deadlines {
    fn apply(&mut self, s: Schedule) {
        match s {
            Schedule::At(d) if matches!(d.due, Due::Grace(_)) => {
                self.sorted.insert(d);
            }
            Schedule::At(d) => {
                if let Some(old) = self.keyed.insert((d.job_id, d.due), d.at) {
                    self.sorted.remove(&Deadline { at: old, ..d });
                }
                self.sorted.insert(d);
            }
            Schedule::Clear(job_id, due) => {
                if let Some(at) = self.keyed.remove(&(job_id, due)) {
                    self.sorted.remove(&Deadline { at, job_id, due });
                }
            }
        }
    }

    fn first(&self) -> Option<Deadline> {
        self.sorted.first().copied()
    }

    fn take_first(&mut self) -> Option<Deadline> {
        let d = self.sorted.pop_first()?;
        if !matches!(d.due, Due::Grace(_)) {
            self.keyed.remove(&(d.job_id, d.due));
        }
        Some(d)
    }

    /// Puts a deadline back for `at` unless a newer one replaced it.
    fn retry(&mut self, d: Deadline, at: DateTime<Utc>) {
        self.apply(Schedule::At(Deadline { at, ..d }));
    }
}

/// The most deadlines decided at once.
const DECIDE_BATCH: usize = 1024;

/// Retry delay when the log cannot be written.
const RETRY: Duration = Duration::from_secs(1);

pub(super) async fn run(
    expiry: Expiry,
    initial: Vec<Schedule>,
    mut incoming: mpsc::UnboundedReceiver<Schedule>,
    shutdown: CancellationToken,
) {
    let mut deadlines = Deadlines::default();
    let keeps = |s: &Schedule| match s {
        Schedule::At(d) => expiry.keeps(d.due),
        Schedule::Clear(_, due) => expiry.keeps(*due),
    };
    for s in initial.into_iter().filter(keeps) {
        deadlines.apply(s);
    }
    // A clock that is set (a test's) wakes the scheduler when it moves.
    let mut settings = expiry.clock.settings();
    loop {
        // What the writer sent before now is known before anything is
        // judged not due.
        while let Ok(s) = incoming.try_recv() {
            if keeps(&s) {
                deadlines.apply(s);
            }
        }
        let now = expiry.clock.now();
        if deadlines.first().is_none_or(|d| d.at > now) {
            expiry.decided.send_if_modified(|through| {
                let moved = now > *through;
                *through = (*through).max(now);
                moved
            });
        }
        let wait = deadlines.first().map(|d| {
            (d.at - expiry.clock.now())
                .to_std()
                .unwrap_or(Duration::ZERO)
        });
        tokio::select! {
            _ = shutdown.cancelled() => break,
            next = incoming.recv() => match next {
                Some(s) if keeps(&s) => deadlines.apply(s),
                Some(_) => {}
                None => break,
            },
            _ = clock_set(settings.as_mut()) => {}
            _ = sleep_or_forever(wait) => {
                let now = expiry.clock.now();
                if !expiry.lease.holds() {
                    // Fenced: another node decides them, or this one once
                    // it holds a lease again.
                    if let Some(d) = deadlines.first().filter(|d| d.at <= now) {
                        deadlines.take_first();
                        deadlines.retry(d, now + RETRY);
                    }
                    continue;
                }
                // Up to a batch of what is due, decided together: the
                // writer commits them as one group, and a crowd of
                // deadlines at one instant holds nothing else back for
                // long (the loop comes back for the rest at once).
                let mut due = Vec::new();
                while due.len() < DECIDE_BATCH {
                    let Some(d) = deadlines.first().filter(|d| d.at <= now) else {
                        break;
                    };
                    deadlines.take_first();
                    due.push(d);
                }
                let outcomes = join_all(due.iter().map(|d| expiry.decide(d))).await;
                for (d, outcome) in due.into_iter().zip(outcomes) {
                    match outcome {
                        Ok(_) => {}
                        Err(EngineError::Unavailable(e)) => {
                            tracing::warn!(error = %e, job = %d.job_id, "cannot decide a deadline yet; retrying");
                            deadlines.retry(d, now + RETRY);
                        }
                        Err(e) => tracing::warn!(error = %e, job = %d.job_id, "deadline refused"),
                    }
                }
            }
        }
    }
    tracing::debug!("scheduler stopped");
}

/// Returns when the clock is set (never for a running clock).
async fn clock_set(settings: Option<&mut watch::Receiver<DateTime<Utc>>>) {
    if let Some(s) = settings {
        if s.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_newer_stall_deadline_replaces_the_older_and_clearing_drops_it() {
        let job = uuid::Uuid::new_v4();
        let t = Utc::now();
        let mut d = Deadlines::default();
        for secs in [1, 2, 3] {
            d.apply(Schedule::At(Deadline {
                at: t + chrono::Duration::seconds(secs),
                job_id: job,
                due: Due::Stall,
            }));
        }
        assert_eq!(d.sorted.len(), 1);
        assert_eq!(d.first().unwrap().at, t + chrono::Duration::seconds(3));
        d.apply(Schedule::Clear(job, Due::Stall));
        assert!(d.sorted.is_empty() && d.keyed.is_empty());
    }
}
