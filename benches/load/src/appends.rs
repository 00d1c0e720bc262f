//! Scenario 1, durable appends: 64 concurrent appenders through the engine
//! (each waiting for its acknowledgement) against raw batched inserts of the
//! same kind of rows into the same kind of database (100 rows per transaction);
//! one appender; and 64 HTTP clients.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{append_all, created, database, progress, rate, BenchServer, JobWriter};
use crate::BenchArgs;
use rejoin::clock::SystemClock;
use rejoin::engine::{Engine, EngineSettings};
use rejoin::log::EventRow;

const APPENDERS: usize = 64;

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (raw_n, engine_n, single_n, http_n) = if args.smoke {
        (2_000, 2_560, 100, 1_280)
    } else {
        (200_000, 256_000, 4_000, 128_000)
    };
    let dir = tempfile::tempdir()?;
    let disk = super::disk::DiskProbe::start(dir.path());

    // Baseline: the same rows, 100 per transaction, straight into the store.
    let raw = rejoin::log::open(&database(args, dir.path(), "raw").await?).await?;
    let rows = interleaved_rows(raw_n, 100);
    let started = Instant::now();
    append_all(&raw.events, &rows, 100).await?;
    let raw_rate = rows.len() as f64 / started.elapsed().as_secs_f64();
    raw.events.close().await;
    println!(
        "  raw inserts, 100 rows/transaction      {:>12} rows/s",
        rate(raw_rate)
    );

    let many = engine_rate(
        &database(args, dir.path(), "many").await?,
        APPENDERS,
        engine_n,
    )
    .await?;
    println!(
        "  engine, {APPENDERS} concurrent appenders          {:>12} appends/s   {:.2} of raw",
        rate(many),
        many / raw_rate
    );
    let one = engine_rate(&database(args, dir.path(), "one").await?, 1, single_n).await?;
    println!(
        "  engine, 1 appender                     {:>12} appends/s   {APPENDERS} appenders = {:.1}x one",
        rate(one),
        many / one
    );

    let server = BenchServer::start(&database(args, dir.path(), "http").await?, &[]).await?;
    let service = server.token("service", None);
    let mut jobs = Vec::new();
    for _ in 0..APPENDERS {
        jobs.push(server.create_job(&service).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for job in jobs {
        let (http, url, token) = (
            server.http.clone(),
            server.url(&format!("/v1/jobs/{job}/events")),
            service.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // Bodies are serialised once: the load generator shares the two
            // cores with the server and should spend as little as it can.
            let bodies: Vec<axum::body::Bytes> = (0..100)
                .map(|p| {
                    json!({"type": "progress", "progress": p as f64, "message": "Processing book 9 of 20"})
                        .to_string()
                        .into()
                })
                .collect();
            for i in 0..http_n / APPENDERS {
                http.post(&url)
                    .bearer_auth(&token)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(bodies[i % 100].clone())
                    .send()
                    .await?
                    .error_for_status()?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let http_rate = http_n as f64 / started.elapsed().as_secs_f64();
    println!(
        "  HTTP, {APPENDERS} clients, acknowledged           {:>12} appends/s   {:.2} of raw",
        rate(http_rate),
        http_rate / raw_rate
    );
    server.stop().await?;
    disk.finish()?;
    Ok(())
}

/// `n` progress rows spread over `jobs` jobs, interleaved as live traffic is.
fn interleaved_rows(n: usize, jobs: usize) -> Vec<EventRow> {
    let now = Utc::now();
    let mut writers: Vec<JobWriter> = (0..jobs).map(|_| JobWriter::new(Uuid::new_v4())).collect();
    let mut rows = Vec::with_capacity(n + jobs);
    for w in &mut writers {
        w.push(&mut rows, now, created());
    }
    for i in 0..n {
        writers[i % jobs].push(&mut rows, now, progress((i % 100) as f64));
    }
    rows
}

/// Appends `total` events from `appenders` tasks, each on its own job and each
/// waiting for every acknowledgement; returns appends per second.
async fn engine_rate(url: &str, appenders: usize, total: usize) -> anyhow::Result<f64> {
    let store = rejoin::log::open(url).await?;
    let stop = CancellationToken::new();
    let rejoin::engine::Started { engine, tasks, .. } = Engine::start(
        store.clone(),
        Arc::new(SystemClock),
        EngineSettings::default(),
        stop.clone(),
    )
    .await?;
    let mut jobs = Vec::new();
    for _ in 0..appenders {
        let job = Uuid::new_v4();
        engine.create_job(job, None).await?;
        jobs.push(job);
    }
    let started = Instant::now();
    let mut handles = Vec::new();
    for job in jobs {
        let engine = engine.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..total / appenders {
                engine.append(job, progress((i % 100) as f64), None).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let per_sec = total as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    tasks.writer.await?;
    tasks.scheduler.await?;
    store.events.close().await;
    Ok(per_sec)
}
