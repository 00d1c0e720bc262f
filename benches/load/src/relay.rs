//! The durable floor: a bare relay that does what rejoin must and nothing
//! else. It takes the same POSTs, commits each event to a database (SQLite in
//! WAL mode with `synchronous=FULL`, or PostgreSQL with its default
//! `synchronous_commit`; a unique `(job_id, seq)` index; group commit: whatever
//! is queued goes in one transaction) and only then pushes it to the sockets
//! watching its job and answers the POST. No tokens, no fold, no hash chain,
//! no checkpoints, no job index: what is left is the database, the disk and
//! the sockets.
//!
//! `rejoin-bench` runs it as its own process for the socket scenarios
//! (`rejoin-bench relay-server DB`) and in its own process for the appends
//! ([`Relay::append`], [`Relay::router`]), beside rejoin under the same load,
//! so every figure can say what the disk costs and what rejoin adds. Its
//! writer keeps the same figures rejoin's `/metrics` gives (`GET /stats`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Most events in one transaction.
const MAX_BATCH: usize = 1024;

/// A commit slower than this counts as slow (the figure the benchmarks
/// report for rejoin too).
pub const SLOW_COMMIT: Duration = Duration::from_millis(25);

type Watchers = Arc<Mutex<HashMap<Uuid, Vec<mpsc::UnboundedSender<String>>>>>;
type Append = (Uuid, Value, oneshot::Sender<i64>);
/// A committed event: its job, seq and the text pushed to the sockets.
type Row = (Uuid, i64, String);

/// The relay: a queue to its writer and the sockets it pushes to.
#[derive(Clone)]
pub struct Relay {
    appends: mpsc::Sender<Append>,
    watchers: Watchers,
    stats: Arc<WriterStats>,
}

/// What the writer has done so far: the same figures as rejoin's
/// `rejoin_commit_seconds` and `rejoin_append_batch_size`.
#[derive(Default)]
pub struct WriterStats {
    commits: AtomicU64,
    events: AtomicU64,
    commit_nanos: AtomicU64,
    slow: AtomicU64,
}

impl WriterStats {
    fn record(&self, events: usize, took: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(events as u64, Ordering::Relaxed);
        self.commit_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        if took > SLOW_COMMIT {
            self.slow.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn json(&self) -> Value {
        json!({
            "commits": self.commits.load(Ordering::Relaxed),
            "events": self.events.load(Ordering::Relaxed),
            "commitSeconds": self.commit_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            "slowCommits": self.slow.load(Ordering::Relaxed),
        })
    }
}

/// Where the relay keeps its events.
enum Store {
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
    Postgres(sqlx::PgPool),
}

impl Store {
    /// `db`: a `postgres://` URL, or a SQLite file (path or `sqlite://` URL).
    async fn open(db: &str) -> anyhow::Result<Store> {
        if db.starts_with("postgres://") || db.starts_with("postgresql://") {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect(db)
                .await?;
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS events (
                     position BIGSERIAL PRIMARY KEY,
                     job_id TEXT NOT NULL,
                     seq BIGINT NOT NULL,
                     payload TEXT NOT NULL,
                     UNIQUE (job_id, seq)
                 )",
            )
            .execute(&pool)
            .await?;
            return Ok(Store::Postgres(pool));
        }
        let path = db.strip_prefix("sqlite://").unwrap_or(db);
        let conn = rusqlite::Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS events (
                 position INTEGER PRIMARY KEY,
                 job_id TEXT NOT NULL,
                 seq INTEGER NOT NULL,
                 payload TEXT NOT NULL,
                 UNIQUE (job_id, seq)
             );",
        )?;
        Ok(Store::Sqlite(Arc::new(Mutex::new(conn))))
    }

    /// Commits `rows` in one transaction and gives them back.
    async fn commit(&self, rows: Vec<Row>) -> anyhow::Result<Vec<Row>> {
        match self {
            Store::Sqlite(conn) => {
                let conn = conn.clone();
                tokio::task::spawn_blocking(move || {
                    let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                    let tx = conn.transaction()?;
                    {
                        let mut insert = tx.prepare_cached(
                            "INSERT INTO events (job_id, seq, payload) VALUES (?1, ?2, ?3)",
                        )?;
                        for (job, seq, payload) in &rows {
                            insert.execute((job.to_string(), seq, payload))?;
                        }
                    }
                    tx.commit()?;
                    Ok(rows)
                })
                .await?
            }
            Store::Postgres(pool) => {
                let jobs: Vec<String> = rows.iter().map(|r| r.0.to_string()).collect();
                let seqs: Vec<i64> = rows.iter().map(|r| r.1).collect();
                let payloads: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
                // One statement in an implicit transaction: one commit.
                sqlx::query(
                    "INSERT INTO events (job_id, seq, payload)
                     SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[])",
                )
                .bind(&jobs)
                .bind(&seqs)
                .bind(&payloads)
                .execute(pool)
                .await?;
                Ok(rows)
            }
        }
    }
}

impl Relay {
    /// Opens the relay's database and starts its writer.
    pub async fn open(db: &str) -> anyhow::Result<Relay> {
        let store = Store::open(db).await?;
        let (appends, queue) = mpsc::channel(8192);
        let relay = Relay {
            appends,
            watchers: Arc::default(),
            stats: Arc::default(),
        };
        tokio::spawn(write(
            store,
            queue,
            relay.watchers.clone(),
            relay.stats.clone(),
        ));
        Ok(relay)
    }

    /// Appends one event to `job`; its seq once it is committed.
    pub async fn append(&self, job: Uuid, body: Value) -> anyhow::Result<i64> {
        let (answer, seq) = oneshot::channel();
        self.appends
            .send((job, body, answer))
            .await
            .map_err(|_| anyhow::anyhow!("the relay's writer stopped"))?;
        Ok(seq.await?)
    }

    /// The relay's HTTP face: the job API's create and append, its socket,
    /// and its writer's figures.
    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/jobs", post(create_job))
            .route("/v1/jobs/{job}/events", post(append))
            .route("/ws/progress", get(watch))
            .route("/stats", get(stats))
            .with_state(self)
    }
}

/// Serves the relay over the database `db` on a free loopback port,
/// printing its address first, until killed.
pub async fn serve(db: &str) -> anyhow::Result<()> {
    let app = Relay::open(db).await?.router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("relay listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// The writer: takes whatever is queued, commits it in one transaction,
/// then pushes each event to its job's sockets and answers its POST. A
/// failed commit stops the relay (it is a measuring stick, not a server).
async fn write(
    store: Store,
    mut queue: mpsc::Receiver<Append>,
    watchers: Watchers,
    stats: Arc<WriterStats>,
) {
    let mut seqs: HashMap<Uuid, i64> = HashMap::new();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut rows = Vec::with_capacity(batch.len());
        let mut answers = Vec::with_capacity(batch.len());
        for (job, mut body, answer) in batch.drain(..) {
            let seq = seqs.entry(job).or_default();
            *seq += 1;
            body["seq"] = json!(*seq);
            rows.push((job, *seq, body.to_string()));
            answers.push(answer);
        }
        let started = Instant::now();
        let rows = match store.commit(rows).await {
            Ok(rows) => rows,
            Err(e) => {
                eprintln!("relay: commit failed: {e:#}");
                std::process::exit(1);
            }
        };
        stats.record(rows.len(), started.elapsed());
        let mut watching = watchers.lock().unwrap_or_else(|p| p.into_inner());
        for ((job, seq, payload), answer) in rows.into_iter().zip(answers) {
            if let Some(sockets) = watching.get_mut(&job) {
                sockets.retain(|s| s.send(payload.clone()).is_ok());
            }
            let _ = answer.send(seq);
        }
    }
}

async fn create_job() -> impl IntoResponse {
    (StatusCode::CREATED, Json(json!({"jobId": Uuid::new_v4()})))
}

async fn append(
    State(relay): State<Relay>,
    Path(job): Path<Uuid>,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    match relay.append(job, body).await {
        Ok(seq) => (StatusCode::CREATED, Json(json!({"jobId": job, "seq": seq}))).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({}))).into_response(),
    }
}

async fn stats(State(relay): State<Relay>) -> Json<Value> {
    Json(relay.stats.json())
}

async fn watch(
    State(relay): State<Relay>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> impl IntoResponse {
    let job: Option<Uuid> = query.get("jobId").and_then(|j| j.parse().ok());
    let Some(job) = job else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    upgrade.on_upgrade(move |socket| push(socket, job, relay.watchers))
}

/// Sends a socket its job's committed events until either side closes.
async fn push(mut socket: WebSocket, job: Uuid, watchers: Watchers) {
    let (tx, mut events) = mpsc::unbounded_channel();
    watchers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(job)
        .or_default()
        .push(tx);
    let hello = json!({"type": "connected", "jobId": job}).to_string();
    if socket.send(Message::Text(hello.into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(text) => {
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}
