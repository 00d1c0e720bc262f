//! The job API: create jobs, append their events, mint client tokens, read
//! state (now, or as of a seq).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{parse_job_id, Caller, JsonBody, ServiceCaller};
use super::state::AppState;
use crate::auth::Role;
use crate::domain::event::{
    format_time, FailureInfo, JobCancelled, JobCompleted, JobFailed, MessagePosted, Notify,
    ProgressReported,
};
use crate::domain::state::ConnectionCounts;
use crate::domain::{EventBody, JobState, JobStatus, SessionPhase};
use crate::engine::listing::{self, JobList};
use crate::engine::Created;
use crate::log::job_index::MAX_LIMIT;
use crate::log::JobFilter;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", post(create_job).get(list_jobs))
        .route("/v1/jobs/{job_id}", get(get_job))
        .route("/v1/jobs/{job_id}/events", post(append_event))
        .route("/v1/jobs/{job_id}/token", post(refresh_token))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateJobRequest {
    /// Create the job under this id (creating it again answers 200).
    #[serde(default)]
    job_id: Option<Uuid>,
    /// Free-form JSON object kept with the job.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Map<String, Value>>,
    /// Lifetime of the client token, in seconds.
    #[serde(default)]
    client_token_ttl_secs: Option<u64>,
    /// The job stalls after this many seconds without a job event (0: never;
    /// absent: the server's `--stall-after-secs`).
    #[serde(default)]
    stall_after_secs: Option<u64>,
    /// The job fails with `timeout` if not finished this many seconds after
    /// its creation (0: never; absent: the server's `--job-timeout-secs`).
    #[serde(default)]
    timeout_secs: Option<u64>,
    /// When the job's end is notified to the operator's webhook:
    /// `unwatched` (the default: when no watcher has a live socket at that
    /// moment), `always` or `never`.
    #[serde(default)]
    notify: Option<Notify>,
}

/// The longest stall or timeout window a job may ask for: 30 days.
const MAX_WINDOW_SECS: u64 = 30 * 24 * 3600;

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateJobResponse {
    job_id: Uuid,
    /// Absent when this server verifies tokens but has no key to mint them
    /// (an identity provider mints the job's client tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    client_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_token_expires_at: Option<DateTime<Utc>>,
    websocket_url: String,
}

/// Creates a job (or finds it, when `jobId` names an existing one) and mints
/// a client token for it.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "jobs",
    request_body = CreateJobRequest,
    responses(
        (status = 201, description = "Created", body = CreateJobResponse),
        (status = 200, description = "The job already existed", body = CreateJobResponse),
        (status = 400, description = "Malformed body", body = super::error::ErrorBody),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 403, description = "Not a service token", body = super::error::ErrorBody),
        (status = 410, description = "A job of this id was removed by retention (`job_archived`)", body = super::error::ErrorBody),
        (status = 413, description = "Body too large", body = super::error::ErrorBody),
        (status = 503, description = "The log cannot be written", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_job(
    State(state): State<AppState>,
    _service: ServiceCaller,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CreateJobRequest>,
) -> Result<Response, ApiError> {
    let ttl = state.client_token_ttl(req.client_token_ttl_secs)?;
    let job_id = match req.job_id {
        Some(id) => parse_job_id(&id.to_string())?,
        None => Uuid::new_v4(),
    };
    for (name, value) in [
        ("stallAfterSecs", req.stall_after_secs),
        ("timeoutSecs", req.timeout_secs),
    ] {
        if value.is_some_and(|v| v > MAX_WINDOW_SECS) {
            return Err(ApiError::bad_request(
                "invalid_window",
                format!("`{name}` must be at most {MAX_WINDOW_SECS} (30 days)"),
            ));
        }
    }
    let options = crate::engine::JobOptions {
        stall_after_secs: req.stall_after_secs,
        timeout_secs: req.timeout_secs,
        notify: req.notify,
    };
    let outcome = state
        .engine
        .create_job_with(job_id, req.metadata.map(Value::Object), options)
        .await?;
    let status = match outcome {
        Created::Existing => StatusCode::OK,
        Created::New(_) => StatusCode::CREATED,
    };
    let minted = match state.auth.mint(
        Role::Client,
        &format!("client:{job_id}"),
        Some(job_id),
        ttl,
        state.clock.now(),
    ) {
        Ok(m) => Some(m),
        Err(crate::auth::AuthError::CannotMint) => None,
        Err(e) => return Err(e.into()),
    };
    let body = CreateJobResponse {
        job_id,
        client_token: minted.as_ref().map(|m| m.token.clone()),
        client_token_expires_at: minted.map(|m| m.expires_at),
        websocket_url: state.websocket_url(&headers, job_id),
    };
    Ok((status, Json(body)).into_response())
}

/// A job event as services post it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum AppendRequest {
    /// Progress from 0 to 100, with an optional message and data.
    Progress {
        progress: f64,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        #[schema(value_type = Option<Object>)]
        data: Option<Value>,
    },
    /// A named message (`book_found`) with data.
    Message {
        name: String,
        #[serde(default)]
        #[schema(value_type = Option<Object>)]
        data: Option<Value>,
    },
    /// The job finished; nothing may be appended after it.
    Completed {
        #[serde(default)]
        #[schema(value_type = Option<Object>)]
        result: Option<Value>,
    },
    /// The job failed; nothing may be appended after it.
    Failed { error: FailureInfo },
    /// The job was cancelled; nothing may be appended after it.
    Cancelled {
        #[serde(default)]
        reason: Option<String>,
    },
}

impl From<AppendRequest> for EventBody {
    fn from(req: AppendRequest) -> Self {
        match req {
            AppendRequest::Progress {
                progress,
                message,
                data,
            } => EventBody::ProgressReported(ProgressReported {
                progress,
                message,
                data,
            }),
            AppendRequest::Message { name, data } => {
                EventBody::MessagePosted(MessagePosted { name, data })
            }
            AppendRequest::Completed { result } => EventBody::JobCompleted(JobCompleted { result }),
            AppendRequest::Failed { error } => EventBody::JobFailed(JobFailed { error }),
            AppendRequest::Cancelled { reason } => EventBody::JobCancelled(JobCancelled { reason }),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppendResponse {
    job_id: Uuid,
    seq: i64,
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )
    };
    let key = value.to_str().map_err(|_| bad())?;
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(key.to_owned()))
}

/// Appends one job event. Answers only after the event is durable.
#[utoipa::path(
    post,
    path = "/v1/jobs/{job_id}/events",
    tag = "jobs",
    params(
        ("job_id" = Uuid, Path, description = "The job"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry answer the first 201 and append nothing"),
    ),
    request_body = AppendRequest,
    responses(
        (status = 201, description = "Appended (or a retry of an append)", body = AppendResponse),
        (status = 400, description = "Malformed event", body = super::error::ErrorBody),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 403, description = "Not a service token", body = super::error::ErrorBody),
        (status = 404, description = "Unknown job", body = super::error::ErrorBody),
        (status = 410, description = "Retention removed the job (`job_archived`, with when it finished)", body = super::error::ErrorBody),
        (status = 409, description = "The job finished, or the Idempotency-Key was used for another event", body = super::error::ErrorBody),
        (status = 413, description = "Body too large", body = super::error::ErrorBody),
        (status = 503, description = "The log cannot be written", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn append_event(
    State(state): State<AppState>,
    _service: ServiceCaller,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<AppendRequest>,
) -> Result<Response, ApiError> {
    let job_id = parse_job_id(&job_id)?;
    let key = idempotency_key(&headers)?;
    let appended = state.engine.append(job_id, req.into(), key).await?;
    let (seq, replayed) = (appended.seq, appended.replayed);
    let mut response = (StatusCode::CREATED, Json(AppendResponse { job_id, seq })).into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequest {
    /// Lifetime of the new token, in seconds.
    #[serde(default)]
    ttl_secs: Option<u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    job_id: Uuid,
    client_token: String,
    client_token_expires_at: DateTime<Utc>,
}

/// Mints a fresh client token for the job.
#[utoipa::path(
    post,
    path = "/v1/jobs/{job_id}/token",
    tag = "jobs",
    params(("job_id" = Uuid, Path, description = "The job")),
    request_body(content = Option<TokenRequest>, description = "Optional"),
    responses(
        (status = 200, description = "A new client token", body = TokenResponse),
        (status = 400, description = "Bad ttl", body = super::error::ErrorBody),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 403, description = "Neither a service token nor this job's client", body = super::error::ErrorBody),
        (status = 404, description = "Unknown job", body = super::error::ErrorBody),
        (status = 410, description = "Retention removed the job (`job_archived`, with when it finished)", body = super::error::ErrorBody),
        (status = 501, description = "This server cannot sign tokens", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn refresh_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
    JsonBody(req): JsonBody<TokenRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let job_id = parse_job_id(&job_id)?;
    caller.require_or_client_of(&[Role::Service], job_id)?;
    let ttl = state.client_token_ttl(req.ttl_secs)?;
    if !state.engine.job_exists(job_id).await? {
        return Err(state.missing_job(job_id).await);
    }
    // A refreshed client token keeps the subject of the one it replaces.
    let sub = match caller.0.role {
        Role::Client => caller.0.sub.clone(),
        _ => format!("client:{job_id}"),
    };
    let minted = state
        .auth
        .mint(Role::Client, &sub, Some(job_id), ttl, state.clock.now())?;
    Ok(Json(TokenResponse {
        job_id,
        client_token: minted.token,
        client_token_expires_at: minted.expires_at,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// The state as it stood at this seq (service and support only).
    #[serde(default)]
    as_of_seq: Option<i64>,
}

/// The job's state, folded from the log (now, or as of a seq).
#[utoipa::path(
    get,
    path = "/v1/jobs/{job_id}",
    tag = "jobs",
    params(("job_id" = Uuid, Path, description = "The job"), JobQuery),
    responses(
        (status = 200, description = "The job's state", body = JobView),
        (status = 400, description = "Bad job id or asOfSeq", body = super::error::ErrorBody),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 403, description = "Not allowed to read this job", body = super::error::ErrorBody),
        (status = 404, description = "Unknown job", body = super::error::ErrorBody),
        (status = 410, description = "Retention removed the job (`job_archived`, with when it finished)", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
    query: Result<Query<JobQuery>, QueryRejection>,
) -> Result<Json<JobView>, ApiError> {
    let job_id = parse_job_id(&job_id)?;
    let query = super::extract::query(query)?;
    let job = match query.as_of_seq {
        None => {
            caller.require_or_client_of(&[Role::Service, Role::Support], job_id)?;
            state.engine.job(job_id).await?
        }
        Some(seq) => {
            caller.require(&[Role::Service, Role::Support])?;
            if seq < 1 {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    "asOfSeq must be at least 1",
                ));
            }
            // One read of the log: the fold through `seq` stops short of
            // it exactly when the job's last seq is below it.
            match state.engine.job_as_of(job_id, seq).await? {
                Some(job) if job.head_seq < seq => {
                    return Err(ApiError::bad_request(
                        "invalid_query",
                        format!("asOfSeq {seq} is past the job's last seq {}", job.head_seq),
                    ))
                }
                other => other.map(std::sync::Arc::new),
            }
        }
    };
    let Some(job) = job else {
        return Err(state.missing_job(job_id).await);
    };
    Ok(Json(JobView::from(job.as_ref())))
}

/// A job's state as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    job_id: Uuid,
    status: JobStatus,
    progress: f64,
    message: Option<String>,
    last_update: Option<DateTime<Utc>>,
    last_seq: i64,
    /// Seq of the last event of any kind (the fold's position in the stream).
    head_seq: i64,
    created_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<FailureInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// The most recently started session (open or ended).
    session: Option<SessionView>,
    /// Every session that has not ended, oldest first: one per watching
    /// device or tab.
    watchers: Vec<WatcherView>,
    counts: ConnectionCounts,
    /// The job went its stall window without a job event (until the next).
    stalled: bool,
    /// The time of the last job event before the stall.
    #[serde(skip_serializing_if = "Option::is_none")]
    stalled_since: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stall_after_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_secs: Option<u64>,
    /// The last socket close recorded for any of the job's sessions.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_disconnect: Option<LastDisconnectView>,
    /// The last socket error recorded for any of the job's sessions.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_socket_error: Option<LastSocketErrorView>,
    /// When the job's end is notified to the webhook.
    notify: Notify,
    /// When the endpoint last took a notification of this job (a 2xx).
    #[serde(skip_serializing_if = "Option::is_none")]
    notified_at: Option<DateTime<Utc>>,
    /// Notifications of this job not yet delivered or abandoned.
    notifications_pending: usize,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastDisconnectView {
    at: DateTime<Utc>,
    code: u16,
    reason: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastSocketErrorView {
    at: DateTime<Utc>,
    message: String,
}

/// A session that has not ended.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WatcherView {
    session_id: Uuid,
    /// `connected` or `grace`.
    state: &'static str,
    /// When it entered that state (its socket opened, or its last closed).
    since: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grace_until: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    session_id: Uuid,
    /// `connected`, `grace` or `ended`.
    state: &'static str,
    started_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grace_until: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_at: Option<DateTime<Utc>>,
    sockets: u32,
}

impl From<&JobState> for JobView {
    fn from(job: &JobState) -> Self {
        JobView {
            job_id: job.job_id,
            status: job.status,
            progress: job.progress,
            message: job.message.clone(),
            last_update: job.last_update,
            last_seq: job.last_seq,
            head_seq: job.head_seq,
            created_at: job.created_at,
            metadata: job.metadata.clone(),
            result: job.result.clone(),
            error: job.error.clone(),
            reason: job.cancel_reason.clone(),
            watchers: job
                .watchers
                .iter()
                .map(|s| {
                    let (state, since, grace_until) = match s.phase {
                        SessionPhase::Grace { until } => (
                            "grace",
                            s.last_disconnect_at.unwrap_or(s.last_connect_at),
                            Some(until),
                        ),
                        _ => ("connected", s.last_connect_at, None),
                    };
                    WatcherView {
                        session_id: s.session_id,
                        state,
                        since,
                        grace_until,
                        user_agent: s.user_agent.clone(),
                    }
                })
                .collect(),
            session: job.latest_session().map(|s| {
                let (state, grace_until, ended_at) = match s.phase {
                    SessionPhase::Connected => ("connected", None, None),
                    SessionPhase::Grace { until } => ("grace", Some(until), None),
                    SessionPhase::Ended { at } => ("ended", None, Some(at)),
                };
                SessionView {
                    session_id: s.session_id,
                    state,
                    started_at: s.started_at,
                    grace_until,
                    ended_at,
                    sockets: s.sockets,
                }
            }),
            counts: job.view.counts,
            stalled: job.stalled_since.is_some(),
            stalled_since: job.stalled_since,
            stall_after_secs: job.stall_after_secs,
            timeout_secs: job.timeout_secs,
            last_disconnect: job
                .view
                .last_disconnect
                .as_ref()
                .map(|d| LastDisconnectView {
                    at: d.at,
                    code: d.code,
                    reason: d.reason.clone(),
                }),
            last_socket_error: job
                .view
                .last_socket_error
                .as_ref()
                .map(|e| LastSocketErrorView {
                    at: e.at,
                    message: e.message.clone(),
                }),
            notify: job.notify,
            notified_at: job.view.last_notified.as_ref().map(|n| n.at),
            notifications_pending: job.notifications.len(),
        }
    }
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
        (status = 400, description = "A bad filter", body = super::error::ErrorBody),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 403, description = "Not a support or service token", body = super::error::ErrorBody),
        (status = 503, description = "The log cannot be read", body = super::error::ErrorBody),
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
    let list = listing::page(&state.store, &filter, head, |job| {
        Some(engine.watcher_count(job))
    })
    .await?;
    Ok(Json(list))
}

/// Parses the listing's query into a filter; 400 with what was wrong.
pub fn parse_filter(params: &[(String, String)]) -> Result<JobFilter, ApiError> {
    let bad = |message: String| ApiError::bad_request("invalid_query", message);
    let mut filter = JobFilter::every_job();
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
                filter.limit = value.parse().map_err(|_| {
                    bad(format!("`limit` must be from 1 to {MAX_LIMIT}"))
                })?
            }
            "after" => {
                filter.before = Some(
                    value
                        .parse()
                        .map_err(|_| bad("`after` must be a `nextAfter` cursor".into()))?,
                )
            }
            other => match other.strip_prefix("meta.") {
                Some(key) => filter.meta.push((key.to_owned(), value.clone())),
                None => {
                    return Err(bad(format!(
                        "unknown parameter `{other}`; use status, stalled, since, until, meta.KEY, limit, after"
                    )))
                }
            },
        }
    }
    filter.checked().map_err(|e| bad(e.0))
}
