//! What every handler is given: the shared [`AppState`] and the settings
//! the routes read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::connections::Connections;
use super::error::ApiError;
use super::rate::{ConnectRate, LogEvery};
use super::request::TrustedProxies;
use crate::auth::Authority;
use crate::clock::Clock;
use crate::domain::JobId;
use crate::engine::Engine;
use crate::log::Log;

/// What the stream routes are configured with.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    /// `--stream-auth none`: no token needed.
    pub open: bool,
    pub max_body_bytes: usize,
    /// How long a long-poll waits for data.
    pub long_poll: Duration,
}

/// Settings of the upgrade and of the sockets it starts.
#[derive(Clone, Debug)]
pub struct UpgradeSettings {
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// Browser origins allowed besides the server's own; `*` allows any.
    pub allowed_origins: Vec<String>,
    pub max_frame_bytes: usize,
    pub send_queue: usize,
    /// Most open sockets; further upgrades get 503 before any work is done.
    pub max_connections: usize,
    /// Most watchers (sessions that have not ended) one job may have.
    pub max_watchers_per_job: usize,
}

impl UpgradeSettings {
    /// Whether `--allowed-origins` lists this browser origin (or `*`).
    pub fn lists_origin(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/');
        self.allowed_origins
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    }
}

/// Per (job, reason): when a rejection was last recorded, and how many were
/// skipped since.
type Seen = HashMap<(JobId, &'static str), (Instant, u64)>;

/// Rate limit for `connect_rejected`: one per (job, reason) per window.
#[derive(Debug)]
pub struct RejectionLog {
    window: Duration,
    seen: Mutex<Seen>,
}

impl RejectionLog {
    pub fn new(window: Duration) -> Self {
        RejectionLog {
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Drops the entries whose window has passed (run periodically, not per
    /// refusal).
    pub fn sweep(&self, now: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, (at, _)| now.saturating_duration_since(*at) < self.window);
    }

    /// `Some(suppressed)` when this rejection is to be recorded, carrying how
    /// many were skipped since the last one; `None` to skip it.
    pub fn admit(&self, job: JobId, code: &'static str) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match seen.get_mut(&(job, code)) {
            Some((at, skipped)) if now.duration_since(*at) < self.window => {
                *skipped += 1;
                None
            }
            Some(entry) => {
                let skipped = entry.1;
                *entry = (now, 0);
                Some(skipped)
            }
            None => {
                seen.insert((job, code), (now, 0));
                Some(0)
            }
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
    pub streams: StreamSettings,
}

/// Everything a handler needs: one pointer, so that the clone each request,
/// middleware layer and extractor makes is one reference count.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] points to.
pub struct Shared {
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
    pub capacity_warning: Arc<LogEvery>,
    /// Connection attempts per client address.
    pub connect_rate: Arc<ConnectRate>,
    /// Whose forwarding headers are believed (`--trusted-proxies`).
    pub proxies: Arc<TrustedProxies>,
    /// Every TCP connection: counts, caps and deadlines.
    pub connections: Arc<Connections>,
    /// Demo mode: how long a simulated job runs; `None` when off.
    pub demo: Option<std::time::Duration>,
}

impl AppState {
    /// The answer for a job the log does not hold: 410 `job_archived` (with
    /// when it finished) if retention removed it, else 404.
    pub async fn missing_job(&self, job_id: JobId) -> ApiError {
        match self.engine.archived(job_id).await {
            Ok(Some(removed)) => removed.refusal().into(),
            Ok(None) => ApiError::NotFound("job not found".into()),
            Err(e) => e.into(),
        }
    }

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
