//! rejoin.js and the demo in a real browser (headless Chromium over the
//! DevTools protocol) against a real server.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use common::cdp::{chromium, Browser};
use common::{next_json, spawn_with, TestApp};
use rejoin::auth::Role;
use serde_json::Value;
use uuid::Uuid;

const JOB_EVENTS: &[&str] = &["progress", "message", "completed", "failed", "cancelled"];

/// Seqs of the job's delivered events, from the database.
async fn job_event_seqs(app: &TestApp, job: Uuid) -> Vec<i64> {
    let mut seqs = Vec::new();
    for kind in JOB_EVENTS {
        seqs.extend(app.events_of(job, kind).await.iter().map(|e| e.seq));
    }
    seqs.sort_unstable();
    seqs
}

async fn drop_socket(app: &TestApp, job: &str) {
    let res = app
        .http
        .post(app.url(&format!("/demo/jobs/{job}/drop")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204, "the server dropped the socket");
}

fn applied(n: usize) -> String {
    format!("window.demo.applied.length >= {n}")
}

#[tokio::test]
#[ignore = "needs Chromium: Debian's chromium, or CHROMIUM=PATH (.ci/run installs it)"]
async fn the_demo_page_follows_a_job_to_completion_through_drops_and_offline_spells() {
    let bin = chromium();
    let app = spawn_with(&["--demo", "--demo-duration-secs", "10", "--grace-secs", "30"]).await;
    let mut b = Browser::launch(&bin).await;
    b.goto(&app.url("/demo#autostart")).await;
    let job = b
        .wait_until(
            "window.demo.state === 'live' && window.demo.jobId",
            "the first connect",
            Duration::from_secs(15),
        )
        .await;
    let job_str = job.as_str().unwrap().to_owned();
    let job_id: Uuid = job_str.parse().unwrap();
    let patience = Duration::from_secs(20);
    let lives =
        |n: usize| format!("window.demo.transitions.filter((s) => s === 'live').length >= {n}");

    // Cut 1: the server drops the socket abruptly (no close frame).
    b.wait_until(&applied(2), "two events", patience).await;
    drop_socket(&app, &job_str).await;
    b.wait_until(&lives(2), "the resume after the drop", patience)
        .await;

    // Cut 2: Chromium's network emulation goes offline, while the job goes on.
    b.wait_until(&applied(5), "five events", patience).await;
    b.set_offline(true).await;
    b.wait_until(
        "window.demo.state !== 'live'",
        "the page to notice it is offline",
        patience,
    )
    .await;
    let seen = b
        .eval("Math.max(...window.demo.applied)")
        .await
        .as_i64()
        .unwrap();
    app.wait_for_job(job_id, "an event appended while the page is offline", |s| {
        s["lastSeq"].as_i64().unwrap() > seen
    })
    .await;
    b.set_offline(false).await;
    b.wait_until(&lives(3), "the resume after going online", patience)
        .await;

    // Cut 3: the page's own "Drop the connection": an outage long enough
    // that events are missed, then replayed.
    b.wait_until(&applied(10), "ten events", patience).await;
    let replayed_before = b.eval("window.demo.replayed").await.as_u64().unwrap();
    b.eval(r##"document.getElementById("drop").click(); true"##)
        .await;
    b.wait_until(&lives(4), "the resume after the outage", patience)
        .await;
    let replayed = b.eval("window.demo.replayed").await.as_u64().unwrap();
    assert!(
        replayed > replayed_before,
        "the outage missed events and the resume replayed them"
    );

    b.wait_until(
        "window.demo.status === 'completed' && window.demo.state === 'finished'",
        "the job to finish",
        Duration::from_secs(30),
    )
    .await;
    let demo = b.eval("window.demo").await;
    assert_eq!(demo["progress"], 100);
    let applied: Vec<i64> = demo["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(
        applied,
        job_event_seqs(&app, job_id).await,
        "every event applied once, in order"
    );
    assert!(
        demo["replayed"].as_u64().unwrap() >= 1,
        "something was replayed on resume"
    );

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo-page.png");
    b.screenshot(&shot).await;
    assert!(std::fs::read(&shot).unwrap().len() > 20_000);
    println!("screenshot: {}", shot.display());

    // The log: one session, resumed on every reconnect.
    let support = app.token(Role::Support, None);
    let history = app
        .get_json(&format!("/v1/jobs/{job_id}/history"), Some(&support))
        .await;
    let t = &history["totals"];
    assert_eq!(t["sessions"], 1, "{history}");
    assert_eq!(t["reconnects"], 3);
    assert_eq!(t["resumed"], 3);
    let events = history["sessions"][0]["events"].as_array().unwrap();
    let reasons: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "disconnected")
        .map(|e| e["details"]["reason"].as_str().unwrap())
        .collect();
    // The offline spell ends either with the page's own close reaching the
    // server (a disconnect) or, if the emulated network swallowed it, with the
    // next connection replacing the stale socket.
    let replaced = events.iter().filter(|e| e["kind"] == "replaced").count();
    assert_eq!(
        reasons.len() + replaced,
        4,
        "three cuts and the final close: {reasons:?}"
    );
    assert_eq!(reasons.first(), Some(&"dropped by the server (demo)"));
    assert_eq!(reasons.last(), Some(&"job finished"));
}

/// Starts a RejoinClient in the page and records its states and events.
async fn start_client(b: &mut Browser, name: &str, job: Uuid, token: &str) {
    let script = format!(
        r#"(async () => {{
            const {{ RejoinClient }} = await import('/client/rejoin.js');
            const c = new RejoinClient({{ jobId: '{job}', token: '{token}', baseDelayMs: 100, maxDelayMs: 400 }});
            window.{name} = {{ client: c, states: [], seqs: [] }};
            c.addEventListener('state', (e) => window.{name}.states.push(e.detail.state));
            c.addEventListener('event', (e) => window.{name}.seqs.push(e.detail.seq));
            c.start();
            return true;
        }})()"#
    );
    assert_eq!(b.eval(&script).await, true);
}

#[tokio::test]
#[ignore = "needs Chromium: Debian's chromium, or CHROMIUM=PATH (.ci/run installs it)"]
async fn rejoin_js_reconnects_after_drops_but_not_when_replaced_or_finished() {
    let bin = chromium();
    let app = spawn_with(&["--demo", "--grace-secs", "30"]).await;
    let job = app.create_job().await;
    let token = app.token(Role::Client, Some(job));
    let mut b = Browser::launch(&bin).await;
    b.goto(&app.url("/demo")).await;
    let patience = Duration::from_secs(15);

    start_client(&mut b, "a", job, &token).await;
    b.wait_until("a.client.state === 'live'", "a live client", patience)
        .await;
    let s1 = app.progress(job, 10.0).await;
    b.wait_until(
        &format!("a.seqs.includes({s1})"),
        "the first event",
        patience,
    )
    .await;

    // A 1006-style drop: reconnect, resume, get what was missed.
    drop_socket(&app, &job.to_string()).await;
    b.wait_until(
        "a.states.includes('reconnecting')",
        "the reconnect",
        patience,
    )
    .await;
    let s2 = app.progress(job, 20.0).await;
    b.wait_until(
        &format!("a.client.state === 'live' && a.seqs.includes({s2})"),
        "the resume",
        patience,
    )
    .await;
    assert_eq!(b.eval("a.seqs").await, serde_json::json!([s1, s2]));
    assert_eq!(
        app.events_of(job, "reconnected")
            .await
            .last()
            .unwrap()
            .payload["resumed"],
        true
    );

    // Replaced by another connection: told "Client reconnecting", it stays away.
    let epoch = b.eval("a.client.epoch").await;
    let mut other = app
        .ws(&format!(
            "jobId={job}&token={token}&reconnect=true&lastSeq={s2}&epoch={}",
            epoch.as_str().unwrap()
        ))
        .await
        .unwrap();
    assert_eq!(next_json(&mut other).await["type"], "reconnected");
    b.wait_until(
        "a.client.state === 'replaced'",
        "the replaced state",
        patience,
    )
    .await;
    assert_eq!(b.eval("a.client.reconnectScheduled").await, false);
    assert_eq!(b.eval("a.client.socket === null").await, true);
    drop(other);

    // A job that finishes: the client stops with it and does not come back.
    start_client(&mut b, "f", job, &token).await;
    b.wait_until("f.client.state === 'live'", "a second client", patience)
        .await;
    let done = app
        .post_event(
            job,
            serde_json::json!({"type": "completed", "result": {"ok": true}}),
        )
        .await;
    assert_eq!(done.status(), 201);
    b.wait_until(
        "f.client.state === 'finished'",
        "the finished state",
        patience,
    )
    .await;
    let last: i64 = done.json::<Value>().await.unwrap()["seq"].as_i64().unwrap();
    assert_eq!(b.eval("f.seqs").await, serde_json::json!([last]));
    assert_eq!(b.eval("f.client.reconnectScheduled").await, false);
    assert_eq!(b.eval("a.client.state").await, "replaced");

    // The server saw exactly: a's connect, a's resume, the Rust client's takeover, f's connect.
    assert_eq!(app.events_of(job, "connected").await.len(), 2);
    assert_eq!(app.events_of(job, "reconnected").await.len(), 2);
}

/// A page on another origin (its own server on another port) loads
/// rejoin.js from the rejoin server and follows a job through it: the module
/// fetch, the socket and the client's HTTP calls all cross origins, allowed
/// by `--allowed-origins` (CORS for the HTTP API, the Origin check for the
/// socket).
#[tokio::test]
#[ignore = "needs Chromium: Debian's chromium, or CHROMIUM=PATH (.ci/run installs it)"]
async fn a_page_on_another_origin_follows_a_job_through_rejoin_js() {
    let bin = chromium();
    // The other origin: a static page of its own.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", listener.local_addr().unwrap());
    let app = spawn_with(&["--allowed-origins", &page_origin]).await;
    let job = app.create_job().await;
    let token = app.token(Role::Client, Some(job));
    let rejoin = format!("http://{}", app.addr);
    let html = format!(
        r#"<!doctype html><meta charset="utf-8"><title>another origin</title>
<h1>Scan <span id="state">idle</span></h1><progress id="bar" max="100" value="0"></progress>
<ol id="log"></ol>
<script type="module">
  const {{ RejoinClient }} = await import('{rejoin}/client/rejoin.js');
  const c = new RejoinClient({{ jobId: '{job}', token: '{token}', url: 'ws://{addr}/ws/progress',
    baseDelayMs: 100, maxDelayMs: 400, tokenInProtocol: false }});
  window.seen = {{ states: [], seqs: [], client: c }};
  c.addEventListener('state', (e) => {{ seen.states.push(e.detail.state); document.getElementById('state').textContent = e.detail.state; }});
  c.addEventListener('event', (e) => {{
    seen.seqs.push(e.detail.seq);
    if (e.detail.progress !== undefined) document.getElementById('bar').value = e.detail.progress;
    const li = document.createElement('li'); li.textContent = `${{e.detail.type}} #${{e.detail.seq}}`;
    document.getElementById('log').append(li);
  }});
  c.start();
  // A cross-origin call of the API with the bearer token (a CORS preflight).
  const res = await fetch('{rejoin}/v1/jobs/{job}', {{ headers: {{ Authorization: 'Bearer {token}' }} }});
  window.seen.apiStatus = res.status;
</script>"#,
        addr = app.addr
    );
    let page = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let html = html.clone();
            async move { axum::response::Html(html) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, page).await.unwrap() });

    let mut b = Browser::launch(&bin).await;
    b.goto(&format!("{page_origin}/")).await;
    let patience = Duration::from_secs(15);
    b.wait_until(
        "window.seen && seen.client.state === 'live' && seen.apiStatus === 200",
        "a live client and a readable API answer across origins",
        patience,
    )
    .await;
    let p = app.progress(job, 60.0).await;
    b.wait_until(&format!("seen.seqs.includes({p})"), "the event", patience)
        .await;
    let done = app
        .post_event(job, serde_json::json!({"type": "completed"}))
        .await;
    assert_eq!(done.status(), 201);
    b.wait_until(
        "seen.client.state === 'finished'",
        "the finished state",
        patience,
    )
    .await;
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cross-origin-client.png");
    b.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000);
    // The socket came from the page's origin, and was let in.
    let connected = app.events_of(job, "connected").await;
    assert_eq!(connected.len(), 1);
}
