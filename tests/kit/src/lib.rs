//! rejoin's test kit: what the integration tests and the load generator
//! (`benches/load`) both need to drive a real server over its real
//! interfaces. One place per concern:
//!
//! - [`tokens`]: signing tokens (one [`Tokens`] type; the tests' secret).
//! - [`process`]: `rejoin serve` as its own process: its command line, start,
//!   address, graceful stop, memory.
//! - [`server`]: a server in this process on port 0 ([`TestApp`],
//!   [`InProcess`]).
//! - [`socket`]: WebSocket clients and reading their messages.
//! - [`client`]: HTTP helpers by address (jobs, progress, metrics).
//! - [`proxy`]: a TCP proxy to cut a node off from its database.
//! - [`cut`]: a proxy that cuts one client connection after exactly k bytes.
//! - [`relay`]: a relay between a client and a server that resets, silences
//!   or refuses connections and follows a restarted server.
//! - [`conformance`]: the client conformance suite's runner
//!   (`clients/conformance`; the `rejoin-conformance` program).
//! - [`receiver`]: a webhook endpoint on loopback that records every request.
//! - [`db`]: fresh databases (SQLite files or PostgreSQL schemas) and direct
//!   reads of the log.

pub mod client;
pub mod conformance;
pub mod cut;
pub mod db;
pub mod process;
pub mod proxy;
pub mod receiver;
pub mod relay;
pub mod server;
pub mod socket;
pub mod tokens;
pub mod wait;

pub use client::{
    create_job_at, create_job_from, create_job_with, get_json_at, metric_at, metric_in, metrics_at,
    post_json_at, progress_at,
};
pub use cut::{Cut, CutProxy};
pub use db::{count_events, events_of, fresh_database, Db, LoggedEvent};
pub use process::{
    announced_address, free_port, rss_kib, serve_args, serve_binary_at, spawn_announcing,
    start_binary, status_kib, terminate,
};
pub use proxy::{postgres_address, Proxy};
pub use receiver::{Received, Receiver};
pub use server::{
    init_logs, spawn_app, spawn_in, spawn_on, spawn_on_clock, spawn_with, InProcess, KeyedServer,
    TestApp,
};
pub use socket::{
    check_server_message, first_message, next_close, next_json, refused_status, send_text,
    ws_connect, Ws, PATIENCE,
};
pub use tokens::{mint, token_for, Tokens, SECRET};
pub use wait::{eventually, within};
