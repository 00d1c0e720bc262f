//! The HTTP surface: one router over one shared [`AppState`]. Each route module
//! exposes `router()`; errors leave through [`error::ApiError`].

pub mod client;
pub mod connections;
mod demo;
pub mod durable;
pub mod error;
pub mod events;
pub mod extract;
mod health;
pub mod history;
pub mod jobs;
pub mod openapi;
pub mod rate;
pub mod request;
pub mod stream;
mod support;
pub mod upgrade;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::HeaderMap;
use axum::Router;
use tower_http::trace::TraceLayer;
use uuid::Uuid;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authority;
use crate::clock::Clock;
use crate::engine::Engine;
use crate::log::Log;
use error::ApiError;
use upgrade::{RejectionLog, UpgradeSettings};

/// The body of every error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code such as `job_finished`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// The request's id, as in its `x-request-id` response header: quote it
    /// when reporting the problem.
    #[serde(rename = "requestId", skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ErrorBody {
    /// An error body naming the request being served.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                request_id: request::current().map(|id| id.to_string()),
            },
        }
    }
}

/// Settings the handlers read.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub public_url: Option<String>,
    pub max_body_bytes: usize,
    pub client_token_ttl_secs: u64,
    pub max_client_token_ttl_secs: u64,
    /// The Durable Streams' settings.
    pub streams: durable::StreamSettings,
}

/// Everything a handler needs, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    /// The log, for the reads that page through it (the event feed, the
    /// job search, health).
    pub store: Log,
    /// The clock the engine decides by: tokens and views are timed by it.
    pub clock: Arc<dyn Clock>,
    pub auth: Arc<Authority>,
    pub settings: Arc<HttpSettings>,
    pub upgrade: Arc<UpgradeSettings>,
    /// The socket tasks (and the demo's jobs), which the app closes and waits
    /// for at shutdown (axum's graceful shutdown does not wait for upgraded
    /// connections).
    pub tasks: TaskTracker,
    /// Cancelled when the server stops: sockets close with 1001, tails end.
    pub shutdown: CancellationToken,
    pub rejections: Arc<RejectionLog>,
    /// Refusals at the socket limit are logged at most once every 10 s.
    pub capacity_warning: Arc<rate::LogEvery>,
    /// Connection attempts per client address.
    pub connect_rate: Arc<rate::ConnectRate>,
    /// Whose forwarding headers are believed (`--trusted-proxies`).
    pub proxies: Arc<request::TrustedProxies>,
    /// Every TCP connection: counts, caps and deadlines.
    pub connections: Arc<connections::Connections>,
    /// Demo mode: how long a simulated job runs; `None` when off.
    pub demo: Option<std::time::Duration>,
}

impl AppState {
    /// The lifetime of a client token: the request's, within the configured
    /// maximum, or the default.
    pub fn client_token_ttl(&self, requested: Option<u64>) -> Result<u64, ApiError> {
        match requested {
            None => Ok(self.settings.client_token_ttl_secs),
            Some(t) if t >= 1 && t <= self.settings.max_client_token_ttl_secs => Ok(t),
            Some(_) => Err(ApiError::bad_request(
                "invalid_ttl",
                format!(
                    "clientTokenTtlSecs must be from 1 to {}",
                    self.settings.max_client_token_ttl_secs
                ),
            )),
        }
    }

    /// Where a client opens the job's WebSocket (it adds its `token`).
    pub fn websocket_url(&self, headers: &HeaderMap, job_id: Uuid) -> String {
        let base = match &self.settings.public_url {
            Some(url) => url
                .trim_end_matches('/')
                .replacen("https://", "wss://", 1)
                .replacen("http://", "ws://", 1),
            None => {
                let host = headers
                    .get(axum::http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("localhost");
                let secure = headers
                    .get("x-forwarded-proto")
                    .and_then(|h| h.to_str().ok())
                    .is_some_and(|p| p.eq_ignore_ascii_case("https"));
                format!("{}://{host}", if secure { "wss" } else { "ws" })
            }
        };
        format!("{base}/ws/progress?jobId={job_id}")
    }
}

/// CORS for the HTTP API: the origins `--allowed-origins` lets open
/// sockets may call it from a browser too, with a bearer token (no cookies:
/// credentials mode is never needed). Without any, no CORS headers at all:
/// only same-origin pages (and non-browser clients) call the API.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{header, HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                HeaderName::from_static("idempotent-replayed"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

pub fn router(state: AppState) -> Router {
    let max_body = state.settings.max_body_bytes;
    let proxies = state.proxies.clone();
    let connections = state.connections.clone();
    let mut app = Router::new()
        .merge(health::router())
        .merge(jobs::router())
        .merge(events::router())
        .merge(history::router())
        .merge(support::router())
        .merge(client::router())
        .merge(demo::router())
        .merge(openapi::router())
        .merge(upgrade::router())
        .merge(stream::router())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed });
    if let Some(cors) = cors(&state.upgrade.allowed_origins) {
        app = app.layer(cors);
    }
    // Durable Streams answer their own preflights, with every method and
    // header their protocol uses (`durable::serve`).
    app.merge(durable::router())
        .layer(DefaultBodyLimit::max(max_body))
        // A body that trickles in cannot hold its connection.
        .layer(axum::middleware::from_fn_with_state(
            connections,
            connections::body_deadline,
        ))
        .layer(
            // Spans name the route, never the raw URI: query strings may carry
            // tokens, and tokens are never logged.
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let route = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map_or("unmatched", |p| p.as_str());
                    let id = req.extensions().get::<request::RequestId>();
                    let id = id.map(|id| id.0.as_ref()).unwrap_or_default();
                    tracing::info_span!("http", request_id = %id, method = %req.method(), route = %route)
                })
                // 5xx causes are logged where they happen (ApiError), at the rate
                // they deserve; the layer's own error line per response is noise.
                .on_failure(()),
        )
        // Outermost: the address and the id are known to everything inside.
        .layer(axum::middleware::from_fn_with_state(
            proxies,
            request::identify,
        ))
        .with_state(state)
}
