//! Scenario 2, fan-out: WebSocket clients on their own jobs, progress POSTed at
//! a fixed total rate; the time from sending each POST to its client receiving
//! the event (durable in between), with loss and order checked. The server runs
//! as its own process. The baselines, in the same run: a bare WebSocket round
//! trip on loopback, and the durable floor, a bare relay under the same load
//! on the same kind of database (`relay.rs`: commit, then push, nothing
//! else), the relay and rejoin alternating `--runs` times before the medians.
//! Each run also gives its writer's figures over the window (commits, time
//! inside `commit`, commits over 25 ms).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::commits::Commits;
use super::{create_job, serve_args, spawn_rejoin, Latencies, Sample, Tokens};
use crate::BenchArgs;

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (clients, per_sec, secs) = if args.smoke {
        (50, 200, 2)
    } else {
        (1_000, 500, 20)
    };

    let mut bare = bare_round_trips(if args.smoke { 200 } else { 5_000 }).await?;
    println!(
        "  bare WebSocket round trip (baseline)   {}",
        bare.summary()
    );
    // One watcher per job, then the configuration every peer is measured
    // with: ten watchers a job (the same sockets over a tenth of the jobs,
    // the same POSTs, ten times the pushes).
    for watchers in [1, 10] {
        let load = Load {
            clients,
            watchers,
            per_sec,
            secs,
        };
        // The relay first, then rejoin, `runs` times: a disk that stalls in
        // one minute and not the next weighs on both alike.
        let runs = args.runs();
        let (mut floor, mut ours) = (Runs::default(), Runs::default());
        for run in 1..=runs {
            if runs > 1 {
                println!("  run {run} of {runs}, {watchers} per job");
            }
            floor.push(configuration(args, &load, Server::Relay, 0).await?);
            ours.push(configuration(args, &load, Server::Rejoin(&[]), 0).await?);
        }
        let (p50, p99) = (ours.p50.median(), ours.p99.median());
        println!(
            "  {watchers} per job, medians of {runs}: relay p50 {} p99 {}, rejoin p50 {} p99 {}; writer inside commit: relay {}, rejoin {}; commits over 25 ms: relay {}, rejoin {}",
            floor.p50.ms(),
            floor.p99.ms(),
            ours.p50.ms(),
            ours.p99.ms(),
            floor.share.percent(),
            ours.share.percent(),
            floor.slow.count(),
            ours.slow.count(),
        );
        println!(
            "  ratio to the bare round trip: p50 {:.1}x, p99 {:.1}x",
            p50 / bare.percentile(50.0).as_secs_f64(),
            p99 / bare.percentile(99.0).as_secs_f64()
        );
        println!(
            "  rejoin over the relay: p50 {:+.2} ms, p99 {:.2}x",
            (p50 - floor.p50.median()) * 1000.0,
            p99 / floor.p99.median()
        );
    }
    Ok(())
}

/// The fan-out load: `clients` sockets, `watchers` to a job, `per_sec` POSTs
/// a second in all for `secs` seconds.
pub struct Load {
    pub clients: usize,
    pub watchers: usize,
    pub per_sec: usize,
    pub secs: usize,
}

/// What a configuration runs against.
pub enum Server<'a> {
    /// rejoin, started with these extra flags.
    Rejoin(&'a [String]),
    /// rejoin with these flags, over a log already holding this many events
    /// of jobs that finished two hours ago (`retention.rs`).
    RejoinOver(&'a [String], u64),
    /// The durable floor: the bare relay (`relay.rs`), on the same kind of
    /// database.
    Relay,
}

/// What one configuration measured.
pub struct Measured {
    /// POST-to-receipt latencies of the watched jobs' events.
    pub latencies: Latencies,
    /// The unwatched jobs ended beside the load.
    pub ended: Vec<uuid::Uuid>,
    /// The writer's figures while the POSTs were sent and answered.
    pub commits: Commits,
    /// How long that took.
    pub window: Duration,
    /// Events retention removed inside the window.
    pub removed: u64,
}

/// A configuration's figures over its runs.
#[derive(Default)]
struct Runs {
    p50: Sample,
    p99: Sample,
    share: Sample,
    slow: Sample,
}

impl Runs {
    fn push(&mut self, mut m: Measured) {
        self.p50.push(m.latencies.percentile(50.0).as_secs_f64());
        self.p99.push(m.latencies.percentile(99.0).as_secs_f64());
        self.share.push(m.commits.share(m.window));
        self.slow.push(m.commits.slow);
    }
}

/// `load` against a server of its own; beside it, `ends_per_sec` jobs
/// nobody watches are created and completed each second (rejoin only).
/// Prints the figures, the relay's on lines that say `relay`.
pub async fn configuration(
    args: &BenchArgs,
    load: &Load,
    server: Server<'_>,
    ends_per_sec: usize,
) -> anyhow::Result<Measured> {
    let &Load {
        clients,
        watchers,
        per_sec,
        secs,
    } = load;
    // The server runs as its own process, so its threads do not share a
    // runtime with the 1,000 readers and the driver.
    let dir = tempfile::tempdir()?;
    let disk = super::disk::DiskProbe::start(dir.path());
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let relay = matches!(server, Server::Relay);
    let label = if relay { "relay " } else { "" };
    let (server, addr) = match server {
        Server::Rejoin(extra) | Server::RejoinOver(extra, _) => {
            let db = super::database(args, dir.path(), "fanout").await?;
            if let Server::RejoinOver(_, events) = server {
                super::retention::preload(db.clone(), events).await?;
            }
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            spawn_rejoin(&serve_args("127.0.0.1:0", &db, &secret, &extra)).await?
        }
        Server::Relay => {
            let db = super::database(args, dir.path(), "relay").await?;
            super::spawn_baseline(&["relay-server", &db]).await?
        }
    };
    let tokens = Tokens::new(&secret);
    let service = tokens.service();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let job_count = clients / watchers;
    let mut jobs = Vec::with_capacity(job_count);
    for _ in 0..job_count {
        jobs.push(create_job(&http, &addr, &service).await?);
    }

    let base = Instant::now();
    let latencies = Arc::new(Mutex::new(Latencies::default()));
    let received = Arc::new(AtomicU64::new(0));
    let disorder = Arc::new(AtomicU64::new(0));
    let duplicates = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for job in jobs.iter().flat_map(|j| std::iter::repeat_n(j, watchers)) {
        let mut ws = if relay {
            open_relay_socket(&addr, *job).await?
        } else {
            super::open_socket(&addr, &tokens, *job).await?
        };
        let (latencies, received, disorder, duplicates) = (
            latencies.clone(),
            received.clone(),
            disorder.clone(),
            duplicates.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut last = 0i64;
            while let Some(Ok(msg)) = ws.next().await {
                let Message::Text(text) = msg else { continue };
                let at = base.elapsed();
                let Ok(v) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
                    continue;
                };
                let (Some(seq), Some(sent)) = (v["seq"].as_i64(), v["data"]["t"].as_u64()) else {
                    continue;
                };
                if seq == last {
                    duplicates.fetch_add(1, Ordering::Relaxed);
                } else if seq < last {
                    disorder.fetch_add(1, Ordering::Relaxed);
                }
                last = last.max(seq);
                let latency = at.saturating_sub(Duration::from_nanos(sent));
                latencies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(latency);
                received.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // The driver: one POST every 1/per_sec seconds, each on its own task so a
    // slow answer does not delay the schedule.
    let total = per_sec * secs;
    let expected = (total * watchers) as u64;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let failures = Arc::new(AtomicU64::new(0));
    let ender = (ends_per_sec > 0).then(|| {
        let (http, addr, service) = (http.clone(), addr.clone(), service.clone());
        tokio::spawn(end_unwatched_jobs(http, addr, service, ends_per_sec, secs))
    });
    let before = Commits::read(&http, &addr, relay).await?;
    let removed_before = removed_events(&http, &addr).await;
    let started = Instant::now();
    let mut posts = Vec::with_capacity(total);
    for i in 0..total {
        tick.tick().await;
        let url = format!("http://{addr}/v1/jobs/{}/events", jobs[i % job_count]);
        let (http, token, failures) = (http.clone(), service.clone(), failures.clone());
        posts.push(tokio::spawn(async move {
            let t = base.elapsed().as_nanos() as u64;
            let body = json!({"type": "progress", "progress": 50.0, "data": {"t": t}});
            let ok = http
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if !ok {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for p in posts {
        p.await?;
    }
    let window = started.elapsed();
    let commits = Commits::read(&http, &addr, relay).await?.since(&before);
    let removed = removed_events(&http, &addr).await - removed_before;
    let ended = match ender {
        Some(task) => task.await??,
        None => Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for r in &readers {
        r.abort();
    }
    let got = received.load(Ordering::Relaxed);
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    println!(
        "  {label}{clients} sockets, {watchers} per job, {per_sec} POSTs/s for {secs} s, POST to receipt  {}",
        lat.summary()
    );
    println!(
        "  {label}{watchers} per job: posted {total}, failed {}, received {got}, lost {}, out of order {}, duplicates {}",
        failures.load(Ordering::Relaxed),
        expected.saturating_sub(got),
        disorder.load(Ordering::Relaxed),
        duplicates.load(Ordering::Relaxed)
    );
    println!(
        "  {label}{watchers} per job, writer: {}",
        commits.summary(window)
    );
    disk.finish()?;
    drop(server);
    Ok(Measured {
        latencies: lat,
        ended,
        commits,
        window,
        removed,
    })
}

/// `rejoin_retention_removed_events_total` (0 where the server has none).
async fn removed_events(http: &reqwest::Client, addr: &str) -> u64 {
    let Ok(res) = http.get(format!("http://{addr}/metrics")).send().await else {
        return 0;
    };
    let text = res.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("rejoin_retention_removed_events_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Opens a socket on the relay and reads its first message.
async fn open_relay_socket(addr: &str, job: uuid::Uuid) -> anyhow::Result<super::Ws> {
    let url = format!("ws://{addr}/ws/progress?jobId={job}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(_)))) => Ok(ws),
        other => anyhow::bail!("the relay's socket did not open: {other:?}"),
    }
}

/// Creates and completes `per_sec` jobs a second for `secs` seconds, none
/// of them watched; returns them.
async fn end_unwatched_jobs(
    http: reqwest::Client,
    addr: String,
    service: String,
    per_sec: usize,
    secs: usize,
) -> anyhow::Result<Vec<uuid::Uuid>> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec as f64));
    let mut ended = Vec::with_capacity(per_sec * secs);
    for _ in 0..per_sec * secs {
        tick.tick().await;
        let job = create_job(&http, &addr, &service).await?;
        let res = http
            .post(format!("http://{addr}/v1/jobs/{job}/events"))
            .bearer_auth(&service)
            .json(&json!({"type": "completed", "result": {"n": 1}}))
            .send()
            .await?;
        anyhow::ensure!(
            res.status().is_success(),
            "completing a job: {}",
            res.status()
        );
        ended.push(job);
    }
    Ok(ended)
}

/// Round trips of a 150-byte text message through a bare tokio-tungstenite
/// echo server on loopback.
async fn bare_round_trips(n: usize) -> anyhow::Result<Latencies> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        if let Ok((tcp, _)) = listener.accept().await {
            if let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await {
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await?;
    let payload = "x".repeat(150);
    let mut lat = Latencies::default();
    for _ in 0..n {
        let started = Instant::now();
        ws.send(Message::Text(payload.clone().into())).await?;
        ws.next().await;
        lat.push(started.elapsed());
    }
    drop(ws);
    server.abort();
    Ok(lat)
}
