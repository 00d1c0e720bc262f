//! The one route of every stream, plain or a job's: the browser headers
//! and CORS every answer carries, preflights, and the split between job
//! streams and plain ones.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;

use super::protocol::{preflight, Refused};
use super::{jobs, streams};
use crate::http::state::{AppState, UpgradeSettings};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/stream/{*path}", any(serve))
}

/// Every answer carries the browser security and CORS headers.
async fn serve(State(state): State<AppState>, req: Request) -> Response {
    let origin = allowed_origin(&state.upgrade, req.headers().get(header::ORIGIN));
    let mut response = match dispatch(&state, req).await {
        Ok(r) => r,
        Err(r) => r.into_response(),
    };
    let headers = response.headers_mut();
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("cross-origin"),
    );
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    // An origin outside `--allowed-origins` (or none, from a client that
    // is not a browser) gets no CORS headers: a browser shows its page
    // nothing.
    let Some(origin) = origin else {
        headers.remove(header::ACCESS_CONTROL_ALLOW_METHODS);
        headers.remove(header::ACCESS_CONTROL_ALLOW_HEADERS);
        headers.remove(header::ACCESS_CONTROL_MAX_AGE);
        return response;
    };
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(
            "Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, \
             Stream-TTL, Stream-Expires-At, Producer-Epoch, Producer-Seq, \
             Producer-Expected-Seq, Producer-Received-Seq, ETag, Content-Type, Location, \
             Retry-After",
        ),
    );
    response
}

/// The `Access-Control-Allow-Origin` a stream answer carries: `*` without
/// `--allowed-origins` (streams are read with bearer tokens, never cookies)
/// or when it lists `*`; otherwise the request's origin if listed, and
/// nothing if not.
fn allowed_origin(settings: &UpgradeSettings, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
    if settings.allowed_origins.is_empty() || settings.lists_origin("*") {
        return Some(HeaderValue::from_static("*"));
    }
    let origin = origin?;
    settings
        .lists_origin(origin.to_str().ok()?)
        .then(|| origin.clone())
}

async fn dispatch(state: &AppState, req: Request) -> Result<Response, Refused> {
    if req.method() == Method::OPTIONS {
        return Ok(preflight());
    }
    if req.uri().path().starts_with(jobs::PREFIX) {
        return jobs::serve(state, req).await;
    }
    streams::serve(state, req).await
}
