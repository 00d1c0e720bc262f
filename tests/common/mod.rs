//! The tests' harness: the shared test kit (`tests/kit`, also used by the
//! load generator) plus what only these tests need: the `rejoin` binary
//! built for them, a Chrome DevTools client and the scripted support story.
//!
//! The database is a SQLite file in the test's temp directory, or, with
//! `REJOIN_TEST_POSTGRES_URL` set (`.ci/run` sets it for its PostgreSQL pass),
//! a fresh schema of its own on that PostgreSQL server.
#![allow(dead_code, unused_imports)]

use std::net::SocketAddr;

pub use rejoin_testkit::*;

pub mod cdp;
pub mod story;

/// The server binary these tests were built with.
pub const BIN: &str = env!("CARGO_BIN_EXE_rejoin");

/// Starts `rejoin serve` on port 0 over `database_url`, with the tests'
/// secret and `extra` flags, and waits for the address it prints.
pub async fn serve_binary(
    database_url: &str,
    extra: &[&str],
) -> (tokio::process::Child, SocketAddr) {
    serve_binary_at(BIN.as_ref(), database_url, SECRET, extra).await
}
