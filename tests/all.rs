//! Every integration test of the server, in one binary: one link, and the
//! tests of every file share the test threads. Each file below is a module;
//! `cargo test --test all -- cuts::` runs one file's tests.

mod common;

mod analytics;
mod auth;
mod browser_client;
mod checkpoints;
mod conformance;
mod cors;
mod crash;
mod crash_harness;
mod cuts;
mod deploy;
mod docs;
mod durable;
mod events;
mod faults;
mod fencing;
mod flood;
mod history;
mod hostile;
mod jobs_api;
mod jwks;
mod layers;
mod lifecycle;
mod log;
mod nodes;
mod notifications;
mod operations;
mod owner;
mod producers;
mod properties;
mod protocol_schema;
mod readme;
mod retention;
mod robustness;
mod schemathesis;
mod search;
mod sse;
mod support_page;
mod watch;
mod watchers;
mod ws;
