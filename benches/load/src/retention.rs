//! Retention under load: the fan-out load of `fanout.rs` (1,000 sockets on
//! their own jobs, 500 POSTs/s) on a server whose log already holds a
//! million events of jobs that finished two hours ago, started with
//! `--retain-finished 1h` so its sweep removes them while the load runs;
//! beside it, the same load on a server with the same log and no retention
//! (the baseline), alternating `--runs` times. Prints each run's POST-to-
//! receipt latencies, the events the sweep removed inside the window, and
//! the p99 ratio.

use chrono::Utc;
use uuid::Uuid;

use super::fanout::{configuration, Load, Server};
use super::{append_all, created, progress, JobWriter, Sample};
use crate::BenchArgs;
use rejoin::domain::event::{EventBody, JobCompleted};

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (events, load) = if args.smoke {
        (
            20_000,
            Load {
                clients: 50,
                watchers: 1,
                per_sec: 200,
                secs: 2,
            },
        )
    } else {
        (
            1_000_000,
            Load {
                clients: 1_000,
                watchers: 1,
                per_sec: 500,
                secs: 20,
            },
        )
    };
    let retain = ["--retain-finished".to_owned(), "1h".to_owned()];
    let (mut without, mut with) = (Sample::default(), Sample::default());
    for run in 1..=args.runs() {
        println!("  run {run} of {}", args.runs());
        let mut m = configuration(args, &load, Server::RejoinOver(&[], events), 0).await?;
        without.push(m.latencies.percentile(99.0).as_secs_f64());
        let mut m = configuration(args, &load, Server::RejoinOver(&retain, events), 0).await?;
        println!("  sweeping: removed {} events inside the window", m.removed);
        with.push(m.latencies.percentile(99.0).as_secs_f64());
    }
    println!(
        "  p99 medians of {}: no sweep {}, sweeping {}; ratio {:.2}x",
        args.runs(),
        without.ms(),
        with.ms(),
        with.median() / without.median()
    );
    Ok(())
}

/// Fills the log at `url` with `events` events of jobs (100 events each:
/// created, 98 progress, completed) that finished two hours ago.
pub async fn preload(url: String, events: u64) -> anyhow::Result<()> {
    let store = rejoin::log::open(&url).await?;
    let at = Utc::now() - chrono::Duration::hours(2);
    let mut rows = Vec::with_capacity(60_000);
    for _ in 0..events / 100 {
        let mut job = JobWriter::new(Uuid::new_v4());
        job.push(&mut rows, at, created());
        for i in 0..98 {
            job.push(&mut rows, at, progress(i as f64));
        }
        job.push(
            &mut rows,
            at,
            EventBody::JobCompleted(JobCompleted { result: None }),
        );
        if rows.len() >= 50_000 {
            append_all(&store.events, &rows, 10_000).await?;
            rows.clear();
        }
    }
    append_all(&store.events, &rows, 10_000).await?;
    store.events.close().await;
    // The preload's pages reach the disk now, not inside the window.
    let synced = tokio::process::Command::new("sync").status().await?;
    anyhow::ensure!(synced.success(), "sync failed");
    Ok(())
}
