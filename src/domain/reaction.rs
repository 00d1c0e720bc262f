//! What the log calls for beyond a command's own events: the webhook
//! notification a job's end (or stall) makes due, and what it says.

use std::time::Duration;

use serde_json::{json, Value};

use super::event::{format_time, Event, EventBody, NotificationDue, Notify};
use super::notify::{notifiable_kind, webhook_id, PendingNotification};
use super::state::{JobState, SessionPhase};

/// The `notification_due` that `event` (just applied to `state`) calls
/// for, if any: for a job's end or stall, unless its `notify` is `never`,
/// or `unwatched` while a watcher has a live socket.
pub fn notification_due(state: &JobState, event: &Event, max_age: Duration) -> Option<EventBody> {
    let kind = notifiable_kind(&event.body)?;
    let reason = match state.notify {
        Notify::Never => return None,
        Notify::Always => "always",
        Notify::Unwatched => {
            if state
                .watchers
                .iter()
                .any(|s| s.phase == SessionPhase::Connected)
            {
                return None;
            }
            "unwatched"
        }
    };
    let max_age = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
    Some(EventBody::NotificationDue(NotificationDue {
        id: webhook_id(state.job_id, event.seq),
        for_seq: event.seq,
        kind: kind.to_owned(),
        status: state.status.as_str().to_owned(),
        progress: state.progress,
        reason: reason.to_owned(),
        expires_at: event.at.checked_add_signed(max_age).unwrap_or(event.at),
    }))
}

/// The webhook body: the same on every attempt. `state` is the job now;
/// what it says of the notified moment comes from `n`, and a finished
/// job's result or error does not change.
pub fn webhook_body(state: &JobState, n: &PendingNotification) -> Value {
    let mut body = json!({
        "type": n.kind,
        "jobId": state.job_id,
        "seq": n.for_seq,
        "status": n.status,
        "progress": n.progress,
        "metadata": state.metadata.clone().unwrap_or(Value::Null),
        "at": format_time(&n.due_at),
    });
    let fields = body.as_object_mut().expect("a JSON object");
    match n.kind.as_str() {
        "job.completed" => {
            fields.insert("result".into(), state.result.clone().unwrap_or(Value::Null));
        }
        "job.failed" => {
            if let Some(e) = &state.error {
                fields.insert(
                    "error".into(),
                    json!({"code": e.code, "message": e.message}),
                );
            }
        }
        "job.cancelled" => {
            if let Some(r) = &state.cancel_reason {
                fields.insert("reason".into(), json!(r));
            }
        }
        _ => {}
    }
    body
}
