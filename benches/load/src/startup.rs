//! Scenario 8, start-up: what a restart costs as history grows. Logs of
//! finished jobs (each created, watched, given 10 progress events,
//! completed, its socket closed and its grace window expired: 15 events) and
//! 1,000 live jobs (running, a session in its grace window), written straight
//! through the store. For each log, the server is started as its own process
//! twice: first with no checkpoint (it folds the whole log: the baseline, in
//! the same run), then, after a graceful stop wrote one, from the checkpoint.
//! Each start is timed from the process's spawn to `/readyz` answering 200,
//! with its RSS then; then state and history reads of finished jobs that are
//! not in memory (p50/p99).

use std::time::{Duration, Instant};

use chrono::Utc;
use uuid::Uuid;

use super::{created, progress, rate, rss_kib, serve_args, spawn_rejoin, JobWriter, Latencies};
use crate::BenchArgs;
use rejoin::domain::event::{Client, Connected, Disconnected, GraceExpired, JobCompleted};
use rejoin::domain::EventBody;
use rejoin::log::EventRow;

/// One start measured.
struct Start {
    ready: Duration,
    rss_kib: u64,
    folded: u64,
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (sizes, live): (&[usize], usize) = if args.smoke {
        (&[200, 2_000], 20)
    } else {
        (&[20_000, 200_000, 1_000_000], 1_000)
    };
    let mut rows_out = Vec::new();
    for &finished in sizes {
        let dir = tempfile::tempdir()?;
        let url = super::database(args, dir.path(), "startup").await?;
        let started = Instant::now();
        let (events, sample) = generate(&url, finished, live).await?;
        let bytes = rejoin::log::sqlite::database_path(&url).map(|p| {
            let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
            size(&p) + size(&p.with_extension("db-wal"))
        });
        println!(
            "  {} finished + {live} live jobs: {} events{} generated in {:.1} s",
            rate(finished as f64),
            rate(events as f64),
            bytes
                .map(|b| format!(" ({:.0} MiB)", b as f64 / 1048576.0))
                .unwrap_or_default(),
            started.elapsed().as_secs_f64()
        );
        let secret = Uuid::new_v4().simple().to_string();
        let (full, server) = start(&url, &secret).await?;
        stop(server).await?;
        let (checkpointed, server) = start(&url, &secret).await?;
        let (mut state, mut history) = cold_reads(&server, &secret, &sample).await?;
        stop(server).await?;
        println!(
            "    full fold (no checkpoint): ready {:>7.3} s, RSS {:>6.1} MiB, {} events folded",
            full.ready.as_secs_f64(),
            full.rss_kib as f64 / 1024.0,
            rate(full.folded as f64)
        );
        println!(
            "    from the checkpoint:       ready {:>7.3} s, RSS {:>6.1} MiB, {} events folded ({:.1}× faster)",
            checkpointed.ready.as_secs_f64(),
            checkpointed.rss_kib as f64 / 1024.0,
            rate(checkpointed.folded as f64),
            full.ready.as_secs_f64() / checkpointed.ready.as_secs_f64()
        );
        println!("    cold state reads:   {}", state.summary());
        println!("    cold history reads: {}", history.summary());
        rows_out.push((finished, checkpointed));
    }
    if let (Some((small, a)), Some((large, b))) = (rows_out.first(), rows_out.last()) {
        println!(
            "  flat in history: {}→{} finished jobs, ready ×{:.2}, RSS ×{:.2}",
            rate(*small as f64),
            rate(*large as f64),
            b.ready.as_secs_f64() / a.ready.as_secs_f64(),
            b.rss_kib as f64 / a.rss_kib as f64
        );
    }
    Ok(())
}

/// Fills the log; returns the number of events and some finished jobs to
/// read cold.
async fn generate(url: &str, finished: usize, live: usize) -> anyhow::Result<(u64, Vec<Uuid>)> {
    let store = rejoin::log::open(url).await?;
    let at = rejoin::domain::event::to_log_precision(Utc::now() - chrono::Duration::hours(1));
    let mut rows: Vec<EventRow> = Vec::with_capacity(60_000);
    let mut events = 0u64;
    let mut sample = Vec::new();
    // Ids that increase, so the (job_id, seq) index is written in order.
    let base = Uuid::new_v4().as_u128() & !((1u128 << 64) - 1);
    let every = (finished / 200).max(1);
    for i in 0..finished + live {
        let id = Uuid::from_u128(base | i as u128);
        let session = Uuid::new_v4();
        let mut w = JobWriter::new(id);
        w.push(&mut rows, at, created());
        w.push_session(&mut rows, at, session, connected());
        let updates = if i < finished { 10 } else { 5 };
        for p in 0..updates {
            w.push(&mut rows, at, progress(f64::from(p * 10)));
        }
        if i < finished {
            w.push(
                &mut rows,
                at,
                EventBody::JobCompleted(JobCompleted { result: None }),
            );
            w.push_session(&mut rows, at, session, disconnected(at));
            w.push_session(
                &mut rows,
                at,
                session,
                EventBody::GraceExpired(GraceExpired { grace_until: at }),
            );
            if i % every == 0 {
                sample.push(id);
            }
        } else {
            // Live: its watcher is away, its grace window open for an hour.
            let until = at + chrono::Duration::hours(2);
            w.push_session(&mut rows, at, session, disconnected(until));
        }
        if rows.len() >= 50_000 {
            events += rows.len() as u64;
            super::append_all(&store.events, &rows, 10_000).await?;
            rows.clear();
        }
    }
    events += rows.len() as u64;
    super::append_all(&store.events, &rows, 10_000).await?;
    store.events.close().await;
    Ok((events, sample))
}

fn connected() -> EventBody {
    EventBody::Connected(Connected {
        client: Client {
            sub: "client:bench".into(),
            user_agent: Some("bench".into()),
            ..Client::default()
        },
        last_seq: 1,
    })
}

fn disconnected(grace_until: chrono::DateTime<Utc>) -> EventBody {
    EventBody::Disconnected(Disconnected {
        code: 1000,
        reason: "job finished".into(),
        grace_until: Some(grace_until),
        acked_seq: None,
        transport: None,
    })
}

/// A server process started by [`start`].
struct Running {
    child: tokio::process::Child,
    addr: String,
}

/// Starts the server on `url`, times it to `/readyz` and reads its RSS and
/// the events it folded.
async fn start(url: &str, secret: &str) -> anyhow::Result<(Start, Running)> {
    let spawned = Instant::now();
    let (child, addr) = spawn_rejoin(&serve_args("127.0.0.1:0", url, secret, &[])).await?;
    let http = reqwest::Client::new();
    loop {
        let ok = http
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let ready = spawned.elapsed();
    let rss_kib = rss_kib(child.id().unwrap_or_default())?;
    let metrics = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let folded = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rejoin_startup_events_folded "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let start = Start {
        ready,
        rss_kib,
        folded,
    };
    Ok((start, Running { child, addr }))
}

/// Stops a server with SIGTERM (it writes a checkpoint) and waits for it.
async fn stop(mut server: Running) -> anyhow::Result<()> {
    if let Some(pid) = server.child.id() {
        // SAFETY: sends a signal to our own child process.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let status = server.child.wait().await?;
    anyhow::ensure!(status.success(), "the server exited with {status}");
    Ok(())
}

/// Reads the state of each sampled finished job (none of which the freshly
/// started server holds: each is read back from the log), then each one's
/// history (always folded from the job's events in the log).
async fn cold_reads(
    server: &Running,
    secret: &str,
    sample: &[Uuid],
) -> anyhow::Result<(Latencies, Latencies)> {
    let http = reqwest::Client::new();
    let token = super::Tokens::new(secret).mint("support", None);
    let mut out = [Latencies::default(), Latencies::default()];
    for (lat, suffix) in out.iter_mut().zip(["", "/history"]) {
        for job in sample {
            let url = format!("http://{}/v1/jobs/{job}{suffix}", server.addr);
            let t = Instant::now();
            let res = http.get(&url).bearer_auth(&token).send().await?;
            anyhow::ensure!(res.status().is_success(), "GET {url}: {}", res.status());
            res.bytes().await?;
            lat.push(t.elapsed());
        }
    }
    let [state, history] = out;
    Ok((state, history))
}
