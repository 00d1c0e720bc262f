//! The per-address connect limiter under a reconnect storm from 50,000
//! addresses (a unit benchmark: no sockets, the limiter itself). Each round
//! makes every address attempt `ATTEMPTS` times, interleaved, from two
//! threads, against:
//!
//! - the floor: a bare `Mutex<HashMap>` bucket update, the least any
//!   per-address limiter does;
//! - `ConnectRate::take` as the server runs it (no clean-up per attempt),
//!   with the periodic sweep timed separately (how long it holds the lock);
//! - the previous design, which swept the whole map under its lock on every
//!   attempt once it held more than 10,000 addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rejoin::http::rate::ConnectRate;

use crate::BenchArgs;

const ATTEMPTS: u32 = 4;

/// The floor: one bucket update in a locked map.
struct Bare(Mutex<HashMap<IpAddr, (f64, Instant)>>);

impl Bare {
    fn take(&self, ip: IpAddr, now: Instant) -> bool {
        let mut map = self.0.lock().unwrap();
        let (tokens, at) = map.entry(ip).or_insert((100.0, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * 20.0).min(100.0);
        *at = now;
        *tokens >= 1.0
    }
}

/// The previous design: the sweep ran inside every attempt past 10,000.
struct Sweeping(Mutex<HashMap<IpAddr, (f64, Instant)>>);

impl Sweeping {
    fn take(&self, ip: IpAddr, now: Instant) -> bool {
        let mut map = self.0.lock().unwrap();
        if map.len() > 10_000 {
            map.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(60));
        }
        let (tokens, at) = map.entry(ip).or_insert((100.0, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * 20.0).min(100.0);
        *at = now;
        *tokens >= 1.0
    }
}

fn address(n: u32) -> IpAddr {
    // 10.x.y.z and then onwards: distinct IPv4 addresses.
    IpAddr::from((0x0a00_0000 + n).to_be_bytes())
}

/// Nanoseconds per attempt for `addresses` addresses making `attempts`
/// attempts each from two threads.
fn storm(addresses: u32, attempts: u32, take: &(dyn Fn(IpAddr, Instant) -> bool + Sync)) -> f64 {
    let started = Instant::now();
    std::thread::scope(|s| {
        for half in 0..2u32 {
            s.spawn(move || {
                for _ in 0..attempts {
                    for n in (half..addresses).step_by(2) {
                        std::hint::black_box(take(address(n), Instant::now()));
                    }
                }
            });
        }
    });
    started.elapsed().as_nanos() as f64 / f64::from(addresses * attempts)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let addresses: u32 = if args.smoke { 5_000 } else { 50_000 };
    let rounds = if args.smoke { 1 } else { 5 };
    let (mut bare, mut rate, mut sweep_ms) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let map = Bare(Mutex::new(HashMap::new()));
        bare.push(storm(addresses, ATTEMPTS, &|ip, now| map.take(ip, now)));
        let limiter = ConnectRate::new(20.0, 100);
        rate.push(storm(addresses, ATTEMPTS, &|ip, now| {
            limiter.take(ip, now).is_ok()
        }));
        anyhow::ensure!(limiter.tracked() == addresses as usize);
        // The sweep a minute later: every bucket is idle and goes.
        let later = Instant::now() + Duration::from_secs(61);
        let t = Instant::now();
        let left = limiter.sweep(later);
        sweep_ms.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(left == 0);
    }
    // The previous design: fewer attempts (each past 10,000 addresses scans
    // the whole map), enough for a stable per-attempt figure.
    let old = Sweeping(Mutex::new(HashMap::new()));
    let old_ns = storm(addresses, 1, &|ip, now| old.take(ip, now));
    let (bare, rate, sweep_ms) = (median(bare), median(rate), median(sweep_ms));
    println!(
        "storm from {addresses} addresses, {ATTEMPTS} attempts each, 2 threads (medians of {rounds}):"
    );
    println!("  bare locked map (floor):        {bare:8.0} ns/attempt");
    println!(
        "  ConnectRate::take:              {rate:8.0} ns/attempt  ({:.2}x the floor)",
        rate / bare
    );
    println!(
        "  periodic sweep of {addresses}:     {sweep_ms:8.2} ms under the lock, every {} s",
        rejoin::http::rate::SWEEP_EVERY.as_secs()
    );
    println!(
        "  previous design (sweep/attempt):{old_ns:8.0} ns/attempt  ({:.0}x the floor, one pass)",
        old_ns / bare
    );
    Ok(())
}
