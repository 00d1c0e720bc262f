//! The planner: everything one command causes, decided in one place.
//!
//! From a job's state, a command, the time and the server's policy, [`plan`]
//! gives one plain value: the events to append (the command's own, then the
//! reactions they call for, all sealed into the job's chain), the answer the
//! caller gets once they are durable, and what an idempotency key now stands
//! for; the job's deadlines after them are `deadline::of_job` of the state
//! it leaves. The writer only reads what a plan needs, commits it, and
//! publishes it.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::chain::{seal, Sealed};
use super::decide::{decide, AttachPlan, Command, Decision, DomainError, Planned};
use super::event::{Event, JobId};
use super::reaction::notification_due;
use super::state::{fingerprint, IdempotentAppend, JobState};

/// The server's settings that a plan depends on.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Policy {
    /// With a webhook endpoint: how long a notification may stay pending.
    /// Without one, no notification is due.
    pub notify_max_age: Option<Duration>,
}

/// What the caller is answered once the plan is committed.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// The command's own events (the plan's first `own`) are appended.
    Appended,
    /// `CreateJob` on a job that exists.
    AlreadyExists,
    /// A retried keyed append: the seq the first attempt got.
    Duplicate { seq: i64 },
    /// A socket attaches: how to serve it, and its ordinal in its session.
    Attached { plan: AttachPlan, socket: u32 },
    /// Nothing needed doing (a stale close or deadline).
    Nothing,
}

/// Everything one command causes.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The events to append, in order, sealed into the job's chain.
    pub events: Vec<Sealed>,
    /// How many of `events` are the command's own; the rest are reactions.
    pub own: usize,
    pub reply: Reply,
    /// What the command's idempotency key stands for from now on.
    pub keyed: Option<(String, IdempotentAppend)>,
}

/// Plans `command` on the job in `state` at `now`, moving `state` past the
/// events planned. `prior` is what the command's idempotency key produced
/// before, if anything. On an error, `state` is untouched.
pub fn plan(
    state: &mut JobState,
    prior: Option<&IdempotentAppend>,
    command: &Command,
    now: DateTime<Utc>,
    policy: &Policy,
) -> Result<Plan, DomainError> {
    let key = match command {
        Command::AppendJobEvent {
            idempotency_key, ..
        } => idempotency_key.as_deref(),
        _ => None,
    };
    let (own, attach) = match decide(state, prior, command, now)? {
        Decision::AlreadyExists => (Vec::new(), Err(Reply::AlreadyExists)),
        Decision::Duplicate { seq } => (Vec::new(), Err(Reply::Duplicate { seq })),
        Decision::Nothing => (Vec::new(), Err(Reply::Nothing)),
        Decision::Append(events) => (events, Err(Reply::Appended)),
        Decision::Attach { events, plan } => (events, Ok(plan)),
    };
    let job_id = state.job_id;
    let mut events: Vec<Sealed> = own
        .into_iter()
        .map(|p| seal(state, event(job_id, p, key, now)))
        .collect();
    let reply = attach.map_or_else(
        |reply| reply,
        // The socket's ordinal within its session, now that it is counted.
        |plan| {
            let socket = state.watcher(plan.session_id).map_or(0, |s| s.sockets);
            Reply::Attached { plan, socket }
        },
    );
    let own = events.len();
    if let Some(max_age) = policy.notify_max_age {
        let due: Vec<Planned> = events
            .iter()
            .filter_map(|s| notification_due(state, &s.event, max_age))
            .map(|body| Planned {
                session_id: None,
                body,
            })
            .collect();
        for p in due {
            events.push(seal(state, event(job_id, p, None, now)));
        }
    }
    let keyed = key.zip(events.first()).map(|(k, first)| {
        let remembered = IdempotentAppend {
            seq: first.event.seq,
            fingerprint: fingerprint(&first.event.body),
        };
        (k.to_owned(), remembered)
    });
    Ok(Plan {
        events,
        own,
        reply,
        keyed,
    })
}

fn event(job_id: JobId, p: Planned, key: Option<&str>, now: DateTime<Utc>) -> Event {
    let mut event = Event::new(job_id, p.session_id, now, p.body);
    event.idempotency_key = key.map(str::to_owned);
    event
}

#[cfg(test)]
mod tests {
    //! Given a job's events, when a command comes, then these events,
    //! reactions and deadlines follow. No database, no clock.

    use chrono::TimeZone;
    use uuid::Uuid;

    use super::*;
    use crate::domain::chain::{event_hash, Hashed};
    use crate::domain::deadline::{self, Deadline, Due, Schedule};
    use crate::domain::decide::Attach;
    use crate::domain::event::{
        format_time, EventBody, JobCompleted, JobCreated, Notify, ProgressReported, SessionId,
        SCHEMA_VERSION,
    };

    const WEBHOOKS: Policy = Policy {
        notify_max_age: Some(Duration::from_secs(3600)),
    };

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    /// A job that exists since `t(0)`, with these windows and `notify`.
    fn given(stall: u64, timeout: u64, notify: Notify) -> JobState {
        let mut state = JobState::genesis(Uuid::new_v4());
        let create = Command::CreateJob {
            metadata: None,
            stall_after_secs: stall,
            timeout_secs: timeout,
            notify,
        };
        plan(&mut state, None, &create, t(0), &Policy::default()).unwrap();
        state
    }

    fn append(body: EventBody) -> Command {
        Command::AppendJobEvent {
            body,
            idempotency_key: None,
        }
    }

    fn completed() -> Command {
        append(EventBody::JobCompleted(JobCompleted { result: None }))
    }

    fn progress(p: f64) -> Command {
        append(EventBody::ProgressReported(ProgressReported {
            progress: p,
            message: None,
            data: None,
        }))
    }

    fn attach(new_session_id: SessionId) -> Command {
        Command::Attach(Attach {
            new_session_id,
            sub: "client".into(),
            reconnect: false,
            session_id: None,
            max_watchers: 3,
            client_last_seq: None,
            client_epoch: None,
            log_epoch: "epoch".into(),
            user_agent: None,
            address: None,
            node: None,
            transport: None,
            own_session: false,
            counted: None,
        })
    }

    fn detach(session_id: SessionId, socket: u32) -> Command {
        Command::Detach {
            session_id,
            socket,
            code: 1006,
            reason: String::new(),
            acked_seq: None,
            grace: chrono::Duration::seconds(60),
        }
    }

    fn expire(session_id: SessionId) -> Command {
        Command::ExpireGrace { session_id }
    }

    fn kinds(plan: &Plan) -> Vec<&'static str> {
        plan.events.iter().map(|s| s.event.body.kind()).collect()
    }

    fn at(job: &JobState, due: Due, at: DateTime<Utc>) -> Schedule {
        Schedule::At(Deadline {
            at,
            job_id: job.job_id,
            due,
        })
    }

    #[test]
    fn a_completed_job_nobody_watches_also_gets_notification_due() {
        let mut job = given(0, 0, Notify::Unwatched);
        let p = plan(&mut job, None, &completed(), t(5), &WEBHOOKS).unwrap();
        assert_eq!(kinds(&p), ["completed", "notification_due"]);
        assert_eq!(p.own, 1, "the caller's answer is its own event");
        let EventBody::NotificationDue(due) = &p.events[1].event.body else {
            unreachable!()
        };
        assert_eq!(due.for_seq, p.events[0].event.seq);
        assert_eq!(due.reason, "unwatched");
        assert_eq!(due.expires_at, t(5 + 3600));
        assert_eq!(job.notifications.len(), 1, "the state moved past both");
        assert!(deadline::of_job(&job).contains(&at(&job, Due::Notify(due.for_seq), t(5))));
    }

    #[test]
    fn a_watched_job_is_not_notified_unless_it_asks_always() {
        for (notify, expected) in [
            (Notify::Unwatched, vec!["completed"]),
            (Notify::Always, vec!["completed", "notification_due"]),
            (Notify::Never, vec!["completed"]),
        ] {
            let mut job = given(0, 0, notify);
            plan(&mut job, None, &attach(Uuid::new_v4()), t(1), &WEBHOOKS).unwrap();
            let p = plan(&mut job, None, &completed(), t(2), &WEBHOOKS).unwrap();
            assert_eq!(kinds(&p), expected, "notify {notify:?}");
        }
    }

    #[test]
    fn without_a_webhook_endpoint_nothing_is_due() {
        let mut job = given(0, 0, Notify::Always);
        let p = plan(&mut job, None, &completed(), t(2), &Policy::default()).unwrap();
        assert_eq!(kinds(&p), ["completed"]);
        assert!(job.notifications.is_empty());
    }

    #[test]
    fn a_stall_calls_for_a_notification_and_clears_the_stall_deadline() {
        let mut job = given(30, 0, Notify::Unwatched);
        let p = plan(&mut job, None, &Command::MarkStalled, t(30), &WEBHOOKS).unwrap();
        assert_eq!(kinds(&p), ["stalled", "notification_due"]);
        assert!(deadline::of_job(&job).contains(&Schedule::Clear(job.job_id, Due::Stall)));
    }

    #[test]
    fn creation_sets_the_stall_and_timeout_deadlines_and_a_job_event_moves_the_stall() {
        let mut job = JobState::genesis(Uuid::new_v4());
        let create = Command::CreateJob {
            metadata: None,
            stall_after_secs: 30,
            timeout_secs: 600,
            notify: Notify::Unwatched,
        };
        let p = plan(&mut job, None, &create, t(0), &WEBHOOKS).unwrap();
        assert_eq!(kinds(&p), ["job_created"]);
        assert_eq!(
            deadline::of_job(&job),
            [at(&job, Due::Stall, t(30)), at(&job, Due::Timeout, t(600))]
        );
        plan(&mut job, None, &progress(0.5), t(20), &WEBHOOKS).unwrap();
        assert!(deadline::of_job(&job).contains(&at(&job, Due::Stall, t(50))));
        assert!(deadline::of_job(&job).contains(&at(&job, Due::Timeout, t(600))));
    }

    #[test]
    fn a_finished_job_has_no_stall_or_timeout_left() {
        let mut job = given(30, 600, Notify::Never);
        plan(&mut job, None, &completed(), t(10), &WEBHOOKS).unwrap();
        assert_eq!(
            deadline::of_job(&job),
            [
                Schedule::Clear(job.job_id, Due::Stall),
                Schedule::Clear(job.job_id, Due::Timeout)
            ]
        );
    }

    #[test]
    fn a_timeout_fails_the_job_and_notifies_it() {
        let mut job = given(0, 600, Notify::Unwatched);
        let p = plan(&mut job, None, &Command::TimeOut, t(600), &WEBHOOKS).unwrap();
        assert_eq!(kinds(&p), ["failed", "notification_due"]);
    }

    #[test]
    fn a_disconnect_opens_a_grace_window_that_is_a_deadline() {
        let mut job = given(0, 0, Notify::Unwatched);
        let session = Uuid::new_v4();
        let p = plan(&mut job, None, &attach(session), t(1), &WEBHOOKS).unwrap();
        assert!(matches!(p.reply, Reply::Attached { socket: 1, .. }));
        let p = plan(&mut job, None, &detach(session, 1), t(10), &WEBHOOKS).unwrap();
        assert_eq!(kinds(&p), ["disconnected"]);
        assert!(deadline::of_job(&job).contains(&at(&job, Due::Grace(session), t(70))));
        // The same deadline, from the state alone (as at start).
        assert!(deadline::of_job(&job).contains(&at(&job, Due::Grace(session), t(70))));
        let p = plan(&mut job, None, &expire(session), t(70), &WEBHOOKS).unwrap();
        assert_eq!(kinds(&p), ["grace_expired"]);
        assert!(!deadline::of_job(&job).iter().any(|d| matches!(
            d,
            Schedule::At(Deadline {
                due: Due::Grace(_),
                ..
            })
        )));
    }

    #[test]
    fn each_notification_attempt_moves_its_deadline() {
        let mut job = given(0, 0, Notify::Unwatched);
        let done = plan(&mut job, None, &completed(), t(5), &WEBHOOKS).unwrap();
        let for_seq = done.events[0].event.seq;
        let claim = Command::ClaimNotification {
            for_seq,
            node: None,
            claim: Duration::from_secs(30),
        };
        let p = plan(&mut job, None, &claim, t(5), &WEBHOOKS).unwrap();
        assert_eq!(kinds(&p), ["notification_attempt"]);
        assert!(deadline::of_job(&job).contains(&at(&job, Due::Notify(for_seq), t(35))));
        let settle = Command::SettleNotification {
            for_seq,
            attempt: 1,
            result: crate::domain::notify::AttemptResult::Failed {
                status: Some(500),
                error: "HTTP 500".into(),
            },
            backoff: crate::domain::notify::Backoff {
                base: Duration::from_secs(10),
                cap: Duration::from_secs(60),
            },
            jitter: 1.0,
        };
        let p = plan(&mut job, None, &settle, t(6), &WEBHOOKS).unwrap();
        assert_eq!(kinds(&p), ["notification_retry"]);
        assert!(deadline::of_job(&job).contains(&at(&job, Due::Notify(for_seq), t(16))));
    }

    #[test]
    fn a_stale_deadline_decides_nothing() {
        let mut job = given(0, 0, Notify::Unwatched);
        let before = job.clone();
        let p = plan(&mut job, None, &expire(Uuid::new_v4()), t(5), &WEBHOOKS).unwrap();
        assert_eq!(p.reply, Reply::Nothing);
        assert!(p.events.is_empty());
        assert_eq!(job, before);
    }

    #[test]
    fn events_are_sealed_into_the_chain_in_order() {
        let mut job = given(0, 0, Notify::Unwatched);
        let (head, prev) = (job.head_seq, job.head_hash.clone());
        let p = plan(&mut job, None, &completed(), t(3), &WEBHOOKS).unwrap();
        let mut prev_hash = prev;
        for (i, s) in p.events.iter().enumerate() {
            let e = &s.event;
            assert_eq!(e.seq, head + 1 + i as i64);
            let expected = event_hash(
                &prev_hash,
                &Hashed {
                    job_id: &e.job_id.to_string(),
                    seq: e.seq,
                    session_id: None,
                    kind: e.body.kind(),
                    schema_version: SCHEMA_VERSION,
                    idempotency_key: e.idempotency_key.as_deref(),
                    at: &format_time(&e.at),
                    payload: &s.payload,
                },
            );
            assert_eq!(e.hash, expected);
            prev_hash = e.hash.clone();
        }
        assert_eq!(job.head_hash, prev_hash);
    }

    #[test]
    fn a_keyed_append_remembers_its_key_and_a_retry_is_a_duplicate() {
        let mut job = given(0, 0, Notify::Unwatched);
        let keyed = Command::AppendJobEvent {
            body: EventBody::JobCompleted(JobCompleted { result: None }),
            idempotency_key: Some("k1".into()),
        };
        let p = plan(&mut job, None, &keyed, t(3), &WEBHOOKS).unwrap();
        let (key, remembered) = p.keyed.clone().unwrap();
        assert_eq!(key, "k1");
        assert_eq!(remembered.seq, p.events[0].event.seq);
        assert_eq!(p.events[0].event.idempotency_key.as_deref(), Some("k1"));
        assert_eq!(
            p.events[1].event.idempotency_key, None,
            "a reaction has no key"
        );
        let again = plan(&mut job, Some(&remembered), &keyed, t(4), &WEBHOOKS).unwrap();
        assert_eq!(
            again.reply,
            Reply::Duplicate {
                seq: remembered.seq
            }
        );
        assert!(again.events.is_empty());
    }

    #[test]
    fn a_refused_command_leaves_the_state_as_it_was() {
        let mut job = given(0, 0, Notify::Unwatched);
        plan(&mut job, None, &completed(), t(3), &WEBHOOKS).unwrap();
        let before = job.clone();
        let err = plan(&mut job, None, &progress(0.9), t(4), &WEBHOOKS).unwrap_err();
        assert!(matches!(err, DomainError::JobFinished(_)));
        assert_eq!(job, before);
    }

    #[test]
    fn the_created_event_carries_its_windows() {
        let mut job = JobState::genesis(Uuid::new_v4());
        let create = Command::CreateJob {
            metadata: None,
            stall_after_secs: 0,
            timeout_secs: 9,
            notify: Notify::Unwatched,
        };
        let p = plan(&mut job, None, &create, t(0), &WEBHOOKS).unwrap();
        assert_eq!(
            p.events[0].event.body,
            EventBody::JobCreated(JobCreated {
                metadata: None,
                stall_after_secs: None,
                timeout_secs: Some(9),
                notify: None,
            })
        );
    }
}
