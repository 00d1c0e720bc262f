//! The one router over every route, and the layers around it.

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::Router;
use tower_http::trace::TraceLayer;

use super::error::ApiError;
use super::state::AppState;
use super::{
    client, connections, demo, durable, events, health, history, jobs, openapi, request, stream,
    support, upgrade,
};

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
