//! Bulk reads of the SQLite log through rusqlite, on blocking threads.
//!
//! sqlx hands every row of a result across a channel from its worker thread,
//! which caps a scan at about 150,000 rows a second on this machine; rusqlite
//! steps the statement in place at millions of rows a second. Reads of the log
//! (the fold at start, replays, pages of the global log) go through here;
//! writes, migrations and small queries stay on sqlx.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};

use super::store::{EventRow, JobSpan, StoreError, PAGE_BYTES};

const COLUMNS: &str =
    "position, job_id, seq, session_id, kind, schema_version, payload, idempotency_key, at, hash";

/// A few read-only connections, opened on demand and reused.
#[derive(Clone)]
pub struct Scanner {
    path: PathBuf,
    idle: Arc<Mutex<Vec<Connection>>>,
}

/// Connections kept open between reads.
const KEEP: usize = 4;

impl Scanner {
    pub fn new(path: PathBuf) -> Self {
        Scanner {
            path,
            idle: Arc::default(),
        }
    }

    /// Runs `read` on a pooled connection on a blocking thread.
    async fn with<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match this.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
                Some(c) => c,
                None => this.open()?,
            };
            let out = read(&conn);
            let mut idle = this.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < KEEP {
                idle.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?
        .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(conn)
    }

    pub async fn read_log(&self, after: i64, limit: u32) -> Result<Vec<EventRow>, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"
            ))?;
            let rows = stmt.query_map((after, limit), row)?;
            within_page_bytes(rows)
        })
        .await
    }

    pub async fn read_job(
        &self,
        span: JobSpan<'_>,
        limit: u32,
    ) -> Result<Vec<EventRow>, StoreError> {
        let (job_id, after_seq, through_seq) =
            (span.job_id.to_owned(), span.after_seq, span.through_seq);
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM events WHERE job_id = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq LIMIT ?4"
            ))?;
            let rows = stmt.query_map((job_id, after_seq, through_seq, limit), row)?;
            within_page_bytes(rows)
        })
        .await
    }

    pub async fn find_keyed(
        &self,
        job_id: &str,
        keys: &[&str],
    ) -> Result<Vec<EventRow>, StoreError> {
        let job_id = job_id.to_owned();
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM events WHERE job_id = ?1 AND idempotency_key = ?2"
            ))?;
            let mut out = Vec::new();
            for key in &keys {
                for r in stmt.query_map((&job_id, key), row)? {
                    out.push(r?);
                }
            }
            Ok(out)
        })
        .await
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        position: r.get(0)?,
        job_id: r.get(1)?,
        seq: r.get(2)?,
        session_id: r.get(3)?,
        kind: r.get(4)?,
        schema_version: r.get(5)?,
        payload: r.get(6)?,
        idempotency_key: r.get(7)?,
        at: r.get(8)?,
        hash: r.get(9)?,
    })
}

/// The rows up to and including the one that takes the page past
/// [`PAGE_BYTES`] of payload: a page of large events stops early, and the
/// rest is never read into memory.
fn within_page_bytes(
    rows: impl Iterator<Item = rusqlite::Result<EventRow>>,
) -> rusqlite::Result<Vec<EventRow>> {
    let (mut out, mut bytes) = (Vec::new(), 0usize);
    for r in rows {
        let r = r?;
        bytes += r.payload.len();
        out.push(r);
        if bytes >= PAGE_BYTES {
            break;
        }
    }
    Ok(out)
}
