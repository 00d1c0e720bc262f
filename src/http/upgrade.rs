//! `GET /ws/progress`: the checks before the upgrade (HTTP work), then one
//! tracked task per socket (`ws::socket`) speaking the protocol of
//! `ws::protocol`.
//!
//! Before the upgrade: 400 for a missing or malformed `jobId`/`token`/`lastSeq`,
//! 401 for a token that does not verify, 403 for a token of another job or a
//! browser Origin outside the allowlist, 404 for an unknown job. Refusals on a
//! known job are recorded as `connect_rejected`, at most one per job and reason
//! per window, the rest counted into the next one recorded. An address making
//! attempts faster than `--connect-rate-per-ip` gets 429 with `Retry-After`.

use std::collections::HashMap;
use std::net::IpAddr;

use std::time::Instant;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::header::{HOST, ORIGIN, SEC_WEBSOCKET_PROTOCOL, USER_AGENT};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::Router;
use futures_util::StreamExt;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::parse_job_id;
use super::request::ClientAddr;
use super::state::{AppState, UpgradeSettings};
use crate::auth::Role;
use crate::domain::decide::Attach;
use crate::domain::event::ConnectRejected;
use crate::domain::{EventBody, JobId};
use crate::ws::protocol::{param, BEARER_PREFIX, SUBPROTOCOL};
use crate::ws::socket::{self, SocketParams};

pub fn router() -> Router<AppState> {
    Router::new().route("/ws/progress", get(upgrade))
}

/// A checked upgrade request.
pub(super) struct Accepted {
    pub job_id: JobId,
    pub attach: Attach,
    offered_subprotocol: bool,
}

async fn upgrade(
    State(state): State<AppState>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Err(refused) = admit(&state, client) {
        return refused.into_response();
    }
    let job_id = match query.get(param::JOB_ID).map(|j| parse_job_id(j)) {
        None => {
            return ApiError::bad_request(
                "missing_job_id",
                "the `jobId` query parameter is required",
            )
            .into_response()
        }
        Some(Err(e)) => return e.into_response(),
        Some(Ok(id)) => id,
    };
    // For the rejection record; `check` refuses a malformed value.
    let reconnect = reconnect_param(&query).unwrap_or(false);
    let accepted = match check(&state, job_id, client, &headers, &query).await {
        Ok(a) => a,
        Err(err) => {
            reject(&state, job_id, reconnect, &err).await;
            return err.into_response();
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        // A plain GET (no upgrade): a probe, answered with what the
        // handshake would get. Browsers hide a refused handshake's status,
        // so clients ask this way why one failed.
        Err(_) if !headers.contains_key(axum::http::header::UPGRADE) => {
            return (
                axum::http::StatusCode::UPGRADE_REQUIRED,
                axum::Json(super::error::ErrorBody::new(
                    "upgrade_required",
                    "this connection would be accepted: open it as a WebSocket",
                )),
            )
                .into_response()
        }
        Err(rejection) => return rejection.into_response(),
    };
    let settings = state.upgrade.clone();
    let offered_subprotocol = accepted.offered_subprotocol;
    let params = accepted.into_params(&state);
    let mut ws = ws
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(settings.max_frame_bytes)
        .max_frame_size(settings.max_frame_bytes);
    if offered_subprotocol {
        ws = ws.protocols([SUBPROTOCOL]);
    }
    let engine = state.engine.clone();
    let tracker = state.tasks.clone();
    ws.on_failed_upgrade(|e| tracing::debug!(error = %e, "upgrade failed"))
        .on_upgrade(move |socket| {
            let (tx, rx) = socket.split();
            tracker.track_future(socket::serve(tx, rx, engine, params))
        })
}

impl Accepted {
    /// How the checked connection is to be served.
    pub(super) fn into_params(self, state: &AppState) -> SocketParams {
        SocketParams {
            job_id: self.job_id,
            attach: self.attach,
            heartbeat_interval: state.upgrade.heartbeat_interval,
            heartbeat_timeout: state.upgrade.heartbeat_timeout,
            send_queue: state.upgrade.send_queue,
            shutdown: state.shutdown.clone(),
            request_id: super::request::current().map(|id| id.to_string()),
        }
    }
}

/// The refusals that come before any work on a connection (socket or
/// stream): the per-address attempt limit, and the connection limit.
pub(super) fn admit(state: &AppState, client: IpAddr) -> Result<(), ApiError> {
    if let Err(wait) = state.connect_rate.take(client, Instant::now()) {
        state.engine.metrics().observe_rate_limited();
        return Err(ApiError::RateLimited(
            wait.as_secs_f64().ceil().max(1.0) as u64
        ));
    }
    admit_capacity(state)
}

/// The connection limit alone: every long-lived reader (socket, SSE reader,
/// long-poll) holds one of `--max-connections` places.
pub(super) fn admit_capacity(state: &AppState) -> Result<(), ApiError> {
    if state.tasks.len() >= state.upgrade.max_connections {
        let refused = state.engine.metrics().observe_refused_at_capacity();
        if state.capacity_warning.now() {
            tracing::warn!(
                refused,
                "at the connection limit: refusing new sockets with 503"
            );
        }
        return Err(ApiError::TooManyConnections);
    }
    Ok(())
}

/// Records a refused attempt on a known job, within the rate limit.
pub(super) async fn reject(state: &AppState, job_id: JobId, reconnect: bool, err: &ApiError) {
    // A 404 means `check` already read the job and found none: no second read.
    if matches!(err, ApiError::NotFound(_))
        || !matches!(state.engine.job_exists(job_id).await, Ok(true))
    {
        return;
    }
    let code = err.code();
    let Some(suppressed) = state.rejections.admit(job_id, code) else {
        return;
    };
    let body = EventBody::ConnectRejected(ConnectRejected {
        status: err.status_code().as_u16(),
        code: code.to_owned(),
        reconnect,
        suppressed,
    });
    if let Err(e) = state.engine.record(job_id, None, body).await {
        tracing::warn!(job = %job_id, error = %e, "could not record a rejected connect");
    }
}

/// The checks every connection (socket or stream) passes before it is
/// served: token, origin, role and job, lease, watcher limit.
pub(super) async fn check(
    state: &AppState,
    job_id: JobId,
    client: IpAddr,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Accepted, ApiError> {
    let offered: Vec<&str> = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let bearer = super::extract::bearer_token(headers);
    let token = query
        .get(param::TOKEN)
        .map(String::as_str)
        .or_else(|| offered.iter().find_map(|p| p.strip_prefix(BEARER_PREFIX)))
        .or(bearer)
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing_token",
                "a token is required: the `token` query parameter, a `bearer.<token>` subprotocol or an `Authorization: Bearer` header",
            )
        })?;
    if token.split('.').count() != 3 || token.len() > 8192 {
        return Err(ApiError::bad_request(
            "malformed_token",
            "the token is not a JWT",
        ));
    }
    let reconnect = reconnect_param(query)?;
    let client_last_seq = match query.get(param::LAST_SEQ) {
        None => None,
        Some(s) => Some(s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_last_seq",
                "`lastSeq` must be a non-negative integer",
            )
        })?),
    };
    let session_id = match query.get(param::SESSION_ID) {
        None => None,
        Some(s) => Some(Uuid::parse_str(s).map_err(|_| {
            ApiError::bad_request("invalid_session_id", "`sessionId` must be a UUID")
        })?),
    };
    let client_epoch = match query.get(param::EPOCH) {
        Some(e) if e.len() > 64 => {
            return Err(ApiError::bad_request(
                "invalid_epoch",
                "`epoch` is too long",
            ))
        }
        other => other.cloned(),
    };

    let claims = state.auth.verify(token).await.map_err(ApiError::from)?;
    check_origin(headers, &state.upgrade)?;
    if claims.role != Role::Client {
        return Err(ApiError::Forbidden(format!(
            "sockets are opened with client tokens, not {} tokens",
            claims.role.as_str()
        )));
    }
    if claims.job != Some(job_id) {
        return Err(ApiError::Forbidden("this token is for another job".into()));
    }
    // A node that lost its lease takes no socket until it holds a new one:
    // the client goes to another node, or retries.
    if !state.engine.serving() {
        return Err(ApiError::Unavailable(crate::engine::NOT_SERVING.into()));
    }
    // Read from memory, or from the log by index (a finished job, a job
    // created on another node a moment ago).
    let Some(job) = state.engine.job(job_id).await? else {
        return Err(state.missing_job(job_id).await);
    };
    // A new session beside the job's watchers must fit under the limit (the
    // writer decides again, on the latest state, once the socket is open).
    let now = state.clock.now();
    let max_watchers = state.upgrade.max_watchers_per_job;
    let resumes = reconnect && job.resume_target(session_id, now).is_some();
    if !resumes && job.open_watchers(now) >= max_watchers {
        return Err(crate::domain::DomainError::TooManyWatchers(max_watchers).into());
    }
    let user_agent = headers
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(200).collect());
    Ok(Accepted {
        job_id,
        attach: Attach {
            new_session_id: Uuid::new_v4(),
            sub: claims.sub,
            reconnect,
            session_id,
            max_watchers,
            client_last_seq,
            client_epoch,
            log_epoch: state.engine.epoch().to_owned(),
            user_agent,
            address: Some(client.to_string()),
            // Set by the engine, under the lease it holds at the attach.
            node: None,
            transport: None,
            own_session: false,
            counted: None,
        },
        offered_subprotocol: offered.contains(&SUBPROTOCOL),
    })
}

/// `reconnect=true|1|false|0`, absent meaning false.
pub(super) fn reconnect_param(query: &HashMap<String, String>) -> Result<bool, ApiError> {
    match query.get(param::RECONNECT).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(_) => Err(ApiError::bad_request(
            "invalid_reconnect",
            "`reconnect` must be true or false",
        )),
    }
}

/// Native clients send no Origin. Browsers may connect from the server's own
/// origin or from one on the allowlist.
fn check_origin(headers: &HeaderMap, settings: &UpgradeSettings) -> Result<(), ApiError> {
    let Some(origin) = headers.get(ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    let own = host.is_some_and(|h| {
        origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(h))
    });
    if own || settings.lists_origin(origin) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "origin `{origin}` is not allowed"
        )))
    }
}
