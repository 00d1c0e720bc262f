//! # rejoin
//!
//! Keeps a client's view of a long-running job alive across dropped WebSocket
//! connections. Every fact is an event in an append-only log; job and session
//! state are folds of that log.
//!
//! # Layout
//!
//! Lowest layer first; each module uses only those before it (checked by
//! `tests/layers.rs`):
//!
//! - [`domain`]: the event catalogue, the pure fold of job and session state,
//!   the pure planner of everything a command causes (its events sealed into
//!   the job's hash chain, their reactions, the deadlines after them), the
//!   close codes the log records. No I/O, no clock.
//! - [`clock`]: injected time, and the manual clock tests move.
//! - [`log`]: durable storage by concern ([`log::Log`]: the event log, the
//!   checkpoints, the job index and, on a shared log, the nodes' membership;
//!   SQLite in `log/sqlite.rs`, PostgreSQL for several nodes in
//!   `log/postgres.rs`), `verify` and the checkpoints' tables.
//! - [`metrics`]: Prometheus metrics.
//! - [`auth`]: tokens, roles and their settings.
//! - [`webhook`]: the operator's webhook endpoint: its settings, Standard
//!   Webhooks signing, one attempt's POST.
//! - [`engine`]: the live jobs (and a bounded cache of finished ones) kept
//!   current by the single writer, which group-commits every change to the
//!   log; the grace scheduler; checkpoints and start-up; the live sockets
//!   and fan-out ([`engine::hub`]); on a shared log, membership.
//! - [`ws`]: the WebSocket protocol and one task per upgraded socket.
//! - [`http`]: the HTTP routes (the upgrade's checks among them), their
//!   extractors and the API error type.
//! - [`config`]: the command line; [`app`]: builds and runs the server and
//!   owns its lifecycle; [`cli`]: the subcommands.
//!
//! Data flows one way: request → decide → append (durable) → apply to the
//! in-memory state → answer. Nothing is acknowledged before it is in the log.

pub mod app;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod engine;
pub mod http;
pub mod log;
pub mod metrics;
pub mod outbound;
pub mod webhook;
pub mod ws;
