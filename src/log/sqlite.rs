//! The SQLite backend: one embedded database file in WAL mode with
//! `synchronous=FULL`, so a committed transaction is on disk before `append`
//! returns.
//!
//! One dedicated connection writes (the engine's writer is the only caller of
//! `append`, so there is never a second writer to wait for); a small pool reads.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Sqlite};
use tokio::sync::Mutex;

use chrono::{DateTime, Utc};

use super::job_index::{push_filter, upsert, IndexRow, JobFilter, SCHEMA as JOB_INDEX_SCHEMA};
use super::retention::{self, record_row, still_ends};
use super::sqlite_scan::Scanner;
use super::store::{
    classify, CheckpointHeader, CheckpointRow, Checkpoints, Ending, EventLog, EventRow, JobIndex,
    JobSpan, LogSize, Removed, Retention, StoreError, LIST_CHECKPOINTS,
};
use crate::domain::event::{RemovedUnit, LOG_CHAIN};

/// Rows per INSERT statement: 9 bound parameters each, 9,216 in all, far
/// below SQLite's limit of 32,766. A batch of the writer (at most 1,024
/// events) is one statement.
const ROWS_PER_STATEMENT: usize = 1024;

pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<SqliteConnection>,
    readers: SqlitePool,
    /// Bulk reads of events (see `sqlite_scan.rs`).
    scanner: Scanner,
}

/// The file path a SQLite database URL names, if it names one.
pub fn database_path(url: &str) -> Option<PathBuf> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return None;
    }
    options(url).ok().map(|o| o.get_filename().to_path_buf())
}

fn options(url: &str) -> Result<SqliteConnectOptions, StoreError> {
    let base = if url.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Open(format!("bad SQLite URL `{url}`: {e}")))?
    } else {
        SqliteConnectOptions::new().filename(url)
    };
    Ok(base
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10)))
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database, then checks that
    /// the durability settings took effect.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let opts = options(url)?;
        let path = opts.get_filename().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Open(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }
        let open_err = |e: sqlx::Error| StoreError::Open(format!("{}: {e}", path.display()));
        let mut writer = SqliteConnection::connect_with(&opts)
            .await
            .map_err(open_err)?;
        sqlx::migrate!("migrations/sqlite")
            .run(&mut writer)
            .await
            .map_err(|e| StoreError::Open(format!("migrating {}: {e}", path.display())))?;
        check_durability(&mut writer, &path).await?;
        ensure_job_index(&mut writer)
            .await
            .map_err(|e| StoreError::Open(format!("job index in {}: {e}", path.display())))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(0)
            .connect_with(opts)
            .await
            .map_err(open_err)?;
        Ok(SqliteStore {
            scanner: Scanner::new(path.clone()),
            path,
            writer: Mutex::new(writer),
            readers,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens a write transaction on the writer's connection; [`finish`] ends it.
///
/// Plain `BEGIN`/`COMMIT`/`ROLLBACK` rather than sqlx's transaction type:
/// when a statement fails with a full disk SQLite may already have rolled
/// the transaction back itself, and the writer's connection must be left
/// with no transaction open whatever happened, or the next one would nest
/// inside it and never commit.
async fn begin(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .map(drop)
        .map_err(classify)
}

/// Commits what `body` wrote if it succeeded, else rolls it back (a
/// rollback SQLite already made is no error); the connection is left with
/// no transaction open.
async fn finish<T>(
    conn: &mut SqliteConnection,
    body: Result<T, StoreError>,
) -> Result<T, StoreError> {
    let committed = match body {
        Ok(value) => sqlx::query("COMMIT")
            .execute(&mut *conn)
            .await
            .map(|_| value)
            .map_err(classify),
        Err(e) => Err(e),
    };
    if committed.is_err() {
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    }
    committed
}

/// Inserts the rows (inside the caller's transaction, or as a transaction of
/// its own when they fit one statement); their positions, in order.
///
/// The positions come from the statement's last rowid, not from `RETURNING`:
/// the one writer inserts a statement's rows in VALUES order, each taking the
/// next position (`AUTOINCREMENT` never reuses one), so the rows of a
/// statement of `n` rows hold the `n` positions ending at the last.
async fn insert_rows(
    conn: &mut SqliteConnection,
    rows: &[EventRow],
) -> Result<Vec<i64>, StoreError> {
    let mut positions = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let done = insert_events(chunk)
            .build()
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
        let n = chunk.len() as i64;
        if done.rows_affected() != n as u64 {
            return Err(StoreError::Unavailable(format!(
                "inserted {} rows of {n}",
                done.rows_affected()
            )));
        }
        let last = done.last_insert_rowid();
        positions.extend(last - n + 1..=last);
    }
    Ok(positions)
}

/// The job index's position moved from `from` to `through` and its rows,
/// inside the caller's transaction; false when the position was not `from`.
async fn write_index_rows(
    conn: &mut SqliteConnection,
    rows: &[IndexRow],
    from: i64,
    through: i64,
) -> Result<bool, StoreError> {
    let moved =
        sqlx::query("UPDATE job_index_position SET position = ? WHERE id = 1 AND position = ?")
            .bind(through)
            .bind(from)
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
    if moved.rows_affected() == 0 {
        return Ok(false);
    }
    for chunk in rows.chunks(100) {
        upsert::<Sqlite>(chunk)
            .build()
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
    }
    Ok(true)
}

/// Creates the job index if it is missing; a missing one (new, or dropped)
/// is folded again from the start of the log.
async fn ensure_job_index(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let existed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'job_index'",
    )
    .fetch_one(&mut *conn)
    .await?;
    if existed == 1 {
        // Already there: a read, so that opening the log beside a running
        // server (`rejoin verify`, `history`, `jobs`) takes no write lock.
        let positioned: i64 =
            sqlx::query_scalar("SELECT count(*) FROM job_index_position WHERE id = 1")
                .fetch_one(&mut *conn)
                .await
                .unwrap_or(0);
        if positioned == 1 {
            return Ok(());
        }
    }
    for statement in JOB_INDEX_SCHEMA {
        sqlx::query(&statement.replace("{real}", "REAL"))
            .execute(&mut *conn)
            .await?;
    }
    let reset = if existed == 0 {
        "INSERT INTO job_index_position (id, position) VALUES (1, 0)
         ON CONFLICT (id) DO UPDATE SET position = 0"
    } else {
        "INSERT INTO job_index_position (id, position) VALUES (1, 0) ON CONFLICT (id) DO NOTHING"
    };
    sqlx::query(reset).execute(&mut *conn).await.map(drop)
}

/// Reads back `journal_mode` and `synchronous`: a build or file that silently
/// ignored them would acknowledge appends that a power cut can lose.
async fn check_durability(conn: &mut SqliteConnection, path: &Path) -> Result<(), StoreError> {
    let err = |e: sqlx::Error| StoreError::Open(format!("{}: {e}", path.display()));
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await
        .map_err(err)?;
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&mut *conn)
        .await
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") || sync != 2 {
        return Err(StoreError::Open(format!(
            "{}: expected journal_mode=wal and synchronous=FULL (2), got {mode} and {sync}",
            path.display()
        )));
    }
    tracing::debug!(path = %path.display(), "SQLite journal_mode=wal synchronous=FULL");
    Ok(())
}

/// The multi-row `INSERT` of `rows` into `events`.
fn insert_events(rows: &[EventRow]) -> QueryBuilder<'_, Sqlite> {
    let mut insert = QueryBuilder::new(
        "INSERT INTO events (job_id, seq, session_id, kind, schema_version, payload, idempotency_key, at, hash) ",
    );
    insert.push_values(rows, |mut b, row| {
        b.push_bind(row.job_id.as_str())
            .push_bind(row.seq)
            .push_bind(row.session_id.as_deref())
            .push_bind(row.kind.as_str())
            .push_bind(row.schema_version)
            .push_bind(row.payload.as_str())
            .push_bind(row.idempotency_key.as_deref())
            .push_bind(row.at.as_str())
            .push_bind(row.hash.as_str());
    });
    insert
}

#[async_trait]
impl EventLog for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn epoch(&self) -> Result<String, StoreError> {
        sqlx::query_scalar("SELECT epoch FROM log_meta WHERE id = 1")
            .fetch_one(&self.readers)
            .await
            .map_err(classify)
    }

    async fn append(&self, rows: &[EventRow]) -> Result<Vec<i64>, StoreError> {
        let mut conn = self.writer.lock().await;
        if rows.len() <= ROWS_PER_STATEMENT {
            // One statement is a transaction of its own (it commits as it
            // finishes, or changes nothing): one trip to the connection's
            // thread for the batch, not three with BEGIN and COMMIT.
            return insert_rows(&mut conn, rows).await;
        }
        begin(&mut conn).await?;
        let inserted = insert_rows(&mut conn, rows).await;
        finish(&mut conn, inserted).await
    }

    async fn read_log(&self, after: i64, limit: u32) -> Result<Vec<EventRow>, StoreError> {
        self.scanner.read_log(after, limit).await
    }

    async fn read_job(&self, span: JobSpan<'_>, limit: u32) -> Result<Vec<EventRow>, StoreError> {
        self.scanner.read_job(span, limit).await
    }

    async fn find_keyed(&self, job_id: &str, keys: &[&str]) -> Result<Vec<EventRow>, StoreError> {
        self.scanner.find_keyed(job_id, keys).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.readers)
            .await
            .map(|_| ())
            .map_err(classify)
    }

    async fn close(&self) {
        self.readers.close().await;
    }
}

#[async_trait]
impl Checkpoints for SqliteStore {
    async fn checkpoints(&self) -> Result<Vec<CheckpointHeader>, StoreError> {
        let rows: Vec<CheckpointRow> = sqlx::query_as(LIST_CHECKPOINTS)
            .fetch_all(&self.readers)
            .await
            .map_err(classify)?;
        Ok(rows.into_iter().map(CheckpointHeader::from).collect())
    }

    async fn checkpoint_parts(&self, id: &str) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT body FROM checkpoint_parts WHERE checkpoint_id = ? ORDER BY part",
        )
        .bind(id)
        .fetch_all(&self.readers)
        .await
        .map_err(classify)
    }

    async fn write_checkpoint_part(
        &self,
        id: &str,
        part: i32,
        body: &str,
    ) -> Result<(), StoreError> {
        // On the writer's connection, between its batches: one short
        // transaction per part, so appends wait at most one part's write.
        let mut conn = self.writer.lock().await;
        sqlx::query(
            "INSERT OR REPLACE INTO checkpoint_parts (checkpoint_id, part, body) VALUES (?, ?, ?)",
        )
        .bind(id)
        .bind(part)
        .bind(body)
        .execute(&mut *conn)
        .await
        .map(|_| ())
        .map_err(classify)
    }

    async fn write_checkpoint_header(&self, h: &CheckpointHeader) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().await;
        sqlx::query(
            "INSERT OR REPLACE INTO checkpoints
             (id, position, position_hash, epoch, fold_version, created_at, jobs, parts, digest)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        .execute(&mut *conn)
        .await
        .map(|_| ())
        .map_err(classify)
    }

    async fn delete_checkpoints_except(&self, keep: &[&str]) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().await;
        let mut delete = QueryBuilder::<Sqlite>::new("DELETE FROM checkpoints");
        if !keep.is_empty() {
            delete.push(" WHERE id NOT IN (");
            let mut ids = delete.separated(", ");
            for id in keep {
                ids.push_bind(*id);
            }
            delete.push(")");
        }
        delete.build().execute(&mut *conn).await.map_err(classify)?;
        sqlx::query(
            "DELETE FROM checkpoint_parts WHERE checkpoint_id NOT IN (SELECT id FROM checkpoints)",
        )
        .execute(&mut *conn)
        .await
        .map(|_| ())
        .map_err(classify)
    }
}

#[async_trait]
impl JobIndex for SqliteStore {
    async fn job_index_position(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT position FROM job_index_position WHERE id = 1")
            .fetch_one(&self.readers)
            .await
            .map_err(classify)
    }

    async fn job_index_rows(&self, job_ids: &[String]) -> Result<Vec<IndexRow>, StoreError> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<Sqlite>::new("SELECT * FROM job_index WHERE job_id IN (");
        let mut ids = q.separated(", ");
        for id in job_ids {
            ids.push_bind(id);
        }
        q.push(")");
        q.build_query_as()
            .fetch_all(&self.readers)
            .await
            .map_err(classify)
    }

    async fn write_job_index(
        &self,
        rows: &[IndexRow],
        from: i64,
        through: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.writer.lock().await;
        begin(&mut conn).await?;
        let written = write_index_rows(&mut conn, rows, from, through).await;
        finish(&mut conn, written).await
    }

    async fn find_jobs(&self, filter: &JobFilter) -> Result<Vec<IndexRow>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT * FROM job_index WHERE 1 = 1");
        push_filter(&mut q, filter, |q, key, value| {
            let path = format!("$.\"{key}\"");
            q.push("(CASE json_type(metadata, ")
                .push_bind(path.clone())
                .push(") WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' ELSE CAST(json_extract(metadata, ")
                .push_bind(path)
                .push(") AS TEXT) END) = ")
                .push_bind(value);
        });
        q.build_query_as()
            .fetch_all(&self.readers)
            .await
            .map_err(classify)
    }
}

#[async_trait]
impl Retention for SqliteStore {
    async fn endings(&self, after: i64, limit: u32) -> Result<Vec<Ending>, StoreError> {
        sqlx::query_as(retention::ENDINGS)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.readers)
            .await
            .map_err(classify)
    }

    async fn remove(
        &self,
        units: &[RemovedUnit],
        archive: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<EventRow, StoreError> {
        let mut conn = self.writer.lock().await;
        begin(&mut conn).await?;
        let removed = remove_units(&mut conn, units, archive, at).await;
        finish(&mut conn, removed).await
    }

    async fn removed_job(&self, id: &str) -> Result<Option<Removed>, StoreError> {
        sqlx::query_as(retention::REMOVED_JOB)
            .bind(id)
            .fetch_optional(&self.readers)
            .await
            .map_err(classify)
    }

    async fn is_removed(&self, id: &str, last_position: i64) -> Result<bool, StoreError> {
        sqlx::query_scalar(retention::IS_REMOVED)
            .bind(id)
            .bind(last_position)
            .fetch_one(&self.readers)
            .await
            .map_err(classify)
    }

    async fn horizon(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar(retention::HORIZON)
            .fetch_one(&self.readers)
            .await
            .map_err(classify)
    }

    async fn size(&self) -> Result<LogSize, StoreError> {
        let mut conn = self.readers.acquire().await.map_err(classify)?;
        let mut pragma = async |name: &str| -> Result<i64, StoreError> {
            sqlx::query_scalar(&format!("PRAGMA {name}"))
                .fetch_one(&mut *conn)
                .await
                .map_err(classify)
        };
        let page = pragma("page_size").await?.max(0) as u64;
        let pages = pragma("page_count").await?.max(0) as u64;
        let free = pragma("freelist_count").await?.max(0) as u64;
        Ok(LogSize {
            bytes: pages * page,
            free_bytes: free * page,
        })
    }
}

/// The removal's statements (`log/retention.rs`), inside the writer's
/// transaction.
async fn remove_units(
    conn: &mut SqliteConnection,
    units: &[RemovedUnit],
    archive: Option<&str>,
    at: DateTime<Utc>,
) -> Result<EventRow, StoreError> {
    let mut head = async |id: String| -> Result<Option<(i64, String, i64)>, StoreError> {
        sqlx::query_as(retention::HEAD)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(classify)
    };
    for unit in units {
        still_ends(unit, head(unit.id.to_string()).await?)?;
    }
    let prev = head(LOG_CHAIN.to_string()).await?;
    let mut record = record_row(prev.map(|(seq, hash, _)| (seq, hash)), units, archive, at);
    record.position = insert_rows(conn, std::slice::from_ref(&record)).await?[0];
    retention::forget_units::<Sqlite>(&mut *conn, units, record.position)
        .await
        .map_err(classify)?;
    Ok(record)
}
