//! The one reader of the log: pages of rows, by global position or by one
//! job's seq, in order.
//!
//! Every reader of events goes through [`Pages`] (start-up, the follower,
//! catch-up, replays to sockets, the read APIs, the live tail, `verify`,
//! `replay`). The policy for a row that cannot be decoded is the same
//! everywhere: [`Pages::next_events`] fails with [`StoreError::Corrupt`]
//! naming its position, and the caller surfaces it (a start puts that one
//! job or stream aside and serves the rest, an HTTP read answers 409
//! `unreadable` and logs it, a socket's replay closes with 1011,
//! `verify` and `replay` report it, the live tail ends with an `error`
//! event). Raw readers that copy payloads without decoding them (the event
//! pages, NDJSON, the tail) fail only on a payload that is not JSON. The one
//! exception is the follower of a shared log, which logs an event another
//! node wrote that this build cannot decode and goes on, so one unknown event
//! cannot stop cross-node delivery.

use super::store::{EventLog, EventRow, JobSpan, StoreError, PAGE_BYTES};
use crate::domain::Event;

/// Rows per page unless the reader asks for another size.
pub const PAGE: u32 = 10_000;

#[derive(Clone, Debug)]
enum Range {
    /// Rows with `position > after`.
    Log { after: i64 },
    /// One job's rows with `after < seq <= through`.
    Job {
        job_id: String,
        after: i64,
        through: i64,
    },
}

/// Pages of the log, read one at a time; ends after the first page that is
/// not full (what was committed when it was read).
pub struct Pages<'a> {
    store: &'a dyn EventLog,
    range: Range,
    page: u32,
    done: bool,
}

impl<'a> Pages<'a> {
    /// The whole log after position `after`.
    pub fn log(store: &'a dyn EventLog, after: i64) -> Self {
        Pages {
            store,
            range: Range::Log { after },
            page: PAGE,
            done: false,
        }
    }

    /// One job's events with `after < seq <= through`.
    pub fn job(store: &'a dyn EventLog, job_id: &str, after: i64, through: i64) -> Self {
        Pages {
            store,
            range: Range::Job {
                job_id: job_id.to_owned(),
                after,
                through,
            },
            page: PAGE,
            done: false,
        }
    }

    /// At most `rows` per page.
    pub fn page_size(mut self, rows: u32) -> Self {
        self.page = rows.max(1);
        self
    }

    /// Where the next page starts: the last position (or seq) read.
    pub fn cursor(&self) -> i64 {
        match &self.range {
            Range::Log { after } | Range::Job { after, .. } => *after,
        }
    }

    /// The next page of rows, or `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Vec<EventRow>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let rows = match &self.range {
            Range::Log { after } => self.store.read_log(*after, self.page).await?,
            Range::Job {
                job_id,
                after,
                through,
            } => {
                let span = JobSpan {
                    job_id,
                    after_seq: *after,
                    through_seq: *through,
                };
                self.store.read_job(span, self.page).await?
            }
        };
        // A page that stopped short of its rows for its bytes is not the
        // last.
        let bytes: usize = rows.iter().map(|r| r.payload.len()).sum();
        self.done = rows.len() < self.page as usize && bytes < PAGE_BYTES;
        let Some(last) = rows.last() else {
            self.done = true;
            return Ok(None);
        };
        match &mut self.range {
            Range::Log { after } => *after = last.position,
            Range::Job { after, .. } => *after = last.seq,
        }
        Ok(Some(rows))
    }

    /// The next page, decoded; an undecodable row is an error naming it.
    pub async fn next_events(&mut self) -> Result<Option<Vec<Event>>, StoreError> {
        match self.next().await? {
            None => Ok(None),
            // Each row is let go of as soon as it is decoded.
            Some(rows) => rows
                .into_iter()
                .map(|r| r.decode_stored())
                .collect::<Result<_, _>>()
                .map(Some),
        }
    }
}
