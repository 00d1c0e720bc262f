//! The Durable Streams protocol as rejoin speaks it, for plain streams and
//! job streams alike: its headers, the refusals (status, code, message,
//! headers) and the pieces every answer is built from (offsets read from a
//! query, cursors, `control` events, ETags, the long-poll).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::Value;

use crate::domain::stream::{Offset, StreamRefusal};
use crate::domain::{DomainError, JobId};
use crate::engine::EngineError;
use crate::http::state::AppState;

pub(super) const NEXT_OFFSET: &str = "stream-next-offset";
pub(super) const UP_TO_DATE: &str = "stream-up-to-date";
pub(super) const CURSOR: &str = "stream-cursor";
pub(super) const CLOSED: &str = "stream-closed";
pub(super) const TTL: &str = "stream-ttl";
pub(super) const EXPIRES_AT: &str = "stream-expires-at";
pub(super) const SEQ: &str = "stream-seq";
pub(super) const FORKED_FROM: &str = "stream-forked-from";
pub(super) const FORK_OFFSET: &str = "stream-fork-offset";
pub(super) const FORK_SUB_OFFSET: &str = "stream-fork-sub-offset";
pub(super) const PRODUCER_ID: &str = "producer-id";
pub(super) const PRODUCER_EPOCH: &str = "producer-epoch";
pub(super) const PRODUCER_SEQ: &str = "producer-seq";
pub(super) const PRODUCER_EXPECTED_SEQ: &str = "producer-expected-seq";
pub(super) const PRODUCER_RECEIVED_SEQ: &str = "producer-received-seq";
pub(super) const SSE_ENCODING: &str = "stream-sse-data-encoding";

/// The largest body a catch-up read answers with; the rest follows from
/// its `Stream-Next-Offset`.
pub(super) const READ_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// How long an SSE response stays open before the server closes it (the
/// client reconnects from its last offset; proxies can collapse readers).
pub(super) const SSE_LIFETIME: Duration = Duration::from_secs(60);

/// A protocol answer that is not a success: status, a code and a message
/// (the same JSON error body as the job API's), headers.
pub(super) struct Refused {
    pub(super) status: StatusCode,
    code: &'static str,
    message: String,
    headers: Vec<(&'static str, String)>,
}

impl Refused {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let code = match status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::CONFLICT => "conflict",
            StatusCode::GONE => "gone",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "internal",
        };
        Refused {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// The same, with a code of its own.
    pub(super) fn coded(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    pub(super) fn with(mut self, name: &'static str, value: impl ToString) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let body = crate::http::error::ErrorBody::new(self.code, self.message);
        let mut response = (self.status, axum::Json(body)).into_response();
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(name), value);
            }
        }
        response
    }
}

pub(super) fn bad(message: impl Into<String>) -> Refused {
    Refused::new(StatusCode::BAD_REQUEST, message)
}

pub(super) fn not_found() -> Refused {
    Refused::new(StatusCode::NOT_FOUND, "stream not found").coded("stream_not_found")
}

impl From<EngineError> for Refused {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Domain(DomainError::Stream(r)) => refusal(r),
            EngineError::Domain(other) => {
                let code = match &other {
                    DomainError::IdInUse(..) => "id_in_use",
                    DomainError::Unreadable => "unreadable",
                    _ => "conflict",
                };
                Refused::new(StatusCode::CONFLICT, other.to_string()).coded(code)
            }
            EngineError::Unavailable(cause) => {
                tracing::warn!(%cause, "stream request refused: the log is unavailable");
                Refused::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the log is unavailable; retry",
                )
                .with("retry-after", 1)
            }
            EngineError::Internal(cause) => {
                tracing::error!(%cause, "stream request failed");
                Refused::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}

impl From<crate::log::StoreError> for Refused {
    fn from(e: crate::log::StoreError) -> Self {
        if let crate::log::StoreError::Corrupt { .. } = e {
            tracing::error!(error = %e, "a stream read reached an event that cannot be decoded");
            return Refused::new(
                StatusCode::CONFLICT,
                format!("{e}: the stream is set aside until the log is repaired"),
            )
            .coded("unreadable");
        }
        tracing::warn!(error = %e, "stream read failed");
        Refused::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the log is unavailable; retry",
        )
        .with("retry-after", 1)
    }
}

pub(super) fn refusal(r: StreamRefusal) -> Refused {
    let message = r.to_string();
    let conflict = |code| Refused::new(StatusCode::CONFLICT, message.clone()).coded(code);
    match r {
        StreamRefusal::NotFound => not_found(),
        StreamRefusal::Retained => Refused::new(StatusCode::GONE, message).coded("stream_retained"),
        StreamRefusal::ConfigMismatch => conflict("stream_exists"),
        StreamRefusal::ContentTypeMismatch => conflict("content_type_mismatch"),
        StreamRefusal::SeqRegression => conflict("stream_seq_regression"),
        StreamRefusal::Closed => conflict("stream_closed").with(CLOSED, "true"),
        StreamRefusal::StaleEpoch { current } => Refused::new(StatusCode::FORBIDDEN, message)
            .coded("stale_producer_epoch")
            .with(PRODUCER_EPOCH, current),
        StreamRefusal::EpochSeq => bad(message).coded("producer_epoch_seq"),
        StreamRefusal::SeqGap { expected, received } => conflict("producer_seq_gap")
            .with(PRODUCER_EXPECTED_SEQ, expected)
            .with(PRODUCER_RECEIVED_SEQ, received),
    }
}

pub(super) fn preflight() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, PUT, POST, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "Authorization, Content-Type, If-None-Match, Stream-Seq, Stream-TTL, \
             Stream-Expires-At, Stream-Closed, Producer-Id, Producer-Epoch, Producer-Seq, \
             Stream-Forked-From, Stream-Fork-Offset, Stream-Fork-Sub-Offset",
        ),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    response
}

/// The verified claims of the request's bearer token; 401 without one
/// (`what` names what needs it).
pub(super) async fn bearer(
    state: &AppState,
    headers: &HeaderMap,
    what: &str,
) -> Result<crate::auth::Claims, Refused> {
    let unauthorized = |message: String| {
        Refused::new(StatusCode::UNAUTHORIZED, message)
            .with("www-authenticate", r#"Bearer realm="rejoin""#)
    };
    let token = crate::http::extract::bearer_token(headers)
        .ok_or_else(|| unauthorized(format!("{what} need `Authorization: Bearer <token>`")))?;
    state
        .auth
        .verify(token)
        .await
        .map_err(|e| unauthorized(e.to_string()))
}

pub(super) async fn read_body(state: &AppState, body: Body) -> Result<Bytes, Refused> {
    let limit = state.settings.streams.max_body_bytes;
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        Refused::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {limit} bytes"),
        )
    })
}

pub(super) fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A non-negative decimal without leading zeros or signs.
pub(super) fn strict_integer(text: &str) -> Option<u64> {
    let ok = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    ok.then(|| text.parse().ok()).flatten()
}

pub(super) fn set(headers: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        headers.insert(name, value);
    }
}

pub(super) fn etag(path: &str, start: &str, end: &str, closed: bool) -> String {
    let path = base64::engine::general_purpose::STANDARD.encode(path);
    format!("\"{path}:{start}:{end}{}\"", if closed { ":c" } else { "" })
}

/// The read's query: `offset`, `live`, `cursor`.
pub(super) struct ReadQuery {
    pub offset: Option<String>,
    pub live: Option<String>,
    pub cursor: Option<String>,
}

pub(super) fn read_query(uri: &axum::http::Uri) -> Result<ReadQuery, Refused> {
    let axum::extract::Query(pairs) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
            .map_err(|e| bad(e.body_text()))?;
    let mut q = ReadQuery {
        offset: None,
        live: None,
        cursor: None,
    };
    for (key, value) in pairs {
        match key.as_str() {
            "offset" => {
                if q.offset.is_some() {
                    return Err(bad("give one offset"));
                }
                q.offset = Some(value);
            }
            "live" => q.live = Some(value),
            "cursor" => q.cursor = Some(value),
            _ => {}
        }
    }
    Ok(q)
}

/// Where a read starts.
pub(super) enum Start {
    Beginning,
    Now,
    At(Offset),
}

pub(super) fn parse_start(offset: Option<&str>) -> Result<Start, Refused> {
    match offset {
        None | Some("-1") => Ok(Start::Beginning),
        Some("now") => Ok(Start::Now),
        Some("") => Err(bad("offset must not be empty")),
        Some(o) => Offset::parse(o)
            .map(Start::At)
            .ok_or_else(|| bad("offset is not an offset of this server, -1 or now")),
    }
}

#[derive(Clone, Copy)]
pub(super) enum Live {
    LongPoll,
    Sse,
}

impl Live {
    /// The `live` parameter: none, `long-poll` or `sse`.
    pub(super) fn parse(live: Option<&str>) -> Result<Option<Live>, Refused> {
        match live {
            None => Ok(None),
            Some("long-poll") => Ok(Some(Live::LongPoll)),
            Some("sse") => Ok(Some(Live::Sse)),
            Some(_) => Err(bad("live must be long-poll or sse")),
        }
    }
}

/// A long-poll: `check` each time an event of `id` commits, until it finds
/// something (`Some`) or `--stream-long-poll-secs` pass (`None`), or the
/// server stops. It counts among the long-lived readers while it waits.
pub(super) async fn long_poll<T, F, Fut>(
    state: &AppState,
    id: JobId,
    mut check: F,
) -> Result<Option<T>, Refused>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, Refused>>,
{
    crate::http::upgrade::admit_capacity(state)
        .map_err(|e| Refused::new(e.status_code(), e.to_string()))?;
    let _counted = state.tasks.token();
    let mut head = state.engine.watch(id);
    let deadline = tokio::time::Instant::now() + state.settings.streams.long_poll;
    loop {
        if let Some(found) = check().await? {
            return Ok(Some(found));
        }
        tokio::select! {
            changed = head.changed() => {
                if changed.is_err() {
                    return Ok(None);
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Ok(None),
            _ = state.shutdown.cancelled() => return Ok(None),
        }
    }
}

/// The cursor of a live answer: the current 20-second interval since
/// 2024-10-09, moved past the client's when it has caught up with it.
pub(super) fn cursor(client: Option<&str>) -> String {
    const EPOCH: i64 = 1_728_432_000; // 2024-10-09T00:00:00Z
    const INTERVAL: i64 = 20;
    let now = chrono::Utc::now().timestamp();
    let current = (now - EPOCH) / INTERVAL;
    match client.and_then(|c| c.parse::<i64>().ok()) {
        Some(c) if c >= current => {
            let mut jitter = [0u8; 2];
            let _ = getrandom::fill(&mut jitter);
            let secs = 1 + i64::from(u16::from_le_bytes(jitter)) % 3600;
            (c + (secs / INTERVAL).max(1)).to_string()
        }
        _ => current.to_string(),
    }
}

pub(super) fn sse_frame(event: &str, payload: &str) -> String {
    let mut out = format!("event: {event}\n");
    // Every line break a client's parser knows (CRLF, CR, LF) starts a new
    // `data:` line, so no payload can end the event or forge a field.
    for line in payload.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
        out.push_str("data:");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

pub(super) fn control(
    offset: Offset,
    up_to_date: bool,
    closed: bool,
    client_cursor: Option<&str>,
) -> String {
    let mut body = serde_json::Map::new();
    body.insert("streamNextOffset".into(), Value::String(offset.to_string()));
    if closed {
        body.insert("streamClosed".into(), Value::Bool(true));
    } else {
        body.insert("streamCursor".into(), Value::String(cursor(client_cursor)));
        if up_to_date {
            body.insert("upToDate".into(), Value::Bool(true));
        }
    }
    sse_frame("control", &Value::Object(body).to_string())
}

/// A successful answer of a stream, plain or a job's: its status and the
/// protocol's headers, built the same way everywhere.
pub(super) struct Answer {
    status: StatusCode,
    body: Body,
    headers: Vec<(&'static str, String)>,
}

impl Answer {
    pub(super) fn new(status: StatusCode) -> Self {
        Answer {
            status,
            body: Body::empty(),
            headers: Vec::new(),
        }
    }

    pub(super) fn body(mut self, body: impl Into<Body>) -> Self {
        self.body = body.into();
        self
    }

    fn header(mut self, name: &'static str, value: impl ToString) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }

    pub(super) fn content_type(self, media: &str) -> Self {
        self.header("content-type", media)
    }

    /// `Stream-Next-Offset`.
    pub(super) fn next_offset(self, offset: impl ToString) -> Self {
        self.header(NEXT_OFFSET, offset)
    }

    /// `Stream-Up-To-Date: true` when it is.
    pub(super) fn up_to_date(self, yes: bool) -> Self {
        if yes {
            self.header(UP_TO_DATE, "true")
        } else {
            self
        }
    }

    /// `Stream-Closed: true` when it is.
    pub(super) fn closed(self, yes: bool) -> Self {
        if yes {
            self.header(CLOSED, "true")
        } else {
            self
        }
    }

    /// `Stream-Cursor`, moved past the client's as the protocol says.
    pub(super) fn cursor(self, client: Option<&str>) -> Self {
        let next = cursor(client);
        self.header(CURSOR, next)
    }

    pub(super) fn etag(self, tag: &str) -> Self {
        self.header("etag", tag)
    }

    pub(super) fn cache(self, policy: &str) -> Self {
        self.header("cache-control", policy)
    }

    pub(super) fn with(self, name: &'static str, value: impl ToString) -> Self {
        self.header(name, value)
    }

    pub(super) fn build(self) -> Response {
        let mut response = Response::new(self.body);
        *response.status_mut() = self.status;
        let h = response.headers_mut();
        for (name, value) in self.headers {
            set(h, name, &value);
        }
        response
    }
}
