//! Webhook notifications (SPEC §10): when a job ends while nobody watches,
//! the operator's endpoint hears of it, signed as Standard Webhooks, at
//! least once, from the log. A real receiver on loopback records every
//! request; signatures are checked with the `standardwebhooks` package from
//! PyPI (`.ci/run` installs it and sets `STANDARDWEBHOOKS_PYTHON`).

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use common::{
    create_job_from, events_of, free_port, metric_at, next_json, post_json_at, serve_binary,
    spawn_with, token_for, LoggedEvent, Received, Receiver, TestApp, BIN, PATIENCE,
};
use rejoin::clock::ManualClock;
use serde_json::{json, Value};
use uuid::Uuid;

/// The signing secret of these tests' servers.
fn secret() -> String {
    rejoin::webhook::format_secret(&[0x5a; 32])
        .expose()
        .to_owned()
}

/// Flags for a server that notifies `url`, retrying within `base` seconds
/// at first and `cap` at most.
fn webhook_flags(url: &str, base: &str, cap: &str) -> Vec<String> {
    [
        "--webhook-url",
        url,
        "--webhook-secret",
        &secret(),
        "--webhook-retry-base-secs",
        base,
        "--webhook-retry-cap-secs",
        cap,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A server in this process that notifies `url`, retrying fast.
async fn spawn_notifying(url: &str, extra: &[&str]) -> TestApp {
    let mut flags = webhook_flags(url, "0.05", "0.2");
    flags.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    spawn_with(&refs).await
}

/// The same, on a clock the test moves.
async fn spawn_notifying_on(url: &str, clock: Arc<ManualClock>) -> TestApp {
    let flags = webhook_flags(url, "0.05", "0.2");
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    common::spawn_on_clock(&refs, clock).await
}

/// A Python with `standardwebhooks`, if there is one (under CI there must be).
fn verifier() -> Option<String> {
    if let Some(p) = std::env::var_os("STANDARDWEBHOOKS_PYTHON") {
        return Some(p.to_string_lossy().into_owned());
    }
    let local = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/standardwebhooks/bin/python"
    );
    let has = |python: &str| {
        std::process::Command::new(python)
            .args(["-c", "import standardwebhooks"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has(local) {
        return Some(local.into());
    }
    if has("python3") {
        return Some("python3".into());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install standardwebhooks (see .ci/run)"
    );
    None
}

/// Verifies a request with the `standardwebhooks` package: Ok, or its error.
fn verify_with_standardwebhooks(python: &str, secret: &str, r: &Received) -> Result<(), String> {
    use std::io::Write;
    let script = "import sys\n\
        from standardwebhooks.webhooks import Webhook\n\
        body = sys.stdin.buffer.read()\n\
        Webhook(sys.argv[1]).verify(body, {'webhook-id': sys.argv[2], 'webhook-timestamp': sys.argv[3], 'webhook-signature': sys.argv[4]})\n";
    let mut child = std::process::Command::new(python)
        .args(["-c", script, secret, &r.id, &r.timestamp, &r.signature])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    child.stdin.take().unwrap().write_all(&r.body).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Polls the log until `job` has `n` events of `kind`.
async fn wait_for_kind(url: &str, job: Uuid, kind: &str, n: usize) -> Vec<LoggedEvent> {
    common::eventually(&format!("{n} `{kind}`"), || async {
        Some(events_of(url, job, kind).await).filter(|found| found.len() >= n)
    })
    .await
}

async fn complete(http: &reqwest::Client, addr: SocketAddr, job: Uuid, result: Value) {
    let res = post_json_at(
        http,
        addr,
        &format!("/v1/jobs/{job}/events"),
        &token_for("service", None),
        &json!({"type": "completed", "result": result}),
    )
    .await;
    assert_eq!(res.status(), 201);
}

async fn history(app: &TestApp, job: Uuid) -> Value {
    app.get_json(
        &format!("/v1/jobs/{job}/history"),
        Some(&token_for("support", None)),
    )
    .await
}

#[tokio::test]
async fn a_job_that_ends_while_its_only_watcher_is_away_is_notified_once_signed() {
    let receiver = Receiver::start().await;
    // No --webhook-secret: one is generated beside the SQLite database and
    // kept. (A PostgreSQL log needs one given: every node signs alike.)
    let on_postgres = std::env::var_os("REJOIN_TEST_POSTGRES_URL").is_some();
    let url = receiver.url();
    let given = secret();
    let mut flags = vec!["--webhook-url", &url, "--webhook-retry-base-secs", "0.05"];
    if on_postgres {
        flags.extend(["--webhook-secret", &given]);
    }
    let app = spawn_with(&flags).await;
    let generated = if on_postgres {
        given.clone()
    } else {
        let secret_file = app.dir.path().join("webhook-secret");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::read_to_string(&secret_file).unwrap()
    };
    assert!(generated.starts_with("whsec_"), "{generated}");

    let job = app
        .create_job_from(json!({"metadata": {"userId": "u42", "shelf": 3}}))
        .await;
    let mut ws = app.ws_client(job).await;
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    app.progress(job, 60.0).await;
    // The app goes to the background: its socket closes, its grace window
    // opens, and the job completes while it is away.
    ws.close(None).await.unwrap();
    app.wait_for_job(job, "the watcher in grace", |s| {
        s["watchers"][0]["state"] == "grace"
    })
    .await;
    complete(&app.http, app.addr, job, json!({"books": 41})).await;

    let delivered = wait_for_kind(&app.database_url, job, "notification_delivered", 1).await;
    let requests = receiver.wait_for(1).await;
    assert_eq!(requests.len(), 1, "exactly one POST");
    let r = &requests[0];
    let due = app.events_of(job, "notification_due").await;
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].payload["reason"], "unwatched");
    assert_eq!(r.id, due[0].payload["id"]);
    assert_eq!(delivered[0].payload["attempt"], 1);
    assert!(
        r.content_type.starts_with("application/json"),
        "{}",
        r.content_type
    );
    let ts: i64 = r.timestamp.parse().unwrap();
    assert!((Utc::now().timestamp() - ts).abs() < 60, "timestamp {ts}");

    // The body names the job, its end and its metadata.
    let body = &r.json;
    assert_eq!(body["type"], "job.completed");
    assert_eq!(body["jobId"], job.to_string());
    assert_eq!(body["status"], "completed");
    assert_eq!(body["progress"], 100.0);
    assert_eq!(body["result"], json!({"books": 41}));
    assert_eq!(body["metadata"], json!({"userId": "u42", "shelf": 3}));
    let completed = app.events_of(job, "completed").await;
    assert_eq!(body["seq"], completed[0].seq);
    let at: DateTime<Utc> = serde_json::from_value(body["at"].clone()).unwrap();
    assert_eq!(at, completed[0].at);

    // The signature verifies with an independent implementation, and not
    // with another key.
    let ours = rejoin::webhook::sign(
        &rejoin::webhook::parse_secret(&generated).unwrap(),
        &r.id,
        ts,
        &r.body,
    );
    assert!(r.signature.split(' ').any(|s| s == ours));
    if let Some(python) = verifier() {
        verify_with_standardwebhooks(&python, generated.trim(), r).unwrap();
        let wrong = rejoin::webhook::format_secret(&[1; 32]);
        assert!(verify_with_standardwebhooks(&python, wrong.expose(), r).is_err());
    }

    // Support sees it: the job's state and its history say when.
    let state = app.get_job(job).await;
    assert_eq!(state["notifiedAt"], delivered[0].payload_at());
    assert_eq!(state["notificationsPending"], 0);
    let h = history(&app, job).await;
    let n = &h["notifications"][0];
    assert_eq!(n["state"], "delivered");
    assert_eq!(n["attempts"], 1);
    assert_eq!(n["type"], "job.completed");
    let kinds: Vec<&str> = n["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "notification_due",
            "notification_attempt",
            "notification_delivered"
        ]
    );
    assert_eq!(
        metric_at(
            &app.http,
            app.addr,
            "rejoin_webhook_deliveries_total{outcome=\"delivered\"} "
        )
        .await,
        1.0
    );
    assert_eq!(
        metric_at(&app.http, app.addr, "rejoin_webhook_pending ").await,
        0.0
    );
    assert_eq!(receiver.requests().len(), 1);
}

/// The time of a logged event, as the API writes it.
trait At {
    fn payload_at(&self) -> Value;
}

impl At for LoggedEvent {
    fn payload_at(&self) -> Value {
        serde_json::to_value(self.at).unwrap()
    }
}

#[tokio::test]
async fn a_watcher_with_a_live_socket_means_no_notification_unless_notify_is_always() {
    let receiver = Receiver::start().await;
    let app = spawn_notifying(&receiver.url(), &[]).await;

    // Watched to the end, default `notify`: nothing is due. The due event
    // would have committed with the completion, so its absence is final.
    let watched = app.create_job().await;
    let mut ws = app.ws_client(watched).await;
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    complete(&app.http, app.addr, watched, json!(null)).await;
    assert_eq!(next_json(&mut ws).await["type"], "completed");
    assert!(app.events_of(watched, "notification_due").await.is_empty());

    // `never`: nothing, watched or not.
    let never = app.create_job_from(json!({"notify": "never"})).await;
    complete(&app.http, app.addr, never, json!(null)).await;
    assert!(app.events_of(never, "notification_due").await.is_empty());
    assert_eq!(app.get_job(never).await["notify"], "never");

    // `always`: one, though a watcher saw it.
    let always = app.create_job_from(json!({"notify": "always"})).await;
    let mut ws = app.ws_client(always).await;
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    complete(&app.http, app.addr, always, json!({"ok": true})).await;
    assert_eq!(next_json(&mut ws).await["type"], "completed");
    wait_for_kind(&app.database_url, always, "notification_delivered", 1).await;
    let requests = receiver.wait_for(1).await;
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].json["jobId"], always.to_string());
    let due = app.events_of(always, "notification_due").await;
    assert_eq!(due[0].payload["reason"], "always");

    // A bad `notify` is refused and creates nothing.
    let before = app.count_events().await;
    let res = app
        .post_as("/v1/jobs", &app.service(), &json!({"notify": "sometimes"}))
        .await;
    assert_eq!(res.status(), 400);
    assert_eq!(app.count_events().await, before);
    // Connection-class events never reach sockets: the watcher of `always`
    // heard `completed` and then its close, nothing of the notification.
    let close = common::next_close(&mut ws).await;
    assert_eq!(close.0, 1000);
}

#[tokio::test]
async fn failed_jobs_timeouts_and_stalls_are_notified_too() {
    let receiver = Receiver::start().await;
    let clock = Arc::new(ManualClock::starting_now());
    let app = spawn_notifying_on(&receiver.url(), clock.clone()).await;
    let stalls = app.create_job_from(json!({"stallAfterSecs": 60})).await;
    clock.advance(chrono::Duration::seconds(60));
    let stalled = wait_for_kind(&app.database_url, stalls, "notification_delivered", 1).await;
    assert_eq!(stalled.len(), 1);
    let failed = app
        .create_job_from(json!({"timeoutSecs": 3600, "metadata": {"u": 1}}))
        .await;
    clock.advance(chrono::Duration::seconds(3600));
    wait_for_kind(&app.database_url, failed, "notification_delivered", 1).await;
    let requests = receiver.wait_for(2).await;
    let of = |job: Uuid| {
        requests
            .iter()
            .find(|r| r.json["jobId"] == job.to_string())
            .unwrap()
            .json
            .clone()
    };
    let s = of(stalls);
    assert_eq!(s["type"], "job.stalled");
    assert_eq!(s["status"], "pending");
    let f = of(failed);
    assert_eq!(f["type"], "job.failed");
    assert_eq!(f["error"]["code"], "timeout");
    assert_eq!(f["metadata"], json!({"u": 1}));
}

#[tokio::test]
async fn attempts_back_off_while_the_receiver_fails_then_it_is_delivered_once() {
    let receiver = Receiver::start().await;
    receiver.script(&[500, 503, 502]);
    let app = spawn_notifying(&receiver.url(), &[]).await;
    let job = app.create_job().await;
    complete(&app.http, app.addr, job, json!(null)).await;

    wait_for_kind(&app.database_url, job, "notification_delivered", 1).await;
    let requests = receiver.wait_for(4).await;
    assert_eq!(requests.len(), 4);
    let id = &requests[0].id;
    assert!(
        requests.iter().all(|r| &r.id == id),
        "one webhook-id for every attempt"
    );
    assert_eq!(
        requests.iter().filter(|r| r.answered < 300).count(),
        1,
        "delivered once"
    );
    let attempts = app.events_of(job, "notification_attempt").await;
    let numbers: Vec<i64> = attempts
        .iter()
        .map(|a| a.payload["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4]);
    // Each retry waits at most base·2^(n-1), capped: 50, 100, 200 ms.
    let retries = app.events_of(job, "notification_retry").await;
    assert_eq!(retries.len(), 3);
    for (i, (r, ceiling_ms)) in retries.iter().zip([50, 100, 200]).enumerate() {
        assert_eq!(r.payload["attempt"], i as i64 + 1);
        assert_eq!(r.payload["status"], [500, 503, 502][i]);
        let retry_at: DateTime<Utc> = serde_json::from_value(r.payload["retryAt"].clone()).unwrap();
        let wait = retry_at - r.at;
        assert!(
            wait >= chrono::Duration::zero() && wait <= chrono::Duration::milliseconds(ceiling_ms),
            "retry {} waits {wait}",
            i + 1
        );
        // The next attempt is not made before it is due.
        assert!(attempts[i + 1].at >= retry_at, "attempt {} early", i + 2);
    }
    assert_eq!(
        metric_at(&app.http, app.addr, "rejoin_webhook_attempts_total ").await,
        4.0
    );
    assert_eq!(
        metric_at(&app.http, app.addr, "rejoin_webhook_failed_attempts_total ").await,
        3.0
    );
}

#[tokio::test]
async fn a_refused_connection_is_retried_until_the_receiver_listens() {
    let port = free_port().unwrap();
    let url = format!("http://127.0.0.1:{port}/hooks/rejoin");
    let app = spawn_notifying(&url, &[]).await;
    let job = app.create_job().await;
    complete(&app.http, app.addr, job, json!(null)).await;
    let retries = wait_for_kind(&app.database_url, job, "notification_retry", 2).await;
    let error = retries[0].payload["error"].as_str().unwrap();
    assert!(error.starts_with("cannot connect"), "{error}");
    assert!(retries[0].payload.get("status").is_none());
    assert_eq!(
        metric_at(&app.http, app.addr, "rejoin_webhook_pending ").await,
        1.0
    );
    assert!(
        metric_at(
            &app.http,
            app.addr,
            "rejoin_webhook_oldest_pending_seconds "
        )
        .await
            > 0.0
    );
    // The job stays live while its notification is pending.
    assert_eq!(
        metric_at(&app.http, app.addr, "rejoin_jobs_in_memory{held=\"live\"} ").await,
        1.0
    );

    let receiver = Receiver::start_on(port).await;
    wait_for_kind(&app.database_url, job, "notification_delivered", 1).await;
    let requests = receiver.wait_for(1).await;
    assert_eq!(requests.len(), 1);
    let due = app.events_of(job, "notification_due").await;
    assert_eq!(requests[0].id, due[0].payload["id"]);
    assert_eq!(
        metric_at(&app.http, app.addr, "rejoin_webhook_pending ").await,
        0.0
    );
}

#[tokio::test]
async fn a_410_stops_delivery_for_good() {
    let receiver = Receiver::start().await;
    receiver.answer(410);
    let app = spawn_notifying(&receiver.url(), &[]).await;
    let job = app.create_job().await;
    complete(&app.http, app.addr, job, json!(null)).await;
    let abandoned = wait_for_kind(&app.database_url, job, "notification_abandoned", 1).await;
    assert_eq!(abandoned[0].payload["reason"], "gone");
    assert_eq!(abandoned[0].payload["attempts"], 1);
    assert_eq!(receiver.requests().len(), 1);
    assert!(app.events_of(job, "notification_retry").await.is_empty());
    let h = history(&app, job).await;
    assert_eq!(h["notifications"][0]["state"], "abandoned");
    assert_eq!(h["notifications"][0]["abandonReason"], "gone");
    assert_eq!(
        metric_at(
            &app.http,
            app.addr,
            "rejoin_webhook_deliveries_total{outcome=\"gone\"} "
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn past_its_max_age_a_notification_is_abandoned_and_recorded() {
    let receiver = Receiver::start().await;
    receiver.answer(500);
    let app = spawn_notifying(&receiver.url(), &["--webhook-max-age-secs", "0.5"]).await;
    let job = app.create_job().await;
    complete(&app.http, app.addr, job, json!(null)).await;
    let abandoned = wait_for_kind(&app.database_url, job, "notification_abandoned", 1).await;
    let a = &abandoned[0].payload;
    assert_eq!(a["reason"], "expired");
    assert_eq!(a["error"], "HTTP 500");
    let attempts = app.events_of(job, "notification_attempt").await.len();
    assert!(attempts >= 2, "{attempts} attempts");
    assert_eq!(a["attempts"], attempts as i64);
    // Every attempt was made once, and none after the end.
    assert_eq!(receiver.requests().len(), attempts);
    let due = app.events_of(job, "notification_due").await;
    let expires: DateTime<Utc> =
        serde_json::from_value(due[0].payload["expiresAt"].clone()).unwrap();
    assert!(abandoned[0].at <= expires + chrono::Duration::milliseconds(250));
    let h = history(&app, job).await;
    assert_eq!(h["notifications"][0]["abandonReason"], "expired");
    assert_eq!(
        metric_at(
            &app.http,
            app.addr,
            "rejoin_webhook_deliveries_total{outcome=\"expired\"} "
        )
        .await,
        1.0
    );
    // The job is no longer held as live once it is settled.
    assert_eq!(
        metric_at(&app.http, app.addr, "rejoin_jobs_in_memory{held=\"live\"} ").await,
        0.0
    );
}

#[tokio::test]
async fn a_sigkill_between_attempts_loses_nothing_and_delivery_keeps_its_schedule() {
    let receiver = Receiver::start().await;
    receiver.answer(500);
    let dir = tempfile::tempdir().unwrap();
    let url = common::fresh_database(dir.path()).await;
    // Retries within 2 s: room to kill the server between two attempts.
    let flags = webhook_flags(&receiver.url(), "2", "2");
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (mut first, addr) = serve_binary(&url, &refs).await;
    let http = reqwest::Client::new();
    let job = create_job_from(&http, addr, &json!({})).await;
    complete(&http, addr, job, json!(null)).await;
    wait_for_kind(&url, job, "notification_retry", 1).await;
    first.kill().await.unwrap();
    first.wait().await.unwrap();
    let before = events_of(&url, job, "notification_retry").await;
    let made = events_of(&url, job, "notification_attempt").await.len();

    receiver.answer(204);
    let (_second, _addr) = serve_binary(&url, &refs).await;
    let delivered = wait_for_kind(&url, job, "notification_delivered", 1).await;
    let requests = receiver.wait_for(made + 1).await;
    let attempts = events_of(&url, job, "notification_attempt").await;
    // Every claimed attempt but perhaps one cut short by the kill reached
    // the receiver, each once, all with one webhook-id.
    assert!(requests.len() <= attempts.len() && requests.len() + 1 >= attempts.len());
    assert!(requests.iter().all(|r| r.id == requests[0].id));
    assert_eq!(requests.iter().filter(|r| r.answered < 300).count(), 1);
    let numbers: Vec<i64> = attempts
        .iter()
        .map(|a| a.payload["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, (1..=attempts.len() as i64).collect::<Vec<_>>());
    // The attempt after the kill waited for the retry time the log held.
    let last_retry = before.last().unwrap();
    let retry_at: DateTime<Utc> =
        serde_json::from_value(last_retry.payload["retryAt"].clone()).unwrap();
    let next = &attempts[last_retry.payload["attempt"].as_i64().unwrap() as usize];
    assert!(next.at >= retry_at, "attempt after the restart made early");
    assert_eq!(
        delivered[0].payload["attempt"],
        attempts.last().unwrap().payload["attempt"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: REJOIN_TEST_POSTGRES_URL (.ci/run sets it)"]
async fn two_nodes_make_each_attempt_once_and_one_takes_over_from_a_dead_one_on_postgres() {
    let receiver = Receiver::start().await;
    receiver.answer(500);
    let mut flags = webhook_flags(&receiver.url(), "1", "1");
    flags.extend(["--webhook-timeout-secs", "1"].map(String::from));
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (url, mut nodes) = common::spawn_nodes(2, &refs).await;
    let (b, b_addr) = nodes.pop().unwrap();
    let (a, a_addr) = nodes.pop().unwrap();
    let http = reqwest::Client::new();
    let job = create_job_from(&http, a_addr, &json!({})).await;
    complete(&http, a_addr, job, json!(null)).await;

    // Three failed attempts, each made by one node.
    wait_for_kind(&url, job, "notification_retry", 3).await;
    let by_node = |attempts: &[LoggedEvent]| -> Vec<String> {
        attempts
            .iter()
            .map(|e| e.payload["node"].as_str().unwrap().to_owned())
            .collect()
    };
    // The node that made the latest attempt dies mid-backoff.
    let attempts = events_of(&url, job, "notification_attempt").await;
    let last = by_node(&attempts).last().unwrap().clone();
    let a_made = metric_at(&http, a_addr, "rejoin_webhook_attempts_total ").await;
    let b_made = metric_at(&http, b_addr, "rejoin_webhook_attempts_total ").await;
    assert_eq!(
        (a_made + b_made) as usize,
        attempts.len(),
        "each attempt made by one node"
    );
    // Which process made it: each node names the id it serves under.
    let node_of = |addr: SocketAddr| {
        let http = http.clone();
        async move {
            common::get_json_at(&http, addr, "/readyz", None).await["node"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (mut dying, survivor_addr) = if node_of(a_addr).await == last {
        (a, b_addr)
    } else {
        assert_eq!(node_of(b_addr).await, last);
        (b, a_addr)
    };
    let survivor = node_of(survivor_addr).await;
    dying.kill().await.unwrap();
    dying.wait().await.unwrap();
    let made_before = events_of(&url, job, "notification_attempt").await.len();
    receiver.answer(204);

    let delivered = wait_for_kind(&url, job, "notification_delivered", 1).await;
    let attempts = events_of(&url, job, "notification_attempt").await;
    let numbers: Vec<i64> = attempts
        .iter()
        .map(|a| a.payload["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(
        numbers,
        (1..=attempts.len() as i64).collect::<Vec<_>>(),
        "each attempt claimed once"
    );
    for later in &by_node(&attempts)[made_before..] {
        assert_eq!(later, &survivor, "the survivor took over");
    }
    let requests = receiver.requests();
    assert!(requests.len() <= attempts.len() && requests.len() + 1 >= attempts.len());
    assert_eq!(requests.iter().filter(|r| r.answered < 300).count(), 1);
    assert_eq!(delivered.len(), 1);
}

#[tokio::test]
async fn a_bad_webhook_configuration_stops_the_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("rejoin.db").display());
    let short = rejoin::webhook::format_secret(&[7; 8]);
    let cases: [(&[&str], &str); 5] = [
        (&["--webhook-url", "not a url"], "is not a URL"),
        (
            &["--webhook-url", "ftp://example.com/hook"],
            "must be an http:// or https:// URL",
        ),
        (
            &[
                "--webhook-url",
                "http://127.0.0.1:9/h",
                "--webhook-secret",
                short.expose(),
            ],
            "too short",
        ),
        (
            &[
                "--webhook-url",
                "http://127.0.0.1:9/h",
                "--webhook-secret",
                "hunter2hunter2hunter2hunter2",
            ],
            "must be `whsec_`",
        ),
        (
            &[
                "--webhook-url",
                "http://127.0.0.1:9/h",
                "--webhook-max-age-secs",
                "0",
            ],
            "--webhook-max-age-secs must be a positive number",
        ),
    ];
    for (flags, message) in cases {
        let out = tokio::time::timeout(
            PATIENCE,
            tokio::process::Command::new(BIN)
                .args(common::serve_args(
                    "127.0.0.1:0",
                    &db,
                    common::SECRET,
                    flags,
                ))
                .output(),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(!out.status.success(), "{flags:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{flags:?}: {stderr}");
        assert!(
            !stderr.contains("hunter2"),
            "the secret is never printed: {stderr}"
        );
    }
    // Nothing was created: the log was never opened.
    assert!(!dir.path().join("rejoin.db").exists());

    // On PostgreSQL there is no file to keep a generated secret in, and
    // every node must sign alike: the secret must be given.
    if let Ok(server) = std::env::var("REJOIN_TEST_POSTGRES_URL") {
        let pg = rejoin::log::postgres::fresh_schema(&server, "t")
            .await
            .unwrap();
        let flags = ["--webhook-url", "http://127.0.0.1:9/h"];
        let out = tokio::process::Command::new(BIN)
            .args(common::serve_args(
                "127.0.0.1:0",
                &pg,
                common::SECRET,
                &flags,
            ))
            .output()
            .await
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("needs --webhook-secret"), "{stderr}");
    }
}

#[tokio::test]
#[ignore = "needs Python with standardwebhooks from PyPI (.ci/run installs it)"]
async fn the_documented_receiver_verifies_each_notification_and_pushes_it_once() {
    let python = verifier()
        .expect("this test needs Python with standardwebhooks (STANDARDWEBHOOKS_PYTHON=PATH)");
    use tokio::io::AsyncBufReadExt;
    let port = free_port().unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/examples/webhook_receiver.py"
    );
    let mut receiver = tokio::process::Command::new(&python)
        .arg(script)
        .env("REJOIN_WEBHOOK_SECRET", secret())
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(receiver.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .unwrap();
    assert!(first.unwrap().unwrap().starts_with("listening on"));
    let url = format!("http://127.0.0.1:{port}/");

    let app = spawn_notifying(&url, &[]).await;
    let job = app
        .create_job_from(json!({"metadata": {"userId": "u42"}}))
        .await;
    complete(&app.http, app.addr, job, json!({"books": 3})).await;
    let line = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("a push in time")
        .unwrap()
        .unwrap();
    let push: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(push["push"]["user"], "u42");
    assert_eq!(push["push"]["title"], "Scan finished");
    assert_eq!(push["push"]["data"]["jobId"], job.to_string());
    wait_for_kind(&app.database_url, job, "notification_delivered", 1).await;

    // A forged request is refused, and pushes nothing.
    let forged = app
        .http
        .post(&url)
        .header("webhook-id", "msg_forged")
        .header("webhook-timestamp", Utc::now().timestamp().to_string())
        .header("webhook-signature", "v1,bm90IGEgc2lnbmF0dXJl")
        .body(r#"{"type":"job.completed","jobId":"x","seq":1,"metadata":{"userId":"u42"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    // The same notification again (a retry) is answered, and pushed once.
    let r = job_notification_request(&app, job).await;
    let again = app
        .http
        .post(&url)
        .header("webhook-id", &r.0)
        .header("webhook-timestamp", r.1.to_string())
        .header("webhook-signature", r.2)
        .body(r.3)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 204);
    receiver.kill().await.unwrap();
    assert!(lines.next_line().await.unwrap().is_none(), "pushed once");
}

/// The job's notification as a retry would send it now: id, timestamp,
/// signature and body.
async fn job_notification_request(app: &TestApp, job: Uuid) -> (String, i64, String, Vec<u8>) {
    let due = app.events_of(job, "notification_due").await;
    let id = due[0].payload["id"].as_str().unwrap().to_owned();
    let state = app.engine.job(job).await.unwrap().unwrap();
    let pending = rejoin::domain::notify::PendingNotification {
        id: id.clone(),
        for_seq: due[0].payload["forSeq"].as_i64().unwrap(),
        kind: due[0].payload["type"].as_str().unwrap().to_owned(),
        status: due[0].payload["status"].as_str().unwrap().to_owned(),
        progress: due[0].payload["progress"].as_f64().unwrap(),
        due_at: due[0].at,
        expires_at: due[0].at,
        attempts: 1,
        in_flight: None,
        next_at: due[0].at,
        last_error: None,
    };
    let body =
        serde_json::to_vec(&rejoin::domain::reaction::webhook_body(&state, &pending)).unwrap();
    let ts = Utc::now().timestamp();
    let key = rejoin::webhook::parse_secret(&secret()).unwrap();
    let signature = rejoin::webhook::sign(&key, &id, ts, &body);
    (id, ts, signature, body)
}
