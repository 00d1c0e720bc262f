//! Shared test harness: a real server on a loopback port over a fresh SQLite
//! file, real HTTP clients, and helpers to mint and send tokens.
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
    pub engine: Engine,
    pub extra_args: Vec<String>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("rejoin.db")
    }

    pub fn db_url(&self) -> String {
        format!("sqlite://{}", self.db_path().display())
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

    /// Rows in the events table, read straight from the database file.
    pub async fn count_events(&self) -> i64 {
        count_events(&self.db_path()).await
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
        spawn_in(dir, extra).await
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

pub async fn count_events(db: &Path) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut conn)
        .await
        .unwrap()
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
    init_logs();
    let db = format!("sqlite://{}", dir.path().join("rejoin.db").display());
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
        engine,
        extra_args: extra,
        stop: Some(stop),
        handle: Some(handle),
    }
}
