//! Time, injected: the engine and the scheduler read the clock through this
//! trait, so that tests can set it ([`ManualClock`]).

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::domain::event::to_log_precision;

pub trait Clock: Send + Sync + 'static {
    /// Now, at the log's precision (microseconds).
    fn now(&self) -> DateTime<Utc>;

    /// For a clock that is set rather than running ([`ManualClock`]): each
    /// time it is set, so that whoever sleeps until a time on it wakes. A
    /// running clock has none: a sleep on real time ends with it.
    fn settings(&self) -> Option<watch::Receiver<DateTime<Utc>>> {
        None
    }
}

/// A clock that stands still until it is moved: the tests' clock. Grace
/// windows, stalls, timeouts and notification retries come due when it is
/// moved past them, at once, whatever their length.
pub struct ManualClock {
    now: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn at(start: DateTime<Utc>) -> Self {
        ManualClock {
            now: watch::Sender::new(to_log_precision(start)),
        }
    }

    /// A clock standing at the wall clock's time now.
    pub fn starting_now() -> Self {
        ManualClock::at(Utc::now())
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: chrono::Duration) {
        self.now
            .send_modify(|now| *now = to_log_precision(*now + by));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn settings(&self) -> Option<watch::Receiver<DateTime<Utc>>> {
        Some(self.now.subscribe())
    }
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        to_log_precision(Utc::now())
    }
}

/// A clock kept on another clock's time: the node's own clock plus the
/// offset last measured against it. On a shared log this is the database
/// server's clock, measured at every lease renewal (see
/// docs/ARCHITECTURE.md, "One clock"), so that every node writes and
/// compares deadlines on the same time.
pub struct Corrected {
    local: std::sync::Arc<dyn Clock>,
    /// Microseconds to add to the local clock.
    offset_us: std::sync::atomic::AtomicI64,
}

impl Corrected {
    pub fn new(local: std::sync::Arc<dyn Clock>) -> Self {
        Corrected {
            local,
            offset_us: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// The local clock read `before` and `after` a request that read `remote`
    /// in between: the remote clock is taken to have been read half-way.
    pub fn observe(&self, before: DateTime<Utc>, remote: DateTime<Utc>, after: DateTime<Utc>) {
        let midpoint = before + (after - before) / 2;
        let offset = (remote - midpoint).num_microseconds().unwrap_or(0);
        self.offset_us
            .store(offset, std::sync::atomic::Ordering::Relaxed);
    }

    /// The offset now applied.
    pub fn offset(&self) -> chrono::Duration {
        chrono::Duration::microseconds(self.offset_us.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The uncorrected local clock.
    pub fn local(&self) -> DateTime<Utc> {
        self.local.now()
    }
}

impl Clock for Corrected {
    fn now(&self) -> DateTime<Utc> {
        to_log_precision(self.local.now() + self.offset())
    }

    fn settings(&self) -> Option<watch::Receiver<DateTime<Utc>>> {
        self.local.settings()
    }
}

/// The system clock off by a fixed amount: a node with a skewed clock, for
/// tests (`rejoin serve --clock-skew-ms`, in `test-switches` builds).
#[derive(Clone, Copy, Debug)]
pub struct Skewed(pub chrono::Duration);

impl Clock for Skewed {
    fn now(&self) -> DateTime<Utc> {
        to_log_precision(Utc::now() + self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_stands_still_until_moved_and_tells_of_each_move() {
        let clock = ManualClock::starting_now();
        let start = clock.now();
        assert_eq!(clock.now(), start);
        let mut moves = clock.settings().unwrap();
        clock.advance(chrono::Duration::seconds(61));
        assert!(moves.has_changed().unwrap());
        assert_eq!(
            *moves.borrow_and_update(),
            start + chrono::Duration::seconds(61)
        );
        assert_eq!(clock.now(), start + chrono::Duration::seconds(61));
    }

    #[test]
    fn a_corrected_clock_reads_the_remote_clock_measured_half_way() {
        let local = Skewed(chrono::Duration::seconds(30));
        let clock = Corrected::new(std::sync::Arc::new(local));
        let before = clock.local();
        let after = before + chrono::Duration::milliseconds(10);
        let remote = before - chrono::Duration::seconds(30) + chrono::Duration::milliseconds(5);
        clock.observe(before, remote, after);
        assert_eq!(clock.offset(), chrono::Duration::seconds(-30));
        let off = (clock.now() - Utc::now()).num_milliseconds().abs();
        assert!(off < 1000, "corrected clock is {off} ms off");
    }
}
