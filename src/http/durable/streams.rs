//! Plain streams at `/v1/stream/{path}`: create, append, read (catch-up,
//! long-poll, SSE), HEAD, delete and fork, each a command the writer
//! decides and commits like a job's; reads come from the log by the
//! stream's id and seq.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use super::protocol::*;
use crate::auth::Role;
use crate::domain::event::{ForkOf, ProducerTuple, StreamData};
use crate::domain::stream::{
    is_json, media_type, parse_expires_at, parse_ttl, stream_id, AppendStream, BodyError,
    CreateStream, LifetimeError, Offset, StreamCommand, StreamRefusal, StreamState,
};
use crate::domain::{DomainError, EventBody, JobId, JobState};
use crate::engine::{EngineError, StreamDone};
use crate::http::extract::Caller;
use crate::http::state::AppState;

/// A plain stream's request (a job stream's are `jobs.rs`'s): the token,
/// then the method.
pub(super) async fn serve(state: &AppState, req: Request) -> Result<Response, Refused> {
    authorize(state, req.headers()).await?;
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    match method {
        Method::PUT => {
            let body = read_body(state, body).await?;
            create(state, &path, &headers, body).await
        }
        Method::POST => {
            let body = read_body(state, body).await?;
            append(state, &path, &headers, body).await
        }
        Method::GET => read(state, &path, &parts.uri, &headers).await,
        Method::HEAD => head(state, &path).await,
        Method::DELETE => delete(state, &path).await,
        _ => Err(Refused::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "streams answer GET, HEAD, PUT, POST, DELETE and OPTIONS",
        )
        .with("allow", "GET, HEAD, PUT, POST, DELETE, OPTIONS")),
    }
}

/// How deep forks of forks may nest: a read of the deepest reads every
/// stream above it.
pub(super) const MAX_FORK_DEPTH: usize = 64;

/// Streams need a stream or service token unless `--stream-auth none`.
async fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), Refused> {
    if state.settings.streams.open {
        return Ok(());
    }
    let claims = bearer(state, headers, "streams").await?;
    Caller(claims)
        .require(&[Role::Stream, Role::Service])
        .map_err(|_| {
            Refused::new(
                StatusCode::FORBIDDEN,
                "streams need a stream or service token",
            )
        })
}

/// The stream at `path` if it is there now (not deleted, not expired):
/// for a read, as the log has it now (on a shared log other nodes may have
/// written since); for a write, as this node holds it (the writer decides
/// on the log's latest word).
async fn open_stream(
    state: &AppState,
    path: &str,
    read: bool,
) -> Result<(JobId, std::sync::Arc<JobState>), Refused> {
    let id = stream_id(path);
    let held = if read {
        state.engine.stream_latest(id).await?
    } else {
        state.engine.stream(id).await?
    };
    let held = held.ok_or_else(not_found)?;
    let stream = held.stream.as_ref().ok_or_else(not_found)?;
    if stream.retained {
        return Err(refusal(StreamRefusal::Retained));
    }
    let now = state.engine.now();
    if !stream.is_open_at(now, state.engine.stream_last_read(id)) {
        return Err(not_found());
    }
    Ok((id, held))
}

fn of(held: &JobState) -> &StreamState {
    held.stream.as_ref().expect("checked by open_stream")
}

async fn create(
    state: &AppState,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, Refused> {
    let forked_from = header_text(headers, FORKED_FROM).map(str::to_owned);
    let given_type = header_text(headers, header::CONTENT_TYPE.as_str())
        .map(str::trim)
        .filter(|t| valid_media_type(t))
        .map(str::to_owned);
    let ttl = header_text(headers, TTL);
    let expires = header_text(headers, EXPIRES_AT);
    if ttl.is_some() && expires.is_some() {
        return Err(bad("give Stream-TTL or Stream-Expires-At, not both"));
    }
    let mut expires_at = expires.map(str::to_owned);
    let lifetime = |e: LifetimeError| bad(e.to_string());
    let mut ttl_secs = ttl.map(parse_ttl).transpose().map_err(lifetime)?;
    if let Some(e) = expires {
        parse_expires_at(e, state.engine.now()).map_err(lifetime)?;
    }
    let closed = header_text(headers, CLOSED).is_some_and(|c| c.eq_ignore_ascii_case("true"));
    let fork_offset = header_text(headers, FORK_OFFSET);
    if let Some(o) = fork_offset {
        Offset::parse(o)
            .ok_or_else(|| bad("Stream-Fork-Offset is not an offset of this server"))?;
    }
    let sub_offset = match header_text(headers, FORK_SUB_OFFSET) {
        None if headers.contains_key(FORK_SUB_OFFSET) => {
            return Err(bad("Stream-Fork-Sub-Offset must be a whole number"))
        }
        None => None,
        Some(_) if forked_from.is_none() => {
            return Err(bad("Stream-Fork-Sub-Offset needs Stream-Forked-From"))
        }
        Some(text) => Some(
            strict_integer(text.trim())
                .ok_or_else(|| bad("Stream-Fork-Sub-Offset must be a whole number"))?,
        )
        .filter(|n| *n > 0),
    };
    let mut prefix = None;
    let (content_type, fork) = match &forked_from {
        None => (
            given_type.unwrap_or_else(|| "application/octet-stream".into()),
            None,
        ),
        Some(source_path) => {
            let (source_id, source) = match open_stream(state, source_path, true).await {
                Ok(found) => found,
                Err(r) if r.status == StatusCode::NOT_FOUND => {
                    return Err(Refused::new(
                        StatusCode::NOT_FOUND,
                        "source stream not found",
                    ))
                }
                Err(r) if r.status == StatusCode::GONE => {
                    return Err(Refused::new(
                        StatusCode::CONFLICT,
                        "the source stream was deleted (only its forks read it now)",
                    ))
                }
                Err(r) => return Err(r),
            };
            let src = of(&source);
            // A read of a fork reads its sources first: chains are bounded.
            let mut depth = 1;
            let mut up = src.fork.as_ref().map(|f| f.source_id);
            while let Some(source) = up {
                depth += 1;
                if depth > MAX_FORK_DEPTH {
                    return Err(bad(format!(
                        "forks nest at most {MAX_FORK_DEPTH} deep: fork a stream nearer its origin"
                    )));
                }
                let held = state.engine.stream(source).await?;
                up = held.and_then(|h| h.stream.as_ref()?.fork.as_ref().map(|f| f.source_id));
            }
            if let Some(t) = &given_type {
                if media_type(t) != media_type(&src.content_type) {
                    return Err(Refused::new(
                        StatusCode::CONFLICT,
                        "the content type does not match the source stream's",
                    ));
                }
            }
            let at = match fork_offset {
                Some(o) => Offset::parse(o).unwrap_or_default(),
                None => src.tail,
            };
            if at > src.tail {
                return Err(bad("Stream-Fork-Offset is beyond the source stream's tail"));
            }
            if let Some(n) = sub_offset {
                // The fork also takes the first `n` of the source's next
                // append after the offset, as the start of its own data.
                let (next, _) = collect(state, source_id, &source, Some(at)).await?;
                let first = next.first().ok_or_else(|| {
                    bad("Stream-Fork-Sub-Offset: the source has no data after the fork offset")
                })?;
                prefix = Some(first.data.prefix(n).ok_or_else(|| {
                    bad("Stream-Fork-Sub-Offset is beyond the source's next append")
                })?);
            }
            let fork = ForkOf {
                source_path: source_path.clone(),
                source_id,
                from_seq: src.first_seq,
                offset: at.to_string(),
                through_seq: src.seq_after(at).min(source.head_seq),
                sub_offset,
            };
            // A fork without an expiry of its own takes its source's.
            if ttl_secs.is_none() && expires.is_none() {
                ttl_secs = src.ttl_secs;
                expires_at = src.expires_at_text.clone();
            }
            (
                given_type.unwrap_or_else(|| src.content_type.clone()),
                Some(fork),
            )
        }
    };
    let data = StreamData::from_body(is_json(&content_type), &body, true).map_err(body_error)?;
    let data = match prefix {
        Some(p) => Some(p.join(data)),
        None => data,
    };
    let command = StreamCommand::Create(CreateStream {
        path: path.to_owned(),
        content_type: content_type.clone(),
        ttl_secs,
        expires_at,
        closed,
        data,
        fork,
        fork_offset_given: fork_offset.is_some(),
    });
    let id = stream_id(path);
    let done = match state.engine.stream_command(id, command).await {
        Err(EngineError::Domain(DomainError::Stream(StreamRefusal::Retained))) => {
            return Err(Refused::new(
                StatusCode::CONFLICT,
                "a deleted stream's forks still read it: its path is not free yet",
            ))
        }
        other => other?,
    };
    let location = absolute_url(state, headers, path);
    let (_, held) = open_stream(state, path, true).await?;
    let stream = of(&held);
    let status = match done {
        StreamDone::Existing => StatusCode::OK,
        _ => StatusCode::CREATED,
    };
    let mut answer = Answer::new(status)
        .content_type(&stream.content_type)
        .next_offset(stream.tail)
        .closed(stream.closed);
    if status == StatusCode::CREATED {
        answer = answer.with("location", location);
    }
    Ok(answer.build())
}

/// The stream's URL as clients reach it: `--public-url`, or the Host the
/// request came to.
fn absolute_url(state: &AppState, headers: &HeaderMap, path: &str) -> String {
    match &state.settings.public_url {
        Some(base) => format!("{}{path}", base.trim_end_matches('/')),
        None => {
            let host = header_text(headers, header::HOST.as_str()).unwrap_or("localhost");
            let secure = header_text(headers, "x-forwarded-proto")
                .is_some_and(|p| p.eq_ignore_ascii_case("https"));
            format!("{}://{host}{path}", if secure { "https" } else { "http" })
        }
    }
}

fn valid_media_type(t: &str) -> bool {
    let media = t.split(';').next().unwrap_or("").trim();
    let Some((a, b)) = media.split_once('/') else {
        return false;
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&c))
    };
    token(a) && token(b)
}

fn body_error(e: BodyError) -> Refused {
    bad(e.to_string())
}

async fn append(
    state: &AppState,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, Refused> {
    let close = header_text(headers, CLOSED).is_some_and(|c| c.eq_ignore_ascii_case("true"));
    let producer = producer(headers)?;
    let stream_seq = header_text(headers, SEQ).map(str::to_owned);
    let content_type = header_text(headers, header::CONTENT_TYPE.as_str()).map(str::to_owned);
    if body.is_empty() && !close {
        return Err(bad("an append needs a body (or Stream-Closed: true)"));
    }
    let (id, held) = open_stream(state, path, false).await?;
    let data = if body.is_empty() {
        None
    } else {
        let Some(ct) = &content_type else {
            return Err(bad("an append needs a Content-Type"));
        };
        if media_type(ct) != media_type(&of(&held).content_type) {
            return Err(Refused::new(
                StatusCode::CONFLICT,
                "the content type does not match the stream's",
            ));
        }
        StreamData::from_body(is_json(&of(&held).content_type), &body, false).map_err(body_error)?
    };
    let command = StreamCommand::Append(AppendStream {
        content_type,
        data,
        stream_seq,
        producer: producer.clone(),
        close,
    });
    let done = match state.engine.stream_command(id, command).await {
        Err(EngineError::Domain(DomainError::Stream(StreamRefusal::Closed))) => {
            let tail = current_tail(state, id).await;
            return Err(refusal(StreamRefusal::Closed).with(NEXT_OFFSET, tail));
        }
        other => other?,
    };
    let after = state.engine.stream(id).await?.ok_or_else(not_found)?;
    let stream = of(&after);
    let (status, offset) = match &done {
        StreamDone::Appended(events) => {
            let offset = events
                .iter()
                .rev()
                .find_map(|e| match &e.body {
                    EventBody::StreamAppended(a) => Some(a.offset.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| stream.tail.to_string());
            // A producer's accepted data is 200; a close alone, or an
            // append without a producer, has nothing to say: 204.
            let status = if producer.is_some() && !body.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::NO_CONTENT
            };
            (status, offset)
        }
        _ => (StatusCode::NO_CONTENT, stream.tail.to_string()),
    };
    let mut answer = Answer::new(status)
        .next_offset(offset)
        .closed(stream.closed && (close || matches!(done, StreamDone::Duplicate(_))));
    if let Some(p) = &producer {
        let seq = match done {
            StreamDone::Duplicate(seq) => seq,
            _ => p.seq,
        };
        answer = answer.with(PRODUCER_EPOCH, p.epoch).with(PRODUCER_SEQ, seq);
    }
    Ok(answer.build())
}

async fn current_tail(state: &AppState, id: JobId) -> String {
    match state.engine.stream_latest(id).await {
        Ok(Some(held)) => held
            .stream
            .as_ref()
            .map(|s| s.tail.to_string())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// The producer headers: all three or none.
fn producer(headers: &HeaderMap) -> Result<Option<ProducerTuple>, Refused> {
    let id = header_text(headers, PRODUCER_ID);
    let epoch = header_text(headers, PRODUCER_EPOCH);
    let seq = header_text(headers, PRODUCER_SEQ);
    let (id, epoch, seq) =
        match (id, epoch, seq) {
            (None, None, None) => return Ok(None),
            (Some(i), Some(e), Some(s)) => (i, e, s),
            _ => return Err(bad(
                "Producer-Id, Producer-Epoch and Producer-Seq go together: give all three or none",
            )),
        };
    if id.is_empty() {
        return Err(bad("Producer-Id must not be empty"));
    }
    const MAX_SAFE: u64 = (1 << 53) - 1;
    let number = |text: &str, name: &str| {
        text.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| text.parse::<u64>().ok())
            .flatten()
            .filter(|n| !text.is_empty() && *n <= MAX_SAFE)
            .ok_or_else(|| bad(format!("{name} must be a non-negative integer")))
    };
    Ok(Some(ProducerTuple {
        id: id.to_owned(),
        epoch: number(epoch, "Producer-Epoch")?,
        seq: number(seq, "Producer-Seq")?,
    }))
}

async fn delete(state: &AppState, path: &str) -> Result<Response, Refused> {
    let (id, _) = open_stream(state, path, false).await?;
    state.engine.delete_stream(id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn head(state: &AppState, path: &str) -> Result<Response, Refused> {
    let (_, held) = open_stream(state, path, true).await?;
    let stream = of(&held);
    let mut answer = Answer::new(StatusCode::OK)
        .content_type(&stream.content_type)
        .next_offset(stream.tail)
        .cache("no-store")
        .closed(stream.closed);
    if let Some(ttl) = stream.ttl_secs {
        answer = answer.with(TTL, ttl);
    }
    if let Some(e) = &stream.expires_at_text {
        answer = answer.with(EXPIRES_AT, e);
    }
    let mut response = answer.build();
    set(
        response.headers_mut(),
        header::ETAG.as_str(),
        &etag(path, "-1", &stream.tail.to_string(), stream.closed),
    );
    Ok(response)
}

/// One append's data, with the offset after it.
struct Chunk {
    offset: Offset,
    data: StreamData,
}

async fn read(
    state: &AppState,
    path: &str,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Result<Response, Refused> {
    let q = read_query(uri)?;
    let start = parse_start(q.offset.as_deref())?;
    let live = Live::parse(q.live.as_deref())?;
    if live.is_some() && q.offset.is_none() {
        return Err(bad("a live read needs an offset"));
    }
    let (id, held) = open_stream(state, path, true).await?;
    state.engine.stream_read(id, &held);
    let stream = of(&held).clone();
    let json = is_json(&stream.content_type);
    if matches!(live, Some(Live::Sse)) {
        let after = match start {
            Start::Beginning => None,
            Start::Now => Some(stream.tail),
            Start::At(o) => Some(o),
        };
        let base64 = !(json || media_type(&stream.content_type).starts_with("text/"));
        // A live reader holds one of the places sockets hold.
        crate::http::upgrade::admit_capacity(state)
            .map_err(|e| Refused::new(e.status_code(), e.to_string()))?;
        return Ok(sse(state.clone(), id, (json, base64), after, q.cursor));
    }
    if matches!(start, Start::Now) && live.is_none() {
        return Ok(Answer::new(StatusCode::OK)
            .body(if json { "[]" } else { "" })
            .content_type(&stream.content_type)
            .next_offset(stream.tail)
            .up_to_date(true)
            .cache("no-store")
            .closed(stream.closed)
            .build());
    }
    let after = match start {
        Start::Beginning => None,
        Start::Now => Some(stream.tail),
        Start::At(o) => Some(o),
    };
    let (mut chunks, mut complete) = collect(state, id, &held, after).await?;
    let mut current = held;
    if matches!(live, Some(Live::LongPoll)) && chunks.is_empty() {
        let caught_up = after.is_none_or(|a| a >= of(&current).tail);
        if caught_up {
            if of(&current).closed {
                return Ok(Answer::new(StatusCode::NO_CONTENT)
                    .next_offset(of(&current).tail)
                    .up_to_date(true)
                    .closed(true)
                    .build());
            }
            let waited = wait_for_more(state, id, of(&current).tail).await?;
            state.engine.stream_read(id, &current);
            match waited {
                Some(now) => {
                    current = now;
                    let (c, done) = collect(state, id, &current, after).await?;
                    chunks = c;
                    complete = done;
                }
                None => {
                    let now = state
                        .engine
                        .stream_latest(id)
                        .await?
                        .ok_or_else(not_found)?;
                    let s = of(&now);
                    return Ok(Answer::new(StatusCode::NO_CONTENT)
                        .next_offset(after.unwrap_or(s.tail))
                        .up_to_date(true)
                        .cursor(q.cursor.as_deref())
                        .closed(s.closed && after.is_none_or(|a| a >= s.tail))
                        .build());
                }
            }
        }
    }
    let s = of(&current);
    let next = chunks.last().map_or(s.tail, |c| c.offset);
    let up_to_date = complete && next >= s.tail;
    let at_end = up_to_date && s.closed;
    let tag = etag(
        path,
        q.offset.as_deref().unwrap_or("-1"),
        &next.to_string(),
        at_end,
    );
    if header_text(headers, header::IF_NONE_MATCH.as_str()) == Some(tag.as_str()) {
        return Ok(Answer::new(StatusCode::NOT_MODIFIED).etag(&tag).build());
    }
    let cache = if state.settings.streams.open {
        "public, max-age=60, stale-while-revalidate=300"
    } else {
        "private, max-age=60, stale-while-revalidate=300"
    };
    let mut answer = Answer::new(StatusCode::OK)
        .body(render(json, &chunks))
        .content_type(&s.content_type)
        .next_offset(next)
        .etag(&tag)
        .up_to_date(up_to_date)
        .closed(at_end)
        .cache(cache);
    if live.is_some() {
        answer = answer.cursor(q.cursor.as_deref());
    }
    Ok(answer.build())
}

/// The body of a read: the bytes, or a JSON stream's messages as one array.
fn render(json: bool, chunks: &[Chunk]) -> Vec<u8> {
    if json {
        let mut out = vec![b'['];
        let mut first = true;
        for c in chunks {
            if let StreamData::Json(messages) = &c.data {
                for m in messages {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    out.extend_from_slice(m.to_string().as_bytes());
                }
            }
        }
        out.push(b']');
        out
    } else {
        let mut out = Vec::with_capacity(chunks.iter().map(|c| c.data.size() as usize).sum());
        for c in chunks {
            c.data.write_to(&mut out);
        }
        out
    }
}

/// The stream's data after `after` (all of it: `None`), up to a chunk's
/// worth; `true` when that is all there is.
async fn collect(
    state: &AppState,
    id: JobId,
    held: &JobState,
    after: Option<Offset>,
) -> Result<(Vec<Chunk>, bool), Refused> {
    let stream = of(held);
    let mut out = Vec::new();
    let mut budget = READ_CHUNK_BYTES;
    let from = match after {
        Some(a) if a.index >= stream.start().index => stream.seq_after(a),
        _ => stream.first_seq - 1,
    };
    let complete =
        collect_range(state, id, from, held.head_seq, after, &mut out, &mut budget).await?;
    Ok((out, complete))
}

/// Data events of `id` with `from < seq <= through`, past `after`; a fork's
/// `stream_created` brings its source's data before its own. Returns
/// whether everything fit the budget.
fn collect_range<'a>(
    state: &'a AppState,
    id: JobId,
    from: i64,
    through: i64,
    after: Option<Offset>,
    out: &'a mut Vec<Chunk>,
    budget: &'a mut usize,
) -> futures_util::future::BoxFuture<'a, Result<bool, Refused>> {
    Box::pin(async move {
        let key = id.to_string();
        let mut pages = state.engine.replay(&key, from, through);
        while let Some(events) = pages.next_events().await? {
            for event in events {
                let (offset, data) = match event.body {
                    EventBody::StreamCreated(c) => {
                        if let Some(f) = &c.fork {
                            let fork_at = Offset::parse(&f.offset).unwrap_or_default();
                            if after.is_none_or(|a| a < fork_at) {
                                let complete = collect_range(
                                    state,
                                    f.source_id,
                                    f.from_seq - 1,
                                    f.through_seq,
                                    after,
                                    out,
                                    budget,
                                )
                                .await?;
                                if !complete {
                                    return Ok(false);
                                }
                            }
                        }
                        (c.offset, c.data)
                    }
                    EventBody::StreamAppended(a) => (a.offset, a.data),
                    _ => continue,
                };
                let Some(data) = data else { continue };
                let offset = Offset::parse(&offset).unwrap_or_default();
                if after.is_some_and(|a| offset <= a) {
                    continue;
                }
                let size = data.size() as usize;
                if !out.is_empty() && size > *budget {
                    return Ok(false);
                }
                *budget = budget.saturating_sub(size);
                out.push(Chunk { offset, data });
            }
        }
        Ok(true)
    })
}

/// Waits until the stream moves past `tail` (data, a close or its end) or
/// the long-poll's time is up (`None`).
async fn wait_for_more(
    state: &AppState,
    id: JobId,
    tail: Offset,
) -> Result<Option<std::sync::Arc<JobState>>, Refused> {
    long_poll(state, id, || async {
        let now = state
            .engine
            .stream_latest(id)
            .await?
            .ok_or_else(not_found)?;
        match now.stream.as_ref() {
            Some(s) if s.deleted => Err(not_found()),
            Some(s) if s.tail > tail || s.closed => Ok(Some(now)),
            _ => Ok(None),
        }
    })
    .await
}

/// A Server-Sent Events reader: the data after `after`, then each append as
/// it commits, a `control` event after every `data` event; it ends with the
/// stream's close, or after a minute (the client resumes from its offset).
fn sse(
    state: AppState,
    id: JobId,
    (json, base64): (bool, bool),
    after: Option<Offset>,
    client_cursor: Option<String>,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(16);
    let task_state = state.clone();
    state.tasks.spawn(async move {
        let state = task_state;
        let ended = tokio::time::Instant::now() + SSE_LIFETIME;
        let mut position = after;
        let mut head = state.engine.watch(id);
        let mut first = true;
        loop {
            let Ok(Some(held)) = state.engine.stream_latest(id).await else {
                break;
            };
            let Some(s) = held.stream.clone() else { break };
            if s.deleted {
                break;
            }
            let Ok((chunks, complete)) = collect(&state, id, &held, position).await else {
                break;
            };
            state.engine.stream_read(id, &held);
            let mut sent_any = false;
            for c in &chunks {
                let payload = if json {
                    String::from_utf8_lossy(&render(true, std::slice::from_ref(c))).into_owned()
                } else if base64 {
                    base64::engine::general_purpose::STANDARD.encode(c.data.bytes())
                } else {
                    String::from_utf8_lossy(&c.data.bytes()).into_owned()
                };
                position = Some(c.offset);
                let up_to_date = complete && c.offset >= s.tail;
                let mut frame = sse_frame("data", &payload);
                frame.push_str(&control(
                    c.offset,
                    up_to_date,
                    up_to_date && s.closed,
                    client_cursor.as_deref(),
                ));
                if tx.send(Ok(Bytes::from(frame))).await.is_err() {
                    return;
                }
                sent_any = true;
            }
            let at = position.unwrap_or(s.start());
            let at_tail = complete && at >= s.tail;
            if at_tail && s.closed {
                if !sent_any {
                    let _ = tx
                        .send(Ok(Bytes::from(control(s.tail, true, true, None))))
                        .await;
                }
                return;
            }
            if !sent_any && (first || !complete) {
                let frame = control(
                    if at_tail { s.tail } else { at },
                    at_tail,
                    false,
                    client_cursor.as_deref(),
                );
                if tx.send(Ok(Bytes::from(frame))).await.is_err() {
                    return;
                }
            }
            first = false;
            if position.is_none() {
                position = Some(s.start().max(at));
            }
            if !complete {
                continue;
            }
            tokio::select! {
                changed = head.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(ended) => break,
                _ = state.shutdown.cancelled() => break,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = crate::http::stream::receiver_stream(rx);
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    set(h, header::CONTENT_TYPE.as_str(), "text/event-stream");
    set(h, header::CACHE_CONTROL.as_str(), "no-cache");
    if base64 {
        set(h, SSE_ENCODING, "base64");
    }
    response
}
