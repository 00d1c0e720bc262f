//! The Server-Sent Events fallback, `GET /v1/jobs/{jobId}/stream`: the same
//! session as a socket, resumed with `Last-Event-ID`, recorded with transport
//! `sse`. Read with a real HTTP client and a plain SSE parser; every event's
//! data is checked against docs/protocol.schema.json.

use crate::common;

use common::{check_server_message, next_json, spawn_with, TestApp, PATIENCE};
use futures_util::StreamExt;
use rejoin::auth::Role;
use serde_json::Value;
use uuid::Uuid;

/// One server-sent event (a comment has only `comment`).
#[derive(Debug, Default, Clone)]
struct Sse {
    event: Option<String>,
    id: Option<String>,
    data: String,
    comment: Option<String>,
}

impl Sse {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// An open stream and its unparsed bytes.
struct Stream {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Stream {
    /// The next event or comment; `None` when the stream ended.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut e = Sse::default();
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        e.comment = Some(c.trim().to_owned());
                    } else if let Some((field, value)) = line.split_once(':') {
                        let value = value.strip_prefix(' ').unwrap_or(value);
                        match field {
                            "event" => e.event = Some(value.to_owned()),
                            "id" => e.id = Some(value.to_owned()),
                            "data" => e.data.push_str(value),
                            _ => {}
                        }
                    }
                }
                if e.event.is_some() || !e.data.is_empty() {
                    check_server_message(&e.json()).unwrap_or_else(|err| {
                        // `close` is the stream's own, not a protocol message.
                        assert_eq!(e.event.as_deref(), Some("close"), "{err}")
                    });
                }
                return Some(e);
            }
            let chunk = tokio::time::timeout(PATIENCE, self.body.next())
                .await
                .expect("an event in time")?;
            self.buf
                .push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
    }

    /// The next event that is not a comment.
    async fn event(&mut self) -> Sse {
        loop {
            let e = self.next().await.expect("an event, not the end");
            if e.comment.is_none() {
                return e;
            }
        }
    }
}

async fn open(app: &TestApp, job: Uuid, last_event_id: Option<&str>) -> reqwest::Response {
    let token = app.token(Role::Client, Some(job));
    let mut req = app
        .http
        .get(app.url(&format!("/v1/jobs/{job}/stream?token={token}")))
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    req.send().await.unwrap()
}

async fn stream(app: &TestApp, job: Uuid, last_event_id: Option<&str>) -> Stream {
    let res = open(app, job, last_event_id).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    Stream {
        body: Box::pin(res.bytes_stream()),
        buf: String::new(),
    }
}

#[tokio::test]
async fn an_sse_client_resumes_with_last_event_id_after_an_abrupt_drop() {
    let app = spawn_with(&["--heartbeat-interval-secs", "0.2"]).await;
    let job = app.create_job().await;
    let mut s = stream(&app, job, None).await;
    let hello = s.event().await;
    assert_eq!(hello.event.as_deref(), Some("connected"));
    assert_eq!(hello.id.as_deref(), Some("0"));
    assert_eq!(hello.json()["jobId"], job.to_string());
    // Keep-alives while nothing happens.
    loop {
        if s.next().await.unwrap().comment.as_deref() == Some("keep-alive") {
            break;
        }
    }
    let seen = app.progress(job, 20.0).await;
    let e = s.event().await;
    assert_eq!(e.event.as_deref(), Some("progress"));
    assert_eq!(e.id, Some(seen.to_string()));
    assert_eq!(e.json()["progress"], 20.0);

    // The connection goes away; the server records it and opens the grace
    // window. Two events come while the client is away.
    drop(s);
    app.wait_for_job(job, "the stream's close recorded", |j| {
        j["watchers"][0]["state"] == "grace"
    })
    .await;
    let missed = [app.progress(job, 30.0).await, app.progress(job, 40.0).await];

    // EventSource reconnects with the same URL and Last-Event-ID.
    let mut s = stream(&app, job, Some(&seen.to_string())).await;
    let hello = s.event().await;
    assert_eq!(hello.event.as_deref(), Some("reconnected"));
    let h = hello.json();
    assert_eq!(h["resumed"], true);
    assert_eq!(h["missed"], 2);
    assert_eq!(
        hello.id, None,
        "no position is promised before the replayed events arrive"
    );
    for seq in missed {
        let e = s.event().await;
        assert_eq!(
            e.id,
            Some(seq.to_string()),
            "each missed event once, in order"
        );
    }
    let res = app
        .post_event(
            job,
            serde_json::json!({"type": "completed", "result": {"n": 1}}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let done = s.event().await;
    assert_eq!(done.event.as_deref(), Some("completed"));
    let close = s.event().await;
    assert_eq!(close.event.as_deref(), Some("close"));
    assert_eq!(close.json()["code"], 1000);
    assert_eq!(close.json()["reason"], "job finished");
    assert!(s.next().await.is_none(), "the stream ends after the end");

    // Resumed at the end: nothing to send, and 204 stops EventSource.
    let last = done.id.unwrap();
    let res = open(&app, job, Some(&last)).await;
    assert_eq!(res.status(), 204);

    // The history shows one SSE session: connect, close, resume, close.
    let h = app
        .get_json(
            &format!("/v1/jobs/{job}/history"),
            Some(&app.token(Role::Support, None)),
        )
        .await;
    assert_eq!(h["sessions"].as_array().unwrap().len(), 1);
    let events = h["sessions"][0]["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["connected", "disconnected", "reconnected", "disconnected"]
    );
    for e in events {
        assert_eq!(e["details"]["transport"], "sse", "{e}");
    }
    assert_eq!(events[1]["details"]["code"], 1006);
}

#[tokio::test]
async fn sse_and_websocket_watchers_hear_the_same_events_and_bad_tokens_are_refused() {
    let app = spawn_with(&[]).await;
    let job = app.create_job().await;
    let mut ws = app.ws_client(job).await;
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    let mut s = stream(&app, job, None).await;
    assert_eq!(s.event().await.event.as_deref(), Some("connected"));
    let seq = app.progress(job, 50.0).await;
    assert_eq!(next_json(&mut ws).await["seq"], seq);
    assert_eq!(s.event().await.id, Some(seq.to_string()));
    let state = app.get_job(job).await;
    assert_eq!(state["watchers"].as_array().unwrap().len(), 2);

    let other = app.create_job().await;
    let wrong = app.token(Role::Client, Some(other));
    let res = app
        .http
        .get(app.url(&format!("/v1/jobs/{job}/stream?token={wrong}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = app
        .http
        .get(app.url(&format!("/v1/jobs/{job}/stream?token=a.b.c")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_token");
}
