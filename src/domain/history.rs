//! A job's connection history: the pure fold support staff read.
//!
//! Built from the same events the sessions wrote: each session with its
//! connects, disconnects, reconnects, replaced sockets, errors and expiry, in
//! order, and the attempts refused before a socket opened. Time connected and
//! disconnected is measured between those events; `now` closes the intervals
//! still open, so the fold stays pure.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::event::{Event, EventBody, SessionId};

/// One recorded connection event, with its payload's fields.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub seq: i64,
    pub at: DateTime<Utc>,
    /// `connected`, `disconnected`, `reconnected`, `replaced`, `ws_error`,
    /// `connect_rejected` or `grace_expired`.
    pub kind: &'static str,
    /// The event's payload: close code and reason, gap, `lastSeq`, replayed
    /// count, ... as in the event catalogue.
    #[schema(value_type = Object)]
    pub details: Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    Connected,
    Grace,
    Ended,
}

/// One session, from its first socket to its end.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionHistory {
    pub session_id: uuid::Uuid,
    pub started_at: DateTime<Utc>,
    pub state: SessionStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_until: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// `grace_expired` (the client never came back), `finished` (its socket
    /// closed after the job's terminal event) or `superseded` (another
    /// session took its socket over).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<&'static str>,
    /// Sockets the session had (1 + resumes).
    pub sockets: u32,
    /// Reconnects that resumed this session.
    pub resumes: u32,
    pub disconnects: u32,
    pub connected_ms: i64,
    pub disconnected_ms: i64,
    /// Job events replayed to the client when it came back.
    pub replayed: u64,
    pub events: Vec<Entry>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub sessions: u64,
    pub connects: u64,
    pub reconnects: u64,
    pub resumed: u64,
    pub disconnects: u64,
    pub heartbeat_timeouts: u64,
    pub replaced: u64,
    pub errors: u64,
    pub rejected: u64,
    pub grace_expiries: u64,
    pub replayed: u64,
    pub connected_ms: i64,
    pub disconnected_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotificationStatus {
    Pending,
    Delivered,
    Abandoned,
}

/// One webhook notification, from due to delivered or abandoned.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationHistory {
    /// The `webhook-id` every attempt carried.
    pub id: String,
    /// The job event it notifies.
    pub for_seq: i64,
    /// `job.completed`, `job.failed`, `job.cancelled` or `job.stalled`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `unwatched` (no watcher had a live socket) or `always`.
    pub reason: String,
    pub due_at: DateTime<Utc>,
    pub state: NotificationStatus,
    pub attempts: u32,
    /// When the endpoint took it (a 2xx).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notified_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abandoned_at: Option<DateTime<Utc>>,
    /// `gone` (the endpoint answered 410) or `expired` (max age).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abandon_reason: Option<String>,
    /// When the next attempt is due, while it is pending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Its events: due, each attempt and its result, the outcome.
    pub events: Vec<Entry>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct History {
    pub sessions: Vec<SessionHistory>,
    /// Attempts refused before a socket opened (not part of any session).
    pub rejected: Vec<Entry>,
    /// Webhook notifications of the job's end (or stall), oldest first.
    pub notifications: Vec<NotificationHistory>,
    pub totals: Totals,
}

/// Folds a job's events (in seq order) into its connection history.
#[derive(Debug, Default)]
pub struct HistoryBuilder {
    history: History,
    index: HashMap<SessionId, usize>,
    /// Per session: when its current socket opened, or it lost its last one.
    open_since: HashMap<SessionId, DateTime<Utc>>,
}

impl SessionHistory {
    fn end(&mut self, at: DateTime<Utc>, reason: &'static str) {
        self.state = SessionStatus::Ended;
        self.grace_until = None;
        self.ended_at = Some(at);
        self.end_reason = Some(reason);
    }
}

fn ms(from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    (to - from).num_milliseconds().max(0)
}

impl HistoryBuilder {
    pub fn apply(&mut self, event: &Event) {
        if event.body.is_job_event() || matches!(event.body, EventBody::JobCreated(_)) {
            return;
        }
        let entry = Entry {
            seq: event.seq,
            at: event.at,
            kind: event.body.kind(),
            details: serde_json::from_str(&event.body.encode()).unwrap_or(Value::Null),
        };
        let at = event.at;
        if event.body.notification_id().is_some() {
            self.notification(&event.body, entry, at);
            return;
        }
        if let EventBody::ConnectRejected(r) = &event.body {
            self.history.totals.rejected += 1 + r.suppressed;
            self.history.rejected.push(entry);
            return;
        }
        let Some(id) = event.session_id else { return };
        match &event.body {
            EventBody::Connected(_) => {
                self.history.totals.connects += 1;
                self.start(id, at);
            }
            EventBody::Reconnected(r) => {
                self.history.totals.reconnects += 1;
                self.history.totals.replayed += r.missed;
                match self.index.get(&id).copied() {
                    Some(i) if r.resumed => {
                        self.history.totals.resumed += 1;
                        let since = self.open_since.insert(id, at);
                        let s = &mut self.history.sessions[i];
                        if s.state == SessionStatus::Grace {
                            if let Some(since) = since {
                                s.disconnected_ms += ms(since, at);
                            }
                        }
                        s.state = SessionStatus::Connected;
                        s.grace_until = None;
                        s.sockets += 1;
                        s.resumes += 1;
                    }
                    _ => self.start(id, at),
                }
                if let Some(i) = self.index.get(&id) {
                    self.history.sessions[*i].replayed += r.missed;
                }
            }
            EventBody::Disconnected(d) => {
                self.history.totals.disconnects += 1;
                if d.reason == super::close::HEARTBEAT_TIMEOUT {
                    self.history.totals.heartbeat_timeouts += 1;
                }
                let since = match d.grace_until {
                    Some(_) => self.open_since.insert(id, at),
                    None => self.open_since.remove(&id),
                };
                if let Some(s) = self.session(id) {
                    s.disconnects += 1;
                    if let Some(since) = since {
                        s.connected_ms += ms(since, at);
                    }
                    match d.grace_until {
                        Some(until) => {
                            s.state = SessionStatus::Grace;
                            s.grace_until = Some(until);
                        }
                        // The close that follows a terminal event.
                        None => s.end(at, "finished"),
                    }
                }
            }
            EventBody::Replaced(r) => {
                self.history.totals.replaced += 1;
                let superseded = r.by_session_id != id;
                let since = if superseded {
                    self.open_since.remove(&id)
                } else {
                    self.open_since.insert(id, at)
                };
                if let Some(s) = self.session(id) {
                    if let Some(since) = since {
                        s.connected_ms += ms(since, at);
                    }
                    if superseded {
                        s.end(at, "superseded");
                    }
                }
            }
            EventBody::WsErrored(_) => self.history.totals.errors += 1,
            EventBody::GraceExpired(_) => {
                self.history.totals.grace_expiries += 1;
                let since = self.open_since.remove(&id);
                if let Some(s) = self.session(id) {
                    if let Some(since) = since {
                        s.disconnected_ms += ms(since, at);
                    }
                    s.end(at, "grace_expired");
                }
            }
            _ => {}
        }
        if let Some(s) = self.session(id) {
            s.events.push(entry);
        }
    }

    /// A webhook notification's event.
    fn notification(&mut self, body: &EventBody, entry: Entry, at: DateTime<Utc>) {
        if let EventBody::NotificationDue(d) = body {
            self.history.notifications.push(NotificationHistory {
                id: d.id.clone(),
                for_seq: d.for_seq,
                kind: d.kind.clone(),
                reason: d.reason.clone(),
                due_at: at,
                state: NotificationStatus::Pending,
                attempts: 0,
                notified_at: None,
                abandoned_at: None,
                abandon_reason: None,
                next_attempt_at: Some(at),
                last_error: None,
                events: vec![entry],
            });
            return;
        }
        let id = body.notification_id().unwrap_or_default();
        let Some(n) = self.history.notifications.iter_mut().find(|n| n.id == id) else {
            return;
        };
        match body {
            EventBody::NotificationAttempt(a) => {
                n.attempts = n.attempts.max(a.attempt);
                n.next_attempt_at = Some(a.until);
            }
            EventBody::NotificationRetry(r) => {
                n.next_attempt_at = Some(r.retry_at);
                n.last_error = Some(r.error.clone());
            }
            EventBody::NotificationDelivered(_) => {
                n.state = NotificationStatus::Delivered;
                n.notified_at = Some(at);
                n.next_attempt_at = None;
            }
            EventBody::NotificationAbandoned(a) => {
                n.state = NotificationStatus::Abandoned;
                n.abandoned_at = Some(at);
                n.abandon_reason = Some(a.reason.clone());
                n.next_attempt_at = None;
                if a.error.is_some() {
                    n.last_error.clone_from(&a.error);
                }
            }
            _ => {}
        }
        n.events.push(entry);
    }

    fn session(&mut self, id: SessionId) -> Option<&mut SessionHistory> {
        let i = *self.index.get(&id)?;
        self.history.sessions.get_mut(i)
    }

    /// A new session, beside any others still open (each watcher of the
    /// job has its own).
    fn start(&mut self, id: SessionId, at: DateTime<Utc>) {
        self.history.totals.sessions += 1;
        self.index.insert(id, self.history.sessions.len());
        self.open_since.insert(id, at);
        self.history.sessions.push(SessionHistory {
            session_id: id,
            started_at: at,
            state: SessionStatus::Connected,
            grace_until: None,
            ended_at: None,
            end_reason: None,
            sockets: 1,
            resumes: 0,
            disconnects: 0,
            connected_ms: 0,
            disconnected_ms: 0,
            replayed: 0,
            events: Vec::new(),
        });
    }

    /// The history as of `now`: intervals still open are counted up to it.
    pub fn finish(mut self, now: DateTime<Utc>) -> History {
        for s in &mut self.history.sessions {
            if let Some(since) = self.open_since.get(&s.session_id) {
                match s.state {
                    SessionStatus::Connected => s.connected_ms += ms(*since, now),
                    SessionStatus::Grace => s.disconnected_ms += ms(*since, now),
                    SessionStatus::Ended => {}
                }
            }
        }
        let totals = &mut self.history.totals;
        totals.connected_ms = self.history.sessions.iter().map(|s| s.connected_ms).sum();
        totals.disconnected_ms = self
            .history
            .sessions
            .iter()
            .map(|s| s.disconnected_ms)
            .sum();
        self.history
    }
}
