//! Durable Streams: a stream's state as a fold of its events, and the pure
//! decisions of what a stream command appends.
//!
//! A stream lives in the log like a job: its events share the job id column
//! (the stream's id, derived from its path), its seqs and its hash chain. A
//! stream deleted (or expired) and created again at the same path is a new
//! incarnation of the same id: its `stream_created` starts it, and reads
//! never reach back past it.
//!
//! Offsets are `IIIIIIIIIIIIIIII_BBBBBBBBBBBBBBBB`: sixteen digits of index
//! (the event's seq, shifted past the source's for a fork) and sixteen of
//! size (bytes, or messages on a JSON stream, since the stream began), so
//! that they sort as the stream's order.

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::event::{
    EventBody, ForkOf, JobId, ProducerTuple, StreamAppended, StreamCreated, StreamData,
    StreamDeleted, StreamTouched,
};

/// A position in a stream.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Offset {
    pub index: u64,
    pub size: u64,
}

impl Offset {
    /// Parses an offset this server gave out: two runs of sixteen digits.
    pub fn parse(text: &str) -> Option<Offset> {
        let (index, size) = text.split_once('_')?;
        let digits = |s: &str| s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(index) || !digits(size) {
            return None;
        }
        Some(Offset {
            index: index.parse().ok()?,
            size: size.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016}_{:016}", self.index, self.size)
    }
}

/// The content type as streams compare it: the media type without its
/// parameters, lower case.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// A JSON stream keeps message boundaries and answers reads with arrays.
pub fn is_json(content_type: &str) -> bool {
    media_type(content_type) == "application/json"
}

/// Why a body is not a valid append to a JSON stream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is not valid JSON")]
    InvalidJson,
    #[error("an empty JSON array appends nothing")]
    EmptyArray,
}

impl StreamData {
    /// The data a request body carries: bytes as they came, or on a JSON
    /// stream its messages (an array flattened one level). `None`: nothing
    /// (an empty body, or `[]` where it may create an empty stream).
    pub fn from_body(json: bool, body: &[u8], create: bool) -> Result<Option<Self>, BodyError> {
        if body.is_empty() {
            return Ok(None);
        }
        if !json {
            return Ok(Some(StreamData::Bytes(
                base64::engine::general_purpose::STANDARD.encode(body),
            )));
        }
        let value: Value = serde_json::from_slice(body).map_err(|_| BodyError::InvalidJson)?;
        let messages = match value {
            Value::Array(items) if items.is_empty() => {
                return if create {
                    Ok(None)
                } else {
                    Err(BodyError::EmptyArray)
                };
            }
            Value::Array(items) => items,
            one => vec![one],
        };
        Ok(Some(StreamData::Json(messages)))
    }

    /// Its first `n` bytes, or messages; `None` when it holds fewer.
    pub fn prefix(&self, n: u64) -> Option<StreamData> {
        let n = usize::try_from(n).ok()?;
        Some(match self {
            StreamData::Bytes(_) => StreamData::Bytes(
                base64::engine::general_purpose::STANDARD.encode(self.bytes().get(..n)?),
            ),
            StreamData::Json(m) => StreamData::Json(m.get(..n)?.to_vec()),
        })
    }

    /// This data followed by `more` (of the same kind).
    pub fn join(self, more: Option<StreamData>) -> StreamData {
        match (self, more) {
            (StreamData::Json(mut a), Some(StreamData::Json(b))) => {
                a.extend(b);
                StreamData::Json(a)
            }
            (StreamData::Bytes(a), Some(b @ StreamData::Bytes(_))) => {
                let engine = base64::engine::general_purpose::STANDARD;
                let mut bytes = engine.decode(a).unwrap_or_default();
                bytes.extend(b.bytes());
                StreamData::Bytes(engine.encode(bytes))
            }
            (a, _) => a,
        }
    }

    /// How far it moves the offset's size: bytes, or messages.
    pub fn size(&self) -> u64 {
        match self {
            StreamData::Bytes(b) => decoded_len(b) as u64,
            StreamData::Json(m) => m.len() as u64,
        }
    }

    /// Appends its bytes to `out` (decoded straight into it, with no copy
    /// of its own).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            StreamData::Bytes(b) => {
                let _ = base64::engine::general_purpose::STANDARD.decode_vec(b, out);
            }
            StreamData::Json(m) => {
                for (i, v) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(v.to_string().as_bytes());
                }
            }
        }
    }

    /// The bytes (base64 decoded); a JSON stream's messages, comma-joined.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

fn decoded_len(b64: &str) -> usize {
    let pad = b64.bytes().rev().take_while(|b| *b == b'=').count();
    (b64.len() / 4 * 3).saturating_sub(pad)
}

/// The longest lifetime a stream may be given, by `Stream-TTL` or by a
/// `Stream-Expires-At` this far ahead: ten years (365-day years).
pub const MAX_LIFETIME_SECS: u64 = 10 * 365 * 24 * 3600;

/// Why a stream's lifetime is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LifetimeError {
    #[error("Stream-TTL must be a whole number of seconds, without sign or leading zeros")]
    TtlSyntax,
    #[error("Stream-TTL must be at least 1 second")]
    TtlZero,
    #[error("Stream-TTL must be at most {MAX_LIFETIME_SECS} seconds (ten years)")]
    TtlTooLong,
    #[error("Stream-Expires-At must be an RFC 3339 timestamp")]
    ExpiresSyntax,
    #[error("Stream-Expires-At is not in the future")]
    ExpiresPast,
    #[error("Stream-Expires-At must be at most ten years ahead")]
    ExpiresTooFar,
}

/// A `Stream-TTL` as given: a whole number of seconds, from 1 to
/// [`MAX_LIFETIME_SECS`].
pub fn parse_ttl(text: &str) -> Result<u64, LifetimeError> {
    let digits = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !digits {
        return Err(LifetimeError::TtlSyntax);
    }
    // More digits than any allowed value has: too long, whatever they say.
    let secs = text.parse::<u64>().unwrap_or(u64::MAX);
    match secs {
        0 => Err(LifetimeError::TtlZero),
        s if s > MAX_LIFETIME_SECS => Err(LifetimeError::TtlTooLong),
        s => Ok(s),
    }
}

/// A `Stream-Expires-At` as given: an RFC 3339 instant after `now` and at
/// most [`MAX_LIFETIME_SECS`] ahead of it.
pub fn parse_expires_at(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, LifetimeError> {
    let at = DateTime::parse_from_rfc3339(text)
        .map_err(|_| LifetimeError::ExpiresSyntax)?
        .with_timezone(&Utc);
    if at <= now {
        return Err(LifetimeError::ExpiresPast);
    }
    let horizon = chrono::TimeDelta::try_seconds(MAX_LIFETIME_SECS as i64)
        .and_then(|d| now.checked_add_signed(d));
    if horizon.is_some_and(|h| at > h) {
        return Err(LifetimeError::ExpiresTooFar);
    }
    Ok(at)
}

/// `from` plus `secs` seconds; `None` past the calendar's end (a lifetime
/// that long never ends).
pub fn after_secs(from: DateTime<Utc>, secs: u64) -> Option<DateTime<Utc>> {
    let secs = i64::try_from(secs).ok()?;
    from.checked_add_signed(chrono::TimeDelta::try_seconds(secs)?)
}

/// A producer's place: its epoch and the last seq accepted in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerState {
    pub epoch: u64,
    pub seq: u64,
}

/// A stream's incarnation as the log tells it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamState {
    pub path: String,
    pub content_type: String,
    pub ttl_secs: Option<u64>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The `Stream-Expires-At` as it was given (compared on a repeated PUT).
    pub expires_at_text: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The seq of the `stream_created` that began this incarnation.
    pub first_seq: i64,
    pub fork: Option<ForkOf>,
    /// The offset after the last data.
    pub tail: Offset,
    pub closed: bool,
    /// The producer tuple whose append closed the stream.
    pub closed_by: Option<ProducerTuple>,
    /// Deleted, or expired: the path serves nothing until created again.
    pub deleted: bool,
    /// Deleted or expired while forks read its data: gone (410) until the
    /// last fork ends, its path not free.
    #[serde(default)]
    pub retained: bool,
    pub last_stream_seq: Option<String>,
    pub producers: BTreeMap<String, ProducerState>,
    /// The last write, or the last reads recorded (`stream_touched`): a TTL
    /// runs from here.
    pub active_at: DateTime<Utc>,
}

impl StreamState {
    /// Folds one event of the stream's id.
    pub fn apply(stream: &mut Option<StreamState>, seq: i64, at: DateTime<Utc>, body: &EventBody) {
        match body {
            EventBody::StreamCreated(c) => {
                *stream = Some(StreamState {
                    path: c.path.clone(),
                    content_type: c.content_type.clone(),
                    ttl_secs: c.ttl_secs,
                    expires_at: c
                        .expires_at
                        .as_deref()
                        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| t.with_timezone(&Utc)),
                    expires_at_text: c.expires_at.clone(),
                    created_at: at,
                    first_seq: seq,
                    fork: c.fork.clone(),
                    tail: Offset::parse(&c.offset).unwrap_or_default(),
                    closed: c.closed,
                    closed_by: None,
                    deleted: false,
                    retained: false,
                    last_stream_seq: None,
                    producers: BTreeMap::new(),
                    active_at: at,
                });
            }
            EventBody::StreamAppended(a) => {
                let Some(s) = stream.as_mut() else { return };
                s.tail = Offset::parse(&a.offset).unwrap_or(s.tail);
                if let Some(q) = &a.stream_seq {
                    s.last_stream_seq = Some(q.clone());
                }
                if let Some(p) = &a.producer {
                    s.producers.insert(
                        p.id.clone(),
                        ProducerState {
                            epoch: p.epoch,
                            seq: p.seq,
                        },
                    );
                }
                if a.closes {
                    s.closed = true;
                    s.closed_by = a.producer.clone();
                }
                s.active_at = at;
            }
            EventBody::StreamTouched(t) => {
                if let Some(s) = stream.as_mut() {
                    s.active_at = s.active_at.max(t.at);
                }
            }
            EventBody::StreamDeleted(d) => {
                if let Some(s) = stream.as_mut() {
                    s.retained = d.retained;
                    s.deleted = !d.retained;
                }
            }
            _ => {}
        }
    }

    /// Whether the server keeps the stream at hand: open for appends, or
    /// waiting on a deadline (an expiry), or a fork (a source's deletion
    /// counts its forks among the held streams), or retained for its forks.
    /// A closed stream with none of these is read back from the log when
    /// asked for, like a finished job.
    pub fn is_live(&self) -> bool {
        !self.deleted
            && (!self.closed
                || self.retained
                || self.fork.is_some()
                || self.ttl_secs.is_some()
                || self.expires_at.is_some())
    }

    /// When the stream expires, reads since `active_at` aside.
    pub fn expiry(&self, last_read: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        if self.deleted || self.retained {
            return None;
        }
        // A lifetime past the calendar's end (only an older version could
        // have accepted one) never ends.
        let ttl = self.ttl_secs.and_then(|t| {
            let from = last_read.map_or(self.active_at, |r| r.max(self.active_at));
            after_secs(from, t)
        });
        match (ttl, self.expires_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the stream is there at `now`: created, not deleted, not
    /// past its expiry.
    pub fn is_open_at(&self, now: DateTime<Utc>, last_read: Option<DateTime<Utc>>) -> bool {
        !self.deleted && !self.retained && self.expiry(last_read).is_none_or(|e| e > now)
    }

    /// Where the stream's own events begin: the offset before its first
    /// data (a fork's branching point, or zero).
    pub fn start(&self) -> Offset {
        self.fork
            .as_ref()
            .and_then(|f| Offset::parse(&f.offset))
            .unwrap_or_default()
    }

    /// The index of the stream's event at `seq`: counted from the
    /// incarnation's first event, past a fork's branching point (the fork
    /// keeps its source's offsets for the data it holds).
    pub fn index_of(&self, seq: i64) -> u64 {
        let own = seq.saturating_sub(self.first_seq).saturating_add(1).max(0) as u64;
        self.start().index.saturating_add(own)
    }

    /// The seq after which the stream's own events lie beyond `offset`
    /// (an offset before the incarnation's start: all of them).
    pub fn seq_after(&self, offset: Offset) -> i64 {
        let start = self.start().index;
        if offset.index < start {
            return self.first_seq - 1;
        }
        (self.first_seq - 1).saturating_add((offset.index - start).min(i64::MAX as u64 / 2) as i64)
    }
}

/// What a stream is asked to do.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamCommand {
    Create(CreateStream),
    Append(AppendStream),
    /// `forks`: how many streams fork it (each keeps its data readable).
    Delete {
        forks: usize,
    },
    /// The stream's expiry came (the scheduler): it expires unless reads
    /// since kept it alive, which are then recorded.
    Expire {
        forks: usize,
    },
    /// A fork of this retained stream ended: with no fork left, it is
    /// deleted for good.
    Release {
        forks: usize,
    },
    /// Reads at `at` keep the stream's TTL alive: recorded (once in half a
    /// TTL at most), so every node and every restart knows.
    Touch {
        at: DateTime<Utc>,
    },
}

/// `PUT`: create, or find the same stream already there.
#[derive(Clone, Debug, PartialEq)]
pub struct CreateStream {
    pub path: String,
    pub content_type: String,
    pub ttl_secs: Option<u64>,
    pub expires_at: Option<String>,
    pub closed: bool,
    pub data: Option<StreamData>,
    pub fork: Option<ForkOf>,
    /// Whether the request named the fork offset (a repeated PUT that did
    /// not compares only the source).
    pub fork_offset_given: bool,
}

/// `POST`: data, a close, or both.
#[derive(Clone, Debug, PartialEq)]
pub struct AppendStream {
    /// The request's media type (none on a close without data).
    pub content_type: Option<String>,
    pub data: Option<StreamData>,
    pub stream_seq: Option<String>,
    pub producer: Option<ProducerTuple>,
    pub close: bool,
}

/// Why a stream command was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamRefusal {
    #[error("stream not found")]
    NotFound,
    #[error("the stream was deleted; forks still read its data, so its path is not free yet")]
    Retained,
    #[error("a stream already exists at this path with a different configuration")]
    ConfigMismatch,
    #[error("the content type does not match the stream's")]
    ContentTypeMismatch,
    #[error("Stream-Seq must increase: it is not above the last one")]
    SeqRegression,
    #[error("the stream is closed")]
    Closed,
    #[error("stale producer epoch")]
    StaleEpoch { current: u64 },
    #[error("a new producer epoch must start at Producer-Seq 0")]
    EpochSeq,
    #[error("producer sequence gap")]
    SeqGap { expected: u64, received: u64 },
}

/// What a stream command decided.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamDecision {
    Append(Vec<EventBody>),
    /// `PUT` of a stream that is already there, configured the same.
    AlreadyExists,
    /// A producer's retry of what was accepted: its highest accepted seq.
    Duplicate {
        seq: u64,
    },
    Nothing,
}

/// Decides `command` on the stream in `stream` (the id's fold; `None`
/// before its first event) at `now`; its next event gets seq `next_seq`.
/// `last_read` is the last read this node served since the last write,
/// which keeps a TTL alive.
pub fn decide_stream(
    stream: Option<&StreamState>,
    next_seq: i64,
    command: &StreamCommand,
    now: DateTime<Utc>,
    last_read: Option<DateTime<Utc>>,
) -> Result<StreamDecision, StreamRefusal> {
    let open = stream.filter(|s| s.is_open_at(now, last_read));
    let retained = stream.is_some_and(|s| s.retained);
    if retained
        && !matches!(
            command,
            StreamCommand::Release { .. } | StreamCommand::Expire { .. }
        )
    {
        return Err(StreamRefusal::Retained);
    }
    match command {
        StreamCommand::Create(create) => {
            if let Some(s) = open {
                return if same_config(s, create) {
                    Ok(StreamDecision::AlreadyExists)
                } else {
                    Err(StreamRefusal::ConfigMismatch)
                };
            }
            let mut events = Vec::new();
            if stream.is_some_and(|s| !s.deleted) {
                events.push(EventBody::StreamDeleted(StreamDeleted {
                    expired: true,
                    retained: false,
                }));
            }
            let start = create
                .fork
                .as_ref()
                .and_then(|f| Offset::parse(&f.offset))
                .unwrap_or_default();
            // The created event is the incarnation's first: index one past
            // the start when it carries data.
            let size = create.data.as_ref().map_or(0, StreamData::size);
            let tail = Offset {
                index: start.index + u64::from(create.data.is_some()),
                size: start.size + size,
            };
            events.push(EventBody::StreamCreated(StreamCreated {
                path: create.path.clone(),
                content_type: create.content_type.clone(),
                ttl_secs: create.ttl_secs,
                expires_at: create.expires_at.clone(),
                closed: create.closed,
                fork: create.fork.clone(),
                data: create.data.clone(),
                offset: tail.to_string(),
            }));
            Ok(StreamDecision::Append(events))
        }
        StreamCommand::Append(append) => {
            let s = open.ok_or(StreamRefusal::NotFound)?;
            if s.closed {
                return match (&append.producer, &s.closed_by) {
                    (Some(p), Some(by)) if p == by => Ok(StreamDecision::Duplicate { seq: p.seq }),
                    // Closing a closed stream again changes nothing.
                    (None, _) if append.data.is_none() && append.close => {
                        Ok(StreamDecision::Nothing)
                    }
                    _ => Err(StreamRefusal::Closed),
                };
            }
            if append.data.is_some() {
                if let Some(ct) = &append.content_type {
                    if media_type(ct) != media_type(&s.content_type) {
                        return Err(StreamRefusal::ContentTypeMismatch);
                    }
                }
            }
            if let Some(p) = &append.producer {
                match s.producers.get(&p.id) {
                    None if p.seq != 0 => {
                        return Err(StreamRefusal::SeqGap {
                            expected: 0,
                            received: p.seq,
                        })
                    }
                    None => {}
                    Some(known) if p.epoch < known.epoch => {
                        return Err(StreamRefusal::StaleEpoch {
                            current: known.epoch,
                        })
                    }
                    Some(known) if p.epoch > known.epoch && p.seq != 0 => {
                        return Err(StreamRefusal::EpochSeq)
                    }
                    Some(known) if p.epoch > known.epoch => {}
                    Some(known) if p.seq <= known.seq => {
                        return Ok(StreamDecision::Duplicate { seq: known.seq })
                    }
                    Some(known) if p.seq > known.seq + 1 => {
                        return Err(StreamRefusal::SeqGap {
                            expected: known.seq + 1,
                            received: p.seq,
                        })
                    }
                    Some(_) => {}
                }
            }
            if let (Some(q), Some(last)) = (&append.stream_seq, &s.last_stream_seq) {
                if q.as_bytes() <= last.as_bytes() {
                    return Err(StreamRefusal::SeqRegression);
                }
            }
            let tail = match &append.data {
                Some(d) => Offset {
                    index: s.index_of(next_seq),
                    size: s.tail.size + d.size(),
                },
                None => s.tail,
            };
            Ok(StreamDecision::Append(vec![EventBody::StreamAppended(
                StreamAppended {
                    data: append.data.clone(),
                    offset: tail.to_string(),
                    stream_seq: append.stream_seq.clone(),
                    producer: append.producer.clone(),
                    closes: append.close,
                },
            )]))
        }
        StreamCommand::Delete { forks } => {
            open.ok_or(StreamRefusal::NotFound)?;
            Ok(StreamDecision::Append(vec![EventBody::StreamDeleted(
                StreamDeleted {
                    expired: false,
                    retained: *forks > 0,
                },
            )]))
        }
        StreamCommand::Expire { forks } => {
            let Some(s) = stream.filter(|s| !s.deleted && !s.retained) else {
                return Ok(StreamDecision::Nothing);
            };
            if s.expiry(None).is_none_or(|e| e > now) {
                return Ok(StreamDecision::Nothing);
            }
            match last_read {
                Some(at) if s.expiry(Some(at)).is_some_and(|e| e > now) => Ok(
                    StreamDecision::Append(vec![EventBody::StreamTouched(StreamTouched { at })]),
                ),
                _ => Ok(StreamDecision::Append(vec![EventBody::StreamDeleted(
                    StreamDeleted {
                        expired: true,
                        retained: *forks > 0,
                    },
                )])),
            }
        }
        StreamCommand::Touch { at } => match open {
            Some(s) if s.ttl_secs.is_some() && *at > s.active_at => Ok(StreamDecision::Append(
                vec![EventBody::StreamTouched(StreamTouched { at: *at })],
            )),
            _ => Ok(StreamDecision::Nothing),
        },
        StreamCommand::Release { forks } => {
            if !retained || *forks > 0 {
                return Ok(StreamDecision::Nothing);
            }
            Ok(StreamDecision::Append(vec![EventBody::StreamDeleted(
                StreamDeleted {
                    expired: false,
                    retained: false,
                },
            )]))
        }
    }
}

fn same_config(s: &StreamState, c: &CreateStream) -> bool {
    let fork_same = match (&s.fork, &c.fork) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.source_path == b.source_path
                && (!c.fork_offset_given || a.offset == b.offset)
                && a.sub_offset.unwrap_or(0) == b.sub_offset.unwrap_or(0)
        }
        _ => false,
    };
    media_type(&s.content_type) == media_type(&c.content_type)
        && s.ttl_secs == c.ttl_secs
        && s.expires_at_text == c.expires_at
        && s.closed == c.closed
        && fork_same
}

/// The stream id of a path: the same path always names the same id.
pub fn stream_id(path: &str) -> JobId {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("rejoin stream\0{path}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn create(ttl_secs: Option<u64>) -> StreamCommand {
        StreamCommand::Create(CreateStream {
            path: "/v1/stream/s".into(),
            content_type: "text/plain".into(),
            ttl_secs,
            expires_at: None,
            closed: false,
            data: StreamData::from_body(false, b"abc", true).unwrap(),
            fork: None,
            fork_offset_given: false,
        })
    }

    /// Decides `command` and folds what it appends; the stream after it.
    fn run(
        stream: &mut Option<StreamState>,
        seq: &mut i64,
        command: &StreamCommand,
        now: DateTime<Utc>,
    ) -> Result<StreamDecision, StreamRefusal> {
        let decision = decide_stream(stream.as_ref(), *seq + 1, command, now, None)?;
        if let StreamDecision::Append(bodies) = &decision {
            for body in bodies {
                *seq += 1;
                StreamState::apply(stream, *seq, now, body);
            }
        }
        Ok(decision)
    }

    fn append(producer: Option<(u64, u64)>, close: bool) -> StreamCommand {
        StreamCommand::Append(AppendStream {
            content_type: Some("text/plain; charset=utf-8".into()),
            data: StreamData::from_body(false, b"de", false).unwrap(),
            stream_seq: None,
            producer: producer.map(|(epoch, seq)| ProducerTuple {
                id: "p".into(),
                epoch,
                seq,
            }),
            close,
        })
    }

    #[test]
    fn offsets_print_as_they_sort_and_parse_back() {
        let a = Offset { index: 2, size: 10 };
        let b = Offset { index: 10, size: 3 };
        assert!(a < b && a.to_string() < b.to_string());
        assert_eq!(a.to_string(), "0000000000000002_0000000000000010");
        assert_eq!(Offset::parse(&a.to_string()), Some(a));
        for bad in ["-1", "now", "1_2", "x000000000000002_0000000000000010", ""] {
            assert_eq!(Offset::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_json_body_flattens_one_level_and_an_empty_array_only_creates() {
        let messages = |body: &str| match StreamData::from_body(true, body.as_bytes(), false) {
            Ok(Some(StreamData::Json(m))) => m.len(),
            other => panic!("{other:?}"),
        };
        assert_eq!(messages(r#"{"a":1}"#), 1);
        assert_eq!(messages(r#"[{"a":1},{"b":2}]"#), 2);
        assert_eq!(messages("[[1,2],[3]]"), 2);
        assert_eq!(messages("[[[1]]]"), 1);
        assert_eq!(
            StreamData::from_body(true, b"[]", false),
            Err(BodyError::EmptyArray)
        );
        assert_eq!(StreamData::from_body(true, b"[]", true), Ok(None));
        assert_eq!(
            StreamData::from_body(true, b"{", false),
            Err(BodyError::InvalidJson)
        );
    }

    #[test]
    fn appends_move_the_tail_by_one_index_and_their_size() {
        let (mut s, mut seq) = (None, 0);
        run(&mut s, &mut seq, &create(None), at(0)).unwrap();
        let tail = s.as_ref().unwrap().tail;
        assert_eq!(tail, Offset { index: 1, size: 3 });
        run(&mut s, &mut seq, &append(None, false), at(1)).unwrap();
        assert_eq!(s.as_ref().unwrap().tail, Offset { index: 2, size: 5 });
        // The same PUT again changes nothing; another configuration is refused.
        assert_eq!(
            run(&mut s, &mut seq, &create(None), at(2)),
            Ok(StreamDecision::AlreadyExists)
        );
        assert_eq!(
            run(&mut s, &mut seq, &create(Some(5)), at(2)),
            Err(StreamRefusal::ConfigMismatch)
        );
    }

    #[test]
    fn a_producer_is_fenced_deduplicated_and_kept_in_order() {
        let (mut s, mut seq) = (None, 0);
        run(&mut s, &mut seq, &create(None), at(0)).unwrap();
        let mut go = |p| run(&mut s, &mut seq, &append(Some(p), false), at(1));
        assert_eq!(
            go((0, 1)),
            Err(StreamRefusal::SeqGap {
                expected: 0,
                received: 1
            })
        );
        assert!(matches!(go((0, 0)), Ok(StreamDecision::Append(_))));
        assert_eq!(go((0, 0)), Ok(StreamDecision::Duplicate { seq: 0 }));
        assert_eq!(go((1, 3)), Err(StreamRefusal::EpochSeq));
        assert!(matches!(go((1, 0)), Ok(StreamDecision::Append(_))));
        assert_eq!(go((0, 1)), Err(StreamRefusal::StaleEpoch { current: 1 }));
    }

    #[test]
    fn a_closed_stream_takes_nothing_but_its_closers_retry() {
        let (mut s, mut seq) = (None, 0);
        run(&mut s, &mut seq, &create(None), at(0)).unwrap();
        run(&mut s, &mut seq, &append(Some((0, 0)), true), at(1)).unwrap();
        assert!(s.as_ref().unwrap().closed);
        assert_eq!(
            run(&mut s, &mut seq, &append(Some((0, 0)), true), at(2)),
            Ok(StreamDecision::Duplicate { seq: 0 })
        );
        assert_eq!(
            run(&mut s, &mut seq, &append(None, false), at(2)),
            Err(StreamRefusal::Closed)
        );
        let close_only = StreamCommand::Append(AppendStream {
            content_type: None,
            data: None,
            stream_seq: None,
            producer: None,
            close: true,
        });
        assert_eq!(
            run(&mut s, &mut seq, &close_only, at(2)),
            Ok(StreamDecision::Nothing)
        );
    }

    #[test]
    fn a_ttl_runs_from_the_last_write_and_a_read_moves_it_when_it_comes() {
        let (mut s, mut seq) = (None, 0);
        run(&mut s, &mut seq, &create(Some(10)), at(0)).unwrap();
        let state = s.clone().unwrap();
        assert_eq!(state.expiry(None), Some(at(10)));
        assert!(state.is_open_at(at(9), None) && !state.is_open_at(at(10), None));
        // The deadline comes; a read at +6 moved the window: recorded.
        let moved = decide_stream(
            Some(&state),
            2,
            &StreamCommand::Expire { forks: 0 },
            at(10),
            Some(at(6)),
        );
        assert!(matches!(
            moved,
            Ok(StreamDecision::Append(ref b)) if matches!(b[..], [EventBody::StreamTouched(_)])
        ));
        // Without one, it expires; with forks reading it, it is retained.
        for (forks, retained) in [(0, false), (2, true)] {
            let gone = decide_stream(
                Some(&state),
                2,
                &StreamCommand::Expire { forks },
                at(10),
                None,
            );
            assert_eq!(
                gone,
                Ok(StreamDecision::Append(vec![EventBody::StreamDeleted(
                    StreamDeleted {
                        expired: true,
                        retained
                    }
                )]))
            );
        }
        // An expired stream's path takes a new stream.
        let again = decide_stream(Some(&state), 2, &create(None), at(11), None).unwrap();
        assert!(matches!(
            again,
            StreamDecision::Append(ref b) if matches!(b[..], [EventBody::StreamDeleted(_), EventBody::StreamCreated(_)])
        ));
    }
}
