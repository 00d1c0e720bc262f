//! Reading the log: one job's stream, the global log (cursor-paged, or streamed
//! as NDJSON), and its live tail as Server-Sent Events.
//!
//! The global log is paged by position. Positions are assigned by the single
//! writer and committed in order, and only committed rows are visible, so a
//! page never skips an event that a later page would show, nor repeats one.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::extract::{parse_job_id, Caller};
use super::state::AppState;
use crate::auth::Role;
use crate::log::{EventEnvelope, EventLog, EventRow, Pages, StoreError};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs/{job_id}/events", get(job_events))
        .route("/v1/events", get(global_log))
        .route("/v1/events/stream", get(live_tail))
}

const DEFAULT_PAGE: u32 = 1000;
const MAX_PAGE: u32 = 10_000;
pub const NDJSON: &str = "application/x-ndjson";

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Return items after this cursor (a job seq, or a global position).
    #[serde(default)]
    pub after: Option<i64>,
    /// Page size: default 1000, at most 10,000 (for NDJSON: no default limit).
    #[serde(default)]
    #[param(minimum = 1, value_type = Option<u64>)]
    pub limit: Option<u32>,
}

fn page(query: Result<Query<PageQuery>, QueryRejection>) -> Result<PageQuery, ApiError> {
    let q = super::extract::query(query)?;
    if q.after.is_some_and(|a| a < 0) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "`after` must not be negative",
        ));
    }
    if q.limit.is_some_and(|l| l == 0) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "`limit` must be at least 1",
        ));
    }
    Ok(q)
}

/// A page of events.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    pub events: Vec<EventEnvelope>,
    /// Pass as `after` for the next page (equal to `after` when nothing came).
    pub next_after: i64,
}

/// A page of rows; `next_after` is the reader's cursor after it.
fn to_page(rows: Vec<EventRow>, next_after: i64) -> Result<EventPage, ApiError> {
    let events = rows
        .into_iter()
        .map(EventEnvelope::try_from)
        .collect::<Result<_, StoreError>>()?;
    Ok(EventPage { events, next_after })
}

/// One job's events (job and connection events), in seq order.
#[utoipa::path(
    get,
    path = "/v1/jobs/{job_id}/events",
    tag = "jobs",
    params(("job_id" = Uuid, Path, description = "The job"), PageQuery),
    responses(
        (status = 200, description = "A page of the job's events, in seq order", body = EventPage),
        (status = 400, description = "Bad query", body = super::error::ErrorBody),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 403, description = "Not a service or support token", body = super::error::ErrorBody),
        (status = 404, description = "Unknown job", body = super::error::ErrorBody),
        (status = 410, description = "Retention removed the job (`job_archived`, with when it finished)", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn job_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<EventPage>, ApiError> {
    caller.require(&[Role::Service, Role::Support])?;
    let job_id = parse_job_id(&job_id)?;
    let q = page(query)?;
    if !state.engine.job_exists(job_id).await? {
        return Err(state.missing_job(job_id).await);
    }
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE);
    let store = state.store.events.as_ref();
    let mut page = Pages::job(store, &job_id.to_string(), after, i64::MAX).page_size(limit);
    let rows = page.next().await?.unwrap_or_default();
    Ok(Json(to_page(rows, page.cursor())?))
}

/// The global log by position. With `Accept: application/x-ndjson` it is
/// streamed, one event per line, page by page from the database.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "analytics",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of the log (JSON), or the log from `after` as NDJSON (one EventEnvelope per line)",
         content((EventPage = "application/json"), (String = "application/x-ndjson"))),
        (status = 400, description = "Bad query", body = super::error::ErrorBody),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 403, description = "Not an analytics or service token", body = super::error::ErrorBody),
        (status = 410, description = "Before retention's horizon (`before_horizon`); the `Rejoin-Horizon` header names the position after which the log is whole", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn global_log(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Analytics, Role::Service])?;
    let q = page(query)?;
    let after = q.after.unwrap_or(0);
    kept_after(&state, after)?;
    let wants_ndjson = headers
        .get(ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains(NDJSON));
    if wants_ndjson {
        // Up to the head as of now, or `limit` events.
        let until = *state.engine.watch_head().borrow();
        let limit = q.limit.map_or(u64::MAX, u64::from);
        let body = Body::from_stream(ndjson(state.store.events.clone(), after, until, limit));
        let mut res = body.into_response();
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(NDJSON));
        return Ok(res);
    }
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE);
    let mut page = Pages::log(state.store.events.as_ref(), after).page_size(limit);
    let rows = page.next().await?.unwrap_or_default();
    Ok(Json(to_page(rows, page.cursor())?).into_response())
}

/// The log from `after` through `until` as NDJSON lines, at most `limit`,
/// read a page at a time. A failed read or a payload that is not JSON ends
/// the body with an error (the client sees a truncated stream).
fn ndjson(
    store: std::sync::Arc<dyn EventLog>,
    after: i64,
    until: i64,
    limit: u64,
) -> impl Stream<Item = Result<String, std::io::Error>> {
    futures_util::stream::unfold((after, limit), move |(cursor, left)| {
        let store = store.clone();
        async move {
            if left == 0 || cursor >= until {
                return None;
            }
            let take = left.min(u64::from(DEFAULT_PAGE)) as u32;
            let mut page = Pages::log(store.as_ref(), cursor).page_size(take);
            let rows = match page.next().await {
                Ok(Some(rows)) => rows,
                Ok(None) => return None,
                Err(e) => return Some((Err(std::io::Error::other(e.to_string())), (until, 0))),
            };
            let mut out = String::with_capacity(rows.len() * 256);
            let mut next = cursor;
            let mut sent = 0u64;
            for row in rows.into_iter().take_while(|r| r.position <= until) {
                next = row.position;
                sent += 1;
                match envelope_json(row) {
                    Ok(line) => {
                        out.push_str(&line);
                        out.push('\n');
                    }
                    Err(e) => return Some((Err(std::io::Error::other(e.to_string())), (until, 0))),
                }
            }
            if sent == 0 {
                return None;
            }
            Some((Ok(out), (next, left - sent)))
        }
    })
}

/// A row as its envelope's JSON.
fn envelope_json(row: EventRow) -> Result<String, StoreError> {
    let envelope = EventEnvelope::try_from(row)?;
    // An envelope of strings, numbers and a raw JSON payload always encodes.
    Ok(serde_json::to_string(&envelope).expect("an envelope encodes"))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TailQuery {
    /// Start after this position (default: the head, so only new events).
    /// The `Last-Event-ID` header takes precedence.
    #[serde(default)]
    pub after: Option<i64>,
}

/// The live tail of the log as Server-Sent Events. Each event's `id` is its
/// position; a client that reconnects with `Last-Event-ID` misses nothing.
#[utoipa::path(
    get,
    path = "/v1/events/stream",
    tag = "analytics",
    params(TailQuery, ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this position")),
    responses(
        (status = 200, description = "text/event-stream of event envelopes; id = position", content_type = "text/event-stream", body = EventEnvelope),
        (status = 400, description = "Bad cursor", body = super::error::ErrorBody),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 403, description = "Not an analytics or service token", body = super::error::ErrorBody),
        (status = 410, description = "Before retention's horizon (`before_horizon`); the `Rejoin-Horizon` header names the position after which the log is whole", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn live_tail(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    query: Result<Query<TailQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Analytics, Role::Service])?;
    let q = super::extract::query(query)?;
    let head = state.engine.watch_head();
    let last_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .filter(|p| *p >= 0)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_last_event_id",
                        "Last-Event-ID must be a log position",
                    )
                })?,
        ),
        None => None,
    };
    let start = last_id.or(q.after).unwrap_or_else(|| *head.borrow());
    kept_after(&state, start)?;
    let stream = tail(
        state.store.events.clone(),
        head,
        start,
        state.shutdown.clone(),
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Refuses a read of the global log from before retention's horizon: it
/// would skip the removed events without a word.
fn kept_after(state: &AppState, after: i64) -> Result<(), ApiError> {
    let horizon = state.engine.horizon();
    if after < horizon {
        return Err(ApiError::BeforeHorizon(horizon));
    }
    Ok(())
}

struct Tail {
    store: std::sync::Arc<dyn EventLog>,
    head: watch::Receiver<i64>,
    cursor: i64,
    ready: VecDeque<EventRow>,
    shutdown: CancellationToken,
    /// Set after an error event: the stream ends.
    done: bool,
}

impl Tail {
    fn ended(mut self) -> Self {
        self.ready.clear();
        self.done = true;
        self
    }
}

/// The tail's last event when the log cannot be read: an SSE `error` event
/// saying why (the cause is logged), after which the stream ends; the client
/// reconnects with `Last-Event-ID`.
fn tail_error(e: &StoreError) -> SseEvent {
    tracing::error!(error = %e, "the live tail cannot read the log");
    SseEvent::default()
        .event("error")
        .data(r#"{"code":"log_unavailable","message":"the event log cannot be read; reconnect with Last-Event-ID"}"#)
}

/// Reads the log after `cursor` whenever the committed head moves past it.
/// The watch only wakes the reader; the events come from the log, so a missed
/// wake-up loses nothing.
fn tail(
    store: std::sync::Arc<dyn EventLog>,
    head: watch::Receiver<i64>,
    cursor: i64,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let state = Tail {
        store,
        head,
        cursor,
        ready: VecDeque::new(),
        shutdown,
        done: false,
    };
    futures_util::stream::unfold(state, |mut t| async move {
        loop {
            if let Some(row) = t.ready.pop_front() {
                let id = row.position.to_string();
                return match envelope_json(row) {
                    Ok(data) => Some((Ok(SseEvent::default().id(id).data(data)), t)),
                    Err(e) => Some((Ok(tail_error(&e)), t.ended())),
                };
            }
            if t.done {
                return None;
            }
            let target = *t.head.borrow_and_update();
            if t.cursor < target {
                let mut page = Pages::log(t.store.as_ref(), t.cursor).page_size(DEFAULT_PAGE);
                match page.next().await {
                    Ok(Some(rows)) => {
                        t.cursor = page.cursor();
                        t.ready.extend(rows);
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => return Some((Ok(tail_error(&e)), t.ended())),
                }
            }
            tokio::select! {
                changed = t.head.changed() => changed.ok()?,
                _ = t.shutdown.cancelled() => return None,
            }
        }
    })
    .boxed()
}
