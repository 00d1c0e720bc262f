//! The deadlines a job's state holds: each session's grace window, the job's
//! stall and timeout, and the next attempt of each pending notification.
//! The scheduler keeps them; they come from here alone, whether from the
//! state rebuilt at start or from the state after a commit.

use chrono::{DateTime, Utc};

use super::event::{JobId, SessionId};
use super::state::{JobState, SessionPhase};

/// What may come due.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Due {
    /// A session's grace window closes.
    Grace(SessionId),
    /// The job has gone its stall window without a job event.
    Stall,
    /// The job's timeout.
    Timeout,
    /// The next attempt of the notification of the job event at this seq
    /// (or the expiry of the claim in flight).
    Notify(i64),
    /// A stream's TTL or `Stream-Expires-At` (reads since its last write
    /// aside: they are weighed when it comes).
    StreamExpiry,
}

/// Something comes due at `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline {
    pub at: DateTime<Utc>,
    pub job_id: JobId,
    pub due: Due,
}

/// A change to the deadlines kept.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// A deadline to keep (for `Stall` and `Timeout`, replacing the job's).
    At(Deadline),
    /// The job has no such deadline any more (it finished, or it stalled).
    Clear(JobId, Due),
}

/// Every deadline of the job as its state now has them: the grace windows
/// of its sessions waiting for a socket, its stall and timeout (cleared when
/// it has none), and its pending notifications' next attempts. A deadline
/// that is no longer due when it comes (a session resumed, a notification
/// settled) decides nothing.
pub fn of_job(state: &JobState) -> Vec<Schedule> {
    let job_id = state.job_id;
    let at = |due, at| Schedule::At(Deadline { at, job_id, due });
    let one = |due, when: Option<DateTime<Utc>>| match when {
        Some(when) => at(due, when),
        None => Schedule::Clear(job_id, due),
    };
    if let Some(stream) = &state.stream {
        return vec![one(Due::StreamExpiry, stream.expiry(None))];
    }
    let mut all = vec![
        one(Due::Stall, state.stall_deadline()),
        one(Due::Timeout, state.timeout_deadline()),
    ];
    all.extend(state.watchers.iter().filter_map(|s| match s.phase {
        SessionPhase::Grace { until } => Some(at(Due::Grace(s.session_id), until)),
        _ => None,
    }));
    all.extend(
        state
            .notifications
            .iter()
            .map(|n| at(Due::Notify(n.for_seq), n.next_at)),
    );
    all
}
