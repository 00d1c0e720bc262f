//! What every backend of the log is: rows as stored ([`EventRow`]), the
//! stores by concern (the event log, checkpoints, the job index, the nodes'
//! membership) as traits, and the errors they answer with. The backends and
//! every reader use these; nothing here uses them back.

use std::sync::Arc;

use async_trait::async_trait;

use super::job_index::{IndexRow, JobFilter};
use crate::domain::event::{format_time, parse_time, DecodeError, Event, EventBody, RemovedUnit};
use crate::domain::DomainError;

/// One event as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRow {
    /// Global position; assigned by the database on insert (0 before).
    pub position: i64,
    pub job_id: String,
    pub seq: i64,
    pub session_id: Option<String>,
    pub kind: String,
    pub schema_version: i32,
    pub payload: String,
    pub idempotency_key: Option<String>,
    pub at: String,
    pub hash: String,
}

impl EventRow {
    /// Encodes an event for storage; the event's hash must already be set.
    pub fn from_event(event: &Event) -> Self {
        EventRow::sealed(event, event.body.encode())
    }

    /// The row of an event whose payload is already encoded (as sealing it
    /// into its chain did).
    pub fn sealed(event: &Event, payload: String) -> Self {
        EventRow {
            position: event.position,
            job_id: event.job_id.to_string(),
            seq: event.seq,
            session_id: event.session_id.map(|s| s.to_string()),
            kind: event.body.kind().to_owned(),
            schema_version: crate::domain::event::SCHEMA_VERSION,
            payload,
            idempotency_key: event.idempotency_key.clone(),
            at: format_time(&event.at),
            hash: event.hash.clone(),
        }
    }

    /// Decodes the row, naming its position if it cannot be.
    pub fn decode_stored(&self) -> Result<Event, StoreError> {
        self.decode().map_err(|source| StoreError::Corrupt {
            position: self.position,
            source,
        })
    }

    /// Decodes the stored row into a typed event.
    pub fn decode(&self) -> Result<Event, DecodeError> {
        let uuid = |field: &'static str, text: &str| {
            uuid::Uuid::parse_str(text).map_err(|_| DecodeError::Field {
                field,
                value: text.to_owned(),
            })
        };
        Ok(Event {
            position: self.position,
            job_id: uuid("job_id", &self.job_id)?,
            seq: self.seq,
            session_id: match &self.session_id {
                Some(s) => Some(uuid("session_id", s)?),
                None => None,
            },
            at: parse_time(&self.at)?,
            idempotency_key: self.idempotency_key.clone(),
            body: EventBody::decode(&self.kind, self.schema_version, &self.payload)?,
            hash: self.hash.clone(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be written or read right now (I/O error, disk full,
    /// locked, gone). Appends answer 503.
    #[error("the log is unavailable: {0}")]
    Unavailable(String),
    /// An append collided with an existing `(job_id, seq)`.
    #[error("conflicting append: {0}")]
    Conflict(String),
    #[error("event at position {position} cannot be decoded: {source}")]
    Corrupt { position: i64, source: DecodeError },
    #[error("cannot open the log: {0}")]
    Open(String),
}

/// A page read from the log holds at most its row limit and stops after the
/// row that takes it past this many bytes of payload, so a page of large
/// events (a stream's 8 MiB appends) is one or two events, not thousands.
pub const PAGE_BYTES: usize = 8 << 20;

/// The event log: durable, append-only, read by position or by job.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// The id the log got when it was created.
    async fn epoch(&self) -> Result<String, StoreError>;

    /// Appends the rows in one transaction and returns their positions, in
    /// order. Returns only after the transaction is durable.
    async fn append(&self, rows: &[EventRow]) -> Result<Vec<i64>, StoreError>;

    /// Events with `position > after`, in position order, at most `limit`,
    /// and no more after the one that takes the page past [`PAGE_BYTES`].
    async fn read_log(&self, after: i64, limit: u32) -> Result<Vec<EventRow>, StoreError>;

    /// One job's events in `span`, in seq order, at most `limit`, and no
    /// more after the one that takes the page past [`PAGE_BYTES`].
    async fn read_job(&self, span: JobSpan<'_>, limit: u32) -> Result<Vec<EventRow>, StoreError>;

    /// The events of `job_id` carrying one of `keys` as their
    /// `Idempotency-Key` (by index, never a scan).
    async fn find_keyed(&self, job_id: &str, keys: &[&str]) -> Result<Vec<EventRow>, StoreError>;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Closes the connections after the last append.
    async fn close(&self);
}

/// Checkpoints of the folded state, stored beside the log.
#[async_trait]
pub trait Checkpoints: Send + Sync + 'static {
    /// The checkpoints' headers, newest position first.
    async fn checkpoints(&self) -> Result<Vec<CheckpointHeader>, StoreError>;

    /// A checkpoint's part bodies, in part order.
    async fn checkpoint_parts(&self, id: &str) -> Result<Vec<String>, StoreError>;

    /// Stores one part of a checkpoint, in a transaction of its own.
    async fn write_checkpoint_part(
        &self,
        id: &str,
        part: i32,
        body: &str,
    ) -> Result<(), StoreError>;

    /// Stores a checkpoint's header, written after all its parts: from then
    /// on the checkpoint can be loaded.
    async fn write_checkpoint_header(&self, header: &CheckpointHeader) -> Result<(), StoreError>;

    /// Deletes every checkpoint but those in `keep`, and parts no header
    /// names (left by a writer that stopped half-way).
    async fn delete_checkpoints_except(&self, keep: &[&str]) -> Result<(), StoreError>;
}

/// The job index: a summary row per job, folded from the log, for listing
/// and searching jobs.
#[async_trait]
pub trait JobIndex: Send + Sync + 'static {
    /// The job index: the log position it is folded through.
    async fn job_index_position(&self) -> Result<i64, StoreError>;

    /// The job index's rows of these jobs (those it has).
    async fn job_index_rows(&self, job_ids: &[String]) -> Result<Vec<IndexRow>, StoreError>;

    /// Writes `rows` into the job index and moves it from position `from`
    /// to `through`, in one transaction; `false` (and nothing written) when
    /// another writer moved it from `from` first.
    async fn write_job_index(
        &self,
        rows: &[IndexRow],
        from: i64,
        through: i64,
    ) -> Result<bool, StoreError>;

    /// Jobs the index holds that match `filter`, newest first (by the
    /// position of their creation), at most `filter.limit`.
    async fn find_jobs(&self, filter: &JobFilter) -> Result<Vec<IndexRow>, StoreError>;
}

/// An event that ended a unit (or, for a stream, may have: a stream kept
/// for its forks, or created again, has not ended).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Ending {
    pub position: i64,
    pub unit_id: String,
    /// RFC 3339, as stored.
    pub at: String,
}

/// A removed job as the log still knows it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Removed {
    /// RFC 3339: when it finished.
    pub finished_at: String,
    pub events: i64,
}

impl Removed {
    /// How every request for the job is refused: 410 `job_archived`.
    pub fn refusal(self) -> DomainError {
        DomainError::Archived(self.finished_at, self.events)
    }
}

/// The database's size as retention sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogSize {
    /// Bytes the log takes on disk (SQLite: the database file; PostgreSQL:
    /// the events table with its indexes and TOAST).
    pub bytes: u64,
    /// Of those, bytes free for reuse (SQLite's free pages; 0 where the
    /// database does not say).
    pub free_bytes: u64,
}

/// Retention's queries and its one removal (`retention.rs` says how it
/// keeps the log's promises).
#[async_trait]
pub trait Retention: Send + Sync + 'static {
    /// The events that end units, with `position > after`, in position
    /// order, at most `limit` (by index: the endings only).
    async fn endings(&self, after: i64, limit: u32) -> Result<Vec<Ending>, StoreError>;

    /// Removes `units` whole, in one transaction, and returns the
    /// `units_removed` record it appended (with its position). `Conflict`
    /// when a unit no longer ends at its `last_position`/`last_hash` (an
    /// event came after the sweep read it) or was removed already: nothing
    /// is removed then.
    async fn remove(
        &self,
        units: &[RemovedUnit],
        archive: Option<&str>,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<EventRow, StoreError>;

    /// The job removed under this id, if one was.
    async fn removed_job(&self, id: &str) -> Result<Option<Removed>, StoreError>;

    /// Whether the unit `id` whose last event was at `last_position` has
    /// been removed (its record committed).
    async fn is_removed(&self, id: &str, last_position: i64) -> Result<bool, StoreError>;

    /// The position of the last event retention removed (0: none): every
    /// event after it is still in the log.
    async fn horizon(&self) -> Result<i64, StoreError>;

    async fn size(&self) -> Result<LogSize, StoreError>;
}

/// What only a log shared by several nodes has: the nodes' leases, kept on
/// the database's clock, and a hint when another node appended.
#[async_trait]
pub trait Membership: Send + Sync + 'static {
    /// A new lease for `node`, until the database's `now() + ttl`. Returns the database's clock as it granted it.
    async fn take_lease(
        &self,
        node: &str,
        ttl: std::time::Duration,
    ) -> Result<chrono::DateTime<chrono::Utc>, StoreError>;

    /// Extends `node`'s lease to the database's
    /// `now() + ttl`, only if it has not run out. Returns the database's
    /// clock as it renewed it, or `None` when the lease had run out (it is
    /// then never renewed: the node takes a new one under a new id).
    async fn renew_lease(
        &self,
        node: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError>;

    /// The nodes whose leases have not run out.
    async fn live_nodes(&self) -> Result<Vec<String>, StoreError>;

    /// Gives up `node`'s lease (a clean stop).
    async fn end_lease(&self, node: &str) -> Result<(), StoreError>;

    /// A stream that yields whenever another process may
    /// have appended (a hint; the log is read to find out what).
    async fn listen(&self) -> Result<Option<Box<dyn AppendListener>>, StoreError>;

    /// The positions after `after`, in order, at most `limit`: what a
    /// follower reads first, to skip reading back the events its own node
    /// appended.
    async fn positions_after(&self, after: i64, limit: u32) -> Result<Vec<i64>, StoreError>;
}

/// A backend's stores, each by its concern. `members` is there only for a
/// backend several nodes share (PostgreSQL): the engine follows the log,
/// takes a lease and retries conflicts only when it has one.
#[derive(Clone)]
pub struct Log {
    pub events: Arc<dyn EventLog>,
    pub checkpoints: Arc<dyn Checkpoints>,
    pub index: Arc<dyn JobIndex>,
    pub retention: Arc<dyn Retention>,
    pub members: Option<Arc<dyn Membership>>,
}

impl Log {
    /// The stores of a backend that keeps every concern itself.
    pub fn of<S: EventLog + Checkpoints + JobIndex + Retention>(store: Arc<S>) -> Self {
        Log {
            events: store.clone(),
            checkpoints: store.clone(),
            retention: store.clone(),
            index: store,
            members: None,
        }
    }

    /// Whether other processes append to this log too (several nodes on one
    /// database).
    pub fn shared(&self) -> bool {
        self.members.is_some()
    }
}

/// One job's events with `after_seq < seq <= through_seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobSpan<'a> {
    pub job_id: &'a str,
    pub after_seq: i64,
    pub through_seq: i64,
}

/// A checkpoint as listed: what it covers and how to check it. Its parts
/// hold the job states (see `engine/checkpoint.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointHeader {
    pub id: String,
    /// Every event up to this position is folded in.
    pub position: i64,
    /// The hash of the event at `position` ("" at position 0).
    pub position_hash: String,
    /// The epoch of the log it was made from.
    pub epoch: String,
    pub fold_version: i32,
    /// RFC 3339.
    pub created_at: String,
    pub jobs: i64,
    pub parts: i32,
    /// SHA-256 (hex) over the parts' bodies in order.
    pub digest: String,
}

/// Both backends list checkpoints with this query.
pub(crate) const LIST_CHECKPOINTS: &str =
    "SELECT id, position, position_hash, epoch, fold_version, created_at, jobs, parts, digest
     FROM checkpoints ORDER BY position DESC, created_at DESC";

/// A row of [`LIST_CHECKPOINTS`].
pub(crate) type CheckpointRow = (String, i64, String, String, i32, String, i64, i32, String);

impl From<CheckpointRow> for CheckpointHeader {
    fn from(r: CheckpointRow) -> Self {
        let (id, position, position_hash, epoch, fold_version, created_at, jobs, parts, digest) = r;
        CheckpointHeader {
            id,
            position,
            position_hash,
            epoch,
            fold_version,
            created_at,
            jobs,
            parts,
            digest,
        }
    }
}

/// A database error as the store reports it: a unique violation is a
/// conflicting append, anything else makes the log unavailable.
pub(crate) fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(db.message().to_owned())
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// Wakes a follower of a shared log.
#[async_trait]
pub trait AppendListener: Send {
    /// Resolves at the next notification of an append.
    async fn next(&mut self) -> Result<(), StoreError>;
}

/// An event as the read APIs and `replay --format ndjson` print it: the stored
/// row, with its payload embedded as JSON (copied, not re-parsed).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventEnvelope {
    pub position: i64,
    pub job_id: String,
    pub seq: i64,
    pub session_id: Option<String>,
    pub kind: String,
    pub schema_version: i32,
    pub at: String,
    /// The event's payload (see the event catalogue).
    #[schema(value_type = Object)]
    pub data: Box<serde_json::value::RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub hash: String,
}

impl TryFrom<EventRow> for EventEnvelope {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<Self, StoreError> {
        let data = serde_json::value::RawValue::from_string(row.payload).map_err(|e| {
            StoreError::Corrupt {
                position: row.position,
                source: DecodeError::Payload {
                    kind: row.kind.clone(),
                    source: e,
                },
            }
        })?;
        Ok(EventEnvelope {
            position: row.position,
            job_id: row.job_id,
            seq: row.seq,
            session_id: row.session_id,
            kind: row.kind,
            schema_version: row.schema_version,
            at: row.at,
            data,
            idempotency_key: row.idempotency_key,
            hash: row.hash,
        })
    }
}
