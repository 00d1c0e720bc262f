//! Commands and the pure decision of which events they produce.
//!
//! `decide` looks at the current state of one job (and, for keyed appends, what
//! the key produced before) and answers with the events to append, or why not.
//! It never touches the log or the clock: the writer passes both in.

use serde_json::Value;

use super::event::{EventBody, JobCreated};
use super::state::{fingerprint, IdempotentAppend, JobState, JobStatus};

/// A request to change a job.
#[derive(Clone, Debug)]
pub enum Command {
    /// Create the job, unless it already exists.
    CreateJob { metadata: Option<Value> },
    /// Append one job event (progress, message or a terminal event).
    AppendJobEvent {
        body: EventBody,
        idempotency_key: Option<String>,
    },
    /// Record connection events decided elsewhere (the session engine), such as
    /// `connect_rejected` or `ws_error`. Only needs the job to exist.
    Record { bodies: Vec<EventBody> },
}

/// What a command decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Append these events, in order.
    Append(Vec<EventBody>),
    /// The job already exists: nothing to append.
    AlreadyExists,
    /// A retry of an append that already happened: answer with its seq.
    Duplicate { seq: i64 },
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
}

/// Decides what `command` appends to the job in `state`.
///
/// `prior` is what the command's idempotency key produced earlier, if anything.
pub fn decide(
    state: &JobState,
    prior: Option<&IdempotentAppend>,
    command: &Command,
) -> Result<Decision, DomainError> {
    match command {
        Command::CreateJob { metadata } => {
            if state.exists() {
                return Ok(Decision::AlreadyExists);
            }
            Ok(Decision::Append(vec![EventBody::JobCreated(JobCreated {
                metadata: metadata.clone(),
            })]))
        }
        Command::AppendJobEvent { body, .. } => {
            if !state.exists() {
                return Err(DomainError::UnknownJob);
            }
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
            Ok(Decision::Append(vec![body.clone()]))
        }
        Command::Record { bodies } => {
            if !state.exists() {
                return Err(DomainError::UnknownJob);
            }
            Ok(Decision::Append(bodies.clone()))
        }
    }
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
    use chrono::Utc;
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
                position: i as i64 + 1,
                job_id: id,
                seq: i as i64 + 1,
                session_id: None,
                at: Utc::now(),
                idempotency_key: None,
                body,
                hash: String::new(),
            });
        }
        state
    }

    fn created() -> EventBody {
        EventBody::JobCreated(JobCreated { metadata: None })
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
        let cmd = Command::CreateJob { metadata: None };
        assert_eq!(
            decide(&fresh, None, &cmd),
            Ok(Decision::Append(vec![created()]))
        );
        let existing = given(vec![created()]);
        assert_eq!(decide(&existing, None, &cmd), Ok(Decision::AlreadyExists));
    }

    #[test]
    fn progress_on_an_unknown_job_is_refused() {
        let cmd = append(progress(10.0));
        assert_eq!(
            decide(&given(vec![]), None, &cmd),
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
            decide(&done, None, &append(progress(60.0))),
            Err(DomainError::JobFinished(JobStatus::Completed))
        );
    }

    #[test]
    fn progress_outside_the_range_is_invalid() {
        let job = given(vec![created()]);
        for bad in [-1.0, 100.5, f64::NAN] {
            assert!(matches!(
                decide(&job, None, &append(progress(bad))),
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
            decide(&job, Some(&prior), &append(progress(10.0))),
            Ok(Decision::Duplicate { seq: 2 })
        );
        assert_eq!(
            decide(&job, Some(&prior), &append(progress(20.0))),
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
            decide(&job, Some(&prior), &append(done)),
            Ok(Decision::Duplicate { seq: 2 })
        );
    }
}
