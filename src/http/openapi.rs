//! The OpenAPI 3 document, generated from the handlers' annotations and the
//! request and response types, served at `/openapi.json`.

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::durable::StreamPaths;
use super::state::AppState;
use super::{events, health, history, jobs, stream};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "rejoin",
        description = "Resumable WebSocket progress for long-running jobs, backed by an append-only event log. \
                       The WebSocket protocol (`GET /ws/progress`) is described in docs/PROTOCOL.md; \
                       every message it carries (and the data of every event of the SSE stream) \
                       is defined by the JSON Schema served at `/protocol.schema.json`."
    ),
    paths(
        jobs::create_job,
        jobs::list_jobs,
        jobs::append_event,
        jobs::refresh_token,
        jobs::get_job,
        stream::stream,
        events::job_events,
        history::history,
        events::global_log,
        events::live_tail,
        health::healthz,
        health::readyz,
        health::metrics,
    ),
    components(schemas(super::error::ErrorBody, super::error::ErrorDetail)),
    modifiers(&BearerAuth, &StreamPaths),
    tags(
        (name = "jobs", description = "Create jobs, append their events, read their state"),
        (name = "support", description = "Connection history"),
        (name = "analytics", description = "The global log"),
        (name = "operations", description = "Health and metrics"),
        (name = "streams", description = "Durable Streams: plain streams, and every job as a read-only stream"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The WebSocket protocol's JSON Schema (docs/protocol.schema.json).
pub const PROTOCOL_SCHEMA: &str = include_str!("../../docs/protocol.schema.json");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .route(
            "/protocol.schema.json",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/schema+json")],
                    PROTOCOL_SCHEMA,
                )
            }),
        )
}
