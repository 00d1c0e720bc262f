//! Scenario 3, resume: reconnect with `lastSeq` at the head for jobs whose logs
//! hold 10, 1,000 and 100,000 events (resume cost must not grow with the log),
//! and a reconnect that replays 1,000 missed events.

use std::time::Instant;

use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::{append_all, created, first_message, progress, BenchServer, JobWriter, Latencies, Ws};
use crate::BenchArgs;

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (lengths, samples, replays): (&[usize], usize, usize) = if args.smoke {
        (&[10, 1_000, 5_000], 20, 2)
    } else {
        (&[10, 1_000, 100_000], 300, 20)
    };
    let dir = tempfile::tempdir()?;
    let db = super::database(args, dir.path(), "resume").await?;
    let store = rejoin::log::open(&db).await?;
    let now = Utc::now();
    let mut jobs = Vec::new();
    for &len in lengths {
        let mut w = JobWriter::new(Uuid::new_v4());
        let mut rows = Vec::with_capacity(len + 1);
        w.push(&mut rows, now, created());
        for i in 1..len {
            w.push(&mut rows, now, progress((i % 100) as f64));
        }
        append_all(&store.events, &rows, 10_000).await?;
        jobs.push((len, w.state.job_id, w.state.last_seq));
    }
    store.events.close().await;

    let server = BenchServer::start(&db, &[]).await?;
    let mut p99s = Vec::new();
    for &(len, job, last_seq) in &jobs {
        let token = server.token("client", Some(job));
        let (mut ws, hello) = open(&server, &format!("jobId={job}&token={token}")).await?;
        let epoch = hello["epoch"].as_str().unwrap_or_default().to_owned();
        close(&mut ws).await;
        let query =
            format!("jobId={job}&token={token}&reconnect=true&lastSeq={last_seq}&epoch={epoch}");
        let mut lat = Latencies::default();
        for _ in 0..samples {
            let started = Instant::now();
            let (mut ws, hello) = open(&server, &query).await?;
            lat.push(started.elapsed());
            anyhow::ensure!(
                hello["resumed"] == true && hello["missed"] == 0,
                "unexpected {hello}"
            );
            close(&mut ws).await;
        }
        let p99 = lat.percentile(99.0);
        p99s.push(p99);
        println!(
            "  resume at head, log of {len:>7} events   {}",
            lat.summary()
        );
    }
    let ratio = p99s.last().unwrap().as_secs_f64() / p99s[0].as_secs_f64();
    println!(
        "  p99 of the {}-event log / p99 of the 10-event log: {ratio:.2}",
        lengths.last().unwrap()
    );

    // Replaying 1,000 missed events from the longest log.
    let (_, job, last_seq) = *jobs.last().unwrap();
    let token = server.token("client", Some(job));
    let (mut ws, hello) = open(&server, &format!("jobId={job}&token={token}")).await?;
    let epoch = hello["epoch"].as_str().unwrap_or_default().to_owned();
    close(&mut ws).await;
    let after = last_seq - 1_000;
    let query = format!("jobId={job}&token={token}&reconnect=true&lastSeq={after}&epoch={epoch}");
    let mut lat = Latencies::default();
    for _ in 0..replays {
        let started = Instant::now();
        let (mut ws, hello) = open(&server, &query).await?;
        anyhow::ensure!(hello["missed"] == 1_000, "unexpected {hello}");
        let mut got = 0;
        while got < 1_000 {
            match ws.next().await {
                Some(Ok(Message::Text(_))) => got += 1,
                Some(Ok(_)) => {}
                other => anyhow::bail!("the replay stopped after {got} events: {other:?}"),
            }
        }
        lat.push(started.elapsed());
        close(&mut ws).await;
    }
    println!(
        "  reconnect + replay of 1,000 missed events  {}",
        lat.summary()
    );
    server.stop().await
}

async fn open(server: &BenchServer, query: &str) -> anyhow::Result<(Ws, serde_json::Value)> {
    let url = format!("ws://{}/ws/progress?{query}", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let hello = first_message(&mut ws).await?;
    Ok((ws, hello))
}

async fn close(ws: &mut Ws) {
    let _ = ws.send(Message::Close(None)).await;
    while let Some(Ok(_)) = ws.next().await {}
}
