//! Scenario 5, replay: fold a stored log into state. Read-decode-apply (the
//! path a restart takes) against a raw row scan of the same table in the same
//! run, and apply alone over events already decoded.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use futures_util::TryStreamExt;
use sqlx::Connection;
use uuid::Uuid;

use super::{append_all, created, progress, rate, JobWriter};
use crate::config::BenchArgs;
use crate::domain::World;
use crate::log::sqlite::SqliteStore;
use crate::log::{for_each_event, EventRow, LogStore};

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (jobs, per_job) = if args.smoke {
        (100, 500)
    } else {
        (1_000, 1_000)
    };
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("replay.db").display());
    let store: Arc<dyn LogStore> = Arc::new(SqliteStore::open(&url).await?);

    let started = Instant::now();
    let now = Utc::now();
    let mut writers: Vec<JobWriter> = (0..jobs).map(|_| JobWriter::new(Uuid::new_v4())).collect();
    let mut rows = Vec::with_capacity(50_000);
    for w in &mut writers {
        w.push(&mut rows, now, created());
    }
    for i in 1..per_job {
        for w in &mut writers {
            w.push(&mut rows, now, progress((i % 100) as f64));
        }
        if rows.len() >= 50_000 {
            append_all(&store, &rows, 10_000).await?;
            rows.clear();
        }
    }
    append_all(&store, &rows, 10_000).await?;
    let total = (jobs * per_job) as f64;
    println!(
        "  generated {} events in {:.1} s",
        rate(total),
        started.elapsed().as_secs_f64()
    );

    // Baseline: stream every row, owned strings, no decoding.
    let mut conn = sqlx::SqliteConnection::connect(&url).await?;
    let started = Instant::now();
    let mut scanned = 0u64;
    {
        let mut stream = sqlx::query_as::<_, EventRow>(
            "SELECT position, job_id, seq, session_id, kind, schema_version, payload, idempotency_key, at, hash FROM events ORDER BY position",
        )
        .fetch(&mut conn);
        while let Some(row) = stream.try_next().await? {
            scanned += 1;
            std::hint::black_box(&row);
        }
    }
    let scan_rate = scanned as f64 / started.elapsed().as_secs_f64();
    conn.close().await?;
    println!(
        "  raw row scan                           {:>12} rows/s",
        rate(scan_rate)
    );

    // Read, decode and fold, as at start-up.
    let started = Instant::now();
    let mut world = World::default();
    let mut events = Vec::with_capacity(total as usize);
    let mut count = 0u64;
    for_each_event(store.as_ref(), 0, |_, e| {
        world.apply(&e);
        count += 1;
        events.push(e);
        Ok(())
    })
    .await?;
    let fold_rate = count as f64 / started.elapsed().as_secs_f64();
    println!(
        "  read + decode + apply                  {:>12} events/s   {:.2} of the raw scan",
        rate(fold_rate),
        fold_rate / scan_rate
    );
    std::hint::black_box(&world);

    // Apply alone, over events already in memory.
    let started = Instant::now();
    let mut world = World::default();
    for e in &events {
        world.apply(e);
    }
    let apply_rate = events.len() as f64 / started.elapsed().as_secs_f64();
    std::hint::black_box(&world);
    println!(
        "  apply alone                            {:>12} events/s",
        rate(apply_rate)
    );
    store.close().await;
    Ok(())
}
