//! The WebSocket protocol and one socket's life, below HTTP: messages both
//! ways (`protocol.rs`) and the task that serves an upgraded socket
//! (`socket.rs`). Depends only on the engine and the domain; the checks
//! before the upgrade are HTTP work (`http/upgrade.rs`).

pub mod protocol;
pub mod socket;
