//! Connection attempts per client address: a token bucket per IP, so one
//! address in a reconnect loop is answered 429 with `Retry-After` while every
//! other client connects as usual. An attempt touches only its own bucket;
//! buckets idle long enough to be full again are dropped by [`ConnectRate::sweep`],
//! which the server runs every [`SWEEP_EVERY`], so a storm from many
//! addresses costs each attempt the same as a quiet minute does. And
//! [`LogEvery`], which lets a warning about such a storm through at most
//! once per interval.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets idle this long are forgotten (a bucket refills fully within
/// `burst / per_sec`; the defaults take 5 s).
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// The peer an address counts as, for every per-address limit: an IPv4
/// address itself; an IPv6 address by its /64, the block one subscriber (a
/// phone, a home) is given, which it may rotate through at will. An
/// IPv4-mapped IPv6 address counts as its IPv4 address.
pub fn peer(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

/// How often the server sweeps idle buckets.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct ConnectRate {
    /// Attempts per second an address earns back.
    per_sec: f64,
    /// Attempts an address may make at once.
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl ConnectRate {
    /// `per_sec` of 0 turns the limit off.
    pub fn new(per_sec: f64, burst: u32) -> Self {
        ConnectRate {
            per_sec,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one attempt for `ip` at `now`; when none is left, how long until
    /// one is.
    pub fn take(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.per_sec <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at) = buckets.entry(peer(ip)).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_sec))
        }
    }
}

impl ConnectRate {
    /// Drops the buckets idle for [`FORGET_AFTER`] at `now` (a forgotten
    /// address starts again with a full burst, as it would have by then);
    /// returns how many are left.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets.retain(|_, (_, at)| now.saturating_duration_since(*at) < FORGET_AFTER);
        if buckets.capacity() > 4 * buckets.len().max(1024) {
            buckets.shrink_to_fit();
        }
        buckets.len()
    }

    /// Addresses with a bucket.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let p = |s: &str| super::peer(s.parse().unwrap());
        assert_eq!(p("2001:db8:1:2::1"), p("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_ne!(p("2001:db8:1:2::1"), p("2001:db8:1:3::1"));
        assert_eq!(p("::ffff:192.0.2.7"), p("192.0.2.7"));
        assert_ne!(p("192.0.2.7"), p("192.0.2.8"));
    }

    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate_per_address() {
        let rate = ConnectRate::new(2.0, 3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rate.take(a, t0).is_ok());
        }
        let wait = rate.take(a, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(rate.take(b, t0).is_ok(), "another address is not affected");
        assert!(rate.take(a, t0 + Duration::from_millis(500)).is_ok());
        assert!(rate.take(a, t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn attempts_never_sweep_and_the_sweep_forgets_only_idle_addresses() {
        let rate = ConnectRate::new(1.0, 1);
        let t0 = Instant::now();
        for n in 0..20_000u32 {
            let ip = IpAddr::from(n.to_be_bytes());
            assert!(rate.take(ip, t0).is_ok());
        }
        let late: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(rate.take(late, t0 + FORGET_AFTER).is_ok());
        assert_eq!(rate.tracked(), 20_001, "attempts leave other buckets alone");
        assert_eq!(rate.sweep(t0 + FORGET_AFTER), 1);
        // The one kept still counts: its burst is spent.
        assert!(rate.take(late, t0 + FORGET_AFTER).is_err());
    }

    #[test]
    fn zero_turns_it_off() {
        let rate = ConnectRate::new(0.0, 1);
        let ip: IpAddr = "::1".parse().unwrap();
        for _ in 0..100 {
            assert!(rate.take(ip, Instant::now()).is_ok());
        }
    }
}

/// Lets something happen at most once per interval: a warning in a flood of
/// refusals is logged once, not once per refusal.
#[derive(Debug)]
pub struct LogEvery {
    every: Duration,
    started: Instant,
    /// Milliseconds since `started` when it last happened, plus one (0: never).
    last: AtomicU64,
}

impl LogEvery {
    pub fn new(every: Duration) -> Self {
        LogEvery {
            every,
            started: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// True at most once per interval.
    pub fn now(&self) -> bool {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        (last == 0 || now >= last + self.every.as_millis() as u64)
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}
