//! The WebSocket protocol against a real server with real clients: connect,
//! live events, resume after a drop, replaced sockets, grace expiry, refusals,
//! heartbeats, slow clients, terminal events and client messages.

use crate::common;

use common::{
    next_close, next_json, refused_status, send_text, spawn_app, spawn_with, TestApp, Ws,
};
use futures_util::SinkExt;
use rejoin::auth::Role;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// Reads `n` job messages and returns them.
async fn read_events(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(next_json(ws).await);
    }
    out
}

fn reconnect_query(app: &TestApp, job: Uuid, last_seq: i64, epoch: &str) -> String {
    let token = app.token(Role::Client, Some(job));
    format!("jobId={job}&token={token}&reconnect=true&lastSeq={last_seq}&epoch={epoch}")
}

#[tokio::test]
async fn connected_comes_first_then_live_events_with_increasing_seqs() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    app.progress(job, 5.0).await;
    let mut ws = app.ws_client(job).await;
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "connected");
    assert_eq!(hello["jobId"], job.to_string());
    assert_eq!(hello["status"], "running");
    assert_eq!(hello["progress"], 5.0);
    assert_eq!(hello["lastSeq"], 2);
    assert!(Uuid::parse_str(hello["sessionId"].as_str().unwrap()).is_ok());
    let epoch = hello["epoch"].as_str().unwrap();
    let ready = app.get_json("/readyz", None).await;
    assert_eq!(ready["epoch"], epoch);

    let mut seqs = Vec::new();
    for p in [10.0, 20.0, 30.0] {
        seqs.push(app.progress(job, p).await);
    }
    app.post_event(
        job,
        json!({"type": "message", "name": "book_found", "data": {"isbn": "1"}}),
    )
    .await;
    let got = read_events(&mut ws, 4).await;
    for (msg, (seq, p)) in got.iter().zip(seqs.iter().zip([10.0, 20.0, 30.0])) {
        assert_eq!(msg["type"], "progress");
        assert_eq!(msg["seq"], *seq);
        assert_eq!(msg["progress"], p);
        assert!(msg["at"].is_string());
    }
    assert_eq!(got[3]["type"], "message");
    assert_eq!(got[3]["name"], "book_found");
    assert!(got[3]["seq"].as_i64().unwrap() > *seqs.last().unwrap());

    let state = app.get_job(job).await;
    assert_eq!(state["session"]["state"], "connected");
    assert_eq!(state["counts"]["connects"], 1);
}

#[tokio::test]
async fn a_client_that_drops_resumes_its_session_with_exactly_what_it_missed() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    let mut ws = app.ws_client(job).await;
    let hello = next_json(&mut ws).await;
    let session = hello["sessionId"].clone();
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    app.progress(job, 10.0).await;
    let last = next_json(&mut ws).await["seq"].as_i64().unwrap();

    // An abrupt drop: the TCP connection goes away without a close frame.
    drop(ws);
    let state = app
        .wait_for_job(job, "the disconnect", |s| s["session"]["state"] == "grace")
        .await;
    assert!(state["session"]["graceUntil"].is_string());

    let mut missed = Vec::new();
    for p in [20.0, 30.0, 40.0] {
        missed.push(app.progress(job, p).await);
    }
    let mut ws = app
        .ws(&reconnect_query(&app, job, last, &epoch))
        .await
        .unwrap();
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "reconnected");
    assert_eq!(hello["resumed"], true);
    assert_eq!(hello["sessionId"], session);
    assert_eq!(hello["missed"], 3);
    assert_eq!(hello["progress"], 40.0);
    assert_eq!(hello["lastSeq"], *missed.last().unwrap());
    let replayed: Vec<i64> = read_events(&mut ws, 3)
        .await
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(replayed, missed);

    // Then live, with no gap and no duplicate.
    let live = app.progress(job, 50.0).await;
    let msg = next_json(&mut ws).await;
    assert_eq!(msg["seq"], live);

    let disconnects = app.events_of(job, "disconnected").await;
    assert_eq!(disconnects.len(), 1);
    assert_eq!(disconnects[0].payload["code"], 1006);
    assert_eq!(disconnects[0].payload["reason"], "connection lost");
    assert!(
        app.events_of(job, "ws_error").await.is_empty(),
        "a drop is not a socket error"
    );
    let reconnects = app.events_of(job, "reconnected").await;
    assert_eq!(reconnects.len(), 1);
    assert_eq!(reconnects[0].payload["resumed"], true);
    assert_eq!(reconnects[0].payload["missed"], 3);
    assert_eq!(reconnects[0].payload["clientLastSeq"], last);
    assert!(reconnects[0].payload["gapMs"].as_i64().unwrap() >= 0);
}

#[tokio::test]
async fn a_reconnect_while_the_socket_is_open_replaces_it_with_client_reconnecting() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    let mut first = app.ws_client(job).await;
    let hello = next_json(&mut first).await;
    let epoch = hello["epoch"].as_str().unwrap().to_owned();

    let mut second = app
        .ws(&reconnect_query(&app, job, 0, &epoch))
        .await
        .unwrap();
    let (code, reason) = next_close(&mut first).await;
    assert_eq!((code, reason.as_str()), (1000, "Client reconnecting"));
    let hello2 = next_json(&mut second).await;
    assert_eq!(hello2["type"], "reconnected");
    assert_eq!(hello2["resumed"], true);
    assert_eq!(hello2["sessionId"], hello["sessionId"]);

    // Events now reach the second socket only.
    let seq = app.progress(job, 70.0).await;
    assert_eq!(next_json(&mut second).await["seq"], seq);

    let replaced = app.events_of(job, "replaced").await;
    assert_eq!(replaced.len(), 1);
    assert_eq!(replaced[0].payload["reason"], "Client reconnecting");
    // The replaced socket's close is the `replaced` record, not a disconnect.
    assert!(app.events_of(job, "disconnected").await.is_empty());

    // A fresh connect replaces nothing: it is a new watcher beside it.
    let mut third = app.ws_client(job).await;
    let hello3 = next_json(&mut third).await;
    assert_eq!(hello3["type"], "connected");
    assert_ne!(hello3["sessionId"], hello["sessionId"]);
    let seq = app.progress(job, 80.0).await;
    assert_eq!(next_json(&mut second).await["seq"], seq);
    assert_eq!(next_json(&mut third).await["seq"], seq);
    assert_eq!(app.events_of(job, "replaced").await.len(), 1);
}

#[tokio::test]
async fn after_the_grace_window_a_reconnect_starts_a_new_session_and_expiry_is_recorded_once() {
    let clock = std::sync::Arc::new(rejoin::clock::ManualClock::starting_now());
    let app = common::spawn_on_clock(&["--grace-secs", "60"], clock.clone()).await;
    let job = app.create_job().await;
    let mut ws = app.ws_client(job).await;
    let hello = next_json(&mut ws).await;
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    app.progress(job, 10.0).await;
    let last = next_json(&mut ws).await["seq"].as_i64().unwrap();
    drop(ws);
    app.wait_for_job(job, "the close recorded", |s| {
        s["session"]["state"] == "grace"
    })
    .await;
    clock.advance(chrono::Duration::seconds(60));
    app.wait_for_job(job, "the grace expiry", |s| {
        s["session"]["state"] == "ended"
    })
    .await;
    app.progress(job, 60.0).await;

    let mut ws = app
        .ws(&reconnect_query(&app, job, last, &epoch))
        .await
        .unwrap();
    let hello2 = next_json(&mut ws).await;
    assert_eq!(hello2["type"], "reconnected");
    assert_eq!(hello2["resumed"], false);
    assert_ne!(hello2["sessionId"], hello["sessionId"]);
    assert_eq!(hello2["progress"], 60.0);
    assert_eq!(hello2["status"], "running");
    assert_eq!(hello2["missed"], 1);
    assert_eq!(next_json(&mut ws).await["progress"], 60.0);

    let expired = app.events_of(job, "grace_expired").await;
    assert_eq!(expired.len(), 1);
    assert_eq!(
        expired[0].session_id.as_deref(),
        hello["sessionId"].as_str()
    );
    let disconnected = &app.events_of(job, "disconnected").await[0];
    let until: chrono::DateTime<chrono::Utc> = disconnected.payload["graceUntil"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        expired[0].at >= until,
        "expired at {} before {until}",
        expired[0].at
    );
}

#[tokio::test]
async fn an_epoch_from_another_log_replays_the_job_from_its_start() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    let mut seqs = Vec::new();
    for p in [10.0, 20.0] {
        seqs.push(app.progress(job, p).await);
    }
    let query = reconnect_query(&app, job, seqs[1], "not-this-log");
    let mut ws = app.ws(&query).await.unwrap();
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["resumed"], false);
    assert_eq!(hello["missed"], 2);
    let replay: Vec<i64> = read_events(&mut ws, 2)
        .await
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(replay, seqs);
}

#[tokio::test]
async fn bad_upgrades_are_refused_before_the_socket_opens() {
    let app = spawn_with(&["--allowed-origins", "https://app.example"]).await;
    let job = app.create_job().await;
    let client = app.token(Role::Client, Some(job));
    let other_job = app.create_job().await;
    let before = app.count_events().await;
    let unknown = Uuid::new_v4();
    let expired = common::mint(&json!({
        "sub": "c", "role": "client", "job": job, "exp": chrono::Utc::now().timestamp() - 600
    }));

    // Unknown jobs: refused, nothing recorded.
    assert_eq!(refused_status(app.ws("token=x.y.z").await), 400);
    assert_eq!(
        refused_status(app.ws(&format!("jobId=nope&token={client}")).await),
        400
    );
    let unknown_client = app.token(Role::Client, Some(unknown));
    assert_eq!(
        refused_status(
            app.ws(&format!("jobId={unknown}&token={unknown_client}"))
                .await
        ),
        404
    );
    assert_eq!(app.count_events().await, before);

    // Known job: each refusal is recorded as connect_rejected.
    let cases: Vec<(String, u16, &str)> = vec![
        (format!("jobId={job}"), 400, "missing_token"),
        (format!("jobId={job}&token=abc"), 400, "malformed_token"),
        (
            format!("jobId={job}&token={client}&lastSeq=-4"),
            400,
            "invalid_last_seq",
        ),
        (format!("jobId={job}&token={expired}"), 401, "token_expired"),
        (
            format!(
                "jobId={job}&token={}",
                app.token(Role::Client, Some(other_job))
            ),
            403,
            "forbidden",
        ),
        (
            format!("jobId={job}&token={}", app.service()),
            403,
            "forbidden",
        ),
    ];
    for (query, status, _) in &cases {
        assert_eq!(refused_status(app.ws(query).await), *status, "{query}");
    }
    let rejected = app.events_of(job, "connect_rejected").await;
    let mut codes: Vec<&str> = rejected
        .iter()
        .map(|e| e.payload["code"].as_str().unwrap())
        .collect();
    codes.sort_unstable();
    let mut expected: Vec<&str> = cases.iter().map(|c| c.2).collect();
    expected.sort_unstable();
    expected.dedup();
    assert_eq!(codes, expected, "one record per reason");

    // A retry loop is rate limited: many refusals, one more record at most.
    for _ in 0..20 {
        assert_eq!(
            refused_status(app.ws(&format!("jobId={job}&token=abc")).await),
            400
        );
    }
    assert_eq!(
        app.events_of(job, "connect_rejected").await.len(),
        rejected.len()
    );

    // A foreign browser Origin is refused; the allowed one and none at all pass.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("ws://{}/ws/progress?jobId={job}&token={client}", app.addr);
    let mut req = url.clone().into_client_request().unwrap();
    req.headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    let refused = tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws);
    assert_eq!(refused_status(refused), 403);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Origin", "https://app.example".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "connected");
}

#[tokio::test]
async fn browsers_may_send_the_token_as_a_subprotocol() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let app = spawn_app().await;
    let job = app.create_job().await;
    let token = app.token(Role::Client, Some(job));
    let mut req = format!("ws://{}/ws/progress?jobId={job}", app.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("rejoin, bearer.{token}").parse().unwrap(),
    );
    let (mut ws, res) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(res.headers()["sec-websocket-protocol"], "rejoin");
    assert_eq!(next_json(&mut ws).await["type"], "connected");
}

#[tokio::test]
async fn a_silent_client_is_closed_as_a_heartbeat_timeout() {
    let app = spawn_with(&[
        "--heartbeat-interval-secs",
        "0.1",
        "--heartbeat-timeout-secs",
        "0.5",
    ])
    .await;
    let job = app.create_job().await;
    let mut ws = app.ws_client(job).await;
    next_json(&mut ws).await;
    // Stop reading: pings go unanswered, as from a phone that vanished.
    app.wait_for_job(job, "the heartbeat timeout", |s| {
        s["session"]["state"] == "grace"
    })
    .await;
    let d = &app.events_of(job, "disconnected").await[0];
    assert_eq!(d.payload["code"], 1006);
    assert_eq!(d.payload["reason"], "heartbeat timeout");
    drop(ws);

    // A client that answers pings stays connected across many intervals.
    let mut ws = app.ws_client(job).await;
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "connected");
    for _ in 0..6 {
        // Reading answers the server's pings; each wait spans a few intervals.
        send_text(&mut ws, r#"{"type":"ping"}"#).await;
        assert_eq!(next_json(&mut ws).await["type"], "pong");
        let seq = app.progress(job, 1.0).await;
        assert_eq!(next_json(&mut ws).await["seq"], seq);
    }
    assert_eq!(app.events_of(job, "disconnected").await.len(), 1);
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_with_1013_and_resumes_with_nothing_lost() {
    let app = spawn_with(&["--send-queue", "4"]).await;
    let job = app.create_job().await;
    let mut ws = app.ws_client(job).await;
    let hello = next_json(&mut ws).await;
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    let last = hello["lastSeq"].as_i64().unwrap();

    // The client stops reading; the server keeps appending large events until
    // socket buffers and the send queue fill and the server gives up on it.
    let posted = app
        .post_large_until(job, |s| s["session"]["state"] == "grace")
        .await;
    let state = app
        .wait_for_job(job, "the slow client's close", |s| {
            s["session"]["state"] == "grace"
        })
        .await;
    assert_eq!(state["counts"]["disconnects"], 1);
    let d = &app.events_of(job, "disconnected").await[0];
    assert_eq!(d.payload["code"], 1013);
    assert_eq!(d.payload["reason"], "send queue full");
    drop(ws);

    let mut ws = app
        .ws(&reconnect_query(&app, job, last, &epoch))
        .await
        .unwrap();
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["resumed"], true);
    assert_eq!(hello["missed"], posted.len() as u64);
    let mut got = Vec::new();
    for _ in 0..posted.len() {
        got.push(next_json(&mut ws).await["seq"].as_i64().unwrap());
    }
    assert_eq!(got, posted, "every event, once, in order");
}

#[tokio::test]
async fn a_terminal_event_is_followed_by_close_job_finished() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    let mut ws = app.ws_client(job).await;
    next_json(&mut ws).await;
    app.progress(job, 90.0).await;
    app.post_event(job, json!({"type": "completed", "result": {"books": 20}}))
        .await;
    assert_eq!(next_json(&mut ws).await["type"], "progress");
    let done = next_json(&mut ws).await;
    assert_eq!(done["type"], "completed");
    assert_eq!(done["result"], json!({"books": 20}));
    assert_eq!(next_close(&mut ws).await, (1000, "job finished".to_owned()));

    // Connecting to a finished job: the state, then the same close.
    let mut ws = app.ws_client(job).await;
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["status"], "completed");
    assert_eq!(next_close(&mut ws).await, (1000, "job finished".to_owned()));
}

#[tokio::test]
async fn client_messages_get_answers_and_bad_frames_close_with_their_codes() {
    let app = spawn_with(&["--max-frame-bytes", "1024"]).await;
    let job = app.create_job().await;
    let mut ws = app.ws_client(job).await;
    next_json(&mut ws).await;
    send_text(&mut ws, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut ws).await, json!({"type": "pong"}));
    for (text, code) in [
        ("{not json", "invalid_json"),
        (r#"{"type":"subscribe"}"#, "unknown_type"),
        (r#"{"type":"ack"}"#, "invalid_message"),
    ] {
        send_text(&mut ws, text).await;
        let err = next_json(&mut ws).await;
        assert_eq!(err["type"], "error");
        assert_eq!(err["code"], code);
    }
    // Still open, and acks are remembered for the disconnect record.
    send_text(&mut ws, r#"{"type":"ack","seq":1}"#).await;
    send_text(&mut ws, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");

    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(next_close(&mut ws).await.0, 1003);
    app.wait_for_job(job, "the 1003 close", |s| s["session"]["state"] == "grace")
        .await;
    let d = &app.events_of(job, "disconnected").await[0];
    assert_eq!(d.payload["code"], 1003);
    assert_eq!(d.payload["ackedSeq"], 1);

    let mut ws = app.ws_client(job).await;
    next_json(&mut ws).await;
    send_text(
        &mut ws,
        &format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(4096)),
    )
    .await;
    assert_eq!(next_close(&mut ws).await.0, 1009);
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001_and_records_it() {
    let mut app = spawn_app().await;
    let job = app.create_job().await;
    let mut ws = app.ws_client(job).await;
    next_json(&mut ws).await;
    let db = app.db_url();
    let _dir = app.dir.clone();
    let stopping = tokio::spawn(async move {
        app.stop().await;
    });
    assert_eq!(
        next_close(&mut ws).await,
        (1001, "server shutting down".to_owned())
    );
    stopping.await.unwrap();
    let d = common::events_of(&db, job, "disconnected").await;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].payload["code"], 1001);
}

#[tokio::test]
async fn a_protocol_violation_is_recorded_as_a_socket_error() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app().await;
    let job = app.create_job().await;
    let mut ws = app.ws_client(job).await;
    next_json(&mut ws).await;
    // A masked text frame whose payload is not UTF-8, written under the library.
    let raw = match ws.get_mut() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp,
        _ => unreachable!("plain TCP on loopback"),
    };
    raw.write_all(&[0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe])
        .await
        .unwrap();
    app.wait_for_job(job, "the socket error", |s| {
        s["session"]["state"] == "grace"
    })
    .await;
    let errors = app.events_of(job, "ws_error").await;
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].payload["message"]
            .as_str()
            .unwrap()
            .contains("UTF-8"),
        "{:?}",
        errors[0]
    );
    let d = &app.events_of(job, "disconnected").await[0];
    assert_eq!(d.payload["code"], 1006);
    assert!(d.payload["reason"]
        .as_str()
        .unwrap()
        .starts_with("socket error"));

    // The job state says how the last socket ended, and what the error was;
    // /metrics counts it by kind.
    let state = app.get_job(job).await;
    assert_eq!(state["lastDisconnect"]["code"], 1006);
    assert_eq!(state["lastDisconnect"]["reason"], d.payload["reason"]);
    assert_eq!(
        state["lastSocketError"]["message"],
        errors[0].payload["message"]
    );
    let counted = common::metric_at(
        &app.http,
        app.addr,
        "rejoin_socket_errors_total{kind=\"utf8\"} ",
    )
    .await;
    assert_eq!(counted, 1.0);
}

#[tokio::test]
async fn at_the_connection_limit_new_sockets_get_503_until_one_closes() {
    let app = spawn_with(&["--max-connections", "2"]).await;
    let jobs = [
        app.create_job().await,
        app.create_job().await,
        app.create_job().await,
    ];
    let mut first = app.ws_client(jobs[0]).await;
    next_json(&mut first).await;
    let mut second = app.ws_client(jobs[1]).await;
    next_json(&mut second).await;
    let token = app.token(Role::Client, Some(jobs[2]));
    let query = format!("jobId={}&token={token}", jobs[2]);
    assert_eq!(refused_status(app.ws(&query).await), 503);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("rejoin_refused_at_capacity_total 1"),
        "{metrics}"
    );

    // Once a socket has gone (and its close is recorded), there is room again.
    drop(first);
    app.wait_for_job(jobs[0], "the first socket's close", |s| {
        s["session"]["state"] == "grace"
    })
    .await;
    let mut third =
        common::eventually("room after a close", || async { app.ws(&query).await.ok() }).await;
    assert_eq!(next_json(&mut third).await["type"], "connected");
}
