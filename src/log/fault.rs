//! A store that fails on purpose, for the tests of a task's death only
//! (`--test-panic-on-payload MARKER`): an append of a row whose payload
//! contains the marker panics inside the writer's commit, as a bug there
//! would. Nothing is committed; every read goes straight to the log.

use std::sync::Arc;

use async_trait::async_trait;

use super::store::{EventLog, EventRow, JobSpan, StoreError};

pub struct PanicOn {
    inner: Arc<dyn EventLog>,
    marker: String,
}

impl PanicOn {
    pub fn wrap(inner: Arc<dyn EventLog>, marker: String) -> Arc<dyn EventLog> {
        Arc::new(PanicOn { inner, marker })
    }
}

#[async_trait]
impl EventLog for PanicOn {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn epoch(&self) -> Result<String, StoreError> {
        self.inner.epoch().await
    }

    async fn append(&self, rows: &[EventRow]) -> Result<Vec<i64>, StoreError> {
        if rows.iter().any(|r| r.payload.contains(&self.marker)) {
            panic!("--test-panic-on-payload: an append carried the marker");
        }
        self.inner.append(rows).await
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
