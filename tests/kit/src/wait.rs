//! Waiting for something to become true, with a deadline and a name: every
//! poll in the tests goes through [`eventually`].

use std::time::Duration;

use crate::socket::PATIENCE;

/// Polls `check` until it answers `Some`, for at most [`PATIENCE`]; panics
/// naming `what` it waited for when it never does.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    within(PATIENCE, what, check).await
}

/// [`eventually`] with a deadline of its own, for what the contract gives
/// longer than [`PATIENCE`] (a retention sweep of thousands of units).
pub async fn within<T, F, Fut>(patience: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(t) = check().await {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {patience:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
