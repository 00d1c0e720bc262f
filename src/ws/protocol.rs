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

/// Close codes the server sends or records.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const NO_STATUS: u16 = 1005;
    pub const ABNORMAL: u16 = 1006;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
    pub const SERVICE_RESTART: u16 = 1012;
    pub const TRY_AGAIN_LATER: u16 = 1013;

    pub const JOB_FINISHED: &str = "job finished";
    pub const SHUTTING_DOWN: &str = "server shutting down";
    pub const SEND_QUEUE_FULL: &str = "send queue full";
    pub const HEARTBEAT_TIMEOUT: &str = "heartbeat timeout";
    pub const CONNECTION_LOST: &str = "connection lost";
    pub const BINARY: &str = "binary frames are not supported";
    pub const TOO_BIG_REASON: &str = "message too big";
    pub const LOG_UNAVAILABLE: &str = "event log unavailable";
    pub const DROPPED: &str = "dropped by the server (demo)";
    pub const SERVER_RESTART: &str = "server restart";
    pub const REPLACED: &str = crate::domain::decide::REPLACED_REASON;

    /// Every close frame the server sends, as (code, reason).
    pub const SENT: &[(u16, &str)] = &[
        (NORMAL, JOB_FINISHED),
        (NORMAL, REPLACED),
        (GOING_AWAY, SHUTTING_DOWN),
        (UNSUPPORTED_DATA, BINARY),
        (TOO_BIG, TOO_BIG_REASON),
        (INTERNAL_ERROR, LOG_UNAVAILABLE),
        (TRY_AGAIN_LATER, SEND_QUEUE_FULL),
    ];

    /// Closes the server records but cannot send: the connection is gone.
    pub const RECORDED_ONLY: &[(u16, &str)] = &[
        (ABNORMAL, CONNECTION_LOST),
        (ABNORMAL, HEARTBEAT_TIMEOUT),
        (ABNORMAL, DROPPED),
        (SERVICE_RESTART, SERVER_RESTART),
    ];
}

/// The `type`s of the messages the server sends.
pub const SERVER_MESSAGES: &[&str] = &[
    "connected",
    "reconnected",
    "progress",
    "message",
    "completed",
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
                    "invalid_message",
                    "`ack` needs a non-negative integer `seq`",
                )
            }),
        _ => Err(BadMessage {
            code: "unknown_type",
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
