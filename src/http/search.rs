//! `GET /v1/jobs`: finding jobs without knowing their ids, for support staff
//! and services. Served from the job index (a derived table), never by
//! folding the log; newest first, cursor-paged by the position of each
//! job's creation, so a page never skips or repeats a job while others are
//! being created.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::Caller;
use super::AppState;
use crate::auth::Role;
use crate::domain::event::format_time;
use crate::domain::JobStatus;
use crate::log::job_index::valid_meta_key;
use crate::log::{IndexRow, JobFilter};

/// Jobs per page unless `limit` says otherwise, and the most it may say.
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

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

/// Parses the listing's query into a filter; 400 with what was wrong.
pub fn parse_filter(params: &[(String, String)]) -> Result<JobFilter, ApiError> {
    let bad = |message: String| ApiError::bad_request("invalid_query", message);
    let mut filter = JobFilter {
        limit: DEFAULT_LIMIT,
        ..JobFilter::default()
    };
    let mut seen = std::collections::HashSet::new();
    for (name, value) in params {
        if !seen.insert(name.as_str()) {
            return Err(bad(format!("`{name}` is given twice")));
        }
        match name.as_str() {
            "status" => {
                filter.status = Some(JobStatus::parse(value).ok_or_else(|| {
                    bad("`status` must be pending, running, completed, failed or cancelled".into())
                })?)
            }
            "stalled" => {
                filter.stalled = Some(match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("`stalled` must be true or false".into())),
                })
            }
            "since" | "until" => {
                let at = DateTime::parse_from_rfc3339(value).map_err(|_| {
                    bad(format!(
                        "`{name}` must be an RFC 3339 time such as 2026-12-01T09:00:00Z"
                    ))
                })?;
                let at = Some(format_time(&at.with_timezone(&Utc)));
                if name == "since" {
                    filter.since = at;
                } else {
                    filter.until = at;
                }
            }
            "limit" => {
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| bad(format!("`limit` must be from 1 to {MAX_LIMIT}")))?
            }
            "after" => {
                filter.before = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|n: &i64| *n > 0)
                        .ok_or_else(|| bad("`after` must be a `nextAfter` cursor".into()))?,
                )
            }
            other => match other.strip_prefix("meta.") {
                Some(key) if valid_meta_key(key) => {
                    if value.len() > 256 {
                        return Err(bad(format!("`{other}` is longer than 256 bytes")));
                    }
                    filter.meta.push((key.to_owned(), value.clone()));
                }
                Some(_) => {
                    return Err(bad(format!(
                        "`{other}`: metadata keys are 1 to 64 letters, digits, `_` or `-`"
                    )))
                }
                None => {
                    return Err(bad(format!(
                        "unknown parameter `{other}`; use status, stalled, since, until, meta.KEY, limit, after"
                    )))
                }
            },
        }
    }
    Ok(filter)
}

/// Lists jobs, newest first.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    params(
        ("status" = Option<String>, Query, description = "pending, running, completed, failed or cancelled"),
        ("stalled" = Option<bool>, Query, description = "Only stalled (true) or not stalled (false) jobs"),
        ("since" = Option<String>, Query, description = "Created at or after this RFC 3339 time"),
        ("until" = Option<String>, Query, description = "Created before this RFC 3339 time"),
        ("limit" = Option<u32>, Query, description = "Jobs per page, 1 to 200 (50)"),
        ("after" = Option<String>, Query, description = "The `nextAfter` of the previous page"),
    ),
    responses(
        (status = 200, description = "Jobs, newest first; `meta.KEY=VALUE` parameters filter on top-level metadata", body = JobList),
        (status = 400, description = "A bad filter", body = super::ErrorBody),
        (status = 401, description = "No valid token", body = super::ErrorBody),
        (status = 403, description = "Not a support or service token", body = super::ErrorBody),
        (status = 503, description = "The log cannot be read", body = super::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    caller.require(&[Role::Support, Role::Service])?;
    let params = super::extract::query(query)?;
    let filter = parse_filter(&params)?;
    let engine = &state.engine;
    let head = *engine.watch_head().borrow();
    // Only jobs held in memory have watchers: a job with one is live.
    let list = page(&state.store, &filter, head, |job| {
        Some(engine.watcher_count(job))
    })
    .await?;
    Ok(Json(list))
}

/// One page of the index after bringing it up to `through`, with the
/// cursor of the next page if there is one; `watchers` counts a job's.
pub async fn page(
    store: &crate::log::Log,
    filter: &JobFilter,
    through: i64,
    watchers: impl Fn(Uuid) -> Option<usize>,
) -> Result<JobList, crate::log::StoreError> {
    crate::engine::index::catch_up(store, through).await?;
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
