//! A server in this process, on port 0: [`InProcess`] from a full
//! `rejoin serve` command line, and [`TestApp`], the tests' server over a
//! fresh database with typed helpers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rejoin::app::Application;
use rejoin::auth::Role;
use rejoin::clock::{Clock, ManualClock};
use rejoin::config::ServeArgs;
use rejoin::engine::Engine;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::db::{count_events, events_of, fresh_database, LoggedEvent};
use crate::process::serve_args;
use crate::socket::{ws_connect, Ws};
use crate::tokens::{token_for, SECRET};

/// Logs go to stderr only when `TEST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("rejoin=debug,info")
            .with_test_writer()
            .try_init();
    }
}

/// A server running in this process until stopped (or dropped).
pub struct InProcess {
    pub addr: SocketAddr,
    pub engine: Engine,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl InProcess {
    /// Builds and runs the server from `rejoin serve`'s arguments (without
    /// the program and subcommand names).
    pub async fn start(args: &[String]) -> anyhow::Result<InProcess> {
        Self::start_on(args, None).await
    }

    /// The same, on `clock` when given (else the system's).
    pub async fn start_on(
        args: &[String],
        clock: Option<Arc<dyn Clock>>,
    ) -> anyhow::Result<InProcess> {
        init_logs();
        let args = ServeArgs::from_args(args)?;
        let app = match clock {
            Some(clock) => Application::build_with_clock(args, clock).await?,
            None => Application::build(args).await?,
        };
        let addr = app.local_addr();
        let engine = app.engine().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run(async {
            let _ = stopped.await;
        }));
        Ok(InProcess {
            addr,
            engine,
            stop: Some(stop),
            handle: Some(handle),
        })
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await??;
        }
        Ok(())
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A server with a key setup of its own (`jwt`, e.g. `["--jwt-algorithm",
/// "RS256", "--jwt-public-key", PATH]`) over a SQLite file in `dir`.
pub struct KeyedServer;

impl KeyedServer {
    pub async fn start(dir: &Path, jwt: &[&str]) -> InProcess {
        let db = format!("sqlite://{}", dir.join("keyed.db").display());
        let mut args: Vec<String> = ["--listen", "127.0.0.1:0", "--database-url", &db]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(jwt.iter().map(|s| s.to_string()));
        InProcess::start(&args).await.expect("the server starts")
    }
}

/// The tests' server: signed with [`SECRET`], over a fresh database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub dir: Arc<tempfile::TempDir>,
    /// The database URL the server was started on.
    pub database_url: String,
    pub engine: Engine,
    pub extra_args: Vec<String>,
    server: InProcess,
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

/// Starts a server on a clock the test moves: its windows (grace, stall,
/// timeout, retries) pass when the test advances `clock`, not before.
pub async fn spawn_on_clock(extra: &[&str], clock: Arc<ManualClock>) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let db = fresh_database(dir.path()).await;
    let extra = extra.iter().map(|s| s.to_string()).collect();
    start_app(dir, db, extra, Some(clock)).await
}

/// Starts a server on the database at `db`.
pub async fn spawn_on(dir: Arc<tempfile::TempDir>, db: String, extra: Vec<String>) -> TestApp {
    start_app(dir, db, extra, None).await
}

async fn start_app(
    dir: Arc<tempfile::TempDir>,
    db: String,
    extra: Vec<String>,
    clock: Option<Arc<ManualClock>>,
) -> TestApp {
    let extra_refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut args = serve_args("127.0.0.1:0", &db, SECRET, &extra_refs);
    args.remove(0); // "serve"
                    // The tests' servers keep the per-address limit on (its default), as
                    // users run it; `serve_args` turns it off for load.
    let limit = args
        .iter()
        .position(|a| a == "--connect-rate-per-ip")
        .unwrap();
    args.drain(limit..limit + 2);
    let clock = clock.map(|c| c as Arc<dyn Clock>);
    let server = InProcess::start_on(&args, clock)
        .await
        .expect("server builds");
    TestApp {
        addr: server.addr,
        http: reqwest::Client::new(),
        dir,
        database_url: db,
        engine: server.engine.clone(),
        extra_args: extra,
        server,
    }
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
        token_for(role.as_str(), job)
    }

    pub fn service(&self) -> String {
        self.token(Role::Service, None)
    }

    pub async fn create_job(&self) -> Uuid {
        self.create_job_from(json!({})).await
    }

    /// Creates a job from `body` (metadata, windows, …); 201 and its id.
    pub async fn create_job_from(&self, body: Value) -> Uuid {
        crate::client::create_job_from(&self.http, self.addr, &body).await
    }

    pub async fn post_event(&self, job: Uuid, event: Value) -> reqwest::Response {
        self.post_as(&format!("/v1/jobs/{job}/events"), &self.service(), &event)
            .await
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
        self.get_json(&format!("/v1/jobs/{job}"), Some(&self.service()))
            .await
    }

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

    /// Posts 32 KiB progress events to `job` (at most 4,000) until `done`
    /// holds for the job's state, checked after each: what it takes to fill
    /// a socket that does not read. Returns the seqs posted.
    pub async fn post_large_until(&self, job: Uuid, done: impl Fn(&Value) -> bool) -> Vec<i64> {
        let blob = "x".repeat(32 * 1024);
        let mut posted = Vec::new();
        for i in 0..4000 {
            let event =
                json!({"type": "progress", "progress": (i % 100) as f64, "data": {"blob": blob}});
            let res = self.post_event(job, event).await;
            assert_eq!(res.status(), 201);
            posted.push(res.json::<Value>().await.unwrap()["seq"].as_i64().unwrap());
            if done(&self.get_job(job).await) {
                break;
            }
        }
        posted
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let res = self.http.get(self.url("/metrics")).send().await.unwrap();
        res.text().await.unwrap()
    }

    /// Rows in the events table, read straight from the database.
    pub async fn count_events(&self) -> i64 {
        count_events(&self.database_url).await
    }

    /// The job's events of one kind, from the database.
    pub async fn events_of(&self, job: Uuid, kind: &str) -> Vec<LoggedEvent> {
        events_of(&self.database_url, job, kind).await
    }

    /// Opens `/ws/progress?{query}`.
    pub async fn ws(&self, query: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
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
        crate::wait::eventually(what, || async {
            Some(self.get_job(job).await).filter(|state| check(state))
        })
        .await
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(&mut self) {
        self.server.stop().await.expect("the server stops cleanly");
    }

    /// Stops this server and starts a new one on the same database.
    pub async fn restart(mut self) -> TestApp {
        self.stop().await;
        spawn_on(
            self.dir.clone(),
            self.database_url.clone(),
            self.extra_args.clone(),
        )
        .await
    }
}
