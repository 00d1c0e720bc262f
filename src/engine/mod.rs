//! The engine: the in-memory fold of the log, kept current by the single
//! writer, and the one way to change the log.
//!
//! Data flows one way: a command is queued to the writer (`queue.rs`),
//! planned by the domain, appended durably, applied to the job table, and
//! only then answered (`writer.rs`). Reads clone state out of the table
//! under a short lock; they never wait for the writer. `api.rs` is what
//! callers use; `start.rs` rebuilds the state and starts the tasks.

mod api;
mod checkpoint;
pub mod hub;
pub mod index;
pub mod jobs;
pub mod lease;
pub mod listing;
mod membership;
mod notify;
mod queue;
pub mod recover;
pub mod retention;
mod scheduler;
mod settings;
mod start;
mod writer;

pub use api::{history, Engine, NOT_SERVING};
pub use checkpoint::{write as write_checkpoint, Snapshot};
pub use notify::jitter;
pub use queue::{Appended, Attached, Created, EngineError, StreamDone, WriterStats};
pub use settings::{EngineSettings, JobOptions, RetentionSettings, Startup};
pub use start::{EngineTasks, Started};
