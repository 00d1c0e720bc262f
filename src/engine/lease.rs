//! This node's lease on a shared log, as the node itself must judge it: on
//! the monotonic clock, from the moment each renewal was *sent*.
//!
//! The database grants a lease until its own `now() + ttl`, evaluated when
//! the renewal arrives; the node counts `ttl` from before it sent the
//! renewal. So the node's deadline always comes first, and a node stops
//! speaking for its sessions (it *fences*) before any other node may record
//! them as lost. Every send on a socket, every publish and every deadline
//! the node decides checks [`Lease::holds`] first.
//!
//! A lease that ran out is never revived: the node fences, and takes a new
//! lease under a new node id. Sessions recorded under the old id are left to
//! the lost-node rule (`membership::keep_lease`) like any dead node's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Whether this node may act for its sessions, and under which node id.
#[derive(Debug)]
pub struct Lease {
    /// The origin of `until`.
    base: Instant,
    /// Held while the monotonic clock reads less than this (nanoseconds
    /// since `base`); `u64::MAX` on a log of one, which needs no lease.
    until: AtomicU64,
    /// The id the lease is held under; `None` on a log of one.
    node: RwLock<Option<Arc<str>>>,
    /// The current id was fenced: its sockets are closed and it is retired.
    fenced: AtomicBool,
}

impl Lease {
    /// A log of one: always held, no node id.
    pub fn sole() -> Lease {
        Lease {
            base: Instant::now(),
            until: AtomicU64::new(u64::MAX),
            node: RwLock::new(None),
            fenced: AtomicBool::new(false),
        }
    }

    /// A shared log: not held until [`Lease::granted`].
    pub fn shared() -> Lease {
        Lease {
            base: Instant::now(),
            until: AtomicU64::new(0),
            node: RwLock::new(None),
            fenced: AtomicBool::new(true),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether the lease is held now: not fenced, and its deadline not passed
    /// on the monotonic clock.
    pub fn holds(&self) -> bool {
        !self.fenced.load(Ordering::Acquire)
            && self.nanos(Instant::now()) < self.until.load(Ordering::Acquire)
    }

    /// The id this node acts under, while it holds the lease.
    pub fn node(&self) -> Option<Arc<str>> {
        self.held_id().filter(|_| self.holds())
    }

    /// The current id, held or not (`None` on a log of one).
    pub fn held_id(&self) -> Option<Arc<str>> {
        self.node.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// When the lease runs out unless renewed (`None`: never, or not held).
    pub fn deadline(&self) -> Option<Instant> {
        let until = self.until.load(Ordering::Acquire);
        (until != u64::MAX && !self.fenced.load(Ordering::Acquire))
            .then(|| self.base + Duration::from_nanos(until))
    }

    /// A new lease under `node`, taken by a request sent at `sent`.
    pub fn granted(&self, node: Arc<str>, sent: Instant, ttl: Duration) {
        *self.node.write().unwrap_or_else(|p| p.into_inner()) = Some(node);
        self.until.store(self.nanos(sent + ttl), Ordering::Release);
        self.fenced.store(false, Ordering::Release);
    }

    /// The lease was renewed by a request sent at `sent`. A renewal that
    /// comes back after the lease ran out here does not revive it.
    pub fn renewed(&self, sent: Instant, ttl: Duration) {
        if self.holds() {
            self.until
                .fetch_max(self.nanos(sent + ttl), Ordering::AcqRel);
        }
    }

    /// Retires the current id; true the first time (the caller then closes
    /// the node's sockets).
    pub fn fence(&self) -> bool {
        if self.until.load(Ordering::Acquire) == u64::MAX {
            return false; // a log of one has nobody to defer to
        }
        !self.fenced.swap(true, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sole_node_always_holds_and_never_fences() {
        let lease = Lease::sole();
        assert!(lease.holds());
        assert!(!lease.fence());
        assert!(lease.holds());
        assert_eq!(lease.deadline(), None);
    }

    #[test]
    fn a_shared_lease_is_held_from_its_grant_until_its_deadline() {
        let lease = Lease::shared();
        assert!(!lease.holds());
        let sent = Instant::now();
        lease.granted("n1".into(), sent, Duration::from_secs(60));
        assert!(lease.holds());
        assert_eq!(lease.node().as_deref(), Some("n1"));
        assert_eq!(lease.deadline(), Some(sent + Duration::from_secs(60)));

        // Counted from when the request was sent, however late it returns.
        let long_ago = Instant::now() - Duration::from_secs(1);
        lease.granted("n2".into(), long_ago, Duration::from_millis(500));
        assert!(!lease.holds());
        assert_eq!(lease.node(), None);
        assert_eq!(lease.held_id().as_deref(), Some("n2"));
    }

    #[test]
    fn a_renewal_after_the_deadline_does_not_revive_the_lease() {
        let lease = Lease::shared();
        let past = Instant::now() - Duration::from_secs(2);
        lease.granted("n1".into(), past, Duration::from_secs(1));
        lease.renewed(Instant::now(), Duration::from_secs(60));
        assert!(!lease.holds());
    }

    #[test]
    fn fencing_retires_the_id_once() {
        let lease = Lease::shared();
        lease.granted("n1".into(), Instant::now(), Duration::from_secs(60));
        assert!(lease.fence());
        assert!(!lease.fence());
        assert!(!lease.holds());
        lease.renewed(Instant::now(), Duration::from_secs(60));
        assert!(!lease.holds(), "a fenced id stays retired");
        lease.granted("n2".into(), Instant::now(), Duration::from_secs(60));
        assert!(lease.holds());
    }
}
