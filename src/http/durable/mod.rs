//! Durable Streams at `/v1/stream/{path}`: the open protocol for resumable
//! HTTP streams (create, append, read from an offset, tail by long-poll or
//! Server-Sent Events, close, delete, fork), over rejoin's log, and every
//! job as a read-only stream at `/v1/stream/jobs/{jobId}`.
//!
//! The files import one way: the protocol's types, headers and answers
//! (`protocol.rs`); plain streams (`streams.rs`) and job streams
//! (`jobs.rs`) on it; the route that serves both (`routes.rs`) on top;
//! their operations in the OpenAPI document (`document.rs`).

mod document;
mod jobs;
mod protocol;
mod routes;
mod streams;

pub use document::StreamPaths;
pub use routes::router;
