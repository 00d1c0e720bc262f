//! A store that breaks durability on purpose, for the crash harness's
//! negative control only (`--unsafe-ack-before-commit`): it acknowledges an
//! append at once, with the positions the rows will get, and commits it
//! 50 ms later, in order, as a write-behind buffer would. A crash in between
//! loses events the server already answered 201 for, which the harness must
//! detect. It wraps the event log alone; every read goes straight to it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::store::{EventLog, EventRow, JobSpan, StoreError};

/// How long an acknowledged append waits before it is committed.
const DELAY: Duration = Duration::from_millis(50);

pub struct WriteBehind {
    inner: Arc<dyn EventLog>,
    /// The position the next row will get; 0 until the first append, which
    /// is committed at once to learn it (the store has one writer, so
    /// positions follow on from there).
    next: AtomicI64,
    late: mpsc::UnboundedSender<(Instant, Vec<EventRow>)>,
}

impl WriteBehind {
    pub fn wrap(inner: Arc<dyn EventLog>) -> Arc<dyn EventLog> {
        let (late, mut queue) = mpsc::unbounded_channel::<(Instant, Vec<EventRow>)>();
        let store = inner.clone();
        tokio::spawn(async move {
            while let Some((acked, rows)) = queue.recv().await {
                tokio::time::sleep_until(acked + DELAY).await;
                if let Err(e) = store.append(&rows).await {
                    tracing::error!(error = %e, "a write-behind append failed after its answer");
                }
            }
        });
        Arc::new(WriteBehind {
            inner,
            next: AtomicI64::new(0),
            late,
        })
    }
}

#[async_trait]
impl EventLog for WriteBehind {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn epoch(&self) -> Result<String, StoreError> {
        self.inner.epoch().await
    }

    async fn append(&self, rows: &[EventRow]) -> Result<Vec<i64>, StoreError> {
        let n = rows.len() as i64;
        let next = self.next.load(Ordering::Relaxed);
        if next == 0 {
            let positions = self.inner.append(rows).await?;
            if let Some(last) = positions.last() {
                self.next.store(last + 1, Ordering::Relaxed);
            }
            return Ok(positions);
        }
        self.next.store(next + n, Ordering::Relaxed);
        self.late
            .send((Instant::now(), rows.to_vec()))
            .map_err(|_| StoreError::Unavailable("the write-behind task stopped".into()))?;
        Ok((next..next + n).collect())
    }

    async fn read_log(&self, after: i64, limit: u32) -> Result<Vec<EventRow>, StoreError> {
        self.inner.read_log(after, limit).await
    }

    async fn read_job(&self, span: JobSpan<'_>, limit: u32) -> Result<Vec<EventRow>, StoreError> {
        self.inner.read_job(span, limit).await
    }

    async fn find_keyed(&self, job_id: &str, keys: &[&str]) -> Result<Vec<EventRow>, StoreError> {
        self.inner.find_keyed(job_id, keys).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn close(&self) {
        self.inner.close().await
    }
}
