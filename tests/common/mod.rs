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

/// `count` server processes sharing one fresh PostgreSQL log (a schema of
/// its own), each started with `extra`: the log's URL and each node's
/// process and address. Panics, naming what it needs, without
/// `REJOIN_TEST_POSTGRES_URL`.
pub async fn spawn_nodes(
    count: usize,
    extra: &[&str],
) -> (String, Vec<(tokio::process::Child, SocketAddr)>) {
    let server = std::env::var("REJOIN_TEST_POSTGRES_URL")
        .expect("this test needs PostgreSQL: set REJOIN_TEST_POSTGRES_URL");
    let url = rejoin::log::postgres::fresh_schema(&server, "t")
        .await
        .expect("REJOIN_TEST_POSTGRES_URL answers");
    let mut nodes = Vec::with_capacity(count);
    for _ in 0..count {
        nodes.push(serve_binary(&url, extra).await);
    }
    (url, nodes)
}

/// Starts `rejoin serve` on port 0 over `database_url`, with the tests'
/// secret and `extra` flags, and waits for the address it prints.
pub async fn serve_binary(
    database_url: &str,
    extra: &[&str],
) -> (tokio::process::Child, SocketAddr) {
    serve_binary_at(BIN.as_ref(), database_url, SECRET, extra).await
}
