//! Scenario 1, durable appends: 64 concurrent appenders through the engine
//! (each waiting for its acknowledgement) against raw batched inserts of the
//! same kind of rows into the same kind of database (100 rows per transaction)
//! and against the durable floor, the bare relay's writer (`relay.rs`) under
//! the same 64 appenders; one appender; and 64 HTTP clients against rejoin
//! and against the relay over HTTP. The relay and rejoin alternate, `--runs`
//! times.

use std::future::IntoFuture;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::relay::Relay;
use super::{append_all, created, database, progress, rate, BenchServer, JobWriter, Sample};
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

    // The durable floor and rejoin, alternating: the relay's 64 appenders
    // (its writer in this process, as the engine's is) then the engine's;
    // the relay over HTTP then rejoin over HTTP.
    let runs = args.runs();
    let (mut floor, mut many, mut floor_http, mut http) = (
        Sample::default(),
        Sample::default(),
        Sample::default(),
        Sample::default(),
    );
    for run in 1..=runs {
        if runs > 1 {
            println!("  run {run} of {runs}");
        }
        let relay = Relay::open(&database(args, dir.path(), &format!("relay{run}")).await?).await?;
        let r = relay_rate(&relay, APPENDERS, engine_n).await?;
        println!(
            "  relay, {APPENDERS} concurrent appenders           {:>12} appends/s   {:.2} of raw",
            rate(r),
            r / raw_rate
        );
        let m = engine_rate(
            &database(args, dir.path(), &format!("many{run}")).await?,
            APPENDERS,
            engine_n,
        )
        .await?;
        println!(
            "  engine, {APPENDERS} concurrent appenders          {:>12} appends/s   {:.2} of raw, {:.2} of the relay",
            rate(m),
            m / raw_rate,
            m / r
        );
        let rh = relay_http_rate(&relay, http_n).await?;
        println!(
            "  relay HTTP, {APPENDERS} clients, acknowledged     {:>12} appends/s",
            rate(rh)
        );
        let h = http_rate(args, dir.path(), run, http_n).await?;
        println!(
            "  HTTP, {APPENDERS} clients, acknowledged           {:>12} appends/s   {:.2} of raw, {:.2} of the relay",
            rate(h),
            h / raw_rate,
            h / rh
        );
        floor.push(r);
        many.push(m);
        floor_http.push(rh);
        http.push(h);
    }
    let one = engine_rate(&database(args, dir.path(), "one").await?, 1, single_n).await?;
    println!(
        "  engine, 1 appender                     {:>12} appends/s   {APPENDERS} appenders = {:.1}x one",
        rate(one),
        many.median() / one
    );
    println!(
        "  medians of {runs}: engine {APPENDERS} appenders {}/s = {:.2} of the relay ({}/s); HTTP {}/s = {:.2} of the relay over HTTP ({}/s)",
        rate(many.median()),
        many.median() / floor.median(),
        rate(floor.median()),
        rate(http.median()),
        http.median() / floor_http.median(),
        rate(floor_http.median()),
    );
    disk.finish()?;
    Ok(())
}

/// `n` progress appends from 64 HTTP clients, each on its own job, each
/// waiting for its answer, against a rejoin server in this process.
async fn http_rate(args: &BenchArgs, dir: &Path, run: usize, n: usize) -> anyhow::Result<f64> {
    let server =
        BenchServer::start(&database(args, dir, &format!("http{run}")).await?, &[]).await?;
    let service = server.token("service", None);
    let mut jobs = Vec::new();
    for _ in 0..APPENDERS {
        jobs.push(server.create_job(&service).await?);
    }
    let urls = jobs
        .iter()
        .map(|job| server.url(&format!("/v1/jobs/{job}/events")))
        .collect();
    let per_sec = post_all(&server.http, urls, Some(service), n).await?;
    server.stop().await?;
    Ok(per_sec)
}

/// The same against the relay, served in this process too.
async fn relay_http_rate(relay: &Relay, n: usize) -> anyhow::Result<f64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(axum::serve(listener, relay.clone().router()).into_future());
    let urls = (0..APPENDERS)
        .map(|_| format!("http://{addr}/v1/jobs/{}/events", Uuid::new_v4()))
        .collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let per_sec = post_all(&http, urls, None, n).await;
    server.abort();
    per_sec
}

/// POSTs `n` progress events spread over `urls`, a client per URL, each
/// waiting for its answer; returns appends per second.
async fn post_all(
    http: &reqwest::Client,
    urls: Vec<String>,
    token: Option<String>,
    n: usize,
) -> anyhow::Result<f64> {
    post_each(http, urls, token, n, |post, _| post).await
}

/// The same, each request also given what `extra` adds (its headers) for
/// the client's `i`th append.
pub(crate) async fn post_each(
    http: &reqwest::Client,
    urls: Vec<String>,
    token: Option<String>,
    n: usize,
    extra: fn(reqwest::RequestBuilder, usize) -> reqwest::RequestBuilder,
) -> anyhow::Result<f64> {
    let clients = urls.len();
    let each = n / clients;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for url in urls {
        let (http, token) = (http.clone(), token.clone());
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
            for i in 0..each {
                let mut post = http
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(bodies[i % 100].clone());
                if let Some(token) = &token {
                    post = post.bearer_auth(token);
                }
                post = extra(post, i);
                post.send().await?.error_for_status()?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((each * clients) as f64 / started.elapsed().as_secs_f64())
}

/// Appends `total` events to the relay from `appenders` tasks, each on its
/// own job and each waiting for every acknowledgement.
async fn relay_rate(relay: &Relay, appenders: usize, total: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..appenders {
        let (relay, job) = (relay.clone(), Uuid::new_v4());
        handles.push(tokio::spawn(async move {
            for i in 0..total / appenders {
                relay
                    .append(
                        job,
                        json!({"type": "progress", "progress": (i % 100) as f64, "message": "Processing book 9 of 20", "data": {"book": 9, "shelf": "B"}}),
                    )
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok((total / appenders * appenders) as f64 / started.elapsed().as_secs_f64())
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
