//! The job index: a derived table with one row per job (status, progress,
//! stalled, creation time, metadata), so that jobs can be listed and
//! filtered without folding the log.
//!
//! It is a projection of the log and nothing more: the rows and the log
//! position they are folded through are written in one transaction, by any
//! node, from the events after that position (`engine::index`). A table that
//! is missing is created empty at open and folded from the start of the log
//! again; deleting it loses nothing.

use sqlx::{Database, Encode, QueryBuilder, Type};

use crate::domain::event::format_time;
use crate::domain::{Event, EventBody, JobStatus};

/// `CREATE` statements for both backends (`{real}` and `{bigint}` filled in).
pub(crate) const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS job_index (
        job_id           TEXT PRIMARY KEY,
        created_position BIGINT NOT NULL,
        created_at       TEXT NOT NULL,
        status           TEXT NOT NULL,
        progress         {real} NOT NULL,
        stalled          INTEGER NOT NULL,
        last_update      TEXT NOT NULL,
        metadata         TEXT
    )",
    "CREATE INDEX IF NOT EXISTS job_index_newest ON job_index (created_position)",
    "CREATE TABLE IF NOT EXISTS job_index_position (
        id       INTEGER PRIMARY KEY CHECK (id = 1),
        position BIGINT NOT NULL
    )",
];

/// The job index's upsert, around its VALUES (the same on both backends).
pub(crate) const UPSERT_HEAD: &str = "INSERT INTO job_index
    (job_id, created_position, created_at, status, progress, stalled, last_update, metadata) ";
pub(crate) const UPSERT_TAIL: &str = " ON CONFLICT (job_id) DO UPDATE SET
    created_position = excluded.created_position, created_at = excluded.created_at,
    status = excluded.status, progress = excluded.progress, stalled = excluded.stalled,
    last_update = excluded.last_update, metadata = excluded.metadata";

/// One job as the index holds it.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct IndexRow {
    pub job_id: String,
    /// The log position of its `job_created`: the order of the listing.
    pub created_position: i64,
    pub created_at: String,
    pub status: String,
    pub progress: f64,
    /// 0 or 1.
    pub stalled: i32,
    pub last_update: String,
    /// The job's metadata, as JSON text.
    pub metadata: Option<String>,
}

impl IndexRow {
    /// The row a job's `job_created` starts.
    fn created(event: &Event, metadata: Option<String>) -> IndexRow {
        let at = format_time(&event.at);
        IndexRow {
            job_id: event.job_id.to_string(),
            created_position: event.position,
            created_at: at.clone(),
            status: JobStatus::Pending.as_str().to_owned(),
            progress: 0.0,
            stalled: 0,
            last_update: at,
            metadata,
        }
    }

    /// Moves the row past one of its job's events (the same rules as
    /// `JobState::apply`, for the fields the index holds).
    fn apply(&mut self, event: &Event) {
        if !event.body.is_job_event() {
            return;
        }
        if let EventBody::JobStalled(_) = event.body {
            self.stalled = 1;
            return;
        }
        self.stalled = 0;
        self.last_update = format_time(&event.at);
        if self.status == JobStatus::Pending.as_str() {
            self.status = JobStatus::Running.as_str().to_owned();
        }
        let status = match &event.body {
            EventBody::ProgressReported(p) => {
                self.progress = p.progress;
                return;
            }
            EventBody::JobCompleted(_) => {
                self.progress = 100.0;
                JobStatus::Completed
            }
            EventBody::JobFailed(_) => JobStatus::Failed,
            EventBody::JobCancelled(_) => JobStatus::Cancelled,
            _ => return,
        };
        self.status = status.as_str().to_owned();
    }
}

/// Whether the index folds events of this kind (a job's creation and its
/// job events; nothing of streams, sessions or notifications): the rest are
/// passed over without being decoded.
pub fn folds(kind: &str) -> bool {
    kind == "job_created" || EventBody::is_job_event_kind(kind)
}

/// Folds `events` (in log order) into `rows` (the jobs' rows as stored,
/// keyed by job id); returns the ids of the rows that changed.
pub fn fold(
    rows: &mut std::collections::HashMap<String, IndexRow>,
    events: &[Event],
) -> Vec<String> {
    let mut changed = Vec::new();
    for event in events {
        let id = event.job_id.to_string();
        match &event.body {
            EventBody::JobCreated(c) => {
                let metadata = c.metadata.as_ref().map(|m| m.to_string());
                rows.insert(id.clone(), IndexRow::created(event, metadata));
            }
            body if body.is_job_event() => match rows.get_mut(&id) {
                Some(row) => row.apply(event),
                None => continue,
            },
            _ => continue,
        }
        if !changed.contains(&id) {
            changed.push(id);
        }
    }
    changed
}

/// What a listing asks for. Times are compared as the log's text format.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub stalled: Option<bool>,
    /// Created at or after.
    pub since: Option<String>,
    /// Created before.
    pub until: Option<String>,
    /// Top-level metadata keys and the values they must have (as text:
    /// strings as they are, numbers and booleans as JSON writes them).
    pub meta: Vec<(String, String)>,
    /// Only jobs created before this log position (the cursor).
    pub before: Option<i64>,
    pub limit: u32,
}

/// Jobs per page unless a filter says otherwise, and the most it may say.
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

/// Why a filter cannot be used, in words for whoever wrote it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

impl JobFilter {
    /// Every job, newest first, a default page at a time.
    pub fn every_job() -> Self {
        JobFilter {
            limit: DEFAULT_LIMIT,
            ..JobFilter::default()
        }
    }

    /// The checks a filter goes through whichever front end built it (the
    /// HTTP listing's query, `rejoin jobs`' flags): the page size, the
    /// cursor, the metadata keys and values.
    pub fn checked(self) -> Result<Self, FilterError> {
        let bad = |m: String| Err(FilterError(m));
        if !(1..=MAX_LIMIT).contains(&self.limit) {
            return bad(format!("`limit` must be from 1 to {MAX_LIMIT}"));
        }
        if self.before.is_some_and(|b| b <= 0) {
            return bad("`after` must be a `nextAfter` cursor".into());
        }
        for (key, value) in &self.meta {
            if !valid_meta_key(key) {
                return bad(format!(
                    "`meta.{key}`: metadata keys are 1 to 64 letters, digits, `_` or `-`"
                ));
            }
            if value.len() > 256 {
                return bad(format!("`meta.{key}` is longer than 256 bytes"));
            }
        }
        Ok(self)
    }
}

/// The WHERE clauses of `filter` (after a `WHERE true`), ordered newest
/// first and limited; `meta` pushes one backend's test of a metadata key's
/// value (the key is checked with [`valid_meta_key`] first).
pub(crate) fn push_filter<'a, DB>(
    q: &mut QueryBuilder<'a, DB>,
    filter: &'a JobFilter,
    meta: impl Fn(&mut QueryBuilder<'a, DB>, &'a str, &'a str),
) where
    DB: Database,
    &'a str: Encode<'a, DB> + Type<DB>,
    i32: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
{
    if let Some(status) = filter.status {
        q.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(stalled) = filter.stalled {
        q.push(" AND stalled = ").push_bind(i32::from(stalled));
    }
    if let Some(since) = &filter.since {
        q.push(" AND created_at >= ").push_bind(since.as_str());
    }
    if let Some(until) = &filter.until {
        q.push(" AND created_at < ").push_bind(until.as_str());
    }
    for (key, value) in &filter.meta {
        // Refused by the caller; never spliced.
        if valid_meta_key(key) {
            q.push(" AND ");
            meta(q, key, value);
        }
    }
    if let Some(before) = filter.before {
        q.push(" AND created_position < ").push_bind(before);
    }
    q.push(" ORDER BY created_position DESC LIMIT ")
        .push_bind(i64::from(filter.limit));
}

/// The upsert of `rows` into the job index (the same SQL on both backends).
pub(crate) fn upsert<'a, DB>(rows: &'a [IndexRow]) -> QueryBuilder<'a, DB>
where
    DB: Database,
    &'a str: Encode<'a, DB> + Type<DB>,
    Option<&'a str>: Encode<'a, DB> + Type<DB>,
    i32: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
    f64: Encode<'a, DB> + Type<DB>,
{
    let mut q = QueryBuilder::<DB>::new(UPSERT_HEAD);
    q.push_values(rows, |mut b, r| {
        b.push_bind(r.job_id.as_str())
            .push_bind(r.created_position)
            .push_bind(r.created_at.as_str())
            .push_bind(r.status.as_str())
            .push_bind(r.progress)
            .push_bind(r.stalled)
            .push_bind(r.last_update.as_str())
            .push_bind(r.metadata.as_deref());
    });
    q.push(UPSERT_TAIL);
    q
}

/// A metadata key a filter may name: letters, digits, `_` and `-`, at most
/// 64 (so it can be spliced into a JSON path safely).
pub fn valid_meta_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{JobCreated, JobStalled, ProgressReported};
    use chrono::Utc;

    fn event(job: uuid::Uuid, position: i64, body: EventBody) -> Event {
        Event {
            position,
            ..Event::new(job, None, Utc::now(), body)
        }
    }

    #[test]
    fn the_fold_follows_status_progress_and_stalls() {
        let job = uuid::Uuid::new_v4();
        let events = vec![
            event(
                job,
                7,
                EventBody::JobCreated(JobCreated {
                    metadata: Some(serde_json::json!({"user": "u1"})),
                    ..JobCreated::default()
                }),
            ),
            event(
                job,
                8,
                EventBody::ProgressReported(ProgressReported {
                    progress: 40.0,
                    message: None,
                    data: None,
                }),
            ),
            event(
                job,
                9,
                EventBody::JobStalled(JobStalled { since: Utc::now() }),
            ),
        ];
        let mut rows = std::collections::HashMap::new();
        assert_eq!(fold(&mut rows, &events), vec![job.to_string()]);
        let row = &rows[&job.to_string()];
        assert_eq!(row.created_position, 7);
        assert_eq!(row.status, "running");
        assert_eq!(row.progress, 40.0);
        assert_eq!(row.stalled, 1);
        assert_eq!(row.metadata.as_deref(), Some(r#"{"user":"u1"}"#));
    }

    #[test]
    fn metadata_keys_are_restricted() {
        assert!(valid_meta_key("user_id"));
        assert!(!valid_meta_key("a.b"));
        assert!(!valid_meta_key("x') OR 1=1 --"));
        assert!(!valid_meta_key(""));
    }
}
