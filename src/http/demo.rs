//! Demo mode (`--demo`, off by default): a page where anyone can start a
//! simulated job that reports progress for a while and completes, and make the
//! server drop the job's socket to watch the client resume.
//!
//! The simulated job appends through the engine like any service would; the
//! drop closes the socket without a close frame, as a network would.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::parse_job_id;
use super::state::AppState;
use crate::auth::Role;
use crate::domain::event::{JobCompleted, ProgressReported};
use crate::domain::EventBody;
use crate::engine::Engine;

const HTML: &str = include_str!("demo/index.html");
const CSS: &str = include_str!("demo/demo.css");
const JS: &str = include_str!("demo/demo.js");

/// Progress reports a simulated job makes before it completes.
const STEPS: u32 = 20;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/demo", get(page(HTML, "text/html; charset=utf-8")))
        .route("/demo/demo.css", get(page(CSS, "text/css; charset=utf-8")))
        .route(
            "/demo/demo.js",
            get(page(JS, "text/javascript; charset=utf-8")),
        )
        .route("/demo/jobs", post(start_job))
        .route("/demo/jobs/{job_id}/drop", post(drop_socket))
}

fn page(
    body: &'static str,
    content_type: &'static str,
) -> impl Fn(State<AppState>) -> std::future::Ready<Response> + Clone {
    move |State(state): State<AppState>| {
        std::future::ready(match enabled(&state) {
            Ok(()) => (
                [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
                body,
            )
                .into_response(),
            Err(e) => e.into_response(),
        })
    }
}

fn enabled(state: &AppState) -> Result<(), ApiError> {
    match state.demo {
        Some(_) => Ok(()),
        None => Err(ApiError::NotFound(
            "demo mode is off (start the server with --demo)".into(),
        )),
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DemoJob {
    job_id: Uuid,
    client_token: String,
    websocket_url: String,
    duration_secs: f64,
}

async fn start_job(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    enabled(&state)?;
    let duration = state.demo.unwrap_or_default();
    let job_id = Uuid::new_v4();
    state
        .engine
        .create_job(job_id, Some(json!({"demo": true})))
        .await?;
    let minted = state.auth.mint(
        Role::Client,
        &format!("demo:{job_id}"),
        Some(job_id),
        3600,
        state.clock.now(),
    )?;
    let engine = state.engine.clone();
    let stop = state.shutdown.clone();
    state.tasks.spawn(async move {
        tokio::select! {
            _ = simulate(engine, job_id, duration) => {}
            _ = stop.cancelled() => {}
        }
    });
    let body = DemoJob {
        job_id,
        client_token: minted.token,
        websocket_url: state.websocket_url(&headers, job_id),
        duration_secs: duration.as_secs_f64(),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Reports progress in even steps over `duration`, then completes.
async fn simulate(engine: Engine, job_id: Uuid, duration: Duration) {
    let tick = duration / STEPS;
    for step in 1..=STEPS {
        tokio::time::sleep(tick).await;
        let body = if step < STEPS {
            EventBody::ProgressReported(ProgressReported {
                progress: f64::from(step) * 100.0 / f64::from(STEPS),
                message: Some(format!("Processing item {step} of {STEPS}")),
                data: Some(json!({"item": step})),
            })
        } else {
            EventBody::JobCompleted(JobCompleted {
                result: Some(json!({"items": STEPS})),
            })
        };
        if let Err(e) = engine
            .append(job_id, body, Some(format!("demo-{step}")))
            .await
        {
            tracing::warn!(job = %job_id, error = %e, "demo job stopped");
            return;
        }
    }
}

async fn drop_socket(
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    enabled(&state)?;
    let job_id = parse_job_id(&job_id)?;
    if state.engine.drop_socket(job_id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::Conflict {
            code: "no_live_socket",
            message: "the job has no open socket to drop".into(),
        })
    }
}
