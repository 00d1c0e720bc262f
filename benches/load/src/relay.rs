//! The durable floor: a bare relay that does what rejoin must and nothing
//! else. It takes the same POSTs, commits each event to a SQLite database in
//! WAL mode (`synchronous=FULL`, a unique `(job_id, seq)` index, group commit:
//! whatever is queued goes in one transaction) and only then pushes it to the
//! sockets watching its job. No tokens, no fold, no hash chain, no
//! checkpoints, no job index: what is left is the disk and the sockets.
//! `rejoin-bench` runs it as its own process (`rejoin-bench relay-server
//! DB`), beside rejoin under the same load, so every figure can say what the
//! disk costs and what rejoin adds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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

type Watchers = Arc<Mutex<HashMap<Uuid, Vec<mpsc::UnboundedSender<String>>>>>;

#[derive(Clone)]
struct Relay {
    appends: mpsc::Sender<(Uuid, Value, oneshot::Sender<i64>)>,
    watchers: Watchers,
}

/// Serves the relay over the SQLite file at `db` on a free loopback port,
/// printing its address first, until killed.
pub async fn serve(db: &str) -> anyhow::Result<()> {
    let conn = rusqlite::Connection::open(db)?;
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
    let (appends, queue) = mpsc::channel(8192);
    let watchers: Watchers = Arc::default();
    let writer_watchers = watchers.clone();
    std::thread::spawn(move || write(conn, queue, &writer_watchers));
    let app = Router::new()
        .route("/v1/jobs", post(create_job))
        .route("/v1/jobs/{job}/events", post(append))
        .route("/ws/progress", get(watch))
        .with_state(Relay { appends, watchers });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("relay listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// The writer: takes whatever is queued, commits it in one transaction,
/// then pushes each event to its job's sockets and answers its POST.
fn write(
    mut conn: rusqlite::Connection,
    mut queue: mpsc::Receiver<(Uuid, Value, oneshot::Sender<i64>)>,
    watchers: &Watchers,
) -> rusqlite::Result<()> {
    let mut seqs: HashMap<Uuid, i64> = HashMap::new();
    while let Some(first) = queue.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let tx = conn.transaction()?;
        let mut committed = Vec::with_capacity(batch.len());
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO events (job_id, seq, payload) VALUES (?1, ?2, ?3)")?;
            for (job, mut body, answer) in batch {
                let seq = seqs.entry(job).or_default();
                *seq += 1;
                body["seq"] = json!(*seq);
                let payload = body.to_string();
                insert.execute((job.to_string(), *seq, &payload))?;
                committed.push((job, *seq, payload, answer));
            }
        }
        tx.commit()?;
        let mut watching = watchers.lock().unwrap_or_else(|p| p.into_inner());
        for (job, seq, payload, answer) in committed {
            if let Some(sockets) = watching.get_mut(&job) {
                sockets.retain(|s| s.send(payload.clone()).is_ok());
            }
            let _ = answer.send(seq);
        }
    }
    Ok(())
}

async fn create_job() -> impl IntoResponse {
    (StatusCode::CREATED, Json(json!({"jobId": Uuid::new_v4()})))
}

async fn append(
    State(relay): State<Relay>,
    Path(job): Path<Uuid>,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    let (answer, seq) = oneshot::channel();
    if relay.appends.send((job, body, answer)).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({}))).into_response();
    }
    match seq.await {
        Ok(seq) => (StatusCode::CREATED, Json(json!({"jobId": job, "seq": seq}))).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({}))).into_response(),
    }
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
