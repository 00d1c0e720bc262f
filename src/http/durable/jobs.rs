//! Every job is also a Durable Stream, read-only, at
//! `/v1/stream/jobs/{jobId}`: its job events (`progress`, `message`,
//! `stalled` and the terminal one) as JSON messages, the same objects the
//! WebSocket sends, closed when the job ends. A Durable Streams client
//! follows a job by offsets and sees its end as the end of the stream.
//!
//! Offsets are the events' seqs (`SSSSSSSSSSSSSSSS_SSSSSSSSSSSSSSSS`, or a
//! plain seq such as `3` when a client writes one).
//! Reading needs the job's client token or a service or support token, as
//! a bearer header, whatever `--stream-auth` says. A reader over SSE is a
//! session of the job like a socket's: recorded `reconnected` (a session of
//! its own, replaying from its offset) and `disconnected` when its response
//! ends, so it shows in the job's connection history; catch-up and
//! long-poll reads are plain reads.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::IpAddr;

use axum::body::{Body, Bytes};
use axum::extract::ws::Message;
use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use futures_util::SinkExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;
use uuid::Uuid;

use super::protocol::{
    bad, bearer, control, etag, header_text, long_poll, parse_start, read_query, set, sse_frame,
    Answer, Live, Refused, Start, READ_CHUNK_BYTES, SSE_LIFETIME,
};
use crate::auth::Role;
use crate::domain::decide::Attach;
use crate::domain::stream::Offset;
use crate::domain::{JobId, JobState};
use crate::http::request::ClientAddr;
use crate::http::state::AppState;
use crate::http::upgrade::admit;
use crate::ws::protocol::job_message;
use crate::ws::socket::{self, SocketParams};

/// Where job streams live under `/v1/stream/`.
pub(super) const PREFIX: &str = "/v1/stream/jobs/";

/// The transport recorded for a Durable Streams reader's session.
pub const TRANSPORT: &str = "durable-streams";

/// The offset after the job event at `seq`.
fn offset(seq: i64) -> Offset {
    let seq = seq.max(0) as u64;
    Offset {
        index: seq,
        size: seq,
    }
}

/// An offset written as a plain seq (`3`): digits, at most sixteen.
fn plain_seq(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 16 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

pub(super) async fn serve(state: &AppState, req: Request) -> Result<Response, Refused> {
    let path = req.uri().path().to_owned();
    let job_id = path
        .strip_prefix(PREFIX)
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(|| Refused::new(StatusCode::NOT_FOUND, "stream not found"))?;
    let method = req.method().clone();
    if method != Method::GET && method != Method::HEAD {
        return Err(Refused::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "a job's stream is read-only: jobs are written through the job API",
        )
        .with("allow", "GET, HEAD, OPTIONS"));
    }
    let sub = authorize(state, req.headers(), job_id).await?;
    let Some(job) = state.engine.job(job_id).await? else {
        return Err(missing(state, job_id).await);
    };
    if method == Method::HEAD {
        return Ok(Answer::new(StatusCode::OK)
            .content_type("application/json")
            .next_offset(offset(job.last_seq))
            .cache("no-store")
            .closed(job.status.is_terminal())
            .build());
    }
    let q = read_query(req.uri())?;
    // A job stream's offsets are its events' seqs: a plain seq is taken
    // too, as well as the protocol's form this server gives out.
    let start = match q.offset.as_deref().and_then(plain_seq) {
        Some(seq) => Start::At(offset(seq)),
        None => parse_start(q.offset.as_deref())?,
    };
    let live = Live::parse(q.live.as_deref())?;
    if live.is_some() && q.offset.is_none() {
        return Err(bad("a live read needs an offset"));
    }
    let after = match start {
        Start::Beginning => 0,
        Start::Now => job.last_seq,
        Start::At(o) => (o.index.min(i64::MAX as u64) as i64).min(job.last_seq),
    };
    if matches!(live, Some(Live::Sse)) {
        let client = req
            .extensions()
            .get::<ClientAddr>()
            .map(|ClientAddr(ip)| *ip);
        return sse(state, &job, after, sub, client, req.headers(), q.cursor);
    }
    let mut job = job;
    let (mut messages, mut complete) = read_after(state, &job, after).await?;
    if matches!(live, Some(Live::LongPoll)) && messages.is_empty() {
        if job.status.is_terminal() {
            return Ok(Answer::new(StatusCode::NO_CONTENT)
                .next_offset(offset(job.last_seq))
                .up_to_date(true)
                .closed(true)
                .build());
        }
        match wait_for_event(state, job_id, after).await? {
            Some(now) => {
                job = now;
                (messages, complete) = read_after(state, &job, after).await?;
            }
            None => {
                return Ok(Answer::new(StatusCode::NO_CONTENT)
                    .next_offset(offset(after))
                    .up_to_date(true)
                    .cursor(q.cursor.as_deref())
                    .build());
            }
        }
    }
    let next = messages.last().map_or(job.last_seq, |(seq, _)| *seq);
    let up_to_date = complete && next >= job.last_seq;
    let at_end = up_to_date && job.status.is_terminal();
    let tag = etag(
        &path,
        q.offset.as_deref().unwrap_or("-1"),
        &offset(next).to_string(),
        at_end,
    );
    if header_text(req.headers(), header::IF_NONE_MATCH.as_str()) == Some(tag.as_str()) {
        return Ok(Answer::new(StatusCode::NOT_MODIFIED).etag(&tag).build());
    }
    let mut body = String::from("[");
    for (i, (_, m)) in messages.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(m);
    }
    body.push(']');
    let mut answer = Answer::new(StatusCode::OK)
        .body(body)
        .content_type("application/json")
        .next_offset(offset(next))
        .etag(&tag)
        .cache("private, max-age=60, stale-while-revalidate=300")
        .up_to_date(up_to_date)
        .closed(at_end);
    if live.is_some() {
        answer = answer.cursor(q.cursor.as_deref());
    }
    Ok(answer.build())
}

/// A job's stream is read with its client token, or a service or support
/// token; the caller's `sub` names the reader in the job's history.
async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    job_id: JobId,
) -> Result<String, Refused> {
    let claims = bearer(state, headers, "job streams").await?;
    let allowed =
        claims.is_client_of(job_id) || matches!(claims.role, Role::Service | Role::Support);
    if !allowed {
        return Err(Refused::new(
            StatusCode::FORBIDDEN,
            "a job's stream is read with its client token, or a service or support token",
        ));
    }
    Ok(claims.sub)
}

/// The job events after `after`, rendered, up to a chunk's worth; `true`
/// when that is all there is.
async fn read_after(
    state: &AppState,
    job: &JobState,
    after: i64,
) -> Result<(Vec<(i64, String)>, bool), Refused> {
    let key = job.job_id.to_string();
    let mut pages = state.engine.replay(&key, after, job.head_seq);
    let mut out = Vec::new();
    let mut budget = READ_CHUNK_BYTES;
    while let Some(events) = pages.next_events().await? {
        for event in events {
            let Some(message) = job_message(&event) else {
                continue;
            };
            if !out.is_empty() && message.len() > budget {
                return Ok((out, false));
            }
            budget = budget.saturating_sub(message.len());
            out.push((event.seq, message));
        }
    }
    Ok((out, true))
}

/// Waits for a job event after `after` (or the job's end), until the
/// long-poll's time is up (`None`).
async fn wait_for_event(
    state: &AppState,
    job_id: JobId,
    after: i64,
) -> Result<Option<std::sync::Arc<JobState>>, Refused> {
    long_poll(state, job_id, || async {
        let Some(job) = state.engine.job(job_id).await? else {
            return Err(missing(state, job_id).await);
        };
        Ok((job.last_seq > after || job.status.is_terminal()).then_some(job))
    })
    .await
}

/// A frame of the reader's response, or its end.
#[derive(Debug)]
enum Frame {
    Bytes(Bytes),
    End,
}

/// An SSE reader: a session of the job, served by the socket's own loop
/// over an adapter that turns its messages into the protocol's `data` and
/// `control` events.
fn sse(
    state: &AppState,
    job: &JobState,
    after: i64,
    sub: String,
    client: Option<IpAddr>,
    headers: &HeaderMap,
    client_cursor: Option<String>,
) -> Result<Response, Refused> {
    if let Some(client) = client {
        admit(state, client).map_err(|e| Refused::new(e.status_code(), e.to_string()))?;
    }
    if !state.engine.serving() {
        return Err(
            Refused::new(StatusCode::SERVICE_UNAVAILABLE, crate::engine::NOT_SERVING)
                .with("retry-after", 1),
        );
    }
    let max_watchers = state.upgrade.max_watchers_per_job;
    if job.open_watchers(state.clock.now()) >= max_watchers {
        return Err(Refused::new(
            StatusCode::CONFLICT,
            format!("the job already has {max_watchers} watchers, the most it may have"),
        ));
    }
    let attach = Attach {
        new_session_id: Uuid::new_v4(),
        sub,
        reconnect: true,
        session_id: None,
        max_watchers,
        client_last_seq: Some(after),
        client_epoch: None,
        log_epoch: state.engine.epoch().to_owned(),
        user_agent: header_text(headers, header::USER_AGENT.as_str())
            .map(|ua| ua.chars().take(200).collect()),
        address: client.map(|c| c.to_string()),
        node: None,
        transport: Some(TRANSPORT.to_owned()),
        own_session: true,
        counted: None,
    };
    let params = SocketParams {
        job_id: job.job_id,
        attach,
        heartbeat_interval: state.upgrade.heartbeat_interval,
        heartbeat_timeout: state.upgrade.heartbeat_timeout,
        send_queue: state.upgrade.send_queue,
        shutdown: state.shutdown.clone(),
        request_id: crate::http::request::current().map(|id| id.to_string()),
    };
    let (frames_tx, frames) = mpsc::channel::<Frame>(16);
    let alive = frames_tx.clone();
    let mut adapter = Adapter {
        position: after,
        missed: None,
        cursor: client_cursor,
    };
    let sink = PollSender::new(frames_tx)
        .sink_map_err(axum::Error::new)
        .with_flat_map(move |m: Message| {
            futures_util::stream::iter(adapter.frames(m).into_iter().map(Ok))
        });
    let reads = crate::http::stream::client_reads(alive, state.upgrade.heartbeat_interval);
    state.tasks.spawn(socket::serve(
        Box::pin(sink),
        reads,
        state.engine.clone(),
        params,
    ));
    let mut response = Response::new(Body::from_stream(body(frames)));
    let h = response.headers_mut();
    set(h, header::CONTENT_TYPE.as_str(), "text/event-stream");
    set(h, header::CACHE_CONTROL.as_str(), "no-cache");
    set(h, "x-accel-buffering", "no");
    Ok(response)
}

/// The response body: frames until the end, or a minute (the reader then
/// resumes from its last offset, as the protocol has it).
fn body(
    frames: mpsc::Receiver<Frame>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    let ends = Box::pin(tokio::time::sleep(SSE_LIFETIME));
    futures_util::stream::unfold((frames, ends), |(mut frames, mut ends)| async move {
        tokio::select! {
            frame = frames.recv() => match frame {
                Some(Frame::Bytes(b)) => Some((Ok(b), (frames, ends))),
                Some(Frame::End) | None => None,
            },
            _ = &mut ends => None,
        }
    })
}

/// Turns the session's protocol messages into Durable Streams events.
struct Adapter {
    /// The seq the reader has reached.
    position: i64,
    /// Replayed events still to come, once the first message said.
    missed: Option<u64>,
    cursor: Option<String>,
}

impl Adapter {
    fn frames(&mut self, m: Message) -> VecDeque<Frame> {
        let mut out = VecDeque::new();
        let text = match m {
            Message::Text(t) => t,
            Message::Close(_) => {
                out.push_back(Frame::End);
                return out;
            }
            _ => return out,
        };
        let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
        let kind = v["type"].as_str().unwrap_or("");
        let terminal = |k: &str| matches!(k, "completed" | "failed" | "cancelled");
        if matches!(kind, "connected" | "reconnected") {
            let missed = v["missed"].as_u64().unwrap_or(0);
            self.missed = Some(missed);
            if missed == 0 {
                let last = v["lastSeq"].as_i64().unwrap_or(self.position);
                self.position = self.position.max(last);
                let ended = v["status"].as_str().is_some_and(terminal);
                out.push_back(self.control(true, ended));
                if ended {
                    out.push_back(Frame::End);
                }
            }
            return out;
        }
        let Some(seq) = v["seq"].as_i64() else {
            return out;
        };
        if let Some(m) = self.missed.as_mut() {
            *m = m.saturating_sub(1);
        }
        self.position = seq;
        let up_to_date = self.missed.is_none_or(|m| m == 0);
        out.push_back(Frame::Bytes(Bytes::from(sse_frame(
            "data",
            &format!("[{}]", text.as_str()),
        ))));
        let ended = terminal(kind);
        out.push_back(self.control(up_to_date || ended, ended));
        if ended {
            out.push_back(Frame::End);
        }
        out
    }

    fn control(&self, up_to_date: bool, closed: bool) -> Frame {
        Frame::Bytes(Bytes::from(control(
            offset(self.position),
            up_to_date,
            closed,
            self.cursor.as_deref(),
        )))
    }
}

/// A job's stream the log does not hold: 410 `job_archived` if retention
/// removed the job, else 404.
async fn missing(state: &AppState, job_id: JobId) -> Refused {
    match state.engine.archived(job_id).await {
        Ok(Some(removed)) => {
            Refused::new(StatusCode::GONE, removed.refusal().to_string()).coded("job_archived")
        }
        Ok(None) => Refused::new(StatusCode::NOT_FOUND, "stream not found"),
        Err(e) => e.into(),
    }
}
