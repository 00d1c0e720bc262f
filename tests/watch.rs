//! `rejoin watch` against a real server: across connections cut while
//! events are posted it prints every job event once, in seq order, and exits
//! 0 when the job completes; it stops, exiting 1, on a failed job, an unknown
//! job and a token it cannot renew.

use crate::common;

use common::{spawn_app, Proxy, TestApp, BIN, PATIENCE};
use rejoin::auth::Role;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use uuid::Uuid;

/// A running `rejoin watch` and the JSON lines it printed so far.
struct Watch {
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<Value>,
    seen: Vec<Value>,
}

fn watch(addr: std::net::SocketAddr, job: Uuid, token: &str) -> Watch {
    let mut child = tokio::process::Command::new(BIN)
        .args(["watch", "--url", &format!("ws://{addr}/ws/progress")])
        .args(["--job", &job.to_string(), "--token", token])
        .args([
            "--retry-base-secs",
            "0.05",
            "--retry-cap-secs",
            "0.2",
            "--ping-secs",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stdout = stdout.lines();
        while let Ok(Some(line)) = stdout.next_line().await {
            let value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            if tx.send(value).is_err() {
                return;
            }
        }
    });
    Watch {
        child,
        lines,
        seen: Vec::new(),
    }
}

impl Watch {
    /// Reads lines until one matches; returns it.
    async fn until(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        loop {
            let line = tokio::time::timeout(PATIENCE, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}: {:#?}", self.seen))
                .unwrap_or_else(|| panic!("the watcher ended before {what}: {:#?}", self.seen));
            self.seen.push(line.clone());
            if matches(&line) {
                return line;
            }
        }
    }

    async fn exit_code(&mut self) -> i32 {
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("the watcher exits")
            .unwrap();
        while let Some(line) = self.lines.recv().await {
            self.seen.push(line);
        }
        status.code().expect("an exit code")
    }

    fn events(&self) -> Vec<i64> {
        self.seen
            .iter()
            .filter(|l| l["type"] == "event")
            .map(|l| l["seq"].as_i64().unwrap())
            .collect()
    }

    fn states(&self) -> Vec<&str> {
        self.seen
            .iter()
            .filter(|l| l["type"] == "connection")
            .map(|l| l["state"].as_str().unwrap())
            .collect()
    }
}

fn client_token(app: &TestApp, job: Uuid) -> String {
    app.token(Role::Client, Some(job))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_once_in_order_across_cuts_then_exit_0_when_the_job_completes() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    let proxy = Proxy::start(app.addr).await;
    let mut w = watch(proxy.addr(), job, &client_token(&app, job));
    w.until("live", |l| l["state"] == "live").await;
    let mut posted = Vec::new();
    for round in 0..3 {
        let seq = app.progress(job, f64::from(round * 30 + 10)).await;
        posted.push(seq);
        w.until("the live event", |l| l["seq"] == seq).await;
        proxy.cut(); // the network goes; events go on
        for p in [15, 20] {
            posted.push(app.progress(job, f64::from(round * 30 + p)).await);
        }
        proxy.heal();
        let last = *posted.last().unwrap();
        w.until("the missed events", |l| l["seq"] == last).await;
    }
    let done = app
        .post_event(job, json!({"type": "completed", "result": {"books": 20}}))
        .await;
    assert_eq!(done.status(), 201);
    posted.push(done.json::<Value>().await.unwrap()["seq"].as_i64().unwrap());

    assert_eq!(w.exit_code().await, 0, "{:#?}", w.seen);
    assert_eq!(w.events(), posted, "every event once, in seq order");
    let states = w.states();
    assert_eq!(
        states.iter().filter(|s| **s == "live").count(),
        4,
        "{states:?}"
    );
    assert!(states.contains(&"reconnecting"), "{states:?}");
    assert_eq!(states.last(), Some(&"finished"));
    let finished = w.seen.iter().find(|l| l["type"] == "finished").unwrap();
    assert_eq!(finished["status"], "completed");
    // Each resume continued the one session.
    let sessions: std::collections::HashSet<&str> = w
        .seen
        .iter()
        .filter(|l| l["type"] == "state")
        .map(|l| l["sessionId"].as_str().unwrap())
        .collect();
    assert_eq!(sessions.len(), 1);
}

#[tokio::test]
async fn a_failed_job_an_unknown_job_and_an_unrenewable_token_exit_1() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    let mut w = watch(app.addr, job, &client_token(&app, job));
    w.until("live", |l| l["state"] == "live").await;
    let failed = app
        .post_event(
            job,
            json!({"type": "failed", "error": {"code": "AI_TIMEOUT", "message": "too slow"}}),
        )
        .await;
    assert_eq!(failed.status(), 201);
    assert_eq!(w.exit_code().await, 1);
    assert_eq!(w.seen.last().unwrap()["state"], "finished");

    let unknown = Uuid::new_v4();
    let mut w = watch(app.addr, unknown, &client_token(&app, unknown));
    assert_eq!(w.exit_code().await, 1);
    let last = w.seen.last().unwrap();
    assert_eq!(
        (&last["state"], &last["code"]),
        (&json!("failed"), &json!(404))
    );

    // Signed with another key: refused, and not renewable either.
    let forged = rejoin_testkit::Tokens::new("another-secret-0123456789abcdef").client(job);
    let mut w = watch(app.addr, job, &forged);
    assert_eq!(w.exit_code().await, 1);
    let last = w.seen.last().unwrap();
    assert_eq!(
        (&last["state"], &last["code"]),
        (&json!("failed"), &json!(401))
    );
}
