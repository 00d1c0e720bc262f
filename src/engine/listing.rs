//! The read side of jobs: a page of the job index (a derived table, never a
//! fold of the log), newest first, cursor-paged by the position of each
//! job's creation, so a page never skips or repeats a job while others are
//! being created. `GET /v1/jobs` and `rejoin jobs` both list through it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::index;
use crate::domain::JobStatus;
use crate::log::{IndexRow, JobFilter, Log, StoreError};

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobList {
    pub jobs: Vec<JobSummary>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// A job as a listing shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSummary {
    pub job_id: Uuid,
    pub status: JobStatus,
    pub progress: f64,
    pub stalled: bool,
    pub created_at: DateTime<Utc>,
    pub last_update: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Sessions that have not ended (from a server; `rejoin jobs`, reading
    /// the log alone, leaves it out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watchers: Option<usize>,
}

/// One page of the index after bringing it up to `through`, with the
/// cursor of the next page if there is one; `watchers` counts a job's.
pub async fn page(
    store: &Log,
    filter: &JobFilter,
    through: i64,
    watchers: impl Fn(Uuid) -> Option<usize>,
) -> Result<JobList, StoreError> {
    index::catch_up(store, through).await?;
    let one_more = JobFilter {
        limit: filter.limit + 1,
        ..filter.clone()
    };
    let mut rows = store.index.find_jobs(&one_more).await?;
    let more = rows.len() > filter.limit as usize;
    rows.truncate(filter.limit as usize);
    let next_after = more
        .then(|| rows.last().map(|r| r.created_position.to_string()))
        .flatten();
    let jobs = rows
        .into_iter()
        .filter_map(|r| summary(r, &watchers))
        .collect();
    Ok(JobList { jobs, next_after })
}

fn summary(row: IndexRow, watchers: impl Fn(Uuid) -> Option<usize>) -> Option<JobSummary> {
    let job_id = Uuid::parse_str(&row.job_id).ok()?;
    let time = |t: &str| crate::domain::event::parse_time(t).ok();
    Some(JobSummary {
        job_id,
        status: JobStatus::parse(&row.status)?,
        progress: row.progress,
        stalled: row.stalled != 0,
        created_at: time(&row.created_at)?,
        last_update: time(&row.last_update)?,
        metadata: row.metadata.and_then(|m| serde_json::from_str(&m).ok()),
        watchers: watchers(job_id),
    })
}
