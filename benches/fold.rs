//! In-process micro-benchmarks of the log's and the fold's hot paths:
//! `cargo bench --bench fold`.

use chrono::Utc;
use rejoin::domain::event::{EventBody, ProgressReported};
use rejoin::domain::{Event, JobState, World};
use rejoin::log::chain::event_hash;
use rejoin::log::EventRow;
use uuid::Uuid;

fn main() {
    divan::main();
}

fn progress_event(job: Uuid, seq: i64) -> Event {
    let body = EventBody::ProgressReported(ProgressReported {
        progress: 45.0,
        message: Some("Processing book 9 of 20".into()),
        data: Some(serde_json::json!({"book": 9, "shelf": "B"})),
    });
    Event {
        seq,
        hash: "0".repeat(64),
        ..Event::new(job, None, Utc::now(), body)
    }
}

/// Folding one progress event into a job's state.
#[divan::bench]
fn apply_progress(bencher: divan::Bencher) {
    let job = Uuid::new_v4();
    let event = progress_event(job, 2);
    let mut state = JobState::genesis(job);
    bencher.bench_local(|| state.apply(divan::black_box(&event)));
}

/// Folding 10,000 events of 100 jobs into the world.
#[divan::bench]
fn apply_world_10k(bencher: divan::Bencher) {
    let jobs: Vec<Uuid> = (0..100).map(|_| Uuid::new_v4()).collect();
    let events: Vec<Event> = (0..10_000)
        .map(|i| progress_event(jobs[i % 100], i as i64 / 100 + 1))
        .collect();
    bencher.bench_local(|| {
        let mut world = World::default();
        for e in &events {
            world.apply(e);
        }
        world
    });
}

/// Decoding a stored row into a typed event.
#[divan::bench]
fn decode_row(bencher: divan::Bencher) {
    let row = EventRow::from_event(&progress_event(Uuid::new_v4(), 2));
    bencher.bench_local(|| divan::black_box(&row).decode());
}

/// Encoding an event for storage and chaining its hash.
#[divan::bench]
fn encode_and_hash(bencher: divan::Bencher) {
    let event = progress_event(Uuid::new_v4(), 2);
    bencher.bench_local(|| {
        let row = EventRow::from_event(divan::black_box(&event));
        event_hash(
            "0000000000000000000000000000000000000000000000000000000000000000",
            &row,
        )
    });
}
