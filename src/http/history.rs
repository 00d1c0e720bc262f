//! `GET /v1/jobs/{id}/history`: the job's connection story for support staff,
//! folded from its events.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{parse_job_id, Caller};
use super::state::AppState;
use crate::auth::Role;
use crate::domain::history::{Entry, NotificationHistory, SessionHistory, Totals};
use crate::domain::JobStatus;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/jobs/{job_id}/history", get(history))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Skip this many sessions (oldest first).
    #[serde(default)]
    pub offset: Option<usize>,
    /// Sessions per page: default 100, at most 1000.
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryResponse {
    pub job_id: Uuid,
    pub status: JobStatus,
    pub progress: f64,
    pub last_seq: i64,
    /// Sessions `offset .. offset + limit`, oldest first, each with its events.
    pub sessions: Vec<SessionHistory>,
    pub total_sessions: usize,
    pub offset: usize,
    /// Pass as `offset` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<usize>,
    /// Attempts refused before a socket opened.
    pub rejected: Vec<Entry>,
    /// Webhook notifications of the job's end (or stall): each attempt and
    /// its outcome, "notified at" once delivered.
    pub notifications: Vec<NotificationHistory>,
    /// Over the whole history, not just this page.
    pub totals: Totals,
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{job_id}/history",
    tag = "support",
    params(("job_id" = Uuid, Path, description = "The job"), HistoryQuery),
    responses(
        (status = 200, description = "The job's sessions and connection events, in order", body = HistoryResponse),
        (status = 400, description = "Bad query", body = super::error::ErrorBody),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 403, description = "Not a support or service token", body = super::error::ErrorBody),
        (status = 404, description = "Unknown job", body = super::error::ErrorBody),
        (status = 410, description = "Retention removed the job (`job_archived`, with when it finished)", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<HistoryResponse>, ApiError> {
    caller.require(&[Role::Support, Role::Service])?;
    let job_id = parse_job_id(&job_id)?;
    let q = super::extract::query(query)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "`limit` must be from 1 to 1000",
        ));
    }
    let offset = q.offset.unwrap_or(0);
    let Some((job, history)) = state.engine.history(job_id).await? else {
        return Err(state.missing_job(job_id).await);
    };
    let total_sessions = history.sessions.len();
    let end = offset.saturating_add(limit).min(total_sessions);
    let sessions = history
        .sessions
        .into_iter()
        .skip(offset)
        .take(limit)
        .collect();
    Ok(Json(HistoryResponse {
        job_id,
        status: job.status,
        progress: job.progress,
        last_seq: job.last_seq,
        sessions,
        total_sessions,
        offset,
        next_offset: (end < total_sessions).then_some(end),
        rejected: history.rejected,
        notifications: history.notifications,
        totals: history.totals,
    }))
}
