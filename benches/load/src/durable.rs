//! Durable Streams appends side by side: the same load against rejoin (its
//! own process, `--stream-auth none`), against any other Durable Streams
//! server (`--peer BASE`, where `BASE/NAME` is a stream) and against the
//! machine's HTTP ceiling (this program's `ceiling-server`: every POST
//! answered 204, nothing stored), in alternating runs, from this process as
//! the only driver.
//!
//! The load: 100 JSON streams, 64 writers each waiting for its answer,
//! 256-byte JSON messages, writer `w`'s `i`th append to stream
//! `(w + 64 i) mod 100`; then the same as idempotent producers
//! (`Producer-Id` per writer, `Producer-Seq` per writer and stream). After
//! each run every stream is read back from its start: each acknowledged
//! append must be there, once. Beside the runs, a probe times 4 KiB
//! `fdatasync`s in the data directory's file system.
//!
//! Then two baselines in the same run: the storage alone (the same appends
//! as the log's rows, committed straight into a log of the same kind at the
//! batch size rejoin's writer committed, and at 64), and the job API through
//! the same driver against rejoin and against the relay, the durable floor,
//! each its own process (64 writers, a job each, progress events).

use std::collections::HashMap;
use std::time::Instant;

use serde_json::Value;

use super::disk::DiskProbe;
use super::{spawn_rejoin, Latencies, Sample};
use crate::BenchArgs;

const STREAMS: usize = 100;
const WRITERS: usize = 64;
const MESSAGE_BYTES: usize = 256;

/// A server under the load.
struct Target {
    name: String,
    /// Stream `NAME` is `BASE/NAME`.
    base: String,
    /// Whether what it acknowledged is read back (the ceiling stores nothing).
    stores: bool,
}

/// One run's figures.
struct Outcome {
    rate: f64,
    latencies: Latencies,
}

#[derive(Default)]
struct Figures {
    plain: Sample,
    plain_p50: Sample,
    plain_p99: Sample,
    producers: Sample,
    producers_p99: Sample,
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let appends = if args.smoke { 3_200 } else { 64_000 };
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("rejoin");
    // Streams open to all; the job API with tokens signed with `secret`.
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let (mut rejoin, addr) = spawn_rejoin(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data.display().to_string(),
        "--jwt-secret",
        &secret,
        "--stream-auth",
        "none",
        "--connect-rate-per-ip",
        "0",
    ])
    .await?;
    let (mut ceiling_server, ceiling_addr) = super::spawn_baseline(&["ceiling-server"]).await?;
    let mut targets = vec![Target {
        name: "rejoin".into(),
        base: format!("http://{addr}/v1/stream"),
        stores: true,
    }];
    if let Some(peer) = &args.peer {
        targets.push(Target {
            name: "peer".into(),
            base: peer.trim_end_matches('/').to_owned(),
            stores: true,
        });
    }
    targets.push(Target {
        name: "HTTP ceiling".into(),
        base: format!("http://{ceiling_addr}"),
        stores: false,
    });
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(WRITERS * 2)
        .build()?;

    let probe = DiskProbe::start(dir.path());
    let mut figures: Vec<Figures> = targets.iter().map(|_| Figures::default()).collect();
    for run in 1..=args.runs() {
        for (target, f) in targets.iter().zip(figures.iter_mut()) {
            let mut plain = load(&http, target, &format!("r{run}p"), false, appends).await?;
            f.plain.push(plain.rate);
            f.plain_p50
                .push(plain.latencies.percentile(50.0).as_secs_f64());
            f.plain_p99
                .push(plain.latencies.percentile(99.0).as_secs_f64());
            let mut idem = load(&http, target, &format!("r{run}i"), true, appends).await?;
            f.producers.push(idem.rate);
            f.producers_p99
                .push(idem.latencies.percentile(99.0).as_secs_f64());
        }
    }
    println!(
        "  {STREAMS} streams, {WRITERS} writers, {MESSAGE_BYTES}-byte JSON appends, {} runs alternating; medians (ranges):",
        args.runs()
    );
    let ceiling = figures.last().map(|f| f.plain.median()).unwrap_or(1.0);
    for (target, f) in targets.iter().zip(&figures) {
        println!(
            "  {:<13} appends/s {}  p50 {}  p99 {}  ({:.2} of the ceiling)",
            target.name,
            f.plain.count(),
            f.plain_p50.ms(),
            f.plain_p99.ms(),
            f.plain.median() / ceiling,
        );
        println!(
            "  {:<13} idempotent producers: appends/s {}  p99 {}",
            "",
            f.producers.count(),
            f.producers_p99.ms(),
        );
    }
    // The storage alone: the same appends as rows straight into a log of
    // the same kind (its own append, no HTTP, no engine), committed in
    // batches of the size rejoin's writer committed on average, and of all
    // 64 writers' appends at once.
    let batch = mean_batch(&http, &format!("http://{addr}/metrics")).await?;
    let rows = stream_rows(appends);
    for size in [batch.round().max(1.0) as usize, WRITERS] {
        let store = rejoin::log::open(&format!(
            "sqlite://{}",
            dir.path().join(format!("storage{size}.db")).display()
        ))
        .await?;
        let started = Instant::now();
        super::append_all(&store.events, &rows, size).await?;
        let per_sec = rows.len() as f64 / started.elapsed().as_secs_f64();
        store.events.close().await;
        println!(
            "  storage alone, {size:>2} rows a commit (rejoin's writer averaged {batch:.1}): appends/s {}  (rejoin: {:.2} of it)",
            super::rate(per_sec),
            figures[0].plain.median() / per_sec,
        );
    }
    // The job API through the same driver, against rejoin and the relay
    // (the durable floor: a writer that commits and answers, nothing more;
    // its own process), alternating.
    let relay_db = format!("sqlite://{}", dir.path().join("relay.db").display());
    let (mut relay_server, relay_addr) =
        super::spawn_baseline(&["relay-server", &relay_db]).await?;
    let service = super::Tokens::new(&secret).service();
    let (mut jobs, mut floor) = (Sample::default(), Sample::default());
    let (mut jobs_p99, mut floor_p99) = (Sample::default(), Sample::default());
    for _ in 1..=args.runs() {
        for (server, rate, p99) in [
            (&addr.to_string(), &mut jobs, &mut jobs_p99),
            (&relay_addr.to_string(), &mut floor, &mut floor_p99),
        ] {
            let mut run = job_load(&http, server, &service, appends).await?;
            rate.push(run.rate);
            p99.push(run.latencies.percentile(99.0).as_secs_f64());
        }
    }
    println!(
        "  job API, {WRITERS} writers a job each: rejoin appends/s {}  p99 {}; relay appends/s {}  p99 {}  (rejoin: {:.2} of the relay)",
        jobs.count(),
        jobs_p99.ms(),
        floor.count(),
        floor_p99.ms(),
        jobs.median() / floor.median(),
    );
    probe.finish()?;
    let _ = rejoin.kill().await;
    let _ = ceiling_server.kill().await;
    let _ = relay_server.kill().await;
    Ok(())
}

/// `appends` progress events through the job API (`base`: `HOST:PORT`),
/// `WRITERS` writers each on a job of its own, each waiting for its answer;
/// every job's acknowledged seqs must follow one another (none lost,
/// doubled or reordered).
async fn job_load(
    http: &reqwest::Client,
    base: &str,
    service: &str,
    appends: usize,
) -> anyhow::Result<Outcome> {
    let mut jobs = Vec::with_capacity(WRITERS);
    for _ in 0..WRITERS {
        jobs.push(super::create_job(http, base, service).await?);
    }
    let each = appends / WRITERS;
    let started = Instant::now();
    let mut writers = Vec::new();
    for job in jobs {
        let (http, service) = (http.clone(), service.to_owned());
        let url = format!("http://{base}/v1/jobs/{job}/events");
        writers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(each);
            let mut last: Option<i64> = None;
            for i in 0..each {
                let body = serde_json::json!({
                    "type": "progress",
                    "progress": (i % 100) as f64,
                    "message": "Processing book 9 of 20",
                });
                let sent = Instant::now();
                let res = http
                    .post(&url)
                    .bearer_auth(&service)
                    .json(&body)
                    .send()
                    .await?;
                let status = res.status();
                let answer: Value = res.json().await?;
                anyhow::ensure!(status.is_success(), "POST {url}: {status}");
                latencies.push(sent.elapsed());
                let seq = answer["seq"].as_i64().unwrap_or_default();
                anyhow::ensure!(
                    last.is_none_or(|l| seq == l + 1),
                    "{url}: seq {seq} acknowledged after {last:?}"
                );
                last = Some(seq);
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Latencies::default();
    for w in writers {
        for d in w.await?? {
            latencies.push(d);
        }
    }
    let rate = (each * WRITERS) as f64 / started.elapsed().as_secs_f64();
    Ok(Outcome { rate, latencies })
}

/// Events per commit, on average, from a rejoin server's `/metrics`.
async fn mean_batch(http: &reqwest::Client, url: &str) -> anyhow::Result<f64> {
    let text = http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .ok_or_else(|| anyhow::anyhow!("{url} has no {name}"))
    };
    Ok(value("rejoin_append_batch_size_sum")? / value("rejoin_append_batch_size_count")?.max(1.0))
}

/// The load's appends as the log's rows: `STREAMS` streams created, then
/// writer `w`'s `i`th message on stream `(w + 64 i) mod 100`, each sealed
/// into its stream's chain.
fn stream_rows(appends: usize) -> Vec<rejoin::log::EventRow> {
    use rejoin::domain::event::{EventBody, StreamAppended, StreamCreated, StreamData};
    use rejoin::domain::stream::Offset;
    let now = chrono::Utc::now();
    let mut streams: Vec<super::JobWriter> = (0..STREAMS)
        .map(|_| super::JobWriter::new(uuid::Uuid::new_v4()))
        .collect();
    let mut rows = Vec::with_capacity(appends + STREAMS);
    for (i, s) in streams.iter_mut().enumerate() {
        let created = StreamCreated {
            path: format!("/v1/stream/storage-{i}"),
            content_type: "application/json".into(),
            ttl_secs: None,
            expires_at: None,
            closed: false,
            fork: None,
            data: None,
            offset: Offset { index: 0, size: 0 }.to_string(),
        };
        s.push(&mut rows, now, EventBody::StreamCreated(created));
    }
    for k in 0..appends {
        let (w, i) = (k % WRITERS, k / WRITERS);
        let stream = &mut streams[(w + WRITERS * i) % STREAMS];
        let data: Value = serde_json::from_str(&message(k)).expect("the bench's own JSON");
        let appended = StreamAppended {
            data: Some(StreamData::Json(vec![data])),
            offset: Offset {
                index: stream.state.head_seq as u64 + 1,
                size: 1,
            }
            .to_string(),
            stream_seq: None,
            producer: None,
            closes: false,
        };
        stream.push(&mut rows, now, EventBody::StreamAppended(appended));
    }
    rows
}

/// A `MESSAGE_BYTES`-byte JSON object, numbered.
fn message(n: usize) -> String {
    let head = format!(r#"{{"n":{n},"pad":""#);
    let pad = MESSAGE_BYTES - head.len() - 2;
    format!(r#"{head}{}"}}"#, "x".repeat(pad))
}

/// Creates the streams `TAG-0..100`, runs the load on them, and reads each
/// back; the rate and every append's latency.
async fn load(
    http: &reqwest::Client,
    target: &Target,
    tag: &str,
    producers: bool,
    appends: usize,
) -> anyhow::Result<Outcome> {
    let urls: Vec<String> = (0..STREAMS)
        .map(|s| format!("{}/bench-{tag}-{s}", target.base))
        .collect();
    for url in &urls {
        let res = http
            .put(url)
            .header("content-type", "application/json")
            .send()
            .await?;
        anyhow::ensure!(res.status().is_success(), "PUT {url}: {}", res.status());
    }
    let each = appends / WRITERS;
    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (http, urls) = (http.clone(), urls.clone());
        writers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(each);
            let mut acked = vec![0u64; STREAMS];
            let mut seqs: HashMap<usize, u64> = HashMap::new();
            for i in 0..each {
                let stream = (w + WRITERS * i) % STREAMS;
                let mut post = http
                    .post(&urls[stream])
                    .header("content-type", "application/json")
                    .body(message(w * each + i));
                if producers {
                    let seq = seqs.entry(stream).or_default();
                    post = post
                        .header("producer-id", format!("writer-{w}"))
                        .header("producer-epoch", "0")
                        .header("producer-seq", seq.to_string());
                    *seq += 1;
                }
                let sent = Instant::now();
                let res = post.send().await?;
                let status = res.status();
                let _ = res.bytes().await?;
                anyhow::ensure!(status.is_success(), "POST {}: {status}", urls[stream]);
                latencies.push(sent.elapsed());
                acked[stream] += 1;
            }
            Ok::<_, anyhow::Error>((latencies, acked))
        }));
    }
    let mut latencies = Latencies::default();
    let mut acked = vec![0u64; STREAMS];
    for w in writers {
        let (l, a) = w.await??;
        for d in l {
            latencies.push(d);
        }
        for (sum, n) in acked.iter_mut().zip(a) {
            *sum += n;
        }
    }
    let rate = (each * WRITERS) as f64 / started.elapsed().as_secs_f64();
    if target.stores {
        for (url, want) in urls.iter().zip(acked) {
            let mut seen = 0u64;
            super::read_stream_pages(http, url, "", |page| {
                if !page.is_empty() {
                    seen += serde_json::from_slice::<Vec<Value>>(page)?.len() as u64;
                }
                Ok(())
            })
            .await?;
            anyhow::ensure!(
                seen == want,
                "{}: {url} holds {seen} messages, {want} were acknowledged",
                target.name
            );
        }
    }
    Ok(Outcome { rate, latencies })
}

/// `rejoin-bench ceiling-server`: answers every request at once and stores
/// nothing (PUT 201, POST 204, anything else 200 `[]` up to date), printing
/// its address first, as a server does.
pub async fn ceiling_server() -> anyhow::Result<()> {
    use axum::http::{Method, StatusCode};
    use axum::response::IntoResponse;
    let app = axum::Router::new().fallback(|method: Method| async move {
        match method {
            Method::PUT => StatusCode::CREATED.into_response(),
            Method::POST => StatusCode::NO_CONTENT.into_response(),
            _ => (
                [
                    ("content-type", "application/json"),
                    ("stream-up-to-date", "true"),
                    ("stream-next-offset", "0"),
                ],
                "[]",
            )
                .into_response(),
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("ceiling listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
