//! The PostgreSQL backend, for several nodes sharing one log.
//!
//! Every append is one statement, and so one round trip and one transaction:
//! `rejoin_append` (migration 0003) takes a transaction-scoped advisory lock,
//! so appends from all nodes are serialised, positions commit in the order
//! they were assigned and a reader paging by position never skips a row that
//! commits late; inserts the rows; and sends a `NOTIFY` on [`CHANNEL`]
//! carrying the last position, delivered at commit, which wakes the other
//! nodes' followers. A commit is durable before `append` returns: the
//! store refuses to open on a server with `fsync` or `synchronous_commit` off.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder, Row};

use super::job_index::{push_filter, upsert, IndexRow, JobFilter, SCHEMA as JOB_INDEX_SCHEMA};
use super::retention::{self, record_row, still_ends};
use super::store::{
    classify, AppendListener, CheckpointHeader, CheckpointRow, Checkpoints, Ending, EventLog,
    EventRow, JobIndex, JobSpan, LogSize, Membership, Removed, Retention, StoreError,
    LIST_CHECKPOINTS, PAGE_BYTES,
};
use crate::domain::event::{RemovedUnit, LOG_CHAIN};

/// The channel `append` notifies with the last position it committed.
pub const CHANNEL: &str = "rejoin_log";

/// The advisory lock key appends hold (any constant; "rejoin" in ASCII).
pub const APPEND_LOCK: i64 = 0x72_65_6a_6f_69_6e;

const COLUMNS: &str =
    "position, job_id, seq, session_id, kind, schema_version, payload, idempotency_key, at, hash";

pub struct PostgresStore {
    pool: PgPool,
}

pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Creates a schema named `prefix_<random>` on the server at `url` and
/// returns a URL whose connections use it (`search_path`): a fresh, separate
/// log on a shared server, for tests and benchmarks.
pub async fn fresh_schema(url: &str, prefix: &str) -> Result<String, StoreError> {
    use sqlx::Connection;
    let schema = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let open = |e: sqlx::Error| StoreError::Open(format!("{}: {e}", redacted(url)));
    let mut conn = sqlx::PgConnection::connect(url).await.map_err(open)?;
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
        .map_err(open)?;
    conn.close().await.map_err(open)?;
    let sep = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{sep}options=-c%20search_path%3D{schema}"))
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

/// How long a request waits for a connection before the store answers
/// `Unavailable` (503 over HTTP): while the database is unreachable, appends
/// fail this fast, and the pool reconnects by itself once it is back.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

impl PostgresStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let shown = redacted(url);
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::Open(format!("bad PostgreSQL URL {shown}: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Open(format!("{shown}: {e}")))?;
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Open(format!("migrating {shown}: {e}")))?;
        ensure_job_index(&pool)
            .await
            .map_err(|e| StoreError::Open(format!("job index in {shown}: {e}")))?;
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
        Ok(PostgresStore { pool })
    }

    async fn fetch_rows(
        &self,
        query: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<EventRow>, StoreError> {
        use futures_util::TryStreamExt;
        // Row by row, up to the one that takes the page past PAGE_BYTES of
        // payload: a page of large events stops early.
        let mut rows = query.fetch(&self.pool);
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        while let Some(r) = rows.try_next().await.map_err(classify)? {
            let r = to_row(&r).map_err(classify)?;
            bytes += r.payload.len();
            out.push(r);
            if bytes >= PAGE_BYTES {
                break;
            }
        }
        Ok(out)
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
impl EventLog for PostgresStore {
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
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // One statement, so one round trip and its own transaction: the lock,
        // the insert and the notification are in `rejoin_append` (migration
        // 0003), which returns the positions in order.
        let text = |f: fn(&EventRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
        let positions: Vec<i64> = sqlx::query_scalar(
            "SELECT * FROM rejoin_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(APPEND_LOCK)
        .bind(text(|r| &r.job_id))
        .bind(rows.iter().map(|r| r.seq).collect::<Vec<i64>>())
        .bind(
            rows.iter()
                .map(|r| r.session_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(text(|r| &r.kind))
        .bind(rows.iter().map(|r| r.schema_version).collect::<Vec<i32>>())
        .bind(text(|r| &r.payload))
        .bind(
            rows.iter()
                .map(|r| r.idempotency_key.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(text(|r| &r.at))
        .bind(text(|r| &r.hash))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        if positions.len() != rows.len() {
            return Err(StoreError::Unavailable(format!(
                "appended {} rows but got {} positions back",
                rows.len(),
                positions.len()
            )));
        }
        Ok(positions)
    }

    async fn read_log(&self, after: i64, limit: u32) -> Result<Vec<EventRow>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2");
        self.fetch_rows(sqlx::query(&sql).bind(after).bind(i64::from(limit)))
            .await
    }

    async fn read_job(&self, span: JobSpan<'_>, limit: u32) -> Result<Vec<EventRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE job_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4"
        );
        let query = sqlx::query(&sql)
            .bind(span.job_id)
            .bind(span.after_seq)
            .bind(span.through_seq)
            .bind(i64::from(limit));
        self.fetch_rows(query).await
    }

    async fn find_keyed(&self, job_id: &str, keys: &[&str]) -> Result<Vec<EventRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE job_id = $1 AND idempotency_key = ANY($2) ORDER BY seq"
        );
        self.fetch_rows(sqlx::query(&sql).bind(job_id).bind(keys))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(classify)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl Checkpoints for PostgresStore {
    async fn checkpoints(&self) -> Result<Vec<CheckpointHeader>, StoreError> {
        let rows: Vec<CheckpointRow> = sqlx::query_as(LIST_CHECKPOINTS)
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        Ok(rows.into_iter().map(CheckpointHeader::from).collect())
    }

    async fn checkpoint_parts(&self, id: &str) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT body FROM checkpoint_parts WHERE checkpoint_id = $1 ORDER BY part",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)
    }

    async fn write_checkpoint_part(
        &self,
        id: &str,
        part: i32,
        body: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO checkpoint_parts (checkpoint_id, part, body) VALUES ($1, $2, $3)
             ON CONFLICT (checkpoint_id, part) DO UPDATE SET body = EXCLUDED.body",
        )
        .bind(id)
        .bind(part)
        .bind(body)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(classify)
    }

    async fn write_checkpoint_header(&self, h: &CheckpointHeader) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO checkpoints
             (id, position, position_hash, epoch, fold_version, created_at, jobs, parts, digest)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&h.id)
        .bind(h.position)
        .bind(&h.position_hash)
        .bind(&h.epoch)
        .bind(h.fold_version)
        .bind(&h.created_at)
        .bind(h.jobs)
        .bind(h.parts)
        .bind(&h.digest)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(classify)
    }

    async fn delete_checkpoints_except(&self, keep: &[&str]) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM checkpoints WHERE NOT (id = ANY($1))")
            .bind(keep)
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        sqlx::query(
            "DELETE FROM checkpoint_parts WHERE checkpoint_id NOT IN (SELECT id FROM checkpoints)",
        )
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(classify)
    }
}

#[async_trait]
impl JobIndex for PostgresStore {
    async fn job_index_position(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT position FROM job_index_position WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(classify)
    }

    async fn job_index_rows(&self, job_ids: &[String]) -> Result<Vec<IndexRow>, StoreError> {
        sqlx::query_as("SELECT * FROM job_index WHERE job_id = ANY($1)")
            .bind(job_ids)
            .fetch_all(&self.pool)
            .await
            .map_err(classify)
    }

    async fn write_job_index(
        &self,
        rows: &[IndexRow],
        from: i64,
        through: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        // Nodes index the same log: the position row decides who wrote
        // which stretch (a node that lost the race writes nothing).
        let moved = sqlx::query(
            "UPDATE job_index_position SET position = $1 WHERE id = 1 AND position = $2",
        )
        .bind(through)
        .bind(from)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        if moved.rows_affected() == 0 {
            return Ok(false);
        }
        for chunk in rows.chunks(100) {
            upsert::<Postgres>(chunk)
                .build()
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
        }
        tx.commit().await.map_err(classify)?;
        Ok(true)
    }

    async fn find_jobs(&self, filter: &JobFilter) -> Result<Vec<IndexRow>, StoreError> {
        let mut q = QueryBuilder::<Postgres>::new("SELECT * FROM job_index WHERE true");
        push_filter(&mut q, filter, |q, key, value| {
            q.push("(metadata::jsonb ->> ")
                .push_bind(key)
                .push(") = ")
                .push_bind(value);
        });
        q.build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(classify)
    }
}

#[async_trait]
impl Membership for PostgresStore {
    async fn take_lease(&self, node: &str, ttl: Duration) -> Result<DateTime<Utc>, StoreError> {
        sqlx::query_scalar(
            "INSERT INTO node_leases (node_id, lease_until) VALUES ($1, now() + make_interval(secs => $2))
             RETURNING (extract(epoch FROM now()) * 1000000)::bigint",
        )
        .bind(node)
        .bind(ttl.as_secs_f64())
        .fetch_one(&self.pool)
        .await
        .map(from_micros)
        .map_err(classify)
    }

    async fn renew_lease(
        &self,
        node: &str,
        ttl: Duration,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        sqlx::query_scalar(
            "UPDATE node_leases SET lease_until = now() + make_interval(secs => $2)
             WHERE node_id = $1 AND lease_until > now()
             RETURNING (extract(epoch FROM now()) * 1000000)::bigint",
        )
        .bind(node)
        .bind(ttl.as_secs_f64())
        .fetch_optional(&self.pool)
        .await
        .map(|t| t.map(from_micros))
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

    async fn positions_after(&self, after: i64, limit: u32) -> Result<Vec<i64>, StoreError> {
        sqlx::query_scalar(
            "SELECT position FROM events WHERE position > $1 ORDER BY position LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)
    }

    async fn listen(&self) -> Result<Option<Box<dyn AppendListener>>, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(classify)?;
        listener.listen(CHANNEL).await.map_err(classify)?;
        Ok(Some(Box::new(Listener(listener))))
    }
}

/// Serialises nodes creating the job index at the same moment.
const INDEX_LOCK: i64 = 0x726a_6978; // "rjix"

/// Creates the job index if it is missing; a missing one (new, or dropped)
/// is folded again from the start of the log.
/// Creates the job index's tables if needed. Its DDL and the position row
/// can deadlock with a running node's indexer (PostgreSQL then aborts one
/// side): a start retries rather than failing.
async fn ensure_job_index(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut attempt = 0;
    loop {
        match try_ensure_job_index(pool).await {
            Err(sqlx::Error::Database(e))
                if attempt < 10 && matches!(e.code().as_deref(), Some("40P01" | "40001")) =>
            {
                attempt += 1;
                tracing::debug!(attempt, error = %e, "job index setup retried");
                tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
            }
            other => return other,
        }
    }
}

async fn try_ensure_job_index(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(INDEX_LOCK)
        .execute(&mut *tx)
        .await?;
    let existed: bool = sqlx::query_scalar("SELECT to_regclass('job_index') IS NOT NULL")
        .fetch_one(&mut *tx)
        .await?;
    for statement in JOB_INDEX_SCHEMA {
        sqlx::query(&statement.replace("{real}", "DOUBLE PRECISION"))
            .execute(&mut *tx)
            .await?;
    }
    let reset = if existed {
        "INSERT INTO job_index_position (id, position) VALUES (1, 0) ON CONFLICT (id) DO NOTHING"
    } else {
        "INSERT INTO job_index_position (id, position) VALUES (1, 0)
         ON CONFLICT (id) DO UPDATE SET position = 0"
    };
    sqlx::query(reset).execute(&mut *tx).await?;
    tx.commit().await
}

/// The database's clock, read as microseconds since the Unix epoch.
fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

struct Listener(PgListener);

#[async_trait]
impl AppendListener for Listener {
    async fn next(&mut self) -> Result<(), StoreError> {
        self.0.recv().await.map(|_| ()).map_err(classify)
    }
}

#[async_trait]
impl Retention for PostgresStore {
    async fn endings(&self, after: i64, limit: u32) -> Result<Vec<Ending>, StoreError> {
        sqlx::query_as(retention::ENDINGS)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)
    }

    async fn remove(
        &self,
        units: &[RemovedUnit],
        archive: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<EventRow, StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        // Serialised with every node's appends: the units' heads checked
        // below cannot move before the commit.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(APPEND_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        let mut head = async |id: String| -> Result<Option<(i64, String, i64)>, StoreError> {
            sqlx::query_as(retention::HEAD)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify)
        };
        for unit in units {
            still_ends(unit, head(unit.id.to_string()).await?)?;
        }
        let prev = head(LOG_CHAIN.to_string()).await?;
        let mut record = record_row(prev.map(|(seq, hash, _)| (seq, hash)), units, archive, at);
        record.position = sqlx::query_scalar(
            "INSERT INTO events (job_id, seq, session_id, kind, schema_version, payload, idempotency_key, at, hash)
             VALUES ($1, $2, NULL, $3, $4, $5, NULL, $6, $7) RETURNING position",
        )
        .bind(&record.job_id)
        .bind(record.seq)
        .bind(&record.kind)
        .bind(record.schema_version)
        .bind(&record.payload)
        .bind(&record.at)
        .bind(&record.hash)
        .fetch_one(&mut *tx)
        .await
        .map_err(classify)?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(record.position.to_string())
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        retention::forget_units::<Postgres>(&mut *tx, units, record.position)
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(record)
    }

    async fn removed_job(&self, id: &str) -> Result<Option<Removed>, StoreError> {
        sqlx::query_as(retention::REMOVED_JOB)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)
    }

    async fn is_removed(&self, id: &str, last_position: i64) -> Result<bool, StoreError> {
        sqlx::query_scalar(retention::IS_REMOVED)
            .bind(id)
            .bind(last_position)
            .fetch_one(&self.pool)
            .await
            .map_err(classify)
    }

    async fn horizon(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar(retention::HORIZON)
            .fetch_one(&self.pool)
            .await
            .map_err(classify)
    }

    async fn size(&self) -> Result<LogSize, StoreError> {
        let bytes: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('events')")
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        Ok(LogSize {
            bytes: bytes.max(0) as u64,
            free_bytes: 0,
        })
    }
}
