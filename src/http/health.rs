//! Liveness and readiness probes, open to anyone.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::error::ApiError;
use super::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// The process is up and serving.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = Object)))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The log's database answers, every task of the engine runs (a writer,
/// scheduler or follower that stopped makes the node unready at once, and
/// the process stops) and, on a shared log, this node holds its lease (a
/// node that lost it is not ready until it has taken a new one).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "The database answers: `{status, backend, epoch, node}`", body = Object),
        (status = 503, description = "The database does not answer, an engine task stopped, or this node does not hold its lease", body = super::error::ErrorBody),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if let Some(failure) = state.engine.failure() {
        return Err(ApiError::NotReady(format!(
            "{failure}; the server is stopping"
        )));
    }
    state.store.events.ping().await?;
    if !state.engine.serving() {
        return Err(ApiError::Unavailable(crate::engine::NOT_SERVING.into()));
    }
    Ok(Json(json!({
        "status": "ready",
        "backend": state.store.events.backend(),
        "epoch": state.engine.epoch(),
        // On a shared log: the id this node serves under (the `node` of
        // its sessions' and webhook attempts' events).
        "node": state.engine.node().map(|n| n.to_string()),
    })))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus metrics, OpenMetrics text format", content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let engine = &state.engine;
    let now = crate::metrics::Snapshot {
        connections: engine.live_sockets(),
        jobs: engine.jobs_in_memory(),
        watchers: engine.watchers(),
        serving: engine.serving(),
        clock_offset: engine.clock_offset(),
        notifications: engine.notifications_pending(),
    };
    let body = engine.metrics().render(now, state.clock.now());
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}
