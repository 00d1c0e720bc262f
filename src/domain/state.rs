//! Job and session state: pure folds of the log.
//!
//! [`JobState::apply`] takes one event and moves the state forward. It does no
//! I/O, reads no clock and draws no random numbers, so folding the same events
//! always gives the same state: at start-up, for `?asOfSeq=N`, and in `replay`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::event::{Client, Event, EventBody, FailureInfo, JobId, Notify, SessionId};
use super::notify::{Notified, PendingNotification};
use super::stream::StreamState;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    pub const ALL: [JobStatus; 5] = [
        JobStatus::Pending,
        JobStatus::Running,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    /// The status named by its contract word (`as_str`).
    pub fn parse(text: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

/// Where a session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionPhase {
    /// A socket is open.
    Connected,
    /// No socket; the client may resume until the deadline.
    Grace { until: DateTime<Utc> },
    /// The grace window expired.
    Ended { at: DateTime<Utc> },
}

/// One client's logical attachment to a job, across its sockets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    pub session_id: SessionId,
    pub started_at: DateTime<Utc>,
    pub phase: SessionPhase,
    /// Sockets this session has had (1 after the connect, +1 per resume).
    pub sockets: u32,
    pub last_connect_at: DateTime<Utc>,
    pub last_disconnect_at: Option<DateTime<Utc>>,
    /// The node holding the socket, on a shared log (`None` on a log of one).
    pub node: Option<String>,
    /// The client's `User-Agent`, as its last socket sent it.
    #[serde(default)]
    pub user_agent: Option<String>,
    /// `sse` while its connection is the Server-Sent Events stream.
    #[serde(default)]
    pub transport: Option<String>,
    /// The token subject of its client (a Durable Streams reader that
    /// reopens continues only a session of its own subject).
    #[serde(default)]
    pub sub: Option<String>,
}

impl SessionState {
    /// A session whose first socket opened at `at`.
    fn start(session_id: SessionId, at: DateTime<Utc>, client: &Client) -> Self {
        let Client {
            node,
            user_agent,
            transport,
            sub,
            ..
        } = client.clone();
        SessionState {
            session_id,
            started_at: at,
            phase: SessionPhase::Connected,
            sockets: 1,
            last_connect_at: at,
            last_disconnect_at: None,
            node,
            user_agent,
            transport,
            sub: Some(sub),
        }
    }

    /// Whether the session is still open at `now`: connected, or waiting in
    /// a grace window that has not passed.
    pub fn is_open_at(&self, now: DateTime<Utc>) -> bool {
        match self.phase {
            SessionPhase::Connected => true,
            SessionPhase::Grace { until } => until > now,
            SessionPhase::Ended { .. } => false,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionCounts {
    pub connects: u64,
    pub reconnects: u64,
    pub disconnects: u64,
    pub replaced: u64,
    pub rejected: u64,
    pub errors: u64,
    pub grace_expiries: u64,
}

/// The version of the fold below, of the state decisions need. Checkpoints
/// (derived snapshots of `JobState`s) carry it, and one written by another
/// version is ignored: bump it whenever `apply` or the fields of the state
/// change meaning. The views beside it have their own ([`VIEW_VERSION`]).
pub const FOLD_VERSION: i32 = 7;

/// How many of a job's most recent non-job event seqs its state holds.
pub const RECENT_OTHERS: usize = 256;

/// A job as the log tells it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    pub job_id: JobId,
    pub created_at: Option<DateTime<Utc>>,
    pub metadata: Option<Value>,
    pub status: JobStatus,
    pub progress: f64,
    pub message: Option<String>,
    /// Time of the last job event (or of the creation).
    pub last_update: Option<DateTime<Utc>>,
    /// Seq of the last job event (the ones delivered to clients); 0 if none.
    pub last_seq: i64,
    pub result: Option<Value>,
    pub error: Option<FailureInfo>,
    pub cancel_reason: Option<String>,
    /// Seq of the last event of any kind: the next append gets `head_seq + 1`.
    pub head_seq: i64,
    /// Hash of the event at `head_seq`: the next append chains to it.
    pub head_hash: String,
    /// The sessions that have not ended (the job's watchers), oldest first.
    pub watchers: Vec<SessionState>,
    /// The most recent seqs of events that are not job events (creation,
    /// connection events), ascending, at most [`RECENT_OTHERS`]: with them,
    /// how many job events lie after any seq since the oldest of them is
    /// arithmetic, so a resume never has to count rows; a resume from
    /// further back counts in the log once. Bounded whatever the job's
    /// connection history.
    pub other_seqs: std::collections::VecDeque<i64>,
    /// The newest seq that left `other_seqs` (0: none has).
    #[serde(default)]
    pub others_dropped_through: i64,
    /// Job events in all (the ones clients receive).
    #[serde(default)]
    pub job_events: u64,
    /// Seconds without a job event after which the job stalls (none: never).
    #[serde(default)]
    pub stall_after_secs: Option<u64>,
    /// Seconds after its creation at which the job fails with `timeout`.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Since when the job has been stalled (the time of its last job event
    /// before the `stalled`); cleared by the next job event.
    #[serde(default)]
    pub stalled_since: Option<DateTime<Utc>>,
    /// When the job's end is notified to the webhook.
    #[serde(default)]
    pub notify: Notify,
    /// Webhook notifications not yet delivered or abandoned.
    #[serde(default)]
    pub notifications: Vec<PendingNotification>,
    /// A Durable Streams stream's fold, when the id is a stream's.
    #[serde(default)]
    pub stream: Option<StreamState>,
    /// What the job shows beside what decisions need; checkpointed apart,
    /// under [`VIEW_VERSION`].
    #[serde(skip)]
    pub view: JobView,
}

/// The version of [`JobView`]'s fold. A checkpoint's views written by
/// another version are refolded from the log, job by job, and its decision
/// state is kept: bump it whenever the view's fields or their fold change.
pub const VIEW_VERSION: i32 = 1;

/// What a job's state shows support staff and its readers beside what
/// decisions need: its connection counts and last incidents.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// The most recently started session that has ended, shown when no
    /// watcher started after it.
    pub last_ended: Option<SessionState>,
    pub counts: ConnectionCounts,
    /// The last socket close recorded for any of the job's sessions.
    pub last_disconnect: Option<LastDisconnect>,
    /// The last socket error recorded for any of the job's sessions.
    pub last_socket_error: Option<LastSocketError>,
    /// The last notification delivered.
    pub last_notified: Option<Notified>,
}

/// A socket close, as the job state shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastDisconnect {
    pub at: DateTime<Utc>,
    pub code: u16,
    pub reason: String,
}

/// A socket error, as the job state shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastSocketError {
    pub at: DateTime<Utc>,
    pub message: String,
}

impl JobState {
    /// The state before the job's first event.
    pub fn genesis(job_id: JobId) -> Self {
        JobState {
            job_id,
            created_at: None,
            metadata: None,
            status: JobStatus::Pending,
            progress: 0.0,
            message: None,
            last_update: None,
            last_seq: 0,
            result: None,
            error: None,
            cancel_reason: None,
            head_seq: 0,
            head_hash: String::new(),
            watchers: Vec::new(),
            other_seqs: std::collections::VecDeque::new(),
            others_dropped_through: 0,
            job_events: 0,
            stall_after_secs: None,
            timeout_secs: None,
            stalled_since: None,
            notify: Notify::Unwatched,
            notifications: Vec::new(),
            stream: None,
            view: JobView::default(),
        }
    }

    /// The pending notification of the job event at `for_seq`.
    pub fn notification(&self, for_seq: i64) -> Option<&PendingNotification> {
        self.notifications.iter().find(|n| n.for_seq == for_seq)
    }

    fn notification_mut(&mut self, id: &str) -> Option<&mut PendingNotification> {
        self.notifications.iter_mut().find(|n| n.id == id)
    }

    /// Ends the notification `id`: it is no longer pending.
    fn settle_notification(&mut self, id: &str) -> Option<PendingNotification> {
        let i = self.notifications.iter().position(|n| n.id == id)?;
        Some(self.notifications.remove(i))
    }

    /// When the job stalls unless a job event comes first: `stallAfterSecs`
    /// after its last job event (a `stalled` does not count), if it is not
    /// finished or already stalled.
    pub fn stall_deadline(&self) -> Option<DateTime<Utc>> {
        if !self.exists() || self.status.is_terminal() || self.stalled_since.is_some() {
            return None;
        }
        let after = self.stall_after_secs.filter(|s| *s > 0)?;
        super::stream::after_secs(self.last_update?, after)
    }

    /// When the job times out, if it is not finished by then.
    pub fn timeout_deadline(&self) -> Option<DateTime<Utc>> {
        if !self.exists() || self.status.is_terminal() {
            return None;
        }
        let after = self.timeout_secs.filter(|s| *s > 0)?;
        super::stream::after_secs(self.created_at?, after)
    }

    /// How many job events have `after < seq <= head_seq`, when the recent
    /// seqs held tell (`after` at or past the oldest of them, or 0: every
    /// job event); `None` when only the log can (a count of its rows).
    pub fn job_events_after(&self, after: i64) -> Option<u64> {
        if after >= self.head_seq {
            return Some(0);
        }
        if after <= 0 {
            return Some(self.job_events);
        }
        if after < self.others_dropped_through {
            return None;
        }
        let others = self.other_seqs.len() - self.other_seqs.partition_point(|s| *s <= after);
        let span = u64::try_from(self.head_seq - after).unwrap_or(0);
        Some(span.saturating_sub(others as u64))
    }

    /// A job exists once its `job_created` event is in the log.
    pub fn exists(&self) -> bool {
        self.created_at.is_some()
    }

    /// Whether the log holds anything of this id: a job, or a stream (even
    /// a deleted one, whose seqs the next incarnation continues).
    pub fn is_known(&self) -> bool {
        self.exists() || self.stream.is_some()
    }

    /// Whether the server must keep the job at hand: it has not finished, a
    /// session is connected or waiting in its grace window, or a webhook
    /// notification is pending (a deadline is pending). Anything else can be
    /// read back from the log when asked for.
    pub fn is_live(&self) -> bool {
        if let Some(stream) = &self.stream {
            return stream.is_live();
        }
        if !self.exists() {
            return false;
        }
        !self.status.is_terminal() || !self.watchers.is_empty() || !self.notifications.is_empty()
    }

    /// The most recently started session, open or ended: the job's
    /// "current" session as `GET /v1/jobs/{id}` shows it.
    pub fn latest_session(&self) -> Option<&SessionState> {
        let open = self.watchers.last();
        match (open, &self.view.last_ended) {
            (Some(o), Some(e)) if e.started_at > o.started_at => Some(e),
            (Some(o), _) => Some(o),
            (None, e) => e.as_ref(),
        }
    }

    /// The watcher a reconnect continues: the one named by `session_id`, or
    /// without one the most recently started, if it is still open at `now`.
    pub fn resume_target(
        &self,
        session_id: Option<SessionId>,
        now: DateTime<Utc>,
    ) -> Option<&SessionState> {
        let target = match session_id {
            Some(id) => self.watchers.iter().find(|s| s.session_id == id),
            None => self.watchers.iter().rev().find(|s| s.is_open_at(now)),
        };
        target.filter(|s| s.is_open_at(now))
    }

    /// Watchers open at `now` (a grace window that passed does not count,
    /// even before its expiry is recorded).
    pub fn open_watchers(&self, now: DateTime<Utc>) -> usize {
        self.watchers.iter().filter(|s| s.is_open_at(now)).count()
    }

    /// The watcher with this id.
    pub fn watcher(&self, id: SessionId) -> Option<&SessionState> {
        self.watchers.iter().find(|s| s.session_id == id)
    }

    /// Moves the state past one event.
    pub fn apply(&mut self, event: &Event) {
        self.head_seq = event.seq;
        self.head_hash.clone_from(&event.hash);
        let at = event.at;
        if event.body.is_stream_event() {
            StreamState::apply(&mut self.stream, event.seq, at, &event.body);
            return;
        }
        if !event.body.is_job_event() {
            self.other_seqs.push_back(event.seq);
            if self.other_seqs.len() > RECENT_OTHERS {
                if let Some(dropped) = self.other_seqs.pop_front() {
                    self.others_dropped_through = dropped;
                }
            }
        } else {
            self.job_events += 1;
            self.last_seq = event.seq;
            // A stall is news, not activity: its clock keeps running from
            // the job event before it, and it does not start a job that
            // never reported anything.
            if !matches!(event.body, EventBody::JobStalled(_)) {
                self.last_update = Some(at);
                self.stalled_since = None;
                if self.status == JobStatus::Pending {
                    self.status = JobStatus::Running;
                }
            }
        }
        match &event.body {
            EventBody::JobCreated(created) => {
                self.created_at = Some(at);
                self.last_update = Some(at);
                self.metadata = created.metadata.clone();
                self.stall_after_secs = created.stall_after_secs;
                self.timeout_secs = created.timeout_secs;
                self.notify = created.notify.unwrap_or_default();
            }
            EventBody::JobStalled(stalled) => self.stalled_since = Some(stalled.since),
            EventBody::ProgressReported(p) => {
                self.progress = p.progress;
                if p.message.is_some() {
                    self.message = p.message.clone();
                }
            }
            EventBody::MessagePosted(_) => {}
            EventBody::JobCompleted(c) => {
                self.status = JobStatus::Completed;
                self.progress = 100.0;
                self.result = c.result.clone();
            }
            EventBody::JobFailed(f) => {
                self.status = JobStatus::Failed;
                self.error = Some(f.error.clone());
            }
            EventBody::JobCancelled(c) => {
                self.status = JobStatus::Cancelled;
                self.cancel_reason = c.reason.clone();
            }
            EventBody::Connected(c) => {
                self.view.counts.connects += 1;
                if let Some(id) = event.session_id {
                    self.add_watcher(SessionState::start(id, at, &c.client));
                }
            }
            EventBody::Reconnected(r) => {
                self.view.counts.reconnects += 1;
                let Some(id) = event.session_id else { return };
                match self.watcher_mut(Some(id)) {
                    Some(s) if r.resumed => {
                        s.phase = SessionPhase::Connected;
                        s.sockets += 1;
                        s.last_connect_at = at;
                        s.node.clone_from(&r.client.node);
                        s.user_agent.clone_from(&r.client.user_agent);
                        s.transport.clone_from(&r.client.transport);
                        s.sub = Some(r.client.sub.clone());
                    }
                    _ => self.add_watcher(SessionState::start(id, at, &r.client)),
                }
            }
            EventBody::Disconnected(d) => {
                self.view.counts.disconnects += 1;
                self.view.last_disconnect = Some(LastDisconnect {
                    at,
                    code: d.code,
                    reason: d.reason.clone(),
                });
                let ends = match self.watcher_mut(event.session_id) {
                    Some(s) => {
                        s.last_disconnect_at = Some(at);
                        match d.grace_until {
                            Some(until) => {
                                s.phase = SessionPhase::Grace { until };
                                false
                            }
                            // The close after a terminal event ends the session.
                            None => true,
                        }
                    }
                    None => false,
                };
                if ends {
                    self.end_watcher(event.session_id, at);
                }
            }
            EventBody::Replaced(r) => {
                self.view.counts.replaced += 1;
                if let Some(s) = self.watcher_mut(event.session_id) {
                    s.last_disconnect_at = Some(at);
                }
                // Taken over by another session (not the same one on a new
                // socket): this one is over.
                if event.session_id != Some(r.by_session_id) {
                    self.end_watcher(event.session_id, at);
                }
            }
            EventBody::WsErrored(e) => {
                self.view.counts.errors += 1;
                self.view.last_socket_error = Some(LastSocketError {
                    at,
                    message: e.message.clone(),
                });
            }
            EventBody::ConnectRejected(r) => self.view.counts.rejected += 1 + r.suppressed,
            EventBody::GraceExpired(_) => {
                self.view.counts.grace_expiries += 1;
                self.end_watcher(event.session_id, at);
            }
            EventBody::NotificationDue(d) => self.notifications.push(PendingNotification {
                id: d.id.clone(),
                for_seq: d.for_seq,
                kind: d.kind.clone(),
                status: d.status.clone(),
                progress: d.progress,
                due_at: at,
                expires_at: d.expires_at,
                attempts: 0,
                in_flight: None,
                next_at: at,
                last_error: None,
            }),
            EventBody::NotificationAttempt(a) => {
                if let Some(n) = self.notification_mut(&a.id) {
                    n.attempts = n.attempts.max(a.attempt);
                    n.in_flight = Some(a.attempt);
                    n.next_at = a.until;
                }
            }
            EventBody::NotificationRetry(r) => {
                if let Some(n) = self.notification_mut(&r.id) {
                    n.in_flight = None;
                    n.next_at = r.retry_at;
                    n.last_error = Some(r.error.clone());
                }
            }
            EventBody::NotificationDelivered(d) => {
                if let Some(n) = self.settle_notification(&d.id) {
                    self.view.last_notified = Some(Notified {
                        at,
                        id: n.id,
                        kind: n.kind,
                    });
                }
            }
            EventBody::NotificationAbandoned(a) => {
                self.settle_notification(&a.id);
            }
            // Folded above, into the stream's state.
            EventBody::StreamCreated(_)
            | EventBody::StreamAppended(_)
            | EventBody::StreamTouched(_)
            | EventBody::StreamDeleted(_) => {}
            // The log's own chain, never a job's.
            EventBody::UnitsRemoved(_) => {}
        }
    }

    /// A new watcher. Room is made for exactly one more: most jobs have one
    /// or two watchers, and every idle socket's job is held in memory.
    fn add_watcher(&mut self, s: SessionState) {
        self.watchers.reserve_exact(1);
        self.watchers.push(s);
    }

    /// The watcher the event names.
    fn watcher_mut(&mut self, id: Option<SessionId>) -> Option<&mut SessionState> {
        self.watchers.iter_mut().find(|s| Some(s.session_id) == id)
    }

    /// Ends the watcher the event names: it leaves the watchers, and is
    /// kept as the last ended session if none started later has ended.
    fn end_watcher(&mut self, id: Option<SessionId>, at: DateTime<Utc>) {
        let Some(i) = self.watchers.iter().position(|s| Some(s.session_id) == id) else {
            return;
        };
        let mut s = self.watchers.remove(i);
        s.phase = SessionPhase::Ended { at };
        if self
            .view
            .last_ended
            .as_ref()
            .is_none_or(|e| e.started_at <= s.started_at)
        {
            self.view.last_ended = Some(s);
        }
    }
}
/// What an earlier append with an `Idempotency-Key` produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdempotentAppend {
    pub seq: i64,
    /// Digest of the event's kind and payload, to tell a true retry from a key
    /// reused for a different event.
    pub fingerprint: [u8; 16],
}

/// Digest identifying an event's content, for idempotency checks.
pub fn fingerprint(body: &EventBody) -> [u8; 16] {
    let mut hasher = Sha256::new();
    hasher.update(body.kind().as_bytes());
    hasher.update([0]);
    hasher.update(body.encode().as_bytes());
    let digest = hasher.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// The fold of the whole log: every job, and the idempotency keys seen.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub jobs: HashMap<JobId, JobState>,
    pub idempotency: HashMap<(JobId, String), IdempotentAppend>,
}

impl World {
    pub fn apply(&mut self, event: &Event) {
        self.jobs
            .entry(event.job_id)
            .or_insert_with(|| JobState::genesis(event.job_id))
            .apply(event);
        if let Some(key) = &event.idempotency_key {
            self.idempotency.insert(
                (event.job_id, key.clone()),
                IdempotentAppend {
                    seq: event.seq,
                    fingerprint: fingerprint(&event.body),
                },
            );
        }
    }
}
