//! The log: durable, append-only storage of events.
//!
//! A backend per database, `sqlite.rs` (embedded, one process per log) and
//! `postgres.rs` (a log shared by several nodes), chosen by [`open`] from the
//! database URL, gives its stores by concern ([`Log`]): the event log, the
//! checkpoints, the job index, and, shared only, the nodes' membership.
//! Stores keep rows as they are written ([`EventRow`]); the
//! domain's typed [`Event`](crate::domain::Event) is converted at this
//! boundary. A store never decides
//! anything: seqs and hashes arrive computed by the writer, and the database's
//! unique `(job_id, seq)` is the last line of defence against two writers.
//!
//! The files are layered (`tests/layers.rs`): what a store is (`store.rs`)
//! below everything, the backends above the readers they use, the choice of
//! a backend (`open.rs`) on top; this file only declares and re-exports.

pub mod archive;
pub mod chain;
#[cfg(feature = "test-switches")]
pub mod fault;
pub mod job_index;
mod open;
pub mod owner;
pub mod pages;
pub mod postgres;
mod read;
pub mod retention;
pub mod sqlite;
mod sqlite_scan;
mod store;
pub mod verify;
#[cfg(feature = "test-switches")]
pub mod write_behind;

pub use job_index::{IndexRow, JobFilter};
pub use open::open;
pub use pages::Pages;
pub use read::{
    count_job_events, for_each_event, for_each_job_event, for_each_job_event_after, for_each_row,
};
pub use store::*;
