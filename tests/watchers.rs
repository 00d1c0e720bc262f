//! Many watchers per job (SPEC §8) with real clients against the real server,
//! on the test database (SQLite, or PostgreSQL with
//! `REJOIN_TEST_POSTGRES_URL`): fresh connects side by side, resume by
//! session, a half-open socket taken over alone, the old reconnect without a
//! session id, grace windows of their own, the watcher limit, the terminal
//! close that ends every session without a grace window, and a slow watcher
//! that does not hold up a fast one.

use crate::common;

use std::sync::Arc;

use common::{
    next_close, next_json, refused_status, spawn_on_clock, spawn_with, TestApp, Ws, PATIENCE,
};
use futures_util::StreamExt;
use rejoin::auth::Role;
use rejoin::clock::ManualClock;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// Reads job messages until one with `seq`, returning the seqs seen.
async fn seqs_through(ws: &mut Ws, last: i64) -> Vec<i64> {
    let mut seen = Vec::new();
    loop {
        let msg = next_json(ws).await;
        let seq = msg["seq"].as_i64().expect("a job event");
        seen.push(seq);
        if seq >= last {
            return seen;
        }
    }
}

/// Opens a fresh socket on `job` and returns it with its `connected` message.
async fn watch(app: &TestApp, job: Uuid) -> (Ws, Value) {
    let mut ws = app.ws_client(job).await;
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "connected");
    (ws, hello)
}

/// Waits until `count` of the job's watchers are in their grace window
/// (their sockets' closes recorded), so that moving the clock expires them.
async fn in_grace(app: &TestApp, job: Uuid, count: usize) {
    app.wait_for_job(job, "the close recorded", |s| {
        s["watchers"]
            .as_array()
            .is_some_and(|w| w.iter().filter(|w| w["state"] == "grace").count() == count)
    })
    .await;
}

/// Reconnects to `job` naming `session` (or none).
async fn reconnect(
    app: &TestApp,
    job: Uuid,
    session: Option<&str>,
    last_seq: i64,
    epoch: &str,
) -> (Ws, Value) {
    let token = app.token(Role::Client, Some(job));
    let sid = session
        .map(|s| format!("&sessionId={s}"))
        .unwrap_or_default();
    let mut ws = app
        .ws(&format!(
            "jobId={job}&token={token}&reconnect=true{sid}&lastSeq={last_seq}&epoch={epoch}"
        ))
        .await
        .unwrap();
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "reconnected");
    (ws, hello)
}

fn session_of(hello: &Value) -> String {
    hello["sessionId"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn two_fresh_connects_both_stay_open_and_both_receive_every_event() {
    let app = spawn_with(&[]).await;
    let job = app.create_job().await;
    let (mut phone, a) = watch(&app, job).await;
    let (mut tab, b) = watch(&app, job).await;
    assert_ne!(a["sessionId"], b["sessionId"]);
    let mut posted = Vec::new();
    for p in [10.0, 20.0, 30.0] {
        posted.push(app.progress(job, p).await);
    }
    let last = *posted.last().unwrap();
    assert_eq!(seqs_through(&mut phone, last).await, posted);
    assert_eq!(seqs_through(&mut tab, last).await, posted);
    assert!(app.events_of(job, "replaced").await.is_empty());
    let state = app.get_job(job).await;
    let watchers = state["watchers"].as_array().unwrap();
    assert_eq!(watchers.len(), 2);
    for w in watchers {
        assert_eq!(w["state"], "connected");
    }
}

#[tokio::test]
async fn a_dropped_watcher_resumes_its_session_while_the_other_sees_everything_once() {
    let app = spawn_with(&[]).await;
    let job = app.create_job().await;
    let (phone, a) = watch(&app, job).await;
    let (mut tab, _) = watch(&app, job).await;
    let first = app.progress(job, 10.0).await;
    drop(phone); // abrupt: no close frame
    app.wait_for_job(job, "the phone's grace window", |s| {
        s["watchers"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w["state"] == "grace"))
    })
    .await;
    let missed = [app.progress(job, 20.0).await, app.progress(job, 30.0).await];
    let epoch = app.epoch().await;
    let (mut phone, hello) = reconnect(&app, job, Some(&session_of(&a)), first, &epoch).await;
    assert_eq!(hello["resumed"], true);
    assert_eq!(hello["sessionId"], a["sessionId"]);
    assert_eq!(hello["missed"], 2);
    assert_eq!(seqs_through(&mut phone, missed[1]).await, missed);
    let live = app.progress(job, 40.0).await;
    assert_eq!(seqs_through(&mut phone, live).await, [live]);
    // The tab was never closed and saw every event once, in order.
    assert_eq!(
        seqs_through(&mut tab, live).await,
        [first, missed[0], missed[1], live]
    );
    assert!(app.events_of(job, "replaced").await.is_empty());
}

#[tokio::test]
async fn a_reconnect_for_a_session_whose_socket_is_open_closes_that_socket_alone() {
    let app = spawn_with(&[]).await;
    let job = app.create_job().await;
    let (mut stale, a) = watch(&app, job).await;
    let (mut other, _) = watch(&app, job).await;
    let epoch = app.epoch().await;
    let (mut fresh, hello) = reconnect(&app, job, Some(&session_of(&a)), 0, &epoch).await;
    assert_eq!(hello["resumed"], true);
    assert_eq!(hello["sessionId"], a["sessionId"]);
    assert_eq!(
        next_close(&mut stale).await,
        (1000, "Client reconnecting".to_owned())
    );
    let replaced = app.events_of(job, "replaced").await;
    assert_eq!(replaced.len(), 1);
    assert_eq!(
        replaced[0].session_id.as_deref(),
        Some(session_of(&a).as_str())
    );
    // The other watcher's socket is open and live.
    let seq = app.progress(job, 50.0).await;
    assert_eq!(seqs_through(&mut other, seq).await, [seq]);
    assert_eq!(seqs_through(&mut fresh, seq).await, [seq]);
}

#[tokio::test]
async fn a_reconnect_without_a_session_id_continues_the_most_recent_session() {
    let app = spawn_with(&[]).await;
    let job = app.create_job().await;
    let (older, _) = watch(&app, job).await;
    let (newer, b) = watch(&app, job).await;
    drop(older);
    drop(newer);
    app.wait_for_job(job, "both windows open", |s| {
        s["watchers"]
            .as_array()
            .is_some_and(|w| w.iter().all(|w| w["state"] == "grace"))
    })
    .await;
    let epoch = app.epoch().await;
    let (_ws, hello) = reconnect(&app, job, None, 1, &epoch).await;
    assert_eq!(hello["resumed"], true);
    assert_eq!(
        hello["sessionId"], b["sessionId"],
        "the most recently started"
    );
}

#[tokio::test]
async fn two_sessions_grace_windows_expire_independently_each_once() {
    let clock = Arc::new(ManualClock::starting_now());
    let app = spawn_on_clock(&["--grace-secs", "60"], clock.clone()).await;
    let job = app.create_job().await;
    let (first, a) = watch(&app, job).await;
    let (second, b) = watch(&app, job).await;
    drop(first);
    in_grace(&app, job, 1).await;
    // The first window expires while the second session is connected.
    clock.advance(chrono::Duration::seconds(60));
    let state = app
        .wait_for_job(job, "the first expiry", |s| {
            s["watchers"].as_array().is_some_and(|w| w.len() == 1)
        })
        .await;
    assert_eq!(state["watchers"][0]["sessionId"], b["sessionId"]);
    assert_eq!(state["watchers"][0]["state"], "connected");
    drop(second);
    in_grace(&app, job, 1).await;
    clock.advance(chrono::Duration::seconds(60));
    app.wait_for_job(job, "both expired", |s| {
        s["watchers"].as_array().is_some_and(|w| w.is_empty())
    })
    .await;
    let expired = app.events_of(job, "grace_expired").await;
    assert_eq!(expired.len(), 2, "{expired:?}");
    let sessions: Vec<_> = expired
        .iter()
        .map(|e| e.session_id.clone().unwrap())
        .collect();
    assert_eq!(sessions, [session_of(&a), session_of(&b)]);
    assert!(expired[0].at < expired[1].at);
}

#[tokio::test]
async fn the_watcher_after_the_limit_is_refused_with_409() {
    let app = spawn_with(&[]).await;
    let job = app.create_job().await;
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(watch(&app, job).await.0);
    }
    let token = app.token(Role::Client, Some(job));
    let refused = app.ws(&format!("jobId={job}&token={token}")).await;
    assert_eq!(refused_status(refused), 409);
    let rejected = app.events_of(job, "connect_rejected").await;
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].payload["code"], "too_many_watchers");
    assert_eq!(rejected[0].payload["status"], 409);
    let metric = |line: &'static str| common::metric_at(&app.http, app.addr, line);
    assert_eq!(metric("rejoin_sessions{state=\"connected\"} ").await, 16.0);
    assert_eq!(metric("rejoin_watchers_max ").await, 16.0);
    assert_eq!(
        metric("rejoin_connect_rejected_total{reason=\"too_many_watchers\"} ").await,
        1.0
    );
    // A resume of one of the sixteen still fits.
    let epoch = app.epoch().await;
    let state = app.get_job(job).await;
    let sid = state["watchers"][0]["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_ws, hello) = reconnect(&app, job, Some(&sid), 0, &epoch).await;
    assert_eq!(hello["resumed"], true);
    drop(held);
}

#[tokio::test]
async fn a_terminal_event_closes_every_watcher_and_ends_each_session_without_grace() {
    let app = spawn_with(&[]).await;
    let job = app.create_job().await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(watch(&app, job).await.0);
    }
    let res = app
        .post_event(job, json!({"type": "completed", "result": {"books": 7}}))
        .await;
    assert_eq!(res.status(), 201);
    for ws in &mut sockets {
        assert_eq!(next_json(ws).await["type"], "completed");
        assert_eq!(next_close(ws).await, (1000, "job finished".to_owned()));
    }
    let state = app
        .wait_for_job(job, "every session ended", |s| {
            s["watchers"].as_array().is_some_and(|w| w.is_empty())
        })
        .await;
    assert_eq!(state["session"]["state"], "ended");
    let closes = app.events_of(job, "disconnected").await;
    assert_eq!(closes.len(), 3);
    for c in &closes {
        assert!(c.payload.get("graceUntil").is_none(), "{:?}", c.payload);
        assert_eq!(c.payload["reason"], "job finished");
    }
    assert!(app.events_of(job, "grace_expired").await.is_empty());
    let history = app
        .get_json(
            &format!("/v1/jobs/{job}/history"),
            Some(&app.token(Role::Support, None)),
        )
        .await;
    for s in history["sessions"].as_array().unwrap() {
        assert_eq!(s["endReason"], "finished");
    }
    assert_eq!(history["totals"]["graceExpiries"], 0);
    // A client that reconnects later gets the end and the same close.
    let epoch = app.epoch().await;
    let (mut late, hello) = reconnect(&app, job, None, 0, &epoch).await;
    assert_eq!(hello["status"], "completed");
    assert_eq!(next_json(&mut late).await["type"], "completed");
    assert_eq!(
        next_close(&mut late).await,
        (1000, "job finished".to_owned())
    );
}

#[tokio::test]
async fn a_slow_watcher_is_closed_with_1013_while_a_fast_one_gets_every_event() {
    let app = spawn_with(&["--send-queue", "4"]).await;
    let job = app.create_job().await;
    let (mut fast, _) = watch(&app, job).await;
    let (slow, _) = watch(&app, job).await;
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<i64>();
    // The fast one reads everything until told the last seq.
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut last = None;
        loop {
            if last.is_some() && last == seen.last().copied() {
                // The socket goes back with what it saw, still open.
                return (seen, fast);
            }
            let msg = tokio::select! {
                l = &mut done_rx, if last.is_none() => {
                    last = l.ok();
                    continue;
                }
                msg = tokio::time::timeout(PATIENCE, fast.next()) => msg,
            };
            match msg {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    seen.push(v["seq"].as_i64().unwrap());
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("the fast watcher lost its socket: {other:?}"),
            }
        }
    });
    // The slow one never reads: large events fill its socket's buffers and
    // then its send queue, and the server gives up on it alone.
    let posted = app
        .post_large_until(job, |s| s["counts"]["disconnects"] == 1)
        .await;
    let _ = done_tx.send(*posted.last().unwrap());
    let (seen, _fast) = reader.await.unwrap();
    assert_eq!(seen, posted, "every event, in order, once");
    let disconnects = app.events_of(job, "disconnected").await;
    assert_eq!(disconnects.len(), 1);
    assert_eq!(disconnects[0].payload["code"], 1013);
    assert_eq!(disconnects[0].payload["reason"], "send queue full");
    let state = app.get_job(job).await;
    let watchers = state["watchers"].as_array().unwrap();
    assert_eq!(watchers.len(), 2);
    assert_eq!(
        watchers
            .iter()
            .filter(|w| w["state"] == "connected")
            .count(),
        1,
        "the fast watcher is still connected"
    );
    drop(slow);
}

#[tokio::test]
async fn a_finished_jobs_watchers_are_not_abandoned_in_the_analytics() {
    let clock = Arc::new(ManualClock::starting_now());
    let app = spawn_on_clock(&["--grace-secs", "60"], clock.clone()).await;
    // Finished while watched: the session ends with the job.
    let finished = app.create_job().await;
    let (mut ws, _) = watch(&app, finished).await;
    app.post_event(finished, json!({"type": "completed"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "completed");
    assert_eq!(next_close(&mut ws).await.1, "job finished");
    // Left while running: its window expires, then the job completes.
    let left = app.create_job().await;
    let (ws, _) = watch(&app, left).await;
    drop(ws);
    in_grace(&app, left, 1).await;
    clock.advance(chrono::Duration::seconds(60));
    app.wait_for_job(left, "the expiry", |s| {
        s["watchers"].as_array().is_some_and(|w| w.is_empty())
    })
    .await;
    app.post_event(left, json!({"type": "completed"})).await;
    app.wait_for_job(finished, "the finished session's end", |s| {
        s["watchers"].as_array().is_some_and(|w| w.is_empty())
    })
    .await;

    let out = tokio::process::Command::new(common::BIN)
        .args([
            "replay",
            "--format",
            "json",
            "--database-url",
            &app.db_url(),
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["graceExpiries"], 1, "{summary}");
    assert_eq!(summary["abandoned"], 1, "{summary}");
    if !app.is_postgres() {
        let sql = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sqlite/abandoned_jobs.sql"),
        )
        .unwrap();
        let mut db = common::Db::connect(&app.db_url()).await;
        let common::Db::Sqlite(conn) = &mut db else {
            unreachable!()
        };
        let rows: Vec<(String,)> = sqlx::query_as(&sql).fetch_all(&mut *conn).await.unwrap();
        assert_eq!(rows, [(left.to_string(),)]);
    }
}
