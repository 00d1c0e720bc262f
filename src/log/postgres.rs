//! The PostgreSQL backend, for several nodes sharing one log.
//!
//! Every append is one transaction that first takes a transaction-scoped
//! advisory lock: appends from all nodes are serialised, so positions commit
//! in the order they were assigned and a reader paging by position never
//! skips a row that commits late. The transaction ends with a `NOTIFY` on
//! [`CHANNEL`] carrying the last position, delivered at commit, which wakes
//! the other nodes' tails. A commit is durable before `append` returns: the
//! store refuses to open on a server with `fsync` or `synchronous_commit` off.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row};

use super::{AppendListener, EventRow, LogStore, StoreError};

/// The channel `append` notifies with the last position it committed.
pub const CHANNEL: &str = "rejoin_log";

/// The advisory lock key appends hold (any constant; "rejoin" in ASCII).
pub const APPEND_LOCK: i64 = 0x72_65_6a_6f_69_6e;

const ROWS_PER_STATEMENT: usize = 1000;

const COLUMNS: &str =
    "position, job_id, seq, session_id, kind, schema_version, payload, idempotency_key, at, hash";

pub struct PostgresStore {
    pool: PgPool,
    options: PgConnectOptions,
}

pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The URL without its password, for messages.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}")
        }
        None => url.to_owned(),
    }
}

impl PostgresStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let shown = redacted(url);
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::Open(format!("bad PostgreSQL URL {shown}: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(|e| StoreError::Open(format!("{shown}: {e}")))?;
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Open(format!("migrating {shown}: {e}")))?;
        for (setting, allowed) in [
            ("fsync", &["on"][..]),
            (
                "synchronous_commit",
                &["on", "remote_write", "remote_apply"][..],
            ),
        ] {
            let value: String = sqlx::query_scalar(&format!("SHOW {setting}"))
                .fetch_one(&pool)
                .await
                .map_err(|e| StoreError::Open(format!("{shown}: {e}")))?;
            if !allowed.contains(&value.as_str()) {
                return Err(StoreError::Open(format!(
                    "{shown}: {setting} is `{value}`; acknowledged events would not be durable"
                )));
            }
        }
        Ok(PostgresStore { pool, options })
    }

    /// Connection options, for a dedicated `LISTEN` connection.
    pub fn connect_options(&self) -> &PgConnectOptions {
        &self.options
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn fetch_rows(
        &self,
        query: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<EventRow>, StoreError> {
        query
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?
            .iter()
            .map(to_row)
            .collect::<Result<_, _>>()
            .map_err(classify)
    }
}

fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(db.message().to_owned())
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

fn to_row(r: &sqlx::postgres::PgRow) -> Result<EventRow, sqlx::Error> {
    Ok(EventRow {
        position: r.try_get(0)?,
        job_id: r.try_get(1)?,
        seq: r.try_get(2)?,
        session_id: r.try_get(3)?,
        kind: r.try_get(4)?,
        schema_version: r.try_get(5)?,
        payload: r.try_get(6)?,
        idempotency_key: r.try_get(7)?,
        at: r.try_get(8)?,
        hash: r.try_get(9)?,
    })
}

#[async_trait]
impl LogStore for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn epoch(&self) -> Result<String, StoreError> {
        sqlx::query_scalar("SELECT epoch FROM log_meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(classify)
    }

    async fn append(&self, rows: &[EventRow]) -> Result<Vec<i64>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(APPEND_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        let mut positions = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut insert = super::insert_events::<Postgres>(chunk);
            let returned = insert.build().fetch_all(&mut *tx).await.map_err(classify)?;
            // Identity values are drawn in VALUES order; RETURNING's order is
            // not promised, so sort.
            let mut chunk_positions: Vec<i64> = returned
                .iter()
                .map(|r| r.try_get::<i64, _>(0))
                .collect::<Result<_, _>>()
                .map_err(classify)?;
            chunk_positions.sort_unstable();
            positions.extend(chunk_positions);
        }
        if let Some(last) = positions.last() {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(last.to_string())
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
        }
        tx.commit().await.map_err(classify)?;
        Ok(positions)
    }

    async fn read_log(&self, after: i64, limit: u32) -> Result<Vec<EventRow>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2");
        self.fetch_rows(sqlx::query(&sql).bind(after).bind(i64::from(limit)))
            .await
    }

    async fn read_job(
        &self,
        job_id: &str,
        after_seq: i64,
        through_seq: i64,
        limit: u32,
    ) -> Result<Vec<EventRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE job_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4"
        );
        let query = sqlx::query(&sql)
            .bind(job_id)
            .bind(after_seq)
            .bind(through_seq)
            .bind(i64::from(limit));
        self.fetch_rows(query).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(classify)
    }

    fn shared(&self) -> bool {
        true
    }

    async fn renew_lease(&self, node: &str, ttl: Duration) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO node_leases (node_id, lease_until) VALUES ($1, now() + make_interval(secs => $2))
             ON CONFLICT (node_id) DO UPDATE SET lease_until = EXCLUDED.lease_until",
        )
        .bind(node)
        .bind(ttl.as_secs_f64())
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(classify)
    }

    async fn live_nodes(&self) -> Result<Vec<String>, StoreError> {
        // Leases long gone are forgotten on the way.
        sqlx::query("DELETE FROM node_leases WHERE lease_until < now() - interval '1 day'")
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        sqlx::query_scalar("SELECT node_id FROM node_leases WHERE lease_until > now()")
            .fetch_all(&self.pool)
            .await
            .map_err(classify)
    }

    async fn end_lease(&self, node: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM node_leases WHERE node_id = $1")
            .bind(node)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(classify)
    }

    async fn listen(&self) -> Result<Option<Box<dyn AppendListener>>, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(classify)?;
        listener.listen(CHANNEL).await.map_err(classify)?;
        Ok(Some(Box::new(Listener(listener))))
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

struct Listener(PgListener);

#[async_trait]
impl AppendListener for Listener {
    async fn next(&mut self) -> Result<(), StoreError> {
        self.0.recv().await.map(|_| ()).map_err(classify)
    }
}
