//! The API's one error type: every failure a handler can return, mapped to the
//! contract's status code and `{"error": {"code", "message"}}` body. Server-side
//! failures are logged with their cause and answered with a generic message.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::request;
use crate::auth::AuthError;
use crate::domain::DomainError;
use crate::engine::EngineError;
use crate::log::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed input; `code` names what kind.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error(transparent)]
    Unauthorized(AuthError),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// What was asked for left the log by retention (410).
    #[error("{message}")]
    Gone { code: &'static str, message: String },
    /// The global log asked for from before retention's horizon (410): the
    /// log holds every event after the position given, not all before it.
    #[error("retention removed events up to position {0}: every event after it is in the log (resume with after={0}); older ones are in the archive (`rejoin replay --archive DIR`)")]
    BeforeHorizon(i64),
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request's body did not arrive within the body timeout (seconds).
    #[error("the request body did not arrive within {0} s")]
    RequestTimeout(f64),
    #[error("this method is not allowed on this route")]
    MethodNotAllowed,
    #[error("{0}")]
    NotImplemented(String),
    /// The server holds as many sockets as it may.
    #[error("the server is at its connection limit; retry later")]
    TooManyConnections,
    /// Too many connection attempts from one address; retry after the given
    /// number of seconds.
    #[error("too many connection attempts from this address; retry in {0} s")]
    RateLimited(u64),
    /// The log cannot be written or read; the cause is logged, not returned.
    #[error("the event log is unavailable")]
    Unavailable(String),
    /// This node is not ready, and says why (`/readyz`).
    #[error("{0}")]
    NotReady(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(AuthError::CannotMint) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unauthorized(AuthError::BadRequest(_)) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Gone { .. } | ApiError::BeforeHorizon(_) => StatusCode::GONE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unavailable(_) | ApiError::NotReady(_) | ApiError::TooManyConnections => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::Gone { code, .. } => code,
            ApiError::Unauthorized(AuthError::Missing) => "missing_token",
            ApiError::Unauthorized(AuthError::Expired) => "token_expired",
            ApiError::Unauthorized(AuthError::Invalid(_)) => "invalid_token",
            ApiError::Unauthorized(AuthError::CannotMint) => "minting_disabled",
            ApiError::Unauthorized(AuthError::BadRequest(_)) => "bad_request",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::BeforeHorizon(_) => "before_horizon",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::NotImplemented(_) => "not_implemented",
            ApiError::Unavailable(_) => "log_unavailable",
            ApiError::NotReady(_) => "not_ready",
            ApiError::TooManyConnections => "too_many_connections",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Unavailable(cause) => {
                tracing::error!(%cause, "request failed: log unavailable")
            }
            ApiError::Internal(cause) => tracing::error!(%cause, "request failed"),
            _ => {}
        }
        let status = self.status_code();
        // The documented body itself (`ErrorBody` is also the OpenAPI schema).
        let body = ErrorBody::new(self.code(), self.to_string());
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let ApiError::BeforeHorizon(horizon) = self {
            response
                .headers_mut()
                .insert("rejoin-horizon", HeaderValue::from(horizon));
        }
        if let ApiError::RateLimited(secs) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            // With its realm (RFC 6750 §3): Foundation on Linux crashes on a
            // bare `Bearer` challenge.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="rejoin""#),
            );
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::Unauthorized(e)
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::UnknownJob => ApiError::NotFound("job not found".into()),
            DomainError::JobFinished(_) => ApiError::Conflict {
                code: "job_finished",
                message: e.to_string(),
            },
            DomainError::IdempotencyKeyReused => ApiError::Conflict {
                code: "idempotency_key_reused",
                message: e.to_string(),
            },
            DomainError::TooManyWatchers(_) => ApiError::Conflict {
                code: "too_many_watchers",
                message: e.to_string(),
            },
            DomainError::InvalidEvent(message) => ApiError::BadRequest {
                code: "invalid_event",
                message,
            },
            DomainError::Archived(..) => ApiError::Gone {
                code: "job_archived",
                message: e.to_string(),
            },
            DomainError::Unreadable => ApiError::Conflict {
                code: "unreadable",
                message: e.to_string(),
            },
            DomainError::IdInUse(..) => ApiError::Conflict {
                code: "id_in_use",
                message: e.to_string(),
            },
            // The stream routes answer these in the protocol's own terms.
            DomainError::Stream(refusal) => ApiError::Conflict {
                code: "stream_refused",
                message: refusal.to_string(),
            },
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Domain(d) => d.into(),
            EngineError::Unavailable(cause) => ApiError::Unavailable(cause),
            EngineError::Internal(cause) => ApiError::Internal(cause),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // The one job or stream whose events these are is set aside.
            StoreError::Corrupt { .. } => {
                tracing::error!(error = %e, "a read reached an event that cannot be decoded");
                ApiError::Conflict {
                    code: "unreadable",
                    message: format!("{e}: it is set aside until the log is repaired"),
                }
            }
            other => ApiError::Unavailable(other.to_string()),
        }
    }
}

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
