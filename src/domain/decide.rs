//! Commands and the pure decision of which events they produce.
//!
//! `decide` looks at the current state of one job (and, for keyed appends, what
//! the key produced before) and answers with the events to append, or why not.
//! It never touches the log or the clock: the writer passes both in.

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

use super::event::{
    Client, Connected, Disconnected, EventBody, FailureInfo, GraceExpired, JobCreated, JobFailed,
    JobStalled, NotificationAbandoned, NotificationAttempt, NotificationDelivered,
    NotificationRetry, Notify, Reconnected, Replaced, SessionId,
};
use super::notify::{AttemptResult, Backoff};
use super::state::{fingerprint, IdempotentAppend, JobState, JobStatus, SessionPhase};
use super::stream::{decide_stream, StreamCommand, StreamDecision, StreamRefusal};

/// Close code and reason sent to a socket that another connection replaced.
pub const REPLACED_CODE: u16 = super::close::NORMAL;
pub const REPLACED_REASON: &str = super::close::REPLACED;

/// A request to change a job.
#[derive(Clone, Debug)]
pub enum Command {
    /// Create the job, unless it already exists.
    CreateJob {
        metadata: Option<Value>,
        /// Its stall and timeout windows, server defaults applied (0: none).
        stall_after_secs: u64,
        timeout_secs: u64,
        notify: Notify,
    },
    /// Append one job event (progress, message or a terminal event).
    AppendJobEvent {
        body: EventBody,
        idempotency_key: Option<String>,
    },
    /// Record events observed elsewhere (`ws_error`, `connect_rejected`). Only
    /// needs the job to exist.
    Record {
        session_id: Option<SessionId>,
        body: EventBody,
    },
    /// A socket opened (fresh connect or reconnect).
    Attach(Attach),
    /// A socket closed. Ignored unless it is still the session's live socket.
    Detach {
        session_id: SessionId,
        /// The socket's ordinal within its session (see `SessionState::sockets`).
        socket: u32,
        code: u16,
        reason: String,
        acked_seq: Option<i64>,
        grace: Duration,
    },
    /// A grace deadline came. Ignored unless the session is still waiting.
    ExpireGrace { session_id: SessionId },
    /// The job's stall deadline came. Ignored unless it is due: no job event
    /// since, not stalled already, not finished.
    MarkStalled,
    /// The job's timeout came. Ignored unless it is due and the job has not
    /// finished.
    TimeOut,
    /// The notification of the job event at `for_seq` has its next attempt
    /// due: claimed for `node` until `claim` from now, or abandoned if it
    /// outlived its max age. Ignored unless it is pending and due.
    ClaimNotification {
        for_seq: i64,
        node: Option<String>,
        claim: std::time::Duration,
    },
    /// How attempt `attempt` of that notification ended. A failure is
    /// recorded only while the attempt is still the one in flight; a
    /// delivery or a 410 ends the notification whichever attempt it was.
    SettleNotification {
        for_seq: i64,
        attempt: u32,
        result: AttemptResult,
        backoff: Backoff,
        /// A uniform draw in 0..1 for the retry's jitter.
        jitter: f64,
    },
    /// A command of the Durable Streams stream with this id. `last_read`:
    /// the last read this node served it since its last write (which keeps
    /// a TTL alive; reads are not events).
    Stream {
        command: StreamCommand,
        last_read: Option<DateTime<Utc>>,
    },
}

/// The error code of the `failed` a timeout appends.
pub const TIMEOUT_CODE: &str = "timeout";

/// What a client asked for when its socket opened.
#[derive(Clone, Debug)]
pub struct Attach {
    /// The id a new session gets (drawn by the caller: `decide` is pure).
    pub new_session_id: SessionId,
    pub sub: String,
    /// `reconnect=true`.
    pub reconnect: bool,
    /// The session the client resumes (`sessionId`), when it names one.
    pub session_id: Option<SessionId>,
    /// Most watchers (sessions that have not ended) the job may have.
    pub max_watchers: usize,
    /// The client's `lastSeq`.
    pub client_last_seq: Option<i64>,
    /// The client's `epoch`.
    pub client_epoch: Option<String>,
    /// This log's epoch.
    pub log_epoch: String,
    pub user_agent: Option<String>,
    /// The client's address (the peer, or forwarded by a trusted proxy).
    pub address: Option<String>,
    /// The node that will hold the socket (on a shared log).
    pub node: Option<String>,
    /// `sse` for the Server-Sent Events stream; none for a WebSocket.
    pub transport: Option<String>,
    /// A reader that replays from its `lastSeq` in a session of its own (a
    /// Durable Streams reader): it continues its subject's session of the
    /// same transport that waits in its grace window (the reader reopening
    /// its response), and never takes over another watcher's session.
    pub own_session: bool,
    /// Set by the writer when the replay starts further back than the
    /// job's state can count from.
    pub counted: Option<Counted>,
}

/// How many job events lie after a seq, counted in the log by the writer
/// for a client resuming from further back than the state's recent seqs
/// reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counted {
    /// The seq counted after.
    pub after: i64,
    /// Job events after it, as of the count.
    pub job_events: u64,
    /// The job's `job_events` when it was counted (events since are added).
    pub job_events_then: u64,
}

impl Attach {
    /// The seq the replay starts after: the client's `lastSeq`, or 0 for one
    /// from another log (an epoch mismatch) or beyond anything this job has
    /// delivered, which means nothing here.
    pub fn replay_after(&self, state: &JobState) -> i64 {
        let epoch_matches = self
            .client_epoch
            .as_deref()
            .is_none_or(|e| e == self.log_epoch);
        match self.client_last_seq {
            Some(seq) if epoch_matches && (0..=state.last_seq).contains(&seq) => seq,
            _ => 0,
        }
    }

    /// Who is attaching, as the log records it.
    fn client(&self) -> Client {
        Client {
            sub: self.sub.clone(),
            user_agent: self.user_agent.clone(),
            address: self.address.clone(),
            node: self.node.clone(),
            transport: self.transport.clone(),
        }
    }
}

/// How an attached socket is to be served.
#[derive(Clone, Debug, PartialEq)]
pub struct AttachPlan {
    pub session_id: SessionId,
    pub reconnect: bool,
    pub resumed: bool,
    /// Replay job events with seq greater than this (`None`: no replay).
    pub replay_after: Option<i64>,
    /// How many job events the replay holds.
    pub missed: u64,
}

/// An event to append, with the session it belongs to.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub session_id: Option<SessionId>,
    pub body: EventBody,
}

impl Planned {
    fn job(body: EventBody) -> Self {
        Planned {
            session_id: None,
            body,
        }
    }

    fn session(id: SessionId, body: EventBody) -> Self {
        Planned {
            session_id: Some(id),
            body,
        }
    }
}

/// What a command decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Append these events, in order.
    Append(Vec<Planned>),
    /// Append these events and serve the socket as planned.
    Attach {
        events: Vec<Planned>,
        plan: AttachPlan,
    },
    /// The job already exists: nothing to append.
    AlreadyExists,
    /// A retry of an append that already happened: answer with its seq.
    Duplicate { seq: i64 },
    /// Nothing to do (a stale close or deadline).
    Nothing,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DomainError {
    #[error("job not found")]
    UnknownJob,
    #[error("the job is {} and accepts no more events", .0.as_str())]
    JobFinished(JobStatus),
    #[error("this Idempotency-Key was already used for a different event")]
    IdempotencyKeyReused,
    #[error("{0}")]
    InvalidEvent(String),
    #[error("the job already has {0} watchers, the most it may have")]
    TooManyWatchers(usize),
    #[error(transparent)]
    Stream(#[from] StreamRefusal),
    /// Jobs and streams share one id space: an id is one or the other.
    #[error("this id belongs to a {0}, not a {1}")]
    IdInUse(&'static str, &'static str),
    /// The log holds an event of it this server cannot read.
    #[error("the log holds an event of this job or stream that this server cannot read; it is set aside until the log is repaired (`rejoin verify` names the event)")]
    Unreadable,
    /// Retention removed the job: when it finished (RFC 3339) and how many
    /// events left with it.
    #[error("the job finished at {0} and was removed from the log by retention with its {1} events; they are in the archive if one is kept (`rejoin replay --archive DIR --job ID`)")]
    Archived(String, i64),
}

/// Decides what `command` appends to the job in `state` at time `now`.
///
/// `prior` is what the command's idempotency key produced earlier, if anything.
pub fn decide(
    state: &JobState,
    prior: Option<&IdempotentAppend>,
    command: &Command,
    now: DateTime<Utc>,
) -> Result<Decision, DomainError> {
    if let Command::Stream { command, last_read } = command {
        if state.exists() {
            return Err(DomainError::IdInUse("job", "stream"));
        }
        let next_seq = state.head_seq + 1;
        return Ok(
            match decide_stream(state.stream.as_ref(), next_seq, command, now, *last_read)? {
                StreamDecision::Append(bodies) => {
                    Decision::Append(bodies.into_iter().map(Planned::job).collect())
                }
                StreamDecision::AlreadyExists => Decision::AlreadyExists,
                StreamDecision::Duplicate { seq } => Decision::Duplicate { seq: seq as i64 },
                StreamDecision::Nothing => Decision::Nothing,
            },
        );
    }
    if let Command::CreateJob {
        metadata,
        stall_after_secs,
        timeout_secs,
        notify,
    } = command
    {
        if state.stream.is_some() {
            return Err(DomainError::IdInUse("stream", "job"));
        }
        if state.exists() {
            return Ok(Decision::AlreadyExists);
        }
        return Ok(Decision::Append(vec![Planned::job(EventBody::JobCreated(
            JobCreated {
                metadata: metadata.clone(),
                stall_after_secs: (*stall_after_secs > 0).then_some(*stall_after_secs),
                timeout_secs: (*timeout_secs > 0).then_some(*timeout_secs),
                notify: (*notify != Notify::default()).then_some(*notify),
            },
        ))]));
    }
    if !state.exists() {
        return Err(DomainError::UnknownJob);
    }
    match command {
        Command::CreateJob { .. } | Command::Stream { .. } => unreachable!("handled above"),
        Command::AppendJobEvent { body, .. } => {
            if let Some(prior) = prior {
                return if prior.fingerprint == fingerprint(body) {
                    Ok(Decision::Duplicate { seq: prior.seq })
                } else {
                    Err(DomainError::IdempotencyKeyReused)
                };
            }
            if !body.is_job_event() {
                return Err(DomainError::InvalidEvent(format!(
                    "`{}` is not a job event",
                    body.kind()
                )));
            }
            validate_job_event(body)?;
            if state.status.is_terminal() {
                return Err(DomainError::JobFinished(state.status));
            }
            Ok(Decision::Append(vec![Planned::job(body.clone())]))
        }
        Command::Record { session_id, body } => Ok(Decision::Append(vec![Planned {
            session_id: *session_id,
            body: body.clone(),
        }])),
        Command::Attach(attach) => decide_attach(state, attach, now),
        Command::Detach {
            session_id,
            socket,
            code,
            reason,
            acked_seq,
            grace,
        } => match state.watcher(*session_id) {
            Some(s) if s.sockets == *socket && s.phase == SessionPhase::Connected => {
                // After a terminal event there is nothing to come back for:
                // the close ends the session, with no grace window.
                let grace_until = (!state.status.is_terminal()).then(|| now + *grace);
                Ok(Decision::Append(vec![Planned::session(
                    *session_id,
                    EventBody::Disconnected(Disconnected {
                        code: *code,
                        reason: reason.clone(),
                        grace_until,
                        acked_seq: *acked_seq,
                        transport: s.transport.clone(),
                    }),
                )]))
            }
            _ => Ok(Decision::Nothing),
        },
        Command::MarkStalled => match (state.stall_deadline(), state.last_update) {
            (Some(due), Some(since)) if due <= now => Ok(Decision::Append(vec![Planned::job(
                EventBody::JobStalled(JobStalled { since }),
            )])),
            _ => Ok(Decision::Nothing),
        },
        Command::TimeOut => match state.timeout_deadline() {
            Some(due) if due <= now => {
                let secs = state.timeout_secs.unwrap_or_default();
                Ok(Decision::Append(vec![Planned::job(EventBody::JobFailed(
                    JobFailed {
                        error: FailureInfo {
                            code: TIMEOUT_CODE.into(),
                            message: format!("the job did not finish within {secs} s"),
                        },
                    },
                ))]))
            }
            _ => Ok(Decision::Nothing),
        },
        Command::ClaimNotification {
            for_seq,
            node,
            claim,
        } => Ok(claim_notification(state, *for_seq, node, *claim, now)),
        Command::SettleNotification {
            for_seq,
            attempt,
            result,
            backoff,
            jitter,
        } => Ok(settle_notification(
            state, *for_seq, *attempt, result, backoff, *jitter, now,
        )),
        Command::ExpireGrace { session_id } => match state.watcher(*session_id) {
            Some(s) => match s.phase {
                SessionPhase::Grace { until } if until <= now => {
                    Ok(Decision::Append(vec![Planned::session(
                        *session_id,
                        EventBody::GraceExpired(GraceExpired { grace_until: until }),
                    )]))
                }
                _ => Ok(Decision::Nothing),
            },
            None => Ok(Decision::Nothing),
        },
    }
}

fn claim_notification(
    state: &JobState,
    for_seq: i64,
    node: &Option<String>,
    claim: std::time::Duration,
    now: DateTime<Utc>,
) -> Decision {
    let Some(n) = state.notification(for_seq).filter(|n| n.next_at <= now) else {
        return Decision::Nothing;
    };
    let body = if now >= n.expires_at {
        EventBody::NotificationAbandoned(NotificationAbandoned {
            id: n.id.clone(),
            attempts: n.attempts,
            reason: "expired".into(),
            status: None,
            error: n.last_error.clone(),
        })
    } else {
        EventBody::NotificationAttempt(NotificationAttempt {
            id: n.id.clone(),
            attempt: n.attempts + 1,
            node: node.clone(),
            until: now + Duration::from_std(claim).unwrap_or(Duration::MAX),
        })
    };
    Decision::Append(vec![Planned::job(body)])
}

fn settle_notification(
    state: &JobState,
    for_seq: i64,
    attempt: u32,
    result: &AttemptResult,
    backoff: &Backoff,
    jitter: f64,
    now: DateTime<Utc>,
) -> Decision {
    let Some(n) = state
        .notification(for_seq)
        .filter(|n| attempt >= 1 && attempt <= n.attempts)
    else {
        return Decision::Nothing;
    };
    let id = n.id.clone();
    let body = match result {
        AttemptResult::Delivered { status } => {
            EventBody::NotificationDelivered(NotificationDelivered {
                id,
                attempt,
                status: *status,
            })
        }
        AttemptResult::Gone => EventBody::NotificationAbandoned(NotificationAbandoned {
            id,
            attempts: n.attempts,
            reason: "gone".into(),
            status: Some(410),
            error: None,
        }),
        // A late failure of an attempt whose claim ran out: the next one is
        // already scheduled (or made); it decides.
        AttemptResult::Failed { .. } if n.in_flight != Some(attempt) => return Decision::Nothing,
        AttemptResult::Failed { status, error } => {
            let wait = Duration::from_std(backoff.delay(attempt, jitter)).unwrap_or(Duration::MAX);
            let retry_at = now.checked_add_signed(wait).unwrap_or(n.expires_at);
            if retry_at >= n.expires_at {
                EventBody::NotificationAbandoned(NotificationAbandoned {
                    id,
                    attempts: n.attempts,
                    reason: "expired".into(),
                    status: *status,
                    error: Some(error.clone()),
                })
            } else {
                EventBody::NotificationRetry(NotificationRetry {
                    id,
                    attempt,
                    status: *status,
                    error: error.clone(),
                    retry_at,
                })
            }
        }
    };
    Decision::Append(vec![Planned::job(body)])
}

/// A socket opens. Grace windows that passed unrecorded are recorded first.
/// A reconnect continues the watcher it names (`sessionId`, or without one
/// the most recently started) within its grace window, closing that
/// watcher's old socket if it is still open; anything else starts a new
/// session beside the job's other watchers, up to the limit.
fn decide_attach(
    state: &JobState,
    a: &Attach,
    now: DateTime<Utc>,
) -> Result<Decision, DomainError> {
    let mut events = Vec::new();
    for s in &state.watchers {
        if let SessionPhase::Grace { until } = s.phase {
            if until <= now {
                events.push(Planned::session(
                    s.session_id,
                    EventBody::GraceExpired(GraceExpired { grace_until: until }),
                ));
            }
        }
    }
    let epoch_matches = a.client_epoch.as_deref().is_none_or(|e| e == a.log_epoch);
    let target = if a.own_session {
        // A Durable Streams reader reopening (the protocol closes its
        // response every minute): it continues its own subject's session
        // of the same transport waiting in its grace window, the most
        // recent, rather than start a new one each time.
        state.watchers.iter().rev().find(|s| {
            matches!(s.phase, SessionPhase::Grace { .. })
                && s.is_open_at(now)
                && s.transport == a.transport
                && s.sub.as_deref() == Some(a.sub.as_str())
        })
    } else if a.reconnect {
        state.resume_target(a.session_id, now)
    } else {
        None
    };
    let resumed = target.is_some() && epoch_matches;
    let session_id = match target {
        Some(t) if resumed => t.session_id,
        _ => a.new_session_id,
    };
    if !resumed && state.open_watchers(now) >= a.max_watchers {
        return Err(DomainError::TooManyWatchers(a.max_watchers));
    }
    if let Some(t) = target.filter(|t| t.phase == SessionPhase::Connected) {
        // A half-open socket of the same client: it alone is closed.
        events.push(Planned::session(
            t.session_id,
            EventBody::Replaced(Replaced {
                code: REPLACED_CODE,
                reason: REPLACED_REASON.to_owned(),
                by_session_id: session_id,
            }),
        ));
    }

    if !a.reconnect {
        events.push(Planned::session(
            session_id,
            EventBody::Connected(Connected {
                client: a.client(),
                last_seq: state.last_seq,
            }),
        ));
        let plan = AttachPlan {
            session_id,
            reconnect: false,
            resumed: false,
            replay_after: None,
            missed: 0,
        };
        return Ok(Decision::Attach { events, plan });
    }

    let after = a.replay_after(state);
    // From the recent seqs the state holds, or from the count the writer
    // made in the log for a client further behind (and the job events
    // since it counted).
    let missed = state
        .job_events_after(after)
        .or_else(|| {
            let c = a.counted.filter(|c| c.after == after)?;
            Some(c.job_events + state.job_events.saturating_sub(c.job_events_then))
        })
        .unwrap_or_else(|| u64::try_from(state.head_seq - after).unwrap_or(0));
    let gap_ms = target
        .filter(|s| s.phase != SessionPhase::Connected)
        .and_then(|s| s.last_disconnect_at)
        .map(|t| (now - t).num_milliseconds());
    let previous = target.map(|t| t.session_id).or(a.session_id);
    events.push(Planned::session(
        session_id,
        EventBody::Reconnected(Reconnected {
            client: a.client(),
            resumed,
            previous_session_id: previous.filter(|id| *id != session_id),
            gap_ms,
            client_last_seq: a.client_last_seq,
            client_epoch: a.client_epoch.clone(),
            missed,
        }),
    ));
    let plan = AttachPlan {
        session_id,
        reconnect: true,
        resumed,
        replay_after: Some(after),
        missed,
    };
    Ok(Decision::Attach { events, plan })
}

/// Field rules the types alone do not carry.
fn validate_job_event(body: &EventBody) -> Result<(), DomainError> {
    let invalid = |msg: &str| Err(DomainError::InvalidEvent(msg.to_owned()));
    match body {
        EventBody::ProgressReported(p) if !(0.0..=100.0).contains(&p.progress) => {
            invalid("`progress` must be a number from 0 to 100")
        }
        EventBody::MessagePosted(m) if m.name.trim().is_empty() => {
            invalid("`name` must not be empty")
        }
        EventBody::MessagePosted(m) if m.name.len() > 200 => {
            invalid("`name` must be at most 200 bytes")
        }
        EventBody::JobFailed(f) if f.error.code.trim().is_empty() => {
            invalid("`error.code` must not be empty")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{Event, JobCompleted, ProgressReported};
    use uuid::Uuid;

    fn progress(p: f64) -> EventBody {
        EventBody::ProgressReported(ProgressReported {
            progress: p,
            message: None,
            data: None,
        })
    }

    fn given(bodies: Vec<EventBody>) -> JobState {
        let id = Uuid::new_v4();
        let mut state = JobState::genesis(id);
        for (i, body) in bodies.into_iter().enumerate() {
            state.apply(&Event {
                seq: i as i64 + 1,
                ..Event::new(id, None, Utc::now(), body)
            });
        }
        state
    }

    fn created() -> EventBody {
        EventBody::JobCreated(JobCreated {
            metadata: None,
            ..JobCreated::default()
        })
    }

    fn append(body: EventBody) -> Command {
        Command::AppendJobEvent {
            body,
            idempotency_key: None,
        }
    }

    #[test]
    fn creating_twice_appends_once() {
        let fresh = given(vec![]);
        let cmd = Command::CreateJob {
            metadata: None,
            stall_after_secs: 0,
            timeout_secs: 0,
            notify: Default::default(),
        };
        assert_eq!(
            decide(&fresh, None, &cmd, Utc::now()),
            Ok(Decision::Append(vec![Planned::job(created())]))
        );
        let existing = given(vec![created()]);
        assert_eq!(
            decide(&existing, None, &cmd, Utc::now()),
            Ok(Decision::AlreadyExists)
        );
    }

    #[test]
    fn a_stall_is_due_once_per_quiet_spell_and_a_timeout_once() {
        let windows = EventBody::JobCreated(JobCreated {
            metadata: None,
            stall_after_secs: Some(10),
            timeout_secs: Some(60),
            notify: None,
        });
        let mut job = given(vec![windows, progress(5.0)]);
        let since = job.last_update.unwrap();
        let early = since + Duration::seconds(9);
        assert_eq!(
            decide(&job, None, &Command::MarkStalled, early),
            Ok(Decision::Nothing)
        );
        let due = since + Duration::seconds(10);
        let (kinds, _) = when(&mut job, &Command::MarkStalled, due);
        assert_eq!(kinds, ["stalled"]);
        assert_eq!(job.stalled_since, Some(since));
        // The stall does not restart its own clock.
        let later = due + Duration::seconds(30);
        assert_eq!(
            decide(&job, None, &Command::MarkStalled, later),
            Ok(Decision::Nothing)
        );
        assert_eq!(job.stall_deadline(), None);

        let created = job.created_at.unwrap();
        assert_eq!(
            job.timeout_deadline(),
            Some(created + Duration::seconds(60))
        );
        let (kinds, _) = when(&mut job, &Command::TimeOut, created + Duration::seconds(60));
        assert_eq!(kinds, ["failed"]);
        assert_eq!(job.error.as_ref().unwrap().code, TIMEOUT_CODE);
        assert_eq!(job.timeout_deadline(), None);
        assert_eq!(
            decide(&job, None, &Command::TimeOut, later + Duration::hours(1)),
            Ok(Decision::Nothing)
        );
    }

    #[test]
    fn progress_on_an_unknown_job_is_refused() {
        let cmd = append(progress(10.0));
        assert_eq!(
            decide(&given(vec![]), None, &cmd, Utc::now()),
            Err(DomainError::UnknownJob)
        );
    }

    #[test]
    fn nothing_is_appended_after_a_terminal_event() {
        let done = given(vec![
            created(),
            progress(50.0),
            EventBody::JobCompleted(JobCompleted { result: None }),
        ]);
        assert_eq!(done.status, JobStatus::Completed);
        assert_eq!(
            decide(&done, None, &append(progress(60.0)), Utc::now()),
            Err(DomainError::JobFinished(JobStatus::Completed))
        );
    }

    #[test]
    fn progress_outside_the_range_is_invalid() {
        let job = given(vec![created()]);
        for bad in [-1.0, 100.5, f64::NAN] {
            assert!(matches!(
                decide(&job, None, &append(progress(bad)), Utc::now()),
                Err(DomainError::InvalidEvent(_))
            ));
        }
    }

    #[test]
    fn a_retry_answers_with_the_first_seq_and_a_reused_key_is_refused() {
        let job = given(vec![created(), progress(10.0)]);
        let prior = IdempotentAppend {
            seq: 2,
            fingerprint: fingerprint(&progress(10.0)),
        };
        assert_eq!(
            decide(&job, Some(&prior), &append(progress(10.0)), Utc::now()),
            Ok(Decision::Duplicate { seq: 2 })
        );
        assert_eq!(
            decide(&job, Some(&prior), &append(progress(20.0)), Utc::now()),
            Err(DomainError::IdempotencyKeyReused)
        );
    }

    #[test]
    fn a_retry_of_the_terminal_event_still_answers_its_seq() {
        let done = EventBody::JobCompleted(JobCompleted { result: None });
        let job = given(vec![created(), done.clone()]);
        let prior = IdempotentAppend {
            seq: 2,
            fingerprint: fingerprint(&done),
        };
        assert_eq!(
            decide(&job, Some(&prior), &append(done), Utc::now()),
            Ok(Decision::Duplicate { seq: 2 })
        );
    }

    // ---- sessions ----

    use crate::domain::event::SessionId;
    use chrono::Duration;

    const EPOCH: &str = "epoch-1";

    /// Applies planned events to a state, as the writer would.
    fn apply_all(state: &mut JobState, planned: &[Planned], at: DateTime<Utc>) {
        for p in planned {
            state.apply(&Event {
                seq: state.head_seq + 1,
                ..Event::new(state.job_id, p.session_id, at, p.body.clone())
            });
        }
    }

    fn attach(reconnect: bool, last_seq: Option<i64>) -> (Command, SessionId) {
        resume(reconnect, None, last_seq)
    }

    /// An attach naming the session it resumes.
    fn resume(
        reconnect: bool,
        session_id: Option<SessionId>,
        last_seq: Option<i64>,
    ) -> (Command, SessionId) {
        let id = Uuid::new_v4();
        let cmd = Command::Attach(Attach {
            new_session_id: id,
            sub: "client".into(),
            reconnect,
            session_id,
            max_watchers: 3,
            client_last_seq: last_seq,
            client_epoch: Some(EPOCH.into()),
            log_epoch: EPOCH.into(),
            user_agent: None,
            address: None,
            node: None,
            transport: None,
            own_session: false,
            counted: None,
        });
        (cmd, id)
    }

    /// Decides and applies; returns the kinds appended and the plan.
    fn when(
        state: &mut JobState,
        cmd: &Command,
        at: DateTime<Utc>,
    ) -> (Vec<&'static str>, Option<AttachPlan>) {
        match decide(state, None, cmd, at).unwrap() {
            Decision::Attach { events, plan } => {
                apply_all(state, &events, at);
                (events.iter().map(|e| e.body.kind()).collect(), Some(plan))
            }
            Decision::Append(events) => {
                apply_all(state, &events, at);
                (events.iter().map(|e| e.body.kind()).collect(), None)
            }
            Decision::Nothing => (vec![], None),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn detach(session: SessionId, socket: u32) -> Command {
        Command::Detach {
            session_id: session,
            socket,
            code: 1006,
            reason: "connection lost".into(),
            acked_seq: None,
            grace: Duration::seconds(60),
        }
    }

    #[test]
    fn a_fresh_connect_starts_a_session_without_replay() {
        let mut job = given(vec![created(), progress(10.0)]);
        let t0 = Utc::now();
        let (cmd, id) = attach(false, None);
        let (kinds, plan) = when(&mut job, &cmd, t0);
        assert_eq!(kinds, ["connected"]);
        let plan = plan.unwrap();
        assert_eq!(plan.session_id, id);
        assert_eq!(plan.replay_after, None);
        assert_eq!(job.latest_session().unwrap().phase, SessionPhase::Connected);
    }

    #[test]
    fn a_reconnect_within_the_grace_window_resumes_the_session_and_counts_what_was_missed() {
        let mut job = given(vec![created(), progress(10.0)]);
        let t0 = Utc::now();
        let (cmd, first) = attach(false, None);
        when(&mut job, &cmd, t0);
        let (kinds, _) = when(&mut job, &detach(first, 1), t0);
        assert_eq!(kinds, ["disconnected"]);
        let last = job.last_seq;
        for p in [20.0, 30.0] {
            let (kinds, _) = when(&mut job, &append(progress(p)), t0);
            assert_eq!(kinds, ["progress"]);
        }
        let (cmd, _) = attach(true, Some(last));
        let (kinds, plan) = when(&mut job, &cmd, t0 + Duration::seconds(30));
        assert_eq!(kinds, ["reconnected"]);
        let plan = plan.unwrap();
        assert!(plan.resumed);
        assert_eq!(plan.session_id, first);
        assert_eq!(plan.replay_after, Some(last));
        assert_eq!(plan.missed, 2);
        assert_eq!(job.latest_session().unwrap().sockets, 2);
    }

    #[test]
    fn a_reconnect_after_the_deadline_records_the_expiry_once_and_starts_anew() {
        let mut job = given(vec![created()]);
        let t0 = Utc::now();
        let (cmd, first) = attach(false, None);
        when(&mut job, &cmd, t0);
        when(&mut job, &detach(first, 1), t0);
        let late = t0 + Duration::seconds(61);
        let (cmd, second) = attach(true, Some(0));
        let (kinds, plan) = when(&mut job, &cmd, late);
        assert_eq!(kinds, ["grace_expired", "reconnected"]);
        let plan = plan.unwrap();
        assert!(!plan.resumed);
        assert_eq!(plan.session_id, second);
        // The scheduler's deadline for the first session now finds nothing to do.
        let expire = Command::ExpireGrace { session_id: first };
        assert_eq!(when(&mut job, &expire, late).0, Vec::<&str>::new());
        assert_eq!(job.view.counts.grace_expiries, 1);
    }

    #[test]
    fn fresh_connects_start_watchers_side_by_side_up_to_the_limit() {
        let mut job = given(vec![created()]);
        let t0 = Utc::now();
        for n in 1..=3 {
            let (cmd, _) = attach(false, None);
            assert_eq!(when(&mut job, &cmd, t0).0, ["connected"], "watcher {n}");
        }
        assert_eq!(job.watchers.len(), 3);
        let (cmd, _) = attach(false, None);
        assert_eq!(
            decide(&job, None, &cmd, t0),
            Err(DomainError::TooManyWatchers(3))
        );
        // A resume is not a new watcher: it fits.
        let first = job.watchers[0].session_id;
        let (cmd, _) = resume(true, Some(first), Some(0));
        assert_eq!(when(&mut job, &cmd, t0).0, ["replaced", "reconnected"]);
        assert_eq!(job.watchers.len(), 3);
    }

    #[test]
    fn a_resume_by_session_touches_only_that_session() {
        let mut job = given(vec![created()]);
        let t0 = Utc::now();
        let (cmd, phone) = attach(false, None);
        when(&mut job, &cmd, t0);
        let (cmd, tab) = attach(false, None);
        when(&mut job, &cmd, t0);
        when(&mut job, &detach(phone, 1), t0);
        // The phone comes back naming its session: resumed, the tab untouched.
        let (cmd, _) = resume(true, Some(phone), Some(0));
        let (kinds, plan) = when(&mut job, &cmd, t0 + Duration::seconds(5));
        assert_eq!(kinds, ["reconnected"]);
        let plan = plan.unwrap();
        assert!(plan.resumed);
        assert_eq!(plan.session_id, phone);
        let tab_state = job.watcher(tab).unwrap();
        assert_eq!(
            (tab_state.phase, tab_state.sockets),
            (SessionPhase::Connected, 1)
        );
        // Each window is its own: the tab's drop and expiry leave the phone.
        when(&mut job, &detach(tab, 1), t0 + Duration::seconds(5));
        let expire = Command::ExpireGrace { session_id: tab };
        let (kinds, _) = when(&mut job, &expire, t0 + Duration::seconds(65));
        assert_eq!(kinds, ["grace_expired"]);
        assert_eq!(job.watchers.len(), 1);
        assert_eq!(job.watchers[0].session_id, phone);
        // An unknown session id starts a new session, not resumed.
        let (cmd, new) = resume(true, Some(Uuid::new_v4()), Some(0));
        let plan = when(&mut job, &cmd, t0 + Duration::seconds(66)).1.unwrap();
        assert!(!plan.resumed);
        assert_eq!(plan.session_id, new);
    }

    #[test]
    fn the_close_after_a_terminal_event_ends_the_session_without_a_grace_window() {
        let mut job = given(vec![created()]);
        let t0 = Utc::now();
        let (cmd, a) = attach(false, None);
        when(&mut job, &cmd, t0);
        let (cmd, b) = attach(false, None);
        when(&mut job, &cmd, t0);
        let done = append(EventBody::JobCompleted(JobCompleted { result: None }));
        when(&mut job, &done, t0);
        for (session, at) in [(a, t0), (b, t0 + Duration::seconds(1))] {
            let close = Command::Detach {
                session_id: session,
                socket: 1,
                code: 1000,
                reason: "job finished".into(),
                acked_seq: None,
                grace: Duration::seconds(60),
            };
            match decide(&job, None, &close, at).unwrap() {
                Decision::Append(events) => {
                    assert!(matches!(
                        &events[0].body,
                        EventBody::Disconnected(d) if d.grace_until.is_none()
                    ));
                    apply_all(&mut job, &events, at);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(job.watchers.is_empty());
        assert!(
            !job.is_live(),
            "a finished job with no watcher leaves memory"
        );
        assert_eq!(job.view.counts.grace_expiries, 0);
    }

    #[test]
    fn a_connect_while_a_socket_is_live_replaces_it() {
        let mut job = given(vec![created()]);
        let t0 = Utc::now();
        let (cmd, first) = attach(false, None);
        when(&mut job, &cmd, t0);
        let (cmd, _) = attach(true, Some(0));
        let (kinds, plan) = when(&mut job, &cmd, t0);
        assert_eq!(kinds, ["replaced", "reconnected"]);
        assert_eq!(plan.unwrap().session_id, first);
        // The replaced socket's own close is stale and records nothing.
        assert_eq!(when(&mut job, &detach(first, 1), t0).0, Vec::<&str>::new());
        // The live one's is recorded.
        assert_eq!(when(&mut job, &detach(first, 2), t0).0, ["disconnected"]);
    }

    #[test]
    fn a_grace_deadline_expires_only_when_due_and_only_once() {
        let mut job = given(vec![created()]);
        let t0 = Utc::now();
        let (cmd, first) = attach(false, None);
        when(&mut job, &cmd, t0);
        when(&mut job, &detach(first, 1), t0);
        let expire = Command::ExpireGrace { session_id: first };
        assert_eq!(
            when(&mut job, &expire, t0 + Duration::seconds(59)).0,
            Vec::<&str>::new()
        );
        assert_eq!(
            when(&mut job, &expire, t0 + Duration::seconds(60)).0,
            ["grace_expired"]
        );
        assert_eq!(
            when(&mut job, &expire, t0 + Duration::seconds(61)).0,
            Vec::<&str>::new()
        );
        assert!(matches!(
            job.latest_session().unwrap().phase,
            SessionPhase::Ended { .. }
        ));
        assert!(job.watchers.is_empty());
    }

    #[test]
    fn a_last_seq_beyond_the_job_or_from_another_epoch_replays_from_the_start() {
        let mut job = given(vec![created(), progress(10.0), progress(20.0)]);
        let t0 = Utc::now();
        let (cmd, _) = attach(true, Some(99));
        let plan = when(&mut job, &cmd, t0).1.unwrap();
        assert_eq!((plan.replay_after, plan.missed), (Some(0), 2));
        let cmd = Command::Attach(Attach {
            new_session_id: Uuid::new_v4(),
            sub: "c".into(),
            reconnect: true,
            session_id: None,
            max_watchers: 3,
            client_last_seq: Some(2),
            client_epoch: Some("another-log".into()),
            log_epoch: EPOCH.into(),
            user_agent: None,
            address: None,
            node: None,
            transport: None,
            own_session: false,
            counted: None,
        });
        let plan = when(&mut job, &cmd, t0).1.unwrap();
        assert!(!plan.resumed);
        assert_eq!((plan.replay_after, plan.missed), (Some(0), 2));
    }
}
