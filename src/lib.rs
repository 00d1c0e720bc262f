//! # rejoin
//!
//! Keeps a client's view of a long-running job alive across dropped WebSocket
//! connections. Every fact is an event in an append-only log; job and session
//! state are folds of that log.
//!
//! # Layout
//!
//! - [`domain`]: the event catalogue, the pure fold of job and session state,
//!   and the pure decisions of what a command appends. No I/O, no clock.
//! - [`log`]: durable storage behind the [`log::LogStore`] trait (SQLite in
//!   `log/sqlite.rs`), the per-job hash chain and `verify`.
//! - [`engine`]: the live jobs (and a bounded cache of finished ones) kept
//!   current by the single writer, which group-commits every change to the
//!   log; checkpoints and start-up.
//! - [`auth`]: tokens and roles.
//! - [`engine::hub`]: the live sockets and the fan-out of committed events.
//! - [`scheduler`]: the grace scheduler, sleeping until the next deadline.
//! - [`ws`]: the WebSocket endpoint: checks before the upgrade, the protocol,
//!   one task per socket.
//! - [`http`]: the HTTP routes, their extractors and the API error type.
//! - [`bench`]: `rejoin bench`, the load generator and its scenarios.
//! - [`app`]: builds and runs the server; [`config`]: the command line;
//!   [`cli`]: the subcommands; [`clock`]: injected time.
//!
//! Data flows one way: request → decide → append (durable) → apply to the
//! in-memory state → answer. Nothing is acknowledged before it is in the log.

pub mod app;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod engine;
pub mod http;
pub mod log;
pub mod metrics;
pub mod scheduler;
pub mod ws;
