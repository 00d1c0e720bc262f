//! The support page: plain HTML, CSS and JavaScript compiled into the binary.
//! It calls the same API as everyone else, with the token a person pastes.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::state::AppState;

const HTML: &str = include_str!("support/index.html");
const CSS: &str = include_str!("support/support.css");
const JS: &str = include_str!("support/support.js");

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/support",
            get(|| async { asset("text/html; charset=utf-8", HTML) }),
        )
        .route(
            "/support/support.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            "/support/support.js",
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
        body,
    )
}
