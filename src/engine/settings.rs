//! What the engine is started with, and how its start went.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::event::Notify;
use crate::log::archive::Archive;
use crate::webhook::Endpoint;

/// What a job may set at creation beside its metadata: its stall and
/// timeout windows, in seconds (0: off), and when its end is notified. None:
/// the server's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobOptions {
    pub stall_after_secs: Option<u64>,
    pub timeout_secs: Option<u64>,
    pub notify: Option<Notify>,
}

/// Retention as the operator chose it.
#[derive(Clone, Debug)]
pub struct RetentionSettings {
    /// Finished units older than this leave the log.
    pub keep: chrono::Duration,
    /// Where their events are archived first (none: removal only).
    pub archive: Option<Archive>,
    /// How often a round starts.
    pub every: Duration,
    /// Test switch: the process kills itself at this step of the first
    /// batch (1: marker written, 2: archive written, 3: removal committed).
    pub crash_at_step: Option<u8>,
}

/// Tuning for the writer.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// Requests that may wait for the writer before callers are slowed down.
    pub queue_capacity: usize,
    /// Most requests decided and committed in one transaction.
    pub max_batch: usize,
    /// How long a session survives without a socket.
    pub grace: Duration,
    /// On a shared log: how long a node's lease lasts without renewal.
    pub node_lease: Duration,
    /// Finished jobs kept in memory besides the live ones.
    pub job_cache_entries: usize,
    /// A checkpoint after this many events (0: only by time).
    pub checkpoint_every_events: u64,
    /// A checkpoint this long after the last, if anything happened since.
    pub checkpoint_every: Duration,
    /// The windows of jobs created without their own.
    pub windows: JobOptions,
    /// The operator's webhook endpoint, when notifications are on.
    pub webhook: Option<Arc<Endpoint>>,
    /// What leaves the log, and when (none: everything is kept).
    pub retention: Option<RetentionSettings>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            queue_capacity: 8192,
            max_batch: 1024,
            grace: Duration::from_secs(60),
            node_lease: Duration::from_secs(10),
            job_cache_entries: 10_000,
            checkpoint_every_events: 100_000,
            checkpoint_every: Duration::from_secs(300),
            windows: JobOptions::default(),
            webhook: None,
            retention: None,
        }
    }
}

/// How the state was rebuilt at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Startup {
    /// The checkpoint's position, when one was used.
    pub checkpoint: Option<i64>,
    /// Events folded after it (or from the start of the log).
    pub folded: u64,
    /// Why newer checkpoints were ignored.
    pub ignored: Vec<String>,
}
