//! `GET /v1/jobs/{jobId}/stream`: the job's messages as Server-Sent Events,
//! for clients that cannot open a WebSocket (a proxy that blocks upgrades).
//!
//! The same session as a socket: the same checks before it opens, the same
//! attach (recorded `connected`/`reconnected` with transport `sse`), the same
//! first message, replay and live events, and the close recorded as
//! `disconnected` with a grace window. It is served by the socket's own loop
//! (`ws::socket::serve`) over an SSE adapter: each text message becomes an
//! event named by its `type`, with `id` its seq (the first message's id is
//! the job's `lastSeq`), each ping a keep-alive comment, and the close an
//! event `close` before the stream ends.
//!
//! EventSource sends no headers: the token comes as `?token=`, and a resume
//! as `Last-Event-ID` (which EventSource sets on its own reconnects): the
//! stream then resumes like `reconnect=true&lastSeq=<id>`. A reconnect to a
//! finished job with nothing missed is answered 204, which tells EventSource
//! to stop reconnecting.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::ws::Message;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::Router;
use futures_util::{SinkExt, Stream};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use super::extract::parse_job_id;
use super::request::ClientAddr;
use super::state::AppState;
use super::upgrade::{admit, check, reconnect_param, reject};
use crate::ws::protocol::param;
use crate::ws::socket;

/// The transport recorded for sessions on this stream.
pub const TRANSPORT: &str = "sse";

/// Events buffered between the session's loop and the HTTP body.
const BUFFER: usize = 16;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/jobs/{job_id}/stream", get(stream))
}

/// Streams the job's messages as Server-Sent Events.
#[utoipa::path(
    get,
    path = "/v1/jobs/{job_id}/stream",
    tag = "jobs",
    params(
        ("job_id" = uuid::Uuid, Path, description = "The job"),
        ("token" = String, Query, description = "The job's client token"),
        ("reconnect" = Option<bool>, Query, description = "Resume (implied by Last-Event-ID)"),
        ("sessionId" = Option<uuid::Uuid>, Query, description = "The session to resume"),
        ("lastSeq" = Option<i64>, Query, description = "The last seq processed (default: Last-Event-ID)"),
        ("epoch" = Option<String>, Query, description = "The epoch of the last connected/reconnected"),
        ("Last-Event-ID" = Option<i64>, Header, description = "The id of the last event received: resume after it"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: events named by the message `type` (`connected`, `reconnected`, `progress`, ..., `close`), data as in /protocol.schema.json", content_type = "text/event-stream", body = String),
        (status = 204, description = "A resume of a finished job with nothing missed: nothing to stream"),
        (status = 400, description = "A malformed parameter", body = super::error::ErrorBody),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 403, description = "Not this job's client token, or an origin not allowed", body = super::error::ErrorBody),
        (status = 404, description = "Unknown job", body = super::error::ErrorBody),
        (status = 410, description = "Retention removed the job (`job_archived`, with when it finished)", body = super::error::ErrorBody),
        (status = 409, description = "Too many watchers", body = super::error::ErrorBody),
        (status = 429, description = "Too many attempts from this address", body = super::error::ErrorBody),
        (status = 503, description = "At the connection limit, or this node does not hold its lease", body = super::error::ErrorBody),
    )
)]
pub async fn stream(
    State(state): State<AppState>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    Query(mut query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(refused) = admit(&state, client) {
        return refused.into_response();
    }
    let job_id = match parse_job_id(&job_id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    // EventSource's own reconnect: resume after the last event it saw.
    if let Some(id) = headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        if !id.is_empty() {
            query.insert(param::RECONNECT.into(), "true".into());
            query
                .entry(param::LAST_SEQ.into())
                .or_insert_with(|| id.trim().to_owned());
        }
    }
    let reconnect = reconnect_param(&query).unwrap_or(false);
    let mut accepted = match check(&state, job_id, client, &headers, &query).await {
        Ok(a) => a,
        Err(err) => {
            reject(&state, job_id, reconnect, &err).await;
            return err.into_response();
        }
    };
    accepted.attach.transport = Some(TRANSPORT.to_owned());
    if accepted.attach.reconnect {
        if let Ok(Some(job)) = state.engine.job(job_id).await {
            let caught_up = accepted
                .attach
                .client_last_seq
                .is_some_and(|s| s >= job.last_seq);
            if job.status.is_terminal() && caught_up {
                return StatusCode::NO_CONTENT.into_response();
            }
        }
    }

    let heartbeat = state.upgrade.heartbeat_interval;
    let params = accepted.into_params(&state);
    let (events_tx, events) = mpsc::channel::<Result<SseEvent, Infallible>>(BUFFER);
    let alive = events_tx.clone();
    let mut ids = Ids::default();
    let sink = PollSender::new(events_tx)
        .sink_map_err(axum::Error::new)
        .with(move |m: Message| std::future::ready(Ok::<_, axum::Error>(ids.event(m))));
    let sink = Box::pin(sink);
    let reads = client_reads(alive, heartbeat);
    state
        .tasks
        .spawn(socket::serve(sink, reads, state.engine.clone(), params));

    let body = receiver_stream(events);
    let mut res = Sse::new(body).into_response();
    let h = res.headers_mut();
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    // Proxies that buffer responses (nginx) would hold events back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

/// The positions a stream has promised so far.
#[derive(Debug, Default)]
struct Ids {
    /// The highest id sent: no later id is lower.
    last: Option<i64>,
}

impl Ids {
    /// One protocol message as an SSE event.
    fn event(&mut self, m: Message) -> Result<SseEvent, Infallible> {
        Ok(match m {
            Message::Text(text) => {
                let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                let mut event = SseEvent::default();
                if let Some(kind) = v["type"].as_str() {
                    event = event.event(kind);
                }
                if let Some(id) = self.id_of(&v) {
                    event = event.id(id.to_string());
                }
                event.data(text.as_str())
            }
            Message::Close(frame) => {
                let (code, reason) =
                    frame.map_or((1000, String::new()), |f| (f.code, f.reason.to_string()));
                SseEvent::default()
                    .event("close")
                    .data(serde_json::json!({"code": code, "reason": reason}).to_string())
            }
            // Pings keep proxies from timing the stream out.
            _ => SseEvent::default().comment("keep-alive"),
        })
    }

    /// The id a message may carry: a job event's seq; the first message's
    /// `lastSeq` unless a replay follows it; nothing for the others.
    fn id_of(&mut self, message: &Value) -> Option<i64> {
        let id = match message["seq"].as_i64() {
            Some(seq) => seq,
            None => {
                let hello = matches!(message["type"].as_str(), Some("connected" | "reconnected"));
                let replay_follows = message["missed"].as_u64().is_some_and(|n| n > 0);
                if !hello || replay_follows {
                    return None;
                }
                message["lastSeq"].as_i64()?
            }
        };
        if self.last.is_some_and(|last| id < last) {
            return None;
        }
        self.last = Some(id);
        Some(id)
    }
}

/// What the session's loop reads from the client: an SSE client sends
/// nothing, so this yields a pong every half heartbeat while the response
/// body is still being read (the connection is there), and ends when the body
/// is dropped (the client went away). `alive` is the body's sender.
pub(super) fn client_reads<T: Send + 'static>(
    alive: mpsc::Sender<T>,
    heartbeat: Duration,
) -> std::pin::Pin<Box<dyn Stream<Item = Result<Message, axum::Error>> + Send>> {
    let every = (heartbeat / 2).max(Duration::from_millis(10));
    Box::pin(futures_util::stream::unfold(
        alive,
        move |alive| async move {
            tokio::select! {
                _ = alive.closed() => None,
                _ = tokio::time::sleep(every) => Some((Ok(Message::Pong(Default::default())), alive)),
            }
        },
    ))
}

/// The receiver as a stream (of a response body's events or bytes).
pub(super) fn receiver_stream<T>(mut rx: mpsc::Receiver<T>) -> impl Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids(messages: &[Value]) -> Vec<Option<i64>> {
        let mut ids = Ids::default();
        messages.iter().map(|m| ids.id_of(m)).collect()
    }

    #[test]
    fn a_resume_that_replays_promises_nothing_until_the_replayed_events() {
        let hello = json!({"type": "reconnected", "lastSeq": 4, "missed": 3});
        let replay = [2, 3, 4].map(|seq| json!({"type": "progress", "seq": seq}));
        let mut messages = vec![hello];
        messages.extend(replay);
        assert_eq!(ids(&messages), [None, Some(2), Some(3), Some(4)]);
    }

    #[test]
    fn a_first_message_with_nothing_to_replay_carries_the_head() {
        let fresh = json!({"type": "connected", "lastSeq": 7});
        let caught_up = json!({"type": "reconnected", "lastSeq": 7, "missed": 0});
        assert_eq!(ids(&[fresh]), [Some(7)]);
        assert_eq!(ids(&[caught_up]), [Some(7)]);
    }

    #[test]
    fn ids_never_decrease_and_other_messages_carry_none() {
        let messages = [
            json!({"type": "connected", "lastSeq": 5}),
            json!({"type": "pong"}),
            json!({"type": "progress", "seq": 3}),
            json!({"type": "progress", "seq": 6}),
        ];
        assert_eq!(ids(&messages), [Some(5), None, None, Some(6)]);
    }
}
