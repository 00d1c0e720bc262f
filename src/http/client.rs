//! The browser client, `rejoin.js`, served from the binary.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::routing::get;
use axum::Router;

use super::state::AppState;

/// One source: the package in `clients/js`.
pub const REJOIN_JS: &str = include_str!("../../clients/js/src/rejoin.js");

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/client/rejoin.js",
        get(|| async {
            (
                [
                    (CONTENT_TYPE, "text/javascript; charset=utf-8"),
                    (CACHE_CONTROL, "no-cache"),
                ],
                REJOIN_JS,
            )
        }),
    )
}
