//! Liveness and readiness probes, open to anyone.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// The process is up and serving.
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The log's database answers.
async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.engine.store().ping().await?;
    Ok(Json(json!({
        "status": "ready",
        "backend": state.engine.store().backend(),
        "epoch": state.engine.epoch(),
    })))
}
