//! Time, injected: the engine and the scheduler read the clock through this
//! trait so that tests can control it.

use chrono::{DateTime, Utc};

use crate::domain::event::to_log_precision;

pub trait Clock: Send + Sync + 'static {
    /// Now, at the log's precision (microseconds).
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        to_log_precision(Utc::now())
    }
}
