//! Fresh databases for test servers, and direct access to what the API
//! cannot do (read rows, tamper with them, hold the write lock).

use std::path::Path;

use serde_json::Value;
use uuid::Uuid;

/// A fresh database: a SQLite file in `dir`, or, with
/// `REJOIN_TEST_POSTGRES_URL` set, a schema of its own on that server.
pub async fn fresh_database(dir: &Path) -> String {
    let Ok(server) = std::env::var("REJOIN_TEST_POSTGRES_URL") else {
        return format!("sqlite://{}", dir.join("rejoin.db").display());
    };
    rejoin::log::postgres::fresh_schema(&server, "t")
        .await
        .expect("REJOIN_TEST_POSTGRES_URL answers")
}

/// A direct connection to a test database.
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

/// Rows in the events table of the log at `url`.
pub async fn count_events(url: &str) -> i64 {
    let mut db = Db::connect(url).await;
    let n = db.scalar("SELECT count(*) FROM events").await;
    db.close().await;
    n
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
    rejoin::log::for_each_job_event(store.events.as_ref(), &job.to_string(), i64::MAX, |e| {
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
    store.events.close().await;
    out
}
