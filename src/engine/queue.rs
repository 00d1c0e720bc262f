//! The writer's queue, the one way to ask for a change, and the types every
//! part of the engine shares: what a command is answered, and why not.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::hub::{Hub, Registration};
use crate::domain::close;
use crate::domain::decide::AttachPlan;
use crate::domain::event::StreamData;
use crate::domain::stream::StreamCommand;
use crate::domain::{Command, DomainError, Event, JobId, JobState, SessionId};

/// Whether the engine's essential tasks (writer, scheduler, checkpoints,
/// index, follower, lease keeper, notifier) all still run. The first to stop
/// other than at shutdown is named here for good, and `died` fires: the
/// process stops and exits non-zero, so its supervisor starts it again from
/// the log, the one source of truth. No task is restarted in place: the
/// state in memory it shared may be what made it fail.
#[derive(Debug, Default)]
pub struct Health {
    failures: std::sync::Mutex<Vec<String>>,
    died: tokio_util::sync::CancellationToken,
}

impl Health {
    /// Records that a task stopped (a task that outlived the one that
    /// failed may stop with it: each is named, in order).
    pub fn fail(&self, what: String) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if !failures.contains(&what) {
            tracing::error!(failure = %what, "an essential task stopped: not ready, and stopping so that the supervisor restarts the server from the log");
            failures.push(what);
        }
        self.died.cancel();
    }

    /// Records that the task `name` panicked, saying what the panic said.
    pub fn panicked(&self, name: &str, panic: &(dyn std::any::Any + Send)) {
        self.fail(format!(
            "the {name} stopped: it panicked: {}",
            panic_text(panic)
        ));
    }

    /// What stopped, if anything has.
    pub fn failure(&self) -> Option<String> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        (!failures.is_empty()).then(|| failures.join("; "))
    }

    /// Fires when a task has stopped.
    pub fn died(&self) -> tokio_util::sync::CancellationToken {
        self.died.clone()
    }
}

/// What a panic said, as far as it can be read.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// A socket attached to a job: how to serve it.
#[derive(Clone, Debug, PartialEq)]
pub struct Attached {
    pub plan: AttachPlan,
    /// The job as it stood when the socket attached: the first message is built
    /// from it, and the replay reads the log up to its `head_seq`.
    pub snapshot: JobState,
    /// The socket's ordinal within its session; its close names it.
    pub socket: u32,
}

/// What creating a job did.
#[derive(Clone, Debug, PartialEq)]
pub enum Created {
    /// The job is new: its `job_created`, committed.
    New(Box<Event>),
    /// The job already existed; nothing was appended.
    Existing,
}

/// What appending a job event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The event's seq in its job.
    pub seq: i64,
    /// A retried keyed append: `seq` is the first attempt's.
    pub replayed: bool,
}

/// What a stream command did.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamDone {
    /// Its events, committed (shared with the live readers, not copied).
    Appended(Vec<Arc<Event>>),
    /// `PUT` of a stream already there, configured the same.
    Existing,
    /// A producer's retry: the highest seq it had accepted.
    Duplicate(u64),
    /// Nothing needed doing.
    Nothing,
}

/// How the writer answers a request, by what the command was.
pub(super) enum Answer {
    /// Every command that only appends (or finds nothing to do): its events.
    Events(oneshot::Sender<Result<Vec<Event>, EngineError>>),
    Create(oneshot::Sender<Result<Created, EngineError>>),
    Append(oneshot::Sender<Result<Appended, EngineError>>),
    /// `Attach`, with the socket to feed once the attach is committed.
    Attach(Registration, oneshot::Sender<Result<Attached, EngineError>>),
    Stream(oneshot::Sender<Result<StreamDone, EngineError>>),
}

/// One queued command and how to answer it.
pub(super) struct WriteRequest {
    pub job_id: JobId,
    pub command: Command,
    pub reply: Answer,
}

impl WriteRequest {
    /// About how many bytes of payload the request appends: a stream's data
    /// as stored (base64 for bytes), a kilobyte for anything else (job events
    /// are bounded by `--max-body-bytes`, a JSON stream message by its
    /// append's body).
    pub fn weight(&self) -> usize {
        const SMALL: usize = 1024;
        let data = match &self.command {
            Command::Stream {
                command: StreamCommand::Append(a),
                ..
            } => a.data.as_ref(),
            Command::Stream {
                command: StreamCommand::Create(c),
                ..
            } => c.data.as_ref(),
            _ => None,
        };
        match data {
            Some(StreamData::Bytes(b64)) => b64.len().max(SMALL),
            Some(StreamData::Json(messages)) => messages.len().saturating_mul(SMALL),
            None => SMALL,
        }
    }
}

/// Splits a batch taken off the queue into parts of at most `max_bytes` of
/// payload (a part holds one request at least), in order: each part is one
/// transaction, so a burst of large appends never becomes one huge commit.
pub(super) fn by_weight(requests: Vec<WriteRequest>, max_bytes: usize) -> Vec<Vec<WriteRequest>> {
    let mut parts = vec![Vec::new()];
    let mut weight = 0usize;
    for req in requests {
        let w = req.weight();
        let part = parts.last_mut().expect("one part at least");
        if !part.is_empty() && weight.saturating_add(w) > max_bytes {
            parts.push(Vec::new());
            weight = 0;
        }
        weight = weight.saturating_add(w);
        parts.last_mut().expect("one part at least").push(req);
    }
    parts
}

impl Answer {
    /// Answers with an error, whatever the command.
    pub fn refuse(self, error: EngineError) {
        let _ = match self {
            Answer::Events(tx) => tx.send(Err(error)).map_err(drop),
            Answer::Create(tx) => tx.send(Err(error)).map_err(drop),
            Answer::Append(tx) => tx.send(Err(error)).map_err(drop),
            Answer::Attach(_, tx) => tx.send(Err(error)).map_err(drop),
            Answer::Stream(tx) => tx.send(Err(error)).map_err(drop),
        };
    }
}

impl WriteRequest {
    /// Answers with an error, whatever the command.
    pub fn refuse(self, error: EngineError) {
        self.reply.refuse(error);
    }
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The log cannot be written (database error, or the server is stopping).
    #[error("{0}")]
    Unavailable(String),
    /// A bug: the engine answered a command with what it cannot produce.
    #[error("{0}")]
    Internal(String),
}

/// The writer's queue and commit counts, exact and readable at any moment (for
/// tests that watch group commit happen; `/metrics` has the histograms).
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Requests waiting in the writer's queue.
    pub queued: AtomicU64,
    /// Requests the writer has taken off the queue.
    pub taken: AtomicU64,
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Events appended.
    pub events: AtomicU64,
}

impl WriterStats {
    pub(super) fn record_commit(&self, events: usize) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(events as u64, Ordering::Relaxed);
    }
}

/// The writer's queue: the one way to ask for a change.
#[derive(Clone)]
pub(super) struct Queue {
    pub tx: mpsc::Sender<WriteRequest>,
    pub stats: Arc<WriterStats>,
}

impl Queue {
    /// Queues a command that only appends; waits until its events are
    /// durable and returns them (none when nothing needed doing).
    pub async fn execute(
        &self,
        job_id: JobId,
        command: Command,
    ) -> Result<Vec<Event>, EngineError> {
        self.ask(job_id, command, Answer::Events).await
    }

    pub async fn create(&self, job_id: JobId, command: Command) -> Result<Created, EngineError> {
        self.ask(job_id, command, Answer::Create).await
    }

    pub async fn append(&self, job_id: JobId, command: Command) -> Result<Appended, EngineError> {
        self.ask(job_id, command, Answer::Append).await
    }

    pub async fn stream(&self, id: JobId, command: Command) -> Result<StreamDone, EngineError> {
        self.ask(id, command, Answer::Stream).await
    }

    pub async fn attach(
        &self,
        job_id: JobId,
        command: Command,
        registration: Registration,
    ) -> Result<Attached, EngineError> {
        self.ask(job_id, command, |tx| Answer::Attach(registration, tx))
            .await
    }

    /// Queues a command and waits until it is answered.
    async fn ask<T>(
        &self,
        job_id: JobId,
        command: Command,
        reply: impl FnOnce(oneshot::Sender<Result<T, EngineError>>) -> Answer,
    ) -> Result<T, EngineError> {
        let (tx, answer) = oneshot::channel();
        let request = WriteRequest {
            job_id,
            command,
            reply: reply(tx),
        };
        let stopping = || EngineError::Unavailable("the server is shutting down".into());
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(request).await.is_err() {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(stopping());
        }
        answer.await.map_err(|_| stopping())?
    }
}

/// The last read this node served of each stream: reads keep a stream's
/// TTL alive without being an event each; they are recorded
/// (`stream_touched`) once half the TTL has passed, or when the expiry
/// comes and a read since has moved it.
#[derive(Debug, Default)]
pub struct StreamReads {
    last: std::sync::Mutex<std::collections::HashMap<JobId, chrono::DateTime<chrono::Utc>>>,
    /// Streams whose read is being recorded in the log now: one touch at
    /// a time per stream, however many readers come.
    touching: std::sync::Mutex<std::collections::HashSet<JobId>>,
}

impl StreamReads {
    pub fn record(&self, id: JobId, at: chrono::DateTime<chrono::Utc>) {
        let mut reads = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let last = reads.entry(id).or_insert(at);
        *last = (*last).max(at);
    }

    pub fn last(&self, id: JobId) -> Option<chrono::DateTime<chrono::Utc>> {
        let reads = self.last.lock().unwrap_or_else(|p| p.into_inner());
        reads.get(&id).copied()
    }

    pub fn forget(&self, id: JobId) {
        let mut reads = self.last.lock().unwrap_or_else(|p| p.into_inner());
        reads.remove(&id);
    }

    /// Claims the stream's touch: `false` if one is in flight already.
    pub fn begin_touch(&self, id: JobId) -> bool {
        let mut touching = self.touching.lock().unwrap_or_else(|p| p.into_inner());
        touching.insert(id)
    }

    pub fn end_touch(&self, id: JobId) {
        let mut touching = self.touching.lock().unwrap_or_else(|p| p.into_inner());
        touching.remove(&id);
    }
}

/// A session's socket, by its ordinal.
pub(super) type SocketRef = (JobId, SessionId, u32);

/// Recording sockets' closes: the one way a session's grace window opens.
#[derive(Clone)]
pub(super) struct Closes {
    pub queue: Queue,
    pub hub: Arc<Hub>,
    /// How long a session survives without a socket.
    pub grace: chrono::Duration,
}

impl Closes {
    /// Records that socket `socket` of the session closed, opening its grace
    /// window; nothing if it was no longer the live socket.
    pub async fn detach(
        &self,
        (job_id, session_id, socket): SocketRef,
        code: u16,
        reason: &str,
        acked_seq: Option<i64>,
    ) -> Result<(), EngineError> {
        self.hub.unregister(job_id, session_id, socket);
        let command = Command::Detach {
            session_id,
            socket,
            code,
            reason: reason.to_owned(),
            acked_seq,
            grace: self.grace,
        };
        self.queue.execute(job_id, command).await.map(drop)
    }

    /// Records sessions whose sockets died with their server (this process's
    /// predecessor, or a node whose lease ran out) as disconnected with 1012
    /// `server restart`.
    pub async fn record_lost(&self, sockets: Vec<SocketRef>) -> Result<(), EngineError> {
        self.record(sockets, close::SERVICE_RESTART, close::SERVER_RESTART)
            .await
    }

    /// Records closes whose `disconnected` could not be written when they
    /// happened (the log was unavailable): as 1006.
    pub async fn record_unrecorded(&self, sockets: Vec<SocketRef>) -> Result<(), EngineError> {
        self.record(sockets, close::ABNORMAL, close::UNRECORDED)
            .await
    }

    /// Records each socket as closed with `code` and `reason`. Concurrently,
    /// so the writer commits them in a few transactions; a session that moved
    /// on meanwhile is left alone.
    async fn record(
        &self,
        sockets: Vec<SocketRef>,
        code: u16,
        reason: &str,
    ) -> Result<(), EngineError> {
        let recorded = futures_util::future::join_all(
            sockets
                .into_iter()
                .map(|socket| self.detach(socket, code, reason, None)),
        )
        .await;
        recorded.into_iter().find(Result::is_err).unwrap_or(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::stream::AppendStream;

    fn append(bytes: usize) -> WriteRequest {
        let (tx, _rx) = oneshot::channel();
        WriteRequest {
            job_id: JobId::nil(),
            command: Command::Stream {
                command: StreamCommand::Append(AppendStream {
                    content_type: None,
                    data: Some(StreamData::Bytes("A".repeat(bytes))),
                    stream_seq: None,
                    producer: None,
                    close: false,
                }),
                last_read: None,
            },
            reply: Answer::Stream(tx),
        }
    }

    #[test]
    fn a_batch_is_split_into_parts_by_payload_in_order() {
        let mb = 1 << 20;
        let sizes = [10 * mb, 10 * mb, 10 * mb, 40 * mb, 1, 1];
        let parts = by_weight(sizes.iter().map(|s| append(*s)).collect(), 32 * mb);
        let weights: Vec<Vec<usize>> = parts
            .iter()
            .map(|p| p.iter().map(WriteRequest::weight).collect())
            .collect();
        // One request over the limit is a part of its own; order is kept.
        assert_eq!(
            weights,
            vec![
                vec![10 * mb, 10 * mb, 10 * mb],
                vec![40 * mb],
                vec![1024, 1024]
            ]
        );
    }
}
