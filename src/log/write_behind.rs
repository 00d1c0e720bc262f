//! A store that breaks durability on purpose, for the crash harness's
//! negative control only (`--unsafe-ack-before-commit`): it acknowledges an
//! append at once, with the positions the rows will get, and commits it
//! 50 ms later, in order, as a write-behind buffer would. A crash in between
//! loses events the server already answered 201 for, which the harness must
//! detect. Everything but `append` goes straight to the wrapped store.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{
    AppendListener, CheckpointHeader, EventRow, IndexRow, JobFilter, LogStore, StoreError,
};

/// How long an acknowledged append waits before it is committed.
const DELAY: Duration = Duration::from_millis(50);

pub struct WriteBehind {
    inner: Arc<dyn LogStore>,
    /// The position the next row will get; 0 until the first append, which
    /// is committed at once to learn it (the store has one writer, so
    /// positions follow on from there).
    next: AtomicI64,
    late: mpsc::UnboundedSender<(Instant, Vec<EventRow>)>,
}

impl WriteBehind {
    pub fn wrap(inner: Arc<dyn LogStore>) -> Arc<dyn LogStore> {
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
impl LogStore for WriteBehind {
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

    async fn read_job(
        &self,
        job_id: &str,
        after_seq: i64,
        through_seq: i64,
        limit: u32,
    ) -> Result<Vec<EventRow>, StoreError> {
        self.inner
            .read_job(job_id, after_seq, through_seq, limit)
            .await
    }

    async fn find_keyed(&self, job_id: &str, keys: &[&str]) -> Result<Vec<EventRow>, StoreError> {
        self.inner.find_keyed(job_id, keys).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn checkpoints(&self) -> Result<Vec<CheckpointHeader>, StoreError> {
        self.inner.checkpoints().await
    }

    async fn checkpoint_parts(&self, id: &str) -> Result<Vec<String>, StoreError> {
        self.inner.checkpoint_parts(id).await
    }

    async fn write_checkpoint_part(
        &self,
        id: &str,
        part: i32,
        body: &str,
    ) -> Result<(), StoreError> {
        self.inner.write_checkpoint_part(id, part, body).await
    }

    async fn write_checkpoint_header(&self, header: &CheckpointHeader) -> Result<(), StoreError> {
        self.inner.write_checkpoint_header(header).await
    }

    async fn delete_checkpoints_except(&self, keep: &[&str]) -> Result<(), StoreError> {
        self.inner.delete_checkpoints_except(keep).await
    }

    async fn job_index_position(&self) -> Result<i64, StoreError> {
        self.inner.job_index_position().await
    }

    async fn job_index_rows(&self, job_ids: &[String]) -> Result<Vec<IndexRow>, StoreError> {
        self.inner.job_index_rows(job_ids).await
    }

    async fn write_job_index(
        &self,
        rows: &[IndexRow],
        from: i64,
        through: i64,
    ) -> Result<bool, StoreError> {
        self.inner.write_job_index(rows, from, through).await
    }

    async fn find_jobs(&self, filter: &JobFilter) -> Result<Vec<IndexRow>, StoreError> {
        self.inner.find_jobs(filter).await
    }

    fn shared(&self) -> bool {
        self.inner.shared()
    }

    async fn take_lease(
        &self,
        node: &str,
        ttl: Duration,
    ) -> Result<chrono::DateTime<chrono::Utc>, StoreError> {
        self.inner.take_lease(node, ttl).await
    }

    async fn renew_lease(
        &self,
        node: &str,
        ttl: Duration,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        self.inner.renew_lease(node, ttl).await
    }

    async fn live_nodes(&self) -> Result<Vec<String>, StoreError> {
        self.inner.live_nodes().await
    }

    async fn end_lease(&self, node: &str) -> Result<(), StoreError> {
        self.inner.end_lease(node).await
    }

    async fn listen(&self) -> Result<Option<Box<dyn AppendListener>>, StoreError> {
        self.inner.listen().await
    }

    async fn close(&self) {
        self.inner.close().await
    }
}
