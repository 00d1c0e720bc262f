//! The HTTP surface: one router over one shared [`AppState`]. Each route module
//! exposes `router()`; errors leave through [`error::ApiError`].

pub mod client;
pub mod connections;
mod demo;
pub mod durable;
pub mod error;
pub mod events;
pub mod extract;
mod health;
pub mod history;
pub mod jobs;
pub mod openapi;
pub mod rate;
pub mod request;
mod routes;
pub mod state;
pub mod stream;
mod support;
pub mod upgrade;

pub use error::{ErrorBody, ErrorDetail};
pub use routes::router;
pub use state::{AppState, HttpSettings, RejectionLog, Shared, StreamSettings, UpgradeSettings};
