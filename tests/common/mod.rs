//! Shared test harness: a real server on a loopback port over a fresh
//! database, real HTTP clients, and helpers to mint and send tokens.
//!
//! The database is a SQLite file in the test's temp directory, or, with
//! `REJOIN_TEST_POSTGRES_URL` set (`.ci/run` sets it for its PostgreSQL pass),
//! a fresh schema of its own on that PostgreSQL server.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rejoin::app::Application;
use rejoin::auth::Role;
use rejoin::config::ServeArgs;
use rejoin::engine::Engine;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub mod cdp;
pub mod story;

pub const SECRET: &str = "test-secret-0123456789abcdef-0123456789";

/// Logs go to stderr only when `TEST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("rejoin=debug,info")
            .with_test_writer()
            .try_init();
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub dir: Arc<tempfile::TempDir>,
    /// The database URL the server was started on.
    pub database_url: String,
    pub engine: Engine,
    pub extra_args: Vec<String>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The SQLite file (meaningful on the SQLite backend only).
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("rejoin.db")
    }

    pub fn db_url(&self) -> String {
        self.database_url.clone()
    }

    pub fn is_postgres(&self) -> bool {
        rejoin::log::postgres::is_postgres(&self.database_url)
    }

    /// A token signed with the test server's secret.
    pub fn token(&self, role: Role, job: Option<Uuid>) -> String {
        mint(&json!({
            "sub": format!("test-{}", role.as_str()),
            "role": role.as_str(),
            "exp": chrono::Utc::now().timestamp() + 600,
            "job": job,
        }))
    }

    pub fn service(&self) -> String {
        self.token(Role::Service, None)
    }

    pub async fn create_job(&self) -> Uuid {
        let res = self
            .http
            .post(self.url("/v1/jobs"))
            .bearer_auth(self.service())
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let body: Value = res.json().await.unwrap();
        body["jobId"].as_str().unwrap().parse().unwrap()
    }

    pub async fn post_event(&self, job: Uuid, event: Value) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/v1/jobs/{job}/events")))
            .bearer_auth(self.service())
            .json(&event)
            .send()
            .await
            .unwrap()
    }

    /// Appends a progress event and returns its seq.
    pub async fn progress(&self, job: Uuid, progress: f64) -> i64 {
        let res = self
            .post_event(job, json!({"type": "progress", "progress": progress}))
            .await;
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
        res.json::<Value>().await.unwrap()["seq"].as_i64().unwrap()
    }

    pub async fn get_job(&self, job: Uuid) -> Value {
        let res = self
            .http
            .get(self.url(&format!("/v1/jobs/{job}")))
            .bearer_auth(self.service())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    /// Rows in the events table, read straight from the database.
    pub async fn count_events(&self) -> i64 {
        count_events(&self.database_url).await
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }

    /// Stops this server and starts a new one on the same database.
    pub async fn restart(mut self) -> TestApp {
        self.stop().await;
        let dir = self.dir.clone();
        let extra = self.extra_args.clone();
        spawn_on(dir, self.database_url.clone(), extra).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn mint(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Rows in the events table of the log at `url`.
pub async fn count_events(url: &str) -> i64 {
    let mut db = Db::connect(url).await;
    db.scalar("SELECT count(*) FROM events").await
}

/// A fresh database for a test server: a SQLite file in `dir`, or a schema
/// of its own on `REJOIN_TEST_POSTGRES_URL`'s server.
pub async fn fresh_database(dir: &Path) -> String {
    let Ok(server) = std::env::var("REJOIN_TEST_POSTGRES_URL") else {
        return format!("sqlite://{}", dir.join("rejoin.db").display());
    };
    rejoin::log::postgres::fresh_schema(&server, "t")
        .await
        .expect("REJOIN_TEST_POSTGRES_URL answers")
}

/// A direct connection to a test database, for what the API cannot do
/// (tamper with rows, hold the write lock).
pub enum Db {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl Db {
    pub async fn connect(url: &str) -> Db {
        use sqlx::Connection;
        if rejoin::log::postgres::is_postgres(url) {
            Db::Postgres(sqlx::PgConnection::connect(url).await.unwrap())
        } else {
            Db::Sqlite(sqlx::SqliteConnection::connect(url).await.unwrap())
        }
    }

    /// Runs one statement; the database's error message on failure.
    pub async fn execute(&mut self, sql: &str) -> Result<u64, String> {
        match self {
            Db::Sqlite(c) => sqlx::query(sql).execute(c).await.map(|r| r.rows_affected()),
            Db::Postgres(c) => sqlx::query(sql).execute(c).await.map(|r| r.rows_affected()),
        }
        .map_err(|e| e.to_string())
    }

    pub async fn scalar(&mut self, sql: &str) -> i64 {
        match self {
            Db::Sqlite(c) => sqlx::query_scalar(sql).fetch_one(c).await.unwrap(),
            Db::Postgres(c) => sqlx::query_scalar(sql).fetch_one(c).await.unwrap(),
        }
    }

    pub async fn close(self) {
        use sqlx::Connection;
        match self {
            Db::Sqlite(c) => c.close().await.unwrap(),
            Db::Postgres(c) => c.close().await.unwrap(),
        }
    }
}

/// A server built from its full command line (for key setups the test
/// secret cannot give), on port 0 over a SQLite file in `dir`, signed with
/// `jwt` (e.g. `["--jwt-algorithm", "RS256", "--jwt-public-key", PATH]`).
pub struct KeyedServer {
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl KeyedServer {
    pub async fn start(dir: &Path, jwt: &[&str]) -> KeyedServer {
        let db = format!("sqlite://{}", dir.join("keyed.db").display());
        let mut args = vec!["--listen", "127.0.0.1:0", "--database-url", &db];
        args.extend_from_slice(jwt);
        let app = Application::build(ServeArgs::from_args(args).unwrap())
            .await
            .unwrap();
        let addr = app.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run(async {
            let _ = stopped.await;
        }));
        KeyedServer { addr, stop, handle }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.handle.await.unwrap().unwrap();
    }
}

/// Starts a server on port 0 over a fresh database in a temp directory.
pub async fn spawn_app() -> TestApp {
    spawn_with(&[]).await
}

pub async fn spawn_with(extra: &[&str]) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    spawn_in(dir, extra.iter().map(|s| s.to_string()).collect()).await
}

pub async fn spawn_in(dir: Arc<tempfile::TempDir>, extra: Vec<String>) -> TestApp {
    let db = fresh_database(dir.path()).await;
    spawn_on(dir, db, extra).await
}

/// Starts a server on the database at `db`.
pub async fn spawn_on(dir: Arc<tempfile::TempDir>, db: String, extra: Vec<String>) -> TestApp {
    init_logs();
    let mut args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &db,
        "--jwt-secret",
        SECRET,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().cloned());
    let config = ServeArgs::from_args(&args).expect("valid test arguments");
    let app = Application::build(config).await.expect("server builds");
    let addr = app.local_addr();
    let engine = app.engine().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    TestApp {
        addr,
        http: reqwest::Client::new(),
        dir,
        database_url: db,
        engine,
        extra_args: extra,
        stop: Some(stop),
        handle: Some(handle),
    }
}

// ---- WebSocket helpers ----

use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::{self, Message};

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Longest any test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(15);

impl TestApp {
    /// Opens `/ws/progress?{query}`.
    pub async fn ws(&self, query: &str) -> Result<Ws, tungstenite::Error> {
        ws_connect(self.addr, query).await
    }

    /// Opens a fresh socket on `job` with its client token.
    pub async fn ws_client(&self, job: Uuid) -> Ws {
        let token = self.token(Role::Client, Some(job));
        self.ws(&format!("jobId={job}&token={token}"))
            .await
            .unwrap()
    }

    /// Reopens `job`'s socket with `reconnect=true`, `lastSeq` and `epoch`.
    pub async fn ws_reconnect(&self, job: Uuid, last_seq: i64, epoch: &str) -> Ws {
        let token = self.token(Role::Client, Some(job));
        self.ws(&format!(
            "jobId={job}&token={token}&reconnect=true&lastSeq={last_seq}&epoch={epoch}"
        ))
        .await
        .unwrap()
    }

    /// The log's epoch, from `/readyz`.
    pub async fn epoch(&self) -> String {
        self.get_json("/readyz", None).await["epoch"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Waits until `check` holds for the job's state, polling the API.
    pub async fn wait_for_job(
        &self,
        job: Uuid,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let state = self.get_job(job).await;
            if check(&state) {
                return state;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {state}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The job's events of one kind, from the database file.
    pub async fn events_of(&self, job: Uuid, kind: &str) -> Vec<LoggedEvent> {
        events_of(&self.database_url, job, kind).await
    }
}

pub async fn ws_connect(addr: SocketAddr, query: &str) -> Result<Ws, tungstenite::Error> {
    let url = format!("ws://{addr}/ws/progress?{query}");
    tokio_tungstenite::connect_async(url)
        .await
        .map(|(ws, _)| ws)
}

/// The HTTP status of a refused upgrade.
pub fn refused_status(result: Result<Ws, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, the socket opened"),
    }
}

/// The next text message, as JSON (pings and pongs skipped).
pub async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("no socket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Reads until the close frame and returns its code and reason.
pub async fn next_close(ws: &mut Ws) -> (u16, String) {
    loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a close in time");
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string())
            }
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(Message::Text(t))) => panic!("expected a close, got {t}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("expected a close frame, got error {e}"),
            None => panic!("the connection ended without a close frame"),
        }
    }
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.unwrap();
}

/// One event as stored.
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    pub seq: i64,
    pub session_id: Option<String>,
    pub payload: Value,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// A job's stored events of one kind, in seq order, from the log at `url`.
pub async fn events_of(url: &str, job: Uuid, kind: &str) -> Vec<LoggedEvent> {
    let store = rejoin::log::open(url).await.unwrap();
    let mut out = Vec::new();
    rejoin::log::for_each_job_event(store.as_ref(), &job.to_string(), i64::MAX, |e| {
        if e.body.kind() == kind {
            out.push(LoggedEvent {
                seq: e.seq,
                session_id: e.session_id.map(|s| s.to_string()),
                payload: serde_json::from_str(&e.body.encode()).unwrap(),
                at: e.at,
            });
        }
    })
    .await
    .unwrap();
    store.close().await;
    out
}

impl TestApp {
    /// GETs `path` (with `token`, if any) and returns the 200 answer's JSON.
    pub async fn get_json(&self, path: &str, token: Option<&str>) -> Value {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200, "GET {path}");
        res.json().await.unwrap()
    }
}

/// Starts a `rejoin serve --listen 127.0.0.1:0 …` command and waits for the
/// address it prints first.
pub async fn start_binary(mut cmd: tokio::process::Command) -> (tokio::process::Child, SocketAddr) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("the server starts")
        .unwrap()
        .expect("the address line");
    let addr = line.rsplit("http://").next().unwrap().parse().unwrap();
    (child, addr)
}

impl TestApp {
    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let res = self.http.get(self.url("/metrics")).send().await.unwrap();
        res.text().await.unwrap()
    }

    /// GETs `path` with a bearer token.
    pub async fn get_as(&self, path: &str, token: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// POSTs `body` as JSON to `path` with a bearer token.
    pub async fn post_as(&self, path: &str, token: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }
}

// ---- Helpers for servers started as processes (by address) ----

/// Starts `rejoin serve` on port 0 over `database_url`, with the test secret
/// and `extra` flags, and waits for the address it prints.
pub async fn serve_binary(
    database_url: &str,
    extra: &[&str],
) -> (tokio::process::Child, SocketAddr) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rejoin"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--jwt-secret", SECRET])
        .args(["--database-url", database_url])
        .args(extra);
    start_binary(cmd).await
}

/// A token for `role` (and `job`) signed with the test secret.
pub fn token_for(role: &str, job: Option<Uuid>) -> String {
    mint(
        &json!({"sub": "t", "role": role, "job": job, "exp": chrono::Utc::now().timestamp() + 600}),
    )
}

/// Creates a job on the server at `addr`.
pub async fn create_job_at(http: &reqwest::Client, addr: SocketAddr) -> Uuid {
    let res = http
        .post(format!("http://{addr}/v1/jobs"))
        .bearer_auth(token_for("service", None))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    res.json::<Value>().await.unwrap()["jobId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Appends progress `p` to `job` on the server at `addr`; its seq.
pub async fn progress_at(http: &reqwest::Client, addr: SocketAddr, job: Uuid, p: f64) -> i64 {
    let res = http
        .post(format!("http://{addr}/v1/jobs/{job}/events"))
        .bearer_auth(token_for("service", None))
        .json(&json!({"type": "progress", "progress": p}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    res.json::<Value>().await.unwrap()["seq"].as_i64().unwrap()
}

/// The value of the `/metrics` line that starts with `line_start` (a name
/// with its labels and the space after them) on the server at `addr`.
pub async fn metric_at(http: &reqwest::Client, addr: SocketAddr, line_start: &str) -> f64 {
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{line_start}` in /metrics:\n{text}"))
}

/// Stops a server process with SIGTERM (a graceful stop) and waits for its
/// exit, which must be 0.
pub async fn terminate(child: &mut tokio::process::Child) {
    let pid = child.id().expect("the server is running");
    // SAFETY: sends a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("the server exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}
