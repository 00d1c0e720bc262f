//! Extractors that turn requests into checked values or contract errors:
//! the bearer token's claims, JSON bodies (size-limited), job ids.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::error::ApiError;
use super::state::AppState;
use crate::auth::{AuthError, Claims, Role};

/// The verified claims of the request's `Authorization: Bearer` token.
#[derive(Clone, Debug)]
pub struct Caller(pub Claims);

impl Caller {
    /// Refuses with 403 unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.0.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "a {} token may not do this",
                self.0.role.as_str()
            )))
        }
    }

    /// Allows `roles`, and the client token of `job`.
    pub fn require_or_client_of(&self, roles: &[Role], job: Uuid) -> Result<(), ApiError> {
        if self.0.is_client_of(job) {
            return Ok(());
        }
        if self.0.role == Role::Client {
            return Err(ApiError::Forbidden("this token is for another job".into()));
        }
        self.require(roles)
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in
/// any case), if the request has one: the one reading of it for every
/// route.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !parts.headers.contains_key(AUTHORIZATION) {
            return Err(AuthError::Missing.into());
        }
        let token = bearer_token(&parts.headers)
            .ok_or_else(|| AuthError::Invalid("expected `Authorization: Bearer <token>`".into()))?;
        Ok(Caller(state.auth.verify(token).await?))
    }
}

/// A caller with a service token: refused (401/403) before the request's ids
/// and body are looked at.
pub struct ServiceCaller(pub Claims);

impl FromRequestParts<AppState> for ServiceCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require(&[Role::Service])?;
        Ok(ServiceCaller(caller.0))
    }
}

/// A JSON body parsed into `T`. An empty body parses as `{}`; bodies over the
/// configured limit get 413; anything unparseable gets 400 naming the problem.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if let Some(ct) = req.headers().get(CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or_default();
            let mime = ct.split(';').next().unwrap_or_default().trim();
            if !mime.eq_ignore_ascii_case("application/json") {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "expected Content-Type application/json, got `{ct}`"
                )));
            }
        }
        let limit = state.settings.max_body_bytes;
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(limit)
            } else {
                ApiError::bad_request("bad_body", e.body_text())
            }
        })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid JSON body: {e}")))
    }
}

/// The parsed query string, or 400 `invalid_query` saying what was wrong.
pub fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

/// Parses a job id from a path or query value.
pub fn parse_job_id(text: &str) -> Result<Uuid, ApiError> {
    // The nil UUID is the log's own chain (its retention records), never a job.
    Uuid::parse_str(text)
        .ok()
        .filter(|id| *id != crate::domain::event::LOG_CHAIN)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_job_id",
                "jobId must be a UUID (not the nil UUID) such as 7f1c8a2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
            )
        })
}
