//! The WebSocket messages, both ways: what the server sends (built from the log)
//! and what clients may send. Parsing client input never panics and never
//! closes the socket: bad input gets an `error` message.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::domain::event::FailureInfo;
use crate::domain::{Event, EventBody, JobState, JobStatus};
use crate::engine::Attached;

/// Close codes the server sends or records (they are the domain's: the log
/// records them).
pub use crate::domain::close;

/// The query parameters of `/ws/progress`.
pub mod param {
    pub const JOB_ID: &str = "jobId";
    pub const TOKEN: &str = "token";
    pub const RECONNECT: &str = "reconnect";
    pub const SESSION_ID: &str = "sessionId";
    pub const LAST_SEQ: &str = "lastSeq";
    pub const EPOCH: &str = "epoch";
    pub const ALL: &[&str] = &[JOB_ID, TOKEN, RECONNECT, SESSION_ID, LAST_SEQ, EPOCH];
}

/// The subprotocol browsers offer beside `bearer.<token>`; the server echoes it.
pub const SUBPROTOCOL: &str = "rejoin";
/// The prefix of the subprotocol that carries a browser's token.
pub const BEARER_PREFIX: &str = "bearer.";

/// The `type`s of the messages the server sends.
pub const SERVER_MESSAGES: &[&str] = &[
    "connected",
    "reconnected",
    "progress",
    "message",
    "completed",
    "stalled",
    "failed",
    "cancelled",
    "pong",
    "error",
];

/// The `type`s of the messages a client may send.
pub const CLIENT_MESSAGES: &[&str] = &["ping", "ack"];

/// The `code`s of `error` messages.
pub mod error_code {
    pub const INVALID_JSON: &str = "invalid_json";
    pub const INVALID_MESSAGE: &str = "invalid_message";
    pub const UNKNOWN_TYPE: &str = "unknown_type";
    pub const ALL: &[&str] = &[INVALID_JSON, INVALID_MESSAGE, UNKNOWN_TYPE];
}

/// The first message on a socket: `connected` or `reconnected`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub job_id: Uuid,
    pub session_id: Uuid,
    pub epoch: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed: Option<bool>,
    pub status: JobStatus,
    pub progress: f64,
    pub message: &'a Option<String>,
    pub last_update: Option<DateTime<Utc>>,
    pub last_seq: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missed: Option<u64>,
}

impl<'a> Hello<'a> {
    pub fn new(attached: &'a Attached, epoch: &'a str) -> Self {
        let job: &JobState = &attached.snapshot;
        let reconnect = attached.plan.reconnect;
        Hello {
            kind: if reconnect {
                "reconnected"
            } else {
                "connected"
            },
            job_id: job.job_id,
            session_id: attached.plan.session_id,
            epoch,
            resumed: reconnect.then_some(attached.plan.resumed),
            status: job.status,
            progress: job.progress,
            message: &job.message,
            last_update: job.last_update,
            last_seq: job.last_seq,
            missed: reconnect.then_some(attached.plan.missed),
        }
    }
}

/// A job event as clients receive it.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum JobMessage<'a> {
    Progress {
        seq: i64,
        progress: f64,
        message: &'a Option<String>,
        data: &'a Option<Value>,
        at: DateTime<Utc>,
    },
    Message {
        seq: i64,
        name: &'a str,
        data: &'a Option<Value>,
        at: DateTime<Utc>,
    },
    Completed {
        seq: i64,
        result: &'a Option<Value>,
        at: DateTime<Utc>,
    },
    Failed {
        seq: i64,
        error: &'a FailureInfo,
        at: DateTime<Utc>,
    },
    Cancelled {
        seq: i64,
        reason: &'a Option<String>,
        at: DateTime<Utc>,
    },
    Stalled {
        seq: i64,
        since: DateTime<Utc>,
        at: DateTime<Utc>,
    },
}

/// The message for a job event; `None` for events clients do not receive.
pub fn job_message(event: &Event) -> Option<String> {
    let (seq, at) = (event.seq, event.at);
    let msg = match &event.body {
        EventBody::ProgressReported(p) => JobMessage::Progress {
            seq,
            progress: p.progress,
            message: &p.message,
            data: &p.data,
            at,
        },
        EventBody::MessagePosted(m) => JobMessage::Message {
            seq,
            name: &m.name,
            data: &m.data,
            at,
        },
        EventBody::JobCompleted(c) => JobMessage::Completed {
            seq,
            result: &c.result,
            at,
        },
        EventBody::JobFailed(f) => JobMessage::Failed {
            seq,
            error: &f.error,
            at,
        },
        EventBody::JobCancelled(c) => JobMessage::Cancelled {
            seq,
            reason: &c.reason,
            at,
        },
        EventBody::JobStalled(st) => JobMessage::Stalled {
            seq,
            since: st.since,
            at,
        },
        _ => return None,
    };
    serde_json::to_string(&msg).ok()
}

pub const PONG: &str = r#"{"type":"pong"}"#;

/// What a client sent.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientMessage {
    Ping,
    /// The client processed everything up to `seq`.
    Ack {
        seq: i64,
    },
}

/// Why a client message was not understood: the `code` of the `error` reply.
#[derive(Clone, Debug, PartialEq)]
pub struct BadMessage {
    pub code: &'static str,
    pub message: String,
}

impl BadMessage {
    pub fn to_json(&self) -> String {
        serde_json::json!({"type": "error", "code": self.code, "message": self.message}).to_string()
    }
}

pub fn parse_client_message(text: &str) -> Result<ClientMessage, BadMessage> {
    let bad = |code, message: &str| BadMessage {
        code,
        message: message.to_owned(),
    };
    let value: Value = serde_json::from_str(text)
        .map_err(|_| bad(error_code::INVALID_JSON, "the message is not JSON"))?;
    let kind = value.get("type").and_then(Value::as_str).ok_or_else(|| {
        bad(
            error_code::INVALID_MESSAGE,
            "a message needs a string `type`",
        )
    })?;
    match kind {
        "ping" => Ok(ClientMessage::Ping),
        "ack" => value
            .get("seq")
            .and_then(Value::as_i64)
            .filter(|s| *s >= 0)
            .map(|seq| ClientMessage::Ack { seq })
            .ok_or_else(|| {
                bad(
                    error_code::INVALID_MESSAGE,
                    "`ack` needs a non-negative integer `seq`",
                )
            }),
        _ => Err(BadMessage {
            code: error_code::UNKNOWN_TYPE,
            message: "known types are `ping` and `ack`".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse_or_explain() {
        assert_eq!(
            parse_client_message(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            parse_client_message(r#"{"type":"ack","seq":7}"#),
            Ok(ClientMessage::Ack { seq: 7 })
        );
        for (text, code) in [
            ("{", "invalid_json"),
            ("[]", "invalid_message"),
            (r#"{"type":3}"#, "invalid_message"),
            (r#"{"type":"ack"}"#, "invalid_message"),
            (r#"{"type":"ack","seq":-1}"#, "invalid_message"),
            (r#"{"type":"subscribe"}"#, "unknown_type"),
            ("\u{0}\u{ffff}", "invalid_json"),
        ] {
            assert_eq!(parse_client_message(text).unwrap_err().code, code, "{text}");
        }
    }
}
