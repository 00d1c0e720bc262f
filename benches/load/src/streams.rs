//! Scenario 11, Durable Streams: appends and catch-up reads through the
//! protocol (`/v1/stream/`) beside the same through the job API, on one
//! server, alternating `--runs` times.
//!
//! Appends: 64 HTTP clients, each waiting for its answer, POST the same
//! progress JSON to a job of their own (`/v1/jobs/{id}/events`, 201) and
//! to a JSON stream of their own (204), and to a stream as an idempotent
//! producer (`Producer-Id`/`-Epoch`/`-Seq`, 200).
//!
//! Catch-up: one job and one JSON stream holding the same number of
//! messages, each read whole from the start: the job's events in pages of
//! the job API's largest (`?after=&limit=10000`), the stream in the
//! protocol's chunks (`?offset=` from `-1` to the tail).

use std::time::Instant;

use serde_json::{json, Value};

use super::{database, rate, BenchServer, Sample};
use crate::BenchArgs;

const CLIENTS: usize = 64;

/// How the appends are made.
#[derive(Clone, Copy)]
enum Via {
    JobApi,
    Stream,
    Producer,
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (appends, messages, reads) = if args.smoke {
        (1_280, 1_600, 3)
    } else {
        (64_000, 48_000, 20)
    };
    let dir = tempfile::tempdir()?;
    let server = BenchServer::start(&database(args, dir.path(), "streams").await?, &[]).await?;
    let service = server.token("service", None);

    let runs = args.runs();
    let (mut jobs, mut streams, mut producers) =
        (Sample::default(), Sample::default(), Sample::default());
    for run in 1..=runs {
        jobs.push(append_rate(&server, &service, Via::JobApi, run, appends).await?);
        streams.push(append_rate(&server, &service, Via::Stream, run, appends).await?);
        producers.push(append_rate(&server, &service, Via::Producer, run, appends).await?);
    }
    let (j, s, p) = (jobs.median(), streams.median(), producers.median());
    println!(
        "  job API appends, {CLIENTS} clients             {:>12} events/s",
        rate(j)
    );
    println!(
        "  stream appends, {CLIENTS} clients              {:>12} appends/s  {:.2} of the job API",
        rate(s),
        s / j
    );
    println!(
        "  stream appends with a producer         {:>12} appends/s  {:.2} of the job API",
        rate(p),
        p / j
    );

    // Catch-up reads of the same messages both ways.
    let job = server.create_job(&service).await?;
    let batch: Vec<Value> = (0..100)
        .map(|p| json!({"type": "progress", "progress": p as f64, "message": "Processing book 9 of 20"}))
        .collect();
    let path = server.url("/v1/stream/bench-catch-up");
    server
        .http
        .put(&path)
        .bearer_auth(&service)
        .header("content-type", "application/json")
        .send()
        .await?
        .error_for_status()?;
    for _ in 0..messages / 100 {
        server
            .http
            .post(&path)
            .bearer_auth(&service)
            .header("content-type", "application/json")
            .body(Value::Array(batch.clone()).to_string())
            .send()
            .await?
            .error_for_status()?;
    }
    // The job's events one POST each, from 16 clients at once.
    let mut fill = Vec::new();
    for message in &batch[..16] {
        let (http, url, token) = (
            server.http.clone(),
            server.url(&format!("/v1/jobs/{job}/events")),
            service.clone(),
        );
        let body = message.to_string();
        fill.push(tokio::spawn(async move {
            for _ in 0..messages / 16 {
                http.post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?
                    .error_for_status()?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for f in fill {
        f.await??;
    }
    let (mut job_reads, mut stream_reads) = (Sample::default(), Sample::default());
    for _ in 0..reads {
        job_reads.push(read_job(&server, &service, job, messages).await?);
        stream_reads.push(read_stream(&server, &service, &path, messages).await?);
    }
    let (jr, sr) = (job_reads.median(), stream_reads.median());
    println!(
        "  catch-up read of {} messages: job API {:>10} messages/s, stream {:>10} messages/s ({:.2} of the job API)",
        rate(messages as f64),
        rate(jr),
        rate(sr),
        sr / jr
    );
    server.stop().await
}

/// `n` appends over 64 clients (each its own job or stream); per second.
async fn append_rate(
    server: &BenchServer,
    service: &str,
    via: Via,
    run: usize,
    n: usize,
) -> anyhow::Result<f64> {
    let mut urls = Vec::new();
    for c in 0..CLIENTS {
        let url = match via {
            Via::JobApi => {
                let job = server.create_job(service).await?;
                server.url(&format!("/v1/jobs/{job}/events"))
            }
            Via::Stream | Via::Producer => {
                let url = server.url(&format!("/v1/stream/bench-{run}-{c}-{}", via as u8));
                server
                    .http
                    .put(&url)
                    .bearer_auth(service)
                    .header("content-type", "application/json")
                    .send()
                    .await?
                    .error_for_status()?;
                url
            }
        };
        urls.push(url);
    }
    let extra: fn(reqwest::RequestBuilder, usize) -> reqwest::RequestBuilder = match via {
        Via::Producer => |post, i| {
            post.header("producer-id", "bench")
                .header("producer-epoch", "0")
                .header("producer-seq", i.to_string())
        },
        Via::JobApi | Via::Stream => |post, _| post,
    };
    super::appends::post_each(&server.http, urls, Some(service.to_owned()), n, extra).await
}

/// Reads the job's events from the start in the job API's largest pages;
/// messages per second.
async fn read_job(
    server: &BenchServer,
    service: &str,
    job: uuid::Uuid,
    expected: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let (mut after, mut read) = (0i64, 0usize);
    loop {
        let page: Value = server
            .http
            .get(server.url(&format!("/v1/jobs/{job}/events?after={after}&limit=10000")))
            .bearer_auth(service)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let events = page["events"].as_array().map_or(0, Vec::len);
        read += page["events"]
            .as_array()
            .map_or(0, |e| e.iter().filter(|e| e["kind"] == "progress").count());
        let next = page["nextAfter"].as_i64().unwrap_or(after);
        if events == 0 || next == after {
            break;
        }
        after = next;
    }
    anyhow::ensure!(read == expected, "read {read} of {expected} job events");
    Ok(read as f64 / started.elapsed().as_secs_f64())
}

/// Reads the stream from `-1` to its tail in the protocol's chunks;
/// messages per second.
async fn read_stream(
    server: &BenchServer,
    service: &str,
    url: &str,
    expected: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut read = 0usize;
    super::read_stream_pages(&server.http, url, service, |body| {
        read += serde_json::from_slice::<Vec<Value>>(body)?.len();
        Ok(())
    })
    .await?;
    anyhow::ensure!(
        read == expected,
        "read {read} of {expected} stream messages"
    );
    Ok(read as f64 / started.elapsed().as_secs_f64())
}
