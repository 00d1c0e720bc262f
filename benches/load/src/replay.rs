//! Scenario 5, replay: fold a stored log into state. Read-decode-apply (the
//! path a restart takes) against a raw row scan of the same table in the same
//! run, and apply alone over events already decoded.

use std::time::Instant;

use chrono::Utc;
use uuid::Uuid;

use super::{append_all, created, progress, rate, JobWriter};
use crate::BenchArgs;
use rejoin::domain::World;
use rejoin::log::for_each_event;

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (jobs, per_job) = if args.smoke {
        (100, 500)
    } else {
        (1_000, 1_000)
    };
    let dir = tempfile::tempdir()?;
    let url = super::database(args, dir.path(), "replay").await?;
    let store = rejoin::log::open(&url).await?;

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
            append_all(&store.events, &rows, 10_000).await?;
            rows.clear();
        }
    }
    append_all(&store.events, &rows, 10_000).await?;
    let total = (jobs * per_job) as f64;
    println!(
        "  generated {} events in {:.1} s",
        rate(total),
        started.elapsed().as_secs_f64()
    );

    // Baseline: one statement over every row into owned strings, no decoding.
    let started = Instant::now();
    let scanned = raw_scan(&url).await?;
    let scan_rate = scanned as f64 / started.elapsed().as_secs_f64();
    println!(
        "  raw row scan                           {:>12} rows/s",
        rate(scan_rate)
    );

    // Read, decode and fold, as at start-up.
    let started = Instant::now();
    let mut world = World::default();
    let mut events = Vec::with_capacity(total as usize);
    let mut count = 0u64;
    for_each_event(store.events.as_ref(), 0, |_, e| {
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
    store.events.close().await;
    Ok(())
}

const SCAN: &str = "SELECT position, job_id, seq, session_id, kind, schema_version, payload, idempotency_key, at, hash FROM events ORDER BY position";

/// Every row of the log read into owned values, nothing decoded: rusqlite on
/// SQLite, one streamed sqlx query on PostgreSQL.
async fn raw_scan(url: &str) -> anyhow::Result<u64> {
    if rejoin::log::postgres::is_postgres(url) {
        use futures_util::TryStreamExt;
        use sqlx::{Connection, Row};
        let mut conn = sqlx::PgConnection::connect(url).await?;
        let mut rows = sqlx::query(SCAN).fetch(&mut conn);
        let mut n = 0u64;
        while let Some(r) = rows.try_next().await? {
            let row = (
                r.try_get::<i64, _>(0)?,
                r.try_get::<String, _>(1)?,
                r.try_get::<i64, _>(2)?,
                r.try_get::<Option<String>, _>(3)?,
                r.try_get::<String, _>(4)?,
                r.try_get::<i32, _>(5)?,
                r.try_get::<String, _>(6)?,
                r.try_get::<Option<String>, _>(7)?,
                r.try_get::<String, _>(8)?,
                r.try_get::<String, _>(9)?,
            );
            std::hint::black_box(&row);
            n += 1;
        }
        return Ok(n);
    }
    let path = rejoin::log::sqlite::database_path(url)
        .ok_or_else(|| anyhow::anyhow!("not a SQLite URL: {url}"))?;
    Ok(
        tokio::task::spawn_blocking(move || -> rusqlite::Result<u64> {
            let conn = rusqlite::Connection::open(path)?;
            let mut stmt = conn.prepare(SCAN)?;
            let mut rows = stmt.query([])?;
            let mut n = 0u64;
            while let Some(r) = rows.next()? {
                let row = (
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i32>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, String>(8)?,
                    r.get::<_, String>(9)?,
                );
                std::hint::black_box(&row);
                n += 1;
            }
            Ok(n)
        })
        .await??,
    )
}
