//! What operators rely on, against real servers: request ids on responses
//! and error bodies, client addresses only through trusted proxies, JSON
//! log lines with ids and without secrets, and the shutdown deadline.

use crate::common;

use common::{first_message, spawn_with, TestApp, Ws, PATIENCE};
use rejoin::auth::Role;
use rejoin_testkit::process::spawn_announcing;
use rejoin_testkit::tokens::{Tokens, SECRET};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

/// Opens the job's socket with extra request headers.
async fn ws_with(app: &TestApp, job: Uuid, headers: &[(&'static str, &str)]) -> Ws {
    let token = app.token(Role::Client, Some(job));
    let mut req = format!("ws://{}/ws/progress?jobId={job}&token={token}", app.addr)
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    first_message(&mut ws).await.unwrap();
    ws
}

/// The `address` each `connected` of the job recorded, in order.
async fn connected_addresses(app: &TestApp, job: Uuid) -> Vec<String> {
    app.events_of(job, "connected")
        .await
        .iter()
        .map(|e| e.payload["address"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A plain GET of the socket's URL: the attempt counts like an upgrade.
async fn probe(app: &TestApp, job: Uuid, forwarded_for: &str) -> u16 {
    let token = app.token(Role::Client, Some(job));
    app.http
        .get(app.url(&format!("/ws/progress?jobId={job}&token={token}")))
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Reads an unknown job offering `x-request-id: id`: the id answered and
/// the error body.
async fn unknown_job_offering(app: &TestApp, id: &str) -> (String, Value) {
    let res = app
        .http
        .get(app.url(&format!("/v1/jobs/{}", Uuid::new_v4())))
        .bearer_auth(app.service())
        .header("x-request-id", id)
        .send()
        .await
        .unwrap();
    let header = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    (header, res.json().await.unwrap())
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_error_bodies_name_it() {
    let app = spawn_with(&[]).await;
    let ok = app.http.get(app.url("/healthz")).send().await.unwrap();
    let id = ok.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(Uuid::parse_str(&id).is_ok(), "a generated id: {id}");

    // Errors: from a handler, from an extractor (no token), from the fallback.
    let service = app.service();
    for (path, token, status) in [
        (format!("/v1/jobs/{}", Uuid::new_v4()), Some(&service), 404),
        ("/v1/jobs".to_owned(), None, 401),
        ("/no/such/route".to_owned(), None, 404),
    ] {
        let mut req = app.http.get(app.url(&path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), status, "{path}");
        let header = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["requestId"], header, "{path}: {body}");
        assert_ne!(header, id, "each request has its own id");
    }

    // An id offered by a client that is not a trusted proxy is not taken.
    let (header, body) = unknown_job_offering(&app, "client-chosen-1").await;
    assert_ne!(header, "client-chosen-1");
    assert_eq!(body["error"]["requestId"], header);
}

#[tokio::test]
async fn a_trusted_proxys_request_id_is_echoed_and_a_bad_one_replaced() {
    let app = spawn_with(&["--trusted-proxies", "127.0.0.0/8"]).await;
    let (header, body) = unknown_job_offering(&app, "lb-4bf92f3577b34da6").await;
    assert_eq!(header, "lb-4bf92f3577b34da6");
    assert_eq!(body["error"]["requestId"], "lb-4bf92f3577b34da6");

    // Too long, or with characters a log line should not carry: replaced.
    for bad in ["x".repeat(200), "a b".to_owned(), "id\"quoted".to_owned()] {
        let res = app
            .http
            .get(app.url("/healthz"))
            .header("x-request-id", &bad)
            .send()
            .await
            .unwrap();
        let header = res.headers()["x-request-id"].to_str().unwrap();
        assert!(
            Uuid::parse_str(header).is_ok(),
            "{bad:?} replaced by {header}"
        );
    }
}

#[tokio::test]
async fn forwarded_addresses_are_ignored_from_an_untrusted_peer() {
    let app = spawn_with(&[
        "--connect-rate-per-ip",
        "0.001",
        "--connect-burst-per-ip",
        "3",
    ])
    .await;
    let job = app.create_job().await;
    // The spoofer claims a new address on every attempt; all count against
    // its real one.
    let mut ws = ws_with(&app, job, &[("x-forwarded-for", "203.0.113.1")]).await;
    ws.close(None).await.unwrap();
    assert_eq!(probe(&app, job, "203.0.113.2").await, 426);
    assert_eq!(probe(&app, job, "203.0.113.3").await, 426);
    assert_eq!(probe(&app, job, "203.0.113.4").await, 429);
    let res = app
        .http
        .get(app.url("/ws/progress"))
        .header("forwarded", "for=198.51.100.9")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429, "Forwarded is ignored as well");
    assert_eq!(connected_addresses(&app, job).await, ["127.0.0.1"]);
}

#[tokio::test]
async fn a_trusted_proxys_forwarded_addresses_are_limited_and_recorded() {
    let app = spawn_with(&[
        "--trusted-proxies",
        "127.0.0.1,10.0.0.0/8",
        "--connect-rate-per-ip",
        "0.001",
        "--connect-burst-per-ip",
        "2",
    ])
    .await;
    let job = app.create_job().await;
    // The client's own header value is left of what the proxies appended:
    // the first address from the right that no trusted proxy vouches for
    // is the client.
    let chain = "6.6.6.6, 203.0.113.7, 10.1.2.3";
    let mut ws = ws_with(&app, job, &[("x-forwarded-for", chain)]).await;
    ws.close(None).await.unwrap();
    let mut ws = ws_with(
        &app,
        job,
        &[("forwarded", r#"for="[2001:db8::17]:4711";proto=https"#)],
    )
    .await;
    ws.close(None).await.unwrap();
    assert_eq!(
        connected_addresses(&app, job).await,
        ["203.0.113.7", "2001:db8::17"]
    );

    // Each forwarded client has its own bucket; the proxy has none.
    assert_eq!(probe(&app, job, chain).await, 426);
    assert_eq!(
        probe(&app, job, chain).await,
        429,
        "203.0.113.7's burst is spent"
    );
    for n in 1..=5 {
        assert_eq!(probe(&app, job, &format!("198.51.100.{n}")).await, 426);
    }
    // A request with no forwarding header is the proxy's own.
    let token = app.token(Role::Client, Some(job));
    let mut ws = app.ws(&format!("jobId={job}&token={token}")).await.unwrap();
    first_message(&mut ws).await.unwrap();
    assert_eq!(
        connected_addresses(&app, job).await.last().unwrap(),
        "127.0.0.1"
    );
}

#[tokio::test]
async fn a_bad_trusted_proxy_entry_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rejoin"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &db])
        .args(["--trusted-proxies", "10.0.0.0/40"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--trusted-proxies: `10.0.0.0/40` is not an address or a CIDR block"),
        "{stderr}"
    );
    assert!(!dir.path().join("r.db").exists(), "no log opened");
}

/// A `rejoin serve` process whose standard error the test reads.
struct Logged {
    child: tokio::process::Child,
    addr: String,
}

async fn serve_logged(db: &str, extra: &[&str], env: &[(&str, &str)]) -> Logged {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rejoin"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--database-url", db])
        .args(extra)
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (child, addr) = tokio::time::timeout(PATIENCE, spawn_announcing(cmd))
        .await
        .expect("the server starts in time")
        .expect("the server starts");
    Logged { child, addr }
}

impl Logged {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GETs `path` with `token`: the JSON answer.
    async fn get(&self, path: &str, token: &str) -> Value {
        let addr = self.addr.parse().unwrap();
        rejoin_testkit::get_json_at(&reqwest::Client::new(), addr, path, Some(token)).await
    }

    /// SIGTERM, then the exit status and everything written to stderr.
    async fn stop(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().unwrap();
        // SAFETY: a signal to our own child.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
        let mut stderr = self.child.stderr.take().unwrap();
        let mut text = String::new();
        let read = async {
            stderr.read_to_string(&mut text).await.unwrap();
            self.child.wait().await.unwrap()
        };
        let status = tokio::time::timeout(PATIENCE, read)
            .await
            .expect("the server exits after SIGTERM");
        (status, text)
    }
}

#[tokio::test]
async fn json_log_lines_carry_request_job_and_session_ids_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("logs.db").display());
    let webhook_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let server = serve_logged(
        &db,
        &[
            "--log-format",
            "json",
            "--webhook-url",
            "http://127.0.0.1:9/hook",
        ],
        &[
            ("REJOIN_LOG", "debug"),
            ("REJOIN_JWT_SECRET", SECRET),
            ("REJOIN_WEBHOOK_SECRET", webhook_secret),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let service = Tokens::new(SECRET).service();
    let created = http
        .post(server.url("/v1/jobs"))
        .bearer_auth(&service)
        .json(&json!({"metadata": {"kind": "logs"}}))
        .send()
        .await
        .unwrap();
    let create_id = created.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let created: Value = created.json().await.unwrap();
    let job = created["jobId"].as_str().unwrap().to_owned();
    let client_token = created["clientToken"].as_str().unwrap().to_owned();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/ws/progress?jobId={job}&token={client_token}",
        server.addr
    ))
    .await
    .unwrap();
    let hello = first_message(&mut ws).await.unwrap();
    let session = hello["sessionId"].as_str().unwrap().to_owned();
    let refused = http
        .get(server.url("/v1/jobs"))
        .bearer_auth("not.a.token")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let refused_id = refused.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    ws.close(None).await.unwrap();
    // The close is recorded before the socket's task ends; wait for it.
    common::eventually("the close recorded", || async {
        let state = server.get(&format!("/v1/jobs/{job}"), &service).await;
        (state["session"]["state"] == "grace").then_some(())
    })
    .await;
    let (status, stderr) = server.stop().await;
    assert!(status.success(), "{status}: {stderr}");

    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 10, "{stderr}");
    for line in &lines {
        for key in ["timestamp", "level", "target"] {
            assert!(line.get(key).is_some(), "no {key}: {line}");
        }
    }
    let with = |key: &str, value: &str| lines.iter().filter(|l| l[key] == value).count();
    assert!(
        with("request_id", &create_id) > 0,
        "the create request's id: {stderr}"
    );
    assert!(
        with("request_id", &refused_id) > 0,
        "the refused request's id"
    );
    let socket_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| l["job"] == job.as_str() && l["session"] == session.as_str())
        .collect();
    assert!(
        !socket_lines.is_empty(),
        "lines naming the job and session: {stderr}"
    );
    assert!(
        socket_lines
            .iter()
            .all(|l| l["request_id"].as_str().is_some_and(|id| !id.is_empty())),
        "a socket's lines name the upgrade's request: {socket_lines:?}"
    );
    for secret in [SECRET, webhook_secret, &service, &client_token] {
        assert!(!stderr.contains(secret), "a secret in the log: {secret}");
    }
    // Not even a token's signature part.
    let signature = client_token.rsplit('.').next().unwrap();
    assert!(!stderr.contains(signature));
}

#[tokio::test]
async fn past_the_shutdown_deadline_the_process_says_what_it_gave_up_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stuck.db");
    let db = format!("sqlite://{}", path.display());
    let server = serve_logged(
        &db,
        &["--shutdown-timeout-secs", "1", "--log-format", "json"],
        &[("REJOIN_JWT_SECRET", SECRET)],
    )
    .await;
    let http = reqwest::Client::new();
    let tokens = Tokens::new(SECRET);
    let job = rejoin_testkit::create_job_with(&http, &server.addr, &tokens.service())
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/ws/progress?jobId={job}&token={}",
        server.addr,
        tokens.client(job)
    ))
    .await
    .unwrap();
    first_message(&mut ws).await.unwrap();

    // Another process holds the database's write lock: the close the socket
    // must record on the way down cannot commit.
    let lock = rusqlite::Connection::open(&path).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let (status, stderr) = server.stop().await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    let gave_up = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["level"] == "ERROR" && l["stage"].is_string())
        .unwrap_or_else(|| panic!("no report of what was given up: {stderr}"));
    assert_eq!(gave_up["stage"], "sockets", "{gave_up}");
    assert_eq!(gave_up["deadline_secs"], 1.0);
    let what = gave_up["gave_up"].as_str().unwrap();
    assert!(what.contains("recording the closes of 1 sockets"), "{what}");
    let stopped = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "rejoin stopped")
        .unwrap_or_else(|| panic!("no last word: {stderr}"));
    assert!(
        stopped["error"]
            .as_str()
            .unwrap()
            .contains("shutdown did not finish within 1s"),
        "{stopped}"
    );
    drop(lock);

    // Nothing acknowledged was lost: the next start records the socket the
    // stuck process left open, and serves.
    let server = serve_logged(&db, &[], &[("REJOIN_JWT_SECRET", SECRET)]).await;
    let history = server
        .get(&format!("/v1/jobs/{job}/history"), &tokens.service())
        .await;
    assert_eq!(
        history["sessions"].as_array().unwrap().len(),
        1,
        "{history}"
    );
    assert_eq!(history["totals"]["disconnects"], 1, "{history}");
    drop(ws);
    let (status, _) = server.stop().await;
    assert!(status.success());
}

#[tokio::test]
async fn a_shutdown_within_the_deadline_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("ok.db").display());
    let server = serve_logged(
        &db,
        &["--shutdown-timeout-secs", "30"],
        &[("REJOIN_JWT_SECRET", SECRET)],
    )
    .await;
    let (status, stderr) = server.stop().await;
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("log flushed; bye"), "{stderr}");
    // The setting is checked like the other durations.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rejoin"))
        .args([
            "serve",
            "--database-url",
            &db,
            "--shutdown-timeout-secs",
            "0",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("--shutdown-timeout-secs must be a positive number of seconds"));
}

#[tokio::test]
async fn rejoin_config_prints_the_effective_settings_with_secrets_redacted() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rejoin"))
        .args(["config", "--json", "--grace-secs", "30"])
        .args(["--trusted-proxies", "10.0.0.0/8,192.0.2.7"])
        .env("REJOIN_JWT_SECRET", SECRET)
        .env(
            "REJOIN_WEBHOOK_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .env(
            "REJOIN_DATABASE_URL",
            "postgres://rejoin:hunter2-db-password@db.internal/rejoin",
        )
        .env_remove("REJOIN_LISTEN")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for secret in [
        SECRET,
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "hunter2-db-password",
    ] {
        assert!(!text.contains(secret), "{secret} printed: {text}");
    }
    let config: Value = serde_json::from_str(&text).unwrap();
    let setting = |name: &str| {
        (
            config[name]["value"].clone(),
            config[name]["source"].clone(),
        )
    };
    assert_eq!(
        setting("--grace-secs"),
        (json!("30"), json!("command line"))
    );
    assert_eq!(
        setting("--trusted-proxies"),
        (json!(["10.0.0.0/8", "192.0.2.7"]), json!("command line"))
    );
    assert_eq!(
        setting("--jwt-secret"),
        (json!("[redacted]"), json!("environment REJOIN_JWT_SECRET"))
    );
    assert_eq!(setting("--webhook-secret").0, json!("[redacted]"));
    assert_eq!(
        setting("--database-url").0,
        json!("postgres://rejoin:%5Bredacted%5D@db.internal/rejoin")
    );
    assert_eq!(
        setting("--listen"),
        (json!("127.0.0.1:8080"), json!("default"))
    );
    assert_eq!(setting("--shutdown-timeout-secs").0, json!("30"));
    assert!(config["--max-connections"]["value"].as_u64().unwrap() >= 64);
    assert!(
        config.get("--unsafe-ack-before-commit").is_none(),
        "hidden flags stay hidden"
    );

    // The text form: one line per setting.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rejoin"))
        .args(["config", "--log-format", "json"])
        .env("REJOIN_JWT_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains(SECRET));
    let line = text
        .lines()
        .find(|l| l.starts_with("--log-format "))
        .unwrap();
    assert!(line.ends_with("json  (command line)"), "{line}");
}

#[tokio::test]
async fn secrets_come_from_files_and_bad_files_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let jwt = dir.path().join("jwt-secret");
    std::fs::write(&jwt, format!("  {SECRET}\n")).unwrap();
    let hook = dir.path().join("webhook-secret");
    std::fs::write(&hook, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
    let db = format!("sqlite://{}", dir.path().join("files.db").display());
    let args = |jwt: &std::path::Path, hook: &std::path::Path| -> Vec<String> {
        [
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db,
            "--jwt-secret-file",
            &jwt.display().to_string(),
            "--webhook-url",
            "http://127.0.0.1:9/hook",
            "--webhook-secret-file",
            &hook.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut server = common::InProcess::start(&args(&jwt, &hook)).await.unwrap();
    let res = reqwest::Client::new()
        .get(format!("http://{}/v1/jobs", server.addr))
        .bearer_auth(Tokens::new(SECRET).service())
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        200,
        "the file's secret, without its whitespace"
    );
    server.stop().await.unwrap();
    assert!(
        !std::fs::read_to_string(&jwt).unwrap().is_empty(),
        "a given secret file is read, never rewritten"
    );

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let missing = dir.path().join("missing");
    for (args, expected) in [
        (args(&missing, &hook), "--jwt-secret-file: cannot read"),
        (args(&jwt, &empty), "--webhook-secret-file:"),
    ] {
        let Err(err) = common::InProcess::start(&args).await else {
            panic!("a bad secret file must stop the start");
        };
        assert!(format!("{err:#}").contains(expected), "{err:#}");
    }
    // Both a secret and a file: refused before anything starts.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rejoin"))
        .args([
            "serve",
            "--database-url",
            &db,
            "--jwt-secret",
            "x".repeat(16).as_str(),
        ])
        .args(["--jwt-secret-file", &jwt.display().to_string()])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}

/// Every line of a JSON-logging process, on stdout and stderr, is a JSON
/// object: `.lines()` of `text`, parsed, or the first line that is not.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test]
async fn with_json_logs_every_line_on_stdout_and_stderr_is_json() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("lines.db").display());
    let run = |args: Vec<String>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rejoin"));
        cmd.args(args).env("REJOIN_JWT_SECRET", SECRET);
        cmd
    };

    // A running server: the address line, then the log; a graceful stop.
    let mut cmd = tokio::process::Command::from(run(vec![
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--database-url".into(),
        db.clone(),
        "--log-format".into(),
        "json".into(),
    ]));
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    use tokio::io::AsyncBufReadExt;
    tokio::time::timeout(PATIENCE, stdout.read_line(&mut first))
        .await
        .expect("the address in time")
        .unwrap();
    let announced = &json_lines(&first)[0];
    assert_eq!(announced["level"], "INFO", "{announced}");
    let addr = rejoin_testkit::announced_address(&first);
    assert_eq!(announced["url"], format!("http://{addr}"));
    let http = reqwest::Client::new();
    let refused = http
        .get(format!("http://{addr}/v1/jobs"))
        .bearer_auth("not.a.token")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let pid = child.id().unwrap();
    // SAFETY: a signal to our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let mut rest = String::new();
    let mut stderr = String::new();
    let mut err = child.stderr.take().unwrap();
    let read = async {
        stdout.read_to_string(&mut rest).await.unwrap();
        err.read_to_string(&mut stderr).await.unwrap();
        child.wait().await.unwrap()
    };
    let status = tokio::time::timeout(PATIENCE, read).await.unwrap();
    assert!(status.success(), "{stderr}");
    assert!(
        json_lines(&rest).is_empty(),
        "stdout after the address: {rest}"
    );
    assert!(json_lines(&stderr).len() > 2, "{stderr}");

    // A start that fails, and a command line clap refuses: their last words
    // are JSON too, with the reason.
    let unopenable = run(vec![
        "serve".into(),
        "--database-url".into(),
        "sqlite:///proc/no/such/dir/rejoin.db".into(),
        "--log-format".into(),
        "json".into(),
    ])
    .output()
    .unwrap();
    assert_eq!(unopenable.status.code(), Some(1));
    assert!(unopenable.stdout.is_empty());
    let lines = json_lines(&String::from_utf8_lossy(&unopenable.stderr));
    let last = lines.last().expect("a last word");
    assert_eq!(
        (&last["level"], &last["message"]),
        (&json!("ERROR"), &json!("rejoin stopped"))
    );
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("/proc/no/such/dir"),
        "{last}"
    );

    let refused = run(vec!["serve".into(), "--grace-secs".into(), "soon".into()])
        .env("REJOIN_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let lines = json_lines(&String::from_utf8_lossy(&refused.stderr));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0]["error"].as_str().unwrap().contains("--grace-secs"),
        "{}",
        lines[0]
    );
}
