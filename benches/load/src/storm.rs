//! Scenario 6, reconnect storm: clients on as many live jobs, the server killed
//! (SIGKILL) and restarted under them, every client reconnecting with
//! full-jitter backoff (base 0.5 s, cap 20 s). While they come back, one event
//! is appended to every job: each client must receive it exactly once, in a
//! resumed session. Measured: time from the restart to each client's resume
//! (p50/p95/p99), handshakes per second, and the server's peak memory against
//! its steady state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::{
    create_job, first_message, free_port, full_jitter, rate, rss_kib, spawn_rejoin, Latencies,
    Tokens,
};
use crate::BenchArgs;

async fn serve(db: &str, secret: &str, listen: &str) -> anyhow::Result<tokio::process::Child> {
    let args = super::serve_args(listen, db, secret, &["--grace-secs", "60"]);
    Ok(spawn_rejoin(&args).await?.0)
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    resumed_after: Option<Duration>,
    attempts: u32,
    marker_seqs: Vec<i64>,
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let n = if args.smoke { 200 } else { 10_000 };
    let dir = tempfile::tempdir()?;
    let db = super::database(args, dir.path(), "storm").await?;
    let secret = Uuid::new_v4().simple().to_string();
    let tokens = Tokens::new(&secret);
    let listen = format!("127.0.0.1:{}", free_port()?);
    let mut server = serve(&db, &secret, &listen).await?;
    let http = reqwest::Client::new();
    let mut jobs = Vec::with_capacity(n);
    for _ in 0..n {
        jobs.push(create_job(&http, &listen, &tokens.service()).await?);
    }

    // Every client connects, then follows its job through the storm.
    let restarted: Arc<Mutex<Option<Instant>>> = Arc::default();
    let handshakes = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::with_capacity(n);
    for job in &jobs {
        let url = format!(
            "ws://{listen}/ws/progress?jobId={job}&token={}",
            tokens.client(*job)
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
        let hello = first_message(&mut ws).await?;
        let (epoch, session) = (hello["epoch"].clone(), hello["sessionId"].clone());
        let (restarted, handshakes, connected) =
            (restarted.clone(), handshakes.clone(), connected.clone());
        connected.fetch_add(1, Ordering::Relaxed);
        clients.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut last_seq = hello["lastSeq"].as_i64().unwrap_or(0);
            // Read until the server dies under us.
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Close(_) = msg {
                    break;
                }
            }
            connected.fetch_sub(1, Ordering::Relaxed);
            let mut attempt = 0;
            loop {
                tokio::time::sleep(full_jitter(attempt, 500, 20_000)).await;
                attempt += 1;
                let resume = format!(
                    "{url}&reconnect=true&lastSeq={last_seq}&epoch={}",
                    epoch.as_str().unwrap_or_default()
                );
                let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&resume).await else {
                    continue;
                };
                handshakes.fetch_add(1, Ordering::Relaxed);
                let Ok(hello) = first_message(&mut ws).await else {
                    continue;
                };
                if hello["sessionId"] != session || hello["resumed"] != true {
                    anyhow::bail!("not resumed: {hello}");
                }
                let since = restarted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .map(|t| t.elapsed());
                seen.resumed_after = since;
                seen.attempts = attempt;
                connected.fetch_add(1, Ordering::Relaxed);
                // Wait for the one event appended during the storm.
                while seen.marker_seqs.is_empty() {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => {
                            let v: serde_json::Value = serde_json::from_str(t.as_str())?;
                            if let Some(seq) = v["seq"].as_i64() {
                                if seq > last_seq {
                                    last_seq = seq;
                                    seen.marker_seqs.push(seq);
                                }
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    }
                }
                if !seen.marker_seqs.is_empty() {
                    return Ok(seen);
                }
            }
        }));
    }
    let steady = rss_kib(server.id().unwrap_or_default()).unwrap_or(0);
    println!("  {n} clients connected; server RSS {} KiB", steady);

    // Kill the server under them and start it again on the same port.
    server.start_kill()?;
    server.wait().await?;
    let started = Instant::now();
    let server = serve(&db, &secret, &listen).await?;
    *restarted.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
    let pid = server.id().unwrap_or_default();
    println!(
        "  restarted in {:.2} s (recording {n} disconnects)",
        started.elapsed().as_secs_f64()
    );

    // One event per job while the clients come back, and memory sampled.
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid).unwrap_or(0), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut rates = Vec::new();
    let poster = {
        let (http, listen, service, jobs) =
            (http.clone(), listen.clone(), tokens.service(), jobs.clone());
        tokio::spawn(async move {
            for job in jobs {
                let _ = http
                    .post(format!("http://{listen}/v1/jobs/{job}/events"))
                    .bearer_auth(&service)
                    .json(&json!({"type": "progress", "progress": 99.0, "message": "after the storm"}))
                    .send()
                    .await;
            }
        })
    };
    let mut last = 0;
    while connected.load(Ordering::Relaxed) < n as u64
        && started.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let h = handshakes.load(Ordering::Relaxed);
        rates.push(h - last);
        last = h;
    }
    poster.await?;
    let mut lat = Latencies::default();
    let mut exactly_once = 0;
    let mut attempts = Vec::with_capacity(n);
    for c in clients {
        let seen = tokio::time::timeout(Duration::from_secs(60), c).await???;
        if let Some(t) = seen.resumed_after {
            lat.push(t);
        }
        attempts.push(seen.attempts);
        if seen.marker_seqs.len() == 1 {
            exactly_once += 1;
        }
    }
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed);
    let steady_after = rss_kib(pid).unwrap_or(0);
    println!("  resumed {} of {n}; event appended during the storm received exactly once by {exactly_once}", lat.len());
    println!("  restart to resume                      {}", lat.summary());
    println!(
        "  restart to resume, p95                 {}",
        super::ms(lat.percentile(95.0))
    );
    attempts.sort_unstable();
    println!(
        "  attempts per client: median {}, max {}",
        attempts.get(attempts.len() / 2).copied().unwrap_or(0),
        attempts.last().copied().unwrap_or(0)
    );
    println!(
        "  handshakes: {} in total, peak {}/s",
        handshakes.load(Ordering::Relaxed),
        rate(rates.iter().copied().max().unwrap_or(0) as f64)
    );
    println!(
        "  server RSS: steady {steady} KiB before, {steady_after} KiB after, peak {peak} KiB ({:.2}x steady)",
        peak as f64 / steady.max(1) as f64
    );
    drop(server);
    Ok(())
}
