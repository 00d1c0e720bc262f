//! The event catalogue: every fact rejoin records, as typed, versioned values.
//!
//! An [`Event`] is the envelope (job, seq, session, time) around an
//! [`EventBody`]. Bodies are encoded to a JSON payload plus a `kind` and a schema
//! version; decoding dispatches on `kind`, so each payload is parsed straight into
//! its own struct (typed decoding is much cheaper than `serde_json::Value`).
//!
//! Names are past tense in Rust; the `kind` strings are the contract's words.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub type JobId = Uuid;
pub type SessionId = Uuid;

/// Schema version written with every payload this build produces.
pub const SCHEMA_VERSION: i32 = 1;

/// One event of the log, decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Global position in the log; 0 until the store has assigned it.
    pub position: i64,
    pub job_id: JobId,
    /// The job's stream position, strictly increasing per job, starting at 1.
    pub seq: i64,
    /// The session the event belongs to, for connection events.
    pub session_id: Option<SessionId>,
    pub at: DateTime<Utc>,
    /// The `Idempotency-Key` the append carried, so retries can be recognised
    /// from the log alone.
    pub idempotency_key: Option<String>,
    pub body: EventBody,
    /// SHA-256 (hex) chaining this event to the job's previous one.
    pub hash: String,
}

impl Event {
    /// An event not yet in the log: its seq and hash are given when it is
    /// sealed into its job's chain, its position when it is stored.
    pub fn new(
        job_id: JobId,
        session_id: Option<SessionId>,
        at: DateTime<Utc>,
        body: EventBody,
    ) -> Self {
        Event {
            position: 0,
            job_id,
            seq: 0,
            session_id,
            at,
            idempotency_key: None,
            body,
            hash: String::new(),
        }
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq)]
pub enum EventBody {
    JobCreated(JobCreated),
    ProgressReported(ProgressReported),
    MessagePosted(MessagePosted),
    JobCompleted(JobCompleted),
    JobFailed(JobFailed),
    JobCancelled(JobCancelled),
    JobStalled(JobStalled),
    Connected(Connected),
    Disconnected(Disconnected),
    Reconnected(Reconnected),
    Replaced(Replaced),
    WsErrored(WsErrored),
    ConnectRejected(ConnectRejected),
    GraceExpired(GraceExpired),
    NotificationDue(NotificationDue),
    NotificationAttempt(NotificationAttempt),
    NotificationRetry(NotificationRetry),
    NotificationDelivered(NotificationDelivered),
    NotificationAbandoned(NotificationAbandoned),
    StreamCreated(StreamCreated),
    StreamAppended(StreamAppended),
    StreamTouched(StreamTouched),
    StreamDeleted(StreamDeleted),
    UnitsRemoved(UnitsRemoved),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobCreated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// The job stalls after this many seconds without a job event (none:
    /// never). The server's default is applied at creation and recorded here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_after_secs: Option<u64>,
    /// The job fails with `timeout` if still not finished this many seconds
    /// after its creation (none: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// When the job's end (or stall) is notified to the webhook (none: the
    /// default, `unwatched`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
}

/// When a job's end is notified to the operator's webhook.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Notify {
    /// When no watcher has a live socket at the moment it ends.
    #[default]
    Unwatched,
    /// Whenever it ends.
    Always,
    /// Never.
    Never,
}

impl Notify {
    pub fn as_str(self) -> &'static str {
        match self {
            Notify::Unwatched => "unwatched",
            Notify::Always => "always",
            Notify::Never => "never",
        }
    }
}

/// The job went `stallAfterSecs` without a job event (since `since`, the
/// last one). A job event itself, though it does not restart the clock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStalled {
    pub since: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressReported {
    pub progress: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagePosted {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobCompleted {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobFailed {
    pub error: FailureInfo,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailureInfo {
    pub code: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobCancelled {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Who opened a socket, and where from: what `connected` and `reconnected`
/// both record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Client {
    /// The token's `sub`.
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The client's address: the peer, or the address a trusted proxy
    /// forwarded (`--trusted-proxies`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The node holding the socket, on a log shared by several nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `sse` for the Server-Sent Events stream; none for a WebSocket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
}

/// A fresh connect started a session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connected {
    #[serde(flatten)]
    pub client: Client,
    /// The job's last delivered seq when the socket opened.
    pub last_seq: i64,
}

/// A socket closed; the session's grace window opened, or, for the close
/// that follows a terminal event (no `graceUntil`), the session ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Disconnected {
    pub code: u16,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_until: Option<DateTime<Utc>>,
    /// The highest seq the client acknowledged on this socket, if it sent acks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_seq: Option<i64>,
    /// `sse` when the connection was the Server-Sent Events stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
}

/// A client came back with `reconnect=true`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reconnected {
    #[serde(flatten)]
    pub client: Client,
    /// True when the grace window was still open and the session continues.
    pub resumed: bool,
    /// The session the client had before, when it was not resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_session_id: Option<SessionId>,
    /// Milliseconds since the previous socket closed, if it had closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_ms: Option<i64>,
    /// The `lastSeq` the client sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_last_seq: Option<i64>,
    /// The `epoch` the client sent, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_epoch: Option<String>,
    /// How many job events were replayed to the client.
    pub missed: u64,
}

/// The job's open socket was closed because another connection took over.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Replaced {
    pub code: u16,
    pub reason: String,
    /// The session of the connection that took over.
    pub by_session_id: SessionId,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WsErrored {
    pub message: String,
}

/// An upgrade attempt on a known job was refused before the socket opened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectRejected {
    pub status: u16,
    pub code: String,
    pub reconnect: bool,
    /// Further rejections folded into this one by the rate limit.
    #[serde(default)]
    pub suppressed: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraceExpired {
    pub grace_until: DateTime<Utc>,
}

/// A webhook notification became due: the job event at `forSeq` (terminal,
/// or a `stalled`) was committed when the job's `notify` asked for one.
/// The first attempt is due at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationDue {
    /// The `webhook-id` every attempt carries.
    pub id: String,
    pub for_seq: i64,
    /// `job.completed`, `job.failed`, `job.cancelled` or `job.stalled`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The job's status and progress at `forSeq`, for the body.
    pub status: String,
    pub progress: f64,
    /// Why it was due: `unwatched` (no watcher had a live socket) or `always`.
    pub reason: String,
    /// After this, no attempt is made and the notification is abandoned.
    pub expires_at: DateTime<Utc>,
}

/// A node claimed attempt `attempt` (committed before the request is sent,
/// so only one node makes it). If no result is recorded by `until`, the
/// attempt counts as failed and the next one may be claimed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationAttempt {
    pub id: String,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub until: DateTime<Utc>,
}

/// Attempt `attempt` failed (an answer other than 2xx or 410, a timeout, a
/// refused connection); the next is due at `retryAt`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationRetry {
    pub id: String,
    pub attempt: u32,
    /// The HTTP status, when the endpoint answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub error: String,
    pub retry_at: DateTime<Utc>,
}

/// The endpoint answered attempt `attempt` with a 2xx.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationDelivered {
    pub id: String,
    pub attempt: u32,
    pub status: u16,
}

/// No more attempts: the endpoint answered 410 (`gone`), or the
/// notification outlived `--webhook-max-age-secs` (`expired`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationAbandoned {
    pub id: String,
    /// Attempts made.
    pub attempts: u32,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a stream append carries: bytes (stored base64) or, on a JSON stream,
/// its messages (a posted array flattened one level).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamData {
    Bytes(String),
    Json(Vec<Value>),
}

/// A producer's tuple, as an idempotent append carried it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProducerTuple {
    pub id: String,
    pub epoch: u64,
    pub seq: u64,
}

/// Where a fork branches off its source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForkOf {
    pub source_path: String,
    pub source_id: JobId,
    /// The first seq of the source's incarnation the fork reads.
    pub from_seq: i64,
    /// The source's offset the fork branches at: the fork holds the
    /// source's data up to it.
    pub offset: String,
    /// The source's seq of the last event the fork holds.
    pub through_seq: i64,
    /// `Stream-Fork-Sub-Offset`: the fork also holds this much (bytes, or
    /// messages) of the source's next append, as the start of its own
    /// first data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_offset: Option<u64>,
}

/// A Durable Streams stream was created at `path` (a new incarnation when
/// one was deleted or expired there before).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamCreated {
    pub path: String,
    pub content_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub closed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork: Option<ForkOf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<StreamData>,
    /// The stream's tail offset after this event.
    pub offset: String,
}

/// Data appended to a stream, or the stream closed (`closes`), or both.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamAppended {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<StreamData>,
    /// The stream's tail offset after this event.
    pub offset: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_seq: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<ProducerTuple>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub closes: bool,
}

/// Reads kept a stream with a TTL alive: its window runs from `at`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamTouched {
    pub at: DateTime<Utc>,
}

/// The stream was deleted, or expired (`expired`). While forks still
/// read its data it is `retained`: gone for its own readers and writers,
/// its path not yet free; the last fork's end deletes it for good.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamDeleted {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expired: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retained: bool,
}

/// Retention removed whole units (finished jobs, ended streams) from the
/// log. Recorded on the log's own chain ([`LOG_CHAIN`]) in the transaction
/// that removed them, with what `rejoin verify` needs to account for them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitsRemoved {
    /// The archive file their events were written to (relative to the
    /// archive directory), if archiving is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    pub units: Vec<RemovedUnit>,
}

impl UnitsRemoved {
    /// The position of the last event its units had: every later event of
    /// the log is still there, as far as this record goes.
    pub fn through(&self) -> i64 {
        removed_through(&self.units)
    }
}

/// The highest last position of `units` (0 for none).
pub fn removed_through(units: &[RemovedUnit]) -> i64 {
    units.iter().map(|u| u.last_position).max().unwrap_or(0)
}

/// One unit that left the log: all of its events, the last of them at
/// `last_position` with hash `last_hash`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemovedUnit {
    pub id: JobId,
    #[serde(default, skip_serializing_if = "UnitKind::is_job")]
    pub kind: UnitKind,
    /// When its terminal event was recorded.
    pub finished_at: DateTime<Utc>,
    /// How many events left: its seqs 1 through `events`.
    pub events: i64,
    pub last_position: i64,
    pub last_hash: String,
}

/// What a removed unit was.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitKind {
    #[default]
    Job,
    Stream,
}

impl UnitKind {
    pub fn is_job(&self) -> bool {
        *self == UnitKind::Job
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UnitKind::Job => "job",
            UnitKind::Stream => "stream",
        }
    }
}

/// The id of the log's own chain: the `units_removed` records. No job or
/// stream ever has it.
pub const LOG_CHAIN: JobId = uuid::Uuid::nil();

/// A payload that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event kind `{0}`")]
    UnknownKind(String),
    #[error("unsupported schema version {version} for `{kind}`")]
    UnsupportedVersion { kind: String, version: i32 },
    #[error("bad `{kind}` payload: {source}")]
    Payload {
        kind: String,
        source: serde_json::Error,
    },
    #[error("bad {field}: {value}")]
    Field { field: &'static str, value: String },
}

macro_rules! kinds {
    (@job job) => { true };
    (@job) => { false };
    ($($variant:ident => $kind:literal $($class:ident)?),* $(,)?) => {
        impl EventBody {
            /// The contract's name for this kind of event.
            pub fn kind(&self) -> &'static str {
                match self { $(EventBody::$variant(_) => $kind,)* }
            }

            /// Job events are the ones delivered to clients and carried by
            /// `lastSeq`.
            pub fn is_job_event(&self) -> bool {
                match self { $(EventBody::$variant(_) => kinds!(@job $($class)?),)* }
            }

            /// Whether events of this kind (by its name in the log) are job
            /// events: what a reader that needs only those can tell before
            /// decoding a row.
            pub fn is_job_event_kind(kind: &str) -> bool {
                match kind { $($kind => kinds!(@job $($class)?),)* _ => false }
            }

            /// The JSON payload stored in the log.
            pub fn encode(&self) -> String {
                let encoded = match self { $(EventBody::$variant(p) => serde_json::to_string(p),)* };
                // Serialising these plain structs cannot fail: no maps with
                // non-string keys, no failing Serialize impls.
                encoded.expect("event payloads always serialise")
            }

            /// Parses a stored payload of the given kind and schema version.
            pub fn decode(kind: &str, version: i32, payload: &str) -> Result<Self, DecodeError> {
                if version != SCHEMA_VERSION {
                    return Err(DecodeError::UnsupportedVersion { kind: kind.to_owned(), version });
                }
                let wrap = |source| DecodeError::Payload { kind: kind.to_owned(), source };
                match kind {
                    $($kind => serde_json::from_str(payload).map(EventBody::$variant).map_err(wrap),)*
                    other => Err(DecodeError::UnknownKind(other.to_owned())),
                }
            }
        }

        /// Every kind of event, in catalogue order.
        pub const ALL_KINDS: &[&str] = &[$($kind),*];
    };
}

// `job`: a job event.
kinds! {
    JobCreated => "job_created",
    ProgressReported => "progress" job,
    MessagePosted => "message" job,
    JobCompleted => "completed" job,
    JobFailed => "failed" job,
    JobCancelled => "cancelled" job,
    JobStalled => "stalled" job,
    Connected => "connected",
    Disconnected => "disconnected",
    Reconnected => "reconnected",
    Replaced => "replaced",
    WsErrored => "ws_error",
    ConnectRejected => "connect_rejected",
    GraceExpired => "grace_expired",
    NotificationDue => "notification_due",
    NotificationAttempt => "notification_attempt",
    NotificationRetry => "notification_retry",
    NotificationDelivered => "notification_delivered",
    NotificationAbandoned => "notification_abandoned",
    StreamCreated => "stream_created",
    StreamAppended => "stream_appended",
    StreamTouched => "stream_touched",
    StreamDeleted => "stream_deleted",
    UnitsRemoved => "units_removed",
}

impl EventBody {
    /// An event of a Durable Streams stream rather than of a job.
    pub fn is_stream_event(&self) -> bool {
        matches!(
            self,
            EventBody::StreamCreated(_)
                | EventBody::StreamAppended(_)
                | EventBody::StreamTouched(_)
                | EventBody::StreamDeleted(_)
        )
    }

    /// The webhook notification this event is part of, if any.
    pub fn notification_id(&self) -> Option<&str> {
        match self {
            EventBody::NotificationDue(n) => Some(&n.id),
            EventBody::NotificationAttempt(n) => Some(&n.id),
            EventBody::NotificationRetry(n) => Some(&n.id),
            EventBody::NotificationDelivered(n) => Some(&n.id),
            EventBody::NotificationAbandoned(n) => Some(&n.id),
            _ => None,
        }
    }

    /// A terminal event ends the job: nothing may be appended after it.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventBody::JobCompleted(_) | EventBody::JobFailed(_) | EventBody::JobCancelled(_)
        )
    }
}

/// The log's timestamp format: RFC 3339, UTC, microseconds. Stored as text so the
/// SQLite shell and PostgreSQL read it alike, and hashed exactly as stored.
pub fn format_time(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub fn parse_time(text: &str) -> Result<DateTime<Utc>, DecodeError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| DecodeError::Field {
            field: "timestamp",
            value: text.to_owned(),
        })
}

/// Truncates a time to the log's precision, so what is held in memory equals
/// what a restart reads back.
pub fn to_log_precision(at: DateTime<Utc>) -> DateTime<Utc> {
    let micros = at.timestamp_micros();
    DateTime::from_timestamp_micros(micros).unwrap_or(at)
}

/// Whether events of this stored kind are job events (see
/// [`EventBody::is_job_event`]), without decoding one.
pub fn is_job_kind(kind: &str) -> bool {
    matches!(
        kind,
        "progress" | "message" | "completed" | "failed" | "cancelled" | "stalled"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_payload() {
        let at = to_log_precision(Utc::now());
        let bodies = vec![
            EventBody::JobCreated(JobCreated {
                metadata: Some(serde_json::json!({"shelf": 3})),
                stall_after_secs: Some(30),
                timeout_secs: None,
                notify: Some(Notify::Always),
            }),
            EventBody::NotificationDue(NotificationDue {
                id: "msg_1".into(),
                for_seq: 4,
                kind: "job.completed".into(),
                status: "completed".into(),
                progress: 100.0,
                reason: "unwatched".into(),
                expires_at: at,
            }),
            EventBody::NotificationRetry(NotificationRetry {
                id: "msg_1".into(),
                attempt: 2,
                status: Some(500),
                error: "HTTP 500".into(),
                retry_at: at,
            }),
            EventBody::JobStalled(JobStalled { since: at }),
            EventBody::ProgressReported(ProgressReported {
                progress: 45.0,
                message: Some("Processing book 9 of 20".into()),
                data: None,
            }),
            EventBody::MessagePosted(MessagePosted {
                name: "book_found".into(),
                data: Some(serde_json::json!({"isbn": "978"})),
            }),
            EventBody::JobFailed(JobFailed {
                error: FailureInfo {
                    code: "AI_TIMEOUT".into(),
                    message: "model timed out".into(),
                },
            }),
            EventBody::Disconnected(Disconnected {
                code: 1006,
                reason: "heartbeat timeout".into(),
                grace_until: Some(at),
                acked_seq: Some(4),
                transport: Some("sse".into()),
            }),
            EventBody::GraceExpired(GraceExpired { grace_until: at }),
            EventBody::StreamCreated(StreamCreated {
                path: "/v1/stream/a".into(),
                content_type: "application/json".into(),
                ttl_secs: Some(60),
                expires_at: None,
                closed: false,
                fork: Some(ForkOf {
                    source_path: "/v1/stream/src".into(),
                    source_id: Uuid::nil(),
                    from_seq: 1,
                    offset: "0000000000000003_0000000000000007".into(),
                    through_seq: 3,
                    sub_offset: Some(2),
                }),
                data: Some(StreamData::Json(vec![serde_json::json!({"k": 1})])),
                offset: "0000000000000004_0000000000000008".into(),
            }),
            EventBody::StreamAppended(StreamAppended {
                data: Some(StreamData::Bytes("aGk=".into())),
                offset: "0000000000000005_0000000000000010".into(),
                stream_seq: Some("a1".into()),
                producer: Some(ProducerTuple {
                    id: "p".into(),
                    epoch: 1,
                    seq: 4,
                }),
                closes: true,
            }),
            EventBody::StreamTouched(StreamTouched { at }),
            EventBody::StreamDeleted(StreamDeleted {
                expired: true,
                retained: true,
            }),
        ];
        for body in bodies {
            let payload = body.encode();
            let back = EventBody::decode(body.kind(), SCHEMA_VERSION, &payload).unwrap();
            assert_eq!(back, body);
            assert_eq!(
                EventBody::is_job_event_kind(body.kind()),
                body.is_job_event()
            );
        }
    }

    #[test]
    fn the_job_events_are_the_ones_clients_receive() {
        let job_kinds: Vec<&str> = ALL_KINDS
            .iter()
            .copied()
            .filter(|k| EventBody::is_job_event_kind(k))
            .collect();
        assert_eq!(
            job_kinds,
            [
                "progress",
                "message",
                "completed",
                "failed",
                "cancelled",
                "stalled"
            ]
        );
        assert!(!EventBody::is_job_event_kind("no_such_kind"));
    }

    #[test]
    fn unknown_kinds_and_versions_are_errors() {
        assert!(matches!(
            EventBody::decode("teleported", 1, "{}"),
            Err(DecodeError::UnknownKind(_))
        ));
        assert!(matches!(
            EventBody::decode("progress", 99, "{}"),
            Err(DecodeError::UnsupportedVersion { .. })
        ));
    }

    #[test]
    fn log_time_format_round_trips() {
        let at = to_log_precision(Utc::now());
        assert_eq!(parse_time(&format_time(&at)).unwrap(), at);
    }
}
