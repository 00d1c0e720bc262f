//! `rejoin replay` and the ready SQL queries over a generated log of more than
//! 100,000 events, checked against the generator's own counts.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, Utc};
use rejoin::domain::event::*;
use rejoin::domain::{Event, EventBody, JobState};
use rejoin::log::chain::seal;
use rejoin::log::sqlite::SqliteStore;
use rejoin::log::{EventLog, EventRow};
use serde_json::Value;
use sqlx::{Connection, Row};
use uuid::Uuid;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the generator wrote, counted as it wrote it.
#[derive(Default)]
struct Expected {
    events: u64,
    jobs: u64,
    sessions: u64,
    reconnects: u64,
    resumed: u64,
    grace_expiries: u64,
    gaps: Vec<i64>,
    close_codes: BTreeMap<u16, u64>,
    reconnects_per_job: HashMap<Uuid, u64>,
    abandoned: BTreeSet<Uuid>,
    days: BTreeSet<String>,
}

struct Writer {
    rows: Vec<EventRow>,
    expected: Expected,
}

impl Writer {
    fn push(
        &mut self,
        state: &mut JobState,
        session: Option<Uuid>,
        at: DateTime<Utc>,
        body: EventBody,
    ) {
        let mut event = Event::new(state.job_id, session, at, body);
        self.rows.push(seal(state, &mut event));
        self.expected.events += 1;
    }
}

async fn generate(store: &SqliteStore) -> Expected {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut w = Writer {
        rows: Vec::new(),
        expected: Expected::default(),
    };
    let start: DateTime<Utc> = "2026-11-20T08:00:00Z".parse().unwrap();
    let codes = [1006u16, 1001, 1000, 1013, 1006, 1006];
    for j in 0..2_000u64 {
        let job = Uuid::from_u64_pair(j, rng.next());
        let mut state = JobState::genesis(job);
        let mut t = start + Duration::minutes(j as i64 * 7);
        w.push(
            &mut state,
            None,
            t,
            EventBody::JobCreated(JobCreated::default()),
        );
        w.expected.jobs += 1;
        let mut session = Uuid::new_v4();
        w.push(
            &mut state,
            Some(session),
            t,
            EventBody::Connected(Connected {
                client: Client {
                    sub: "c".into(),
                    ..Client::default()
                },
                last_seq: 0,
            }),
        );
        w.expected.sessions += 1;
        let mut reconnects = 0;
        for step in 0..(40 + rng.below(10)) {
            t += Duration::milliseconds(250 + rng.below(1000) as i64);
            w.push(
                &mut state,
                None,
                t,
                EventBody::ProgressReported(ProgressReported {
                    progress: step as f64,
                    message: None,
                    data: None,
                }),
            );
            if rng.below(12) == 0 {
                let code = codes[rng.below(codes.len() as u64) as usize];
                w.push(
                    &mut state,
                    Some(session),
                    t,
                    EventBody::Disconnected(Disconnected {
                        code,
                        reason: "r".into(),
                        grace_until: Some(t + Duration::seconds(60)),
                        acked_seq: None,
                        transport: None,
                    }),
                );
                *w.expected.close_codes.entry(code).or_default() += 1;
                let gap = rng.below(90_000) as i64;
                t += Duration::milliseconds(gap);
                let resumed = gap < 60_000;
                if !resumed {
                    w.push(
                        &mut state,
                        Some(session),
                        t,
                        EventBody::GraceExpired(GraceExpired { grace_until: t }),
                    );
                    w.expected.grace_expiries += 1;
                    session = Uuid::new_v4();
                    w.expected.sessions += 1;
                } else {
                    w.expected.resumed += 1;
                }
                let last_seq = state.last_seq;
                w.push(
                    &mut state,
                    Some(session),
                    t,
                    EventBody::Reconnected(Reconnected {
                        client: Client {
                            sub: "c".into(),
                            ..Client::default()
                        },
                        resumed,
                        previous_session_id: None,
                        gap_ms: Some(gap),
                        client_last_seq: Some(last_seq),
                        client_epoch: None,
                        missed: 0,
                    }),
                );
                w.expected.reconnects += 1;
                reconnects += 1;
                w.expected.gaps.push(gap);
            }
        }
        if reconnects > 0 {
            w.expected.reconnects_per_job.insert(job, reconnects);
        }
        if j % 5 == 0 {
            // This client never comes back.
            t += Duration::seconds(1);
            w.push(
                &mut state,
                Some(session),
                t,
                EventBody::Disconnected(Disconnected {
                    code: 1006,
                    reason: "connection lost".into(),
                    grace_until: Some(t + Duration::seconds(60)),
                    acked_seq: None,
                    transport: None,
                }),
            );
            *w.expected.close_codes.entry(1006).or_default() += 1;
            t += Duration::seconds(60);
            w.push(
                &mut state,
                Some(session),
                t,
                EventBody::GraceExpired(GraceExpired { grace_until: t }),
            );
            w.expected.grace_expiries += 1;
            w.expected.abandoned.insert(job);
        }
        w.push(
            &mut state,
            None,
            t,
            EventBody::JobCompleted(JobCompleted { result: None }),
        );
        for r in &w.rows {
            if r.kind == "disconnected" {
                w.expected.days.insert(r.at[..10].to_owned());
            }
        }
        if w.rows.len() > 5_000 {
            store.append(&std::mem::take(&mut w.rows)).await.unwrap();
        }
    }
    store.append(&std::mem::take(&mut w.rows)).await.unwrap();
    w.expected
}

fn nearest_rank(sorted: &[i64], p: f64) -> i64 {
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

#[tokio::test]
async fn replay_summary_and_sql_queries_match_the_generated_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rejoin.db");
    let url = format!("sqlite://{}", db.display());
    let store = SqliteStore::open(&url).await.unwrap();
    let mut expected = generate(&store).await;
    store.close().await;
    assert!(
        expected.events >= 100_000,
        "only {} events",
        expected.events
    );

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rejoin"))
        .args(["replay", "--format", "json", "--database-url", &url])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["events"], expected.events);
    assert_eq!(s["jobs"], expected.jobs);
    assert_eq!(s["sessions"], expected.sessions);
    assert_eq!(s["reconnects"], expected.reconnects);
    assert_eq!(s["resumed"], expected.resumed);
    assert_eq!(s["graceExpiries"], expected.grace_expiries);
    let rate = expected.grace_expiries as f64 / expected.sessions as f64;
    assert!((s["graceExpiryRate"].as_f64().unwrap() - rate).abs() < 1e-9);
    expected.gaps.sort_unstable();
    for (key, p) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0)] {
        assert_eq!(s["gapMs"][key], nearest_rank(&expected.gaps, p), "{key}");
    }
    let mut ranked: Vec<(u16, u64)> = expected.close_codes.iter().map(|(c, n)| (*c, *n)).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let got: Vec<(u16, u64)> = s["closeCodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["code"].as_u64().unwrap() as u16,
                c["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, ranked);

    // The human summary says the same.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rejoin"))
        .args(["replay", "--database-url", &url])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!("events            {}", expected.events)),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "reconnects        {} ({} resumed",
            expected.reconnects, expected.resumed
        )),
        "{text}"
    );

    // NDJSON for one job prints exactly its events.
    let job = *expected.abandoned.iter().next().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rejoin"))
        .args([
            "replay",
            "--format",
            "ndjson",
            "--job",
            &job.to_string(),
            "--database-url",
            &url,
        ])
        .output()
        .await
        .unwrap();
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().all(|l| l["jobId"] == job.to_string()));
    assert!(lines
        .windows(2)
        .all(|w| w[1]["seq"].as_i64() == w[0]["seq"].as_i64().map(|s| s + 1)));
    assert_eq!(lines.last().unwrap()["kind"], "completed");

    // The ready SQL queries.
    let sql = |name: &str| {
        std::fs::read_to_string(format!("{}/sqlite/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    };
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();

    let rows = sqlx::query(&sql("reconnects_per_job.sql"))
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let top = expected.reconnects_per_job.values().max().copied().unwrap();
    assert_eq!(rows[0].get::<i64, _>("reconnects") as u64, top);
    for r in &rows {
        let job: Uuid = r.get::<String, _>("job_id").parse().unwrap();
        assert_eq!(
            r.get::<i64, _>("reconnects") as u64,
            expected.reconnects_per_job[&job]
        );
    }

    let rows = sqlx::query(&sql("gap_distribution.sql"))
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let total: i64 = rows.iter().map(|r| r.get::<i64, _>("reconnects")).sum();
    assert_eq!(total as u64, expected.reconnects);
    let under_one_second = expected.gaps.iter().filter(|g| **g < 1000).count() as i64;
    let first = &rows[0];
    assert_eq!(first.get::<String, _>("gap"), "1: under 1 s");
    assert_eq!(first.get::<i64, _>("reconnects"), under_one_second);

    let rows = sqlx::query(&sql("close_codes_by_day.sql"))
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let mut by_code: BTreeMap<u16, u64> = BTreeMap::new();
    let mut days = BTreeSet::new();
    for r in &rows {
        *by_code.entry(r.get::<i64, _>("code") as u16).or_default() +=
            r.get::<i64, _>("closes") as u64;
        days.insert(r.get::<String, _>("day"));
    }
    assert_eq!(by_code, expected.close_codes);
    assert_eq!(days, expected.days);

    let rows = sqlx::query(&sql("abandoned_jobs.sql"))
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let abandoned: BTreeSet<Uuid> = rows
        .iter()
        .map(|r| r.get::<String, _>("job_id").parse().unwrap())
        .collect();
    assert_eq!(abandoned, expected.abandoned);
    assert!(rows
        .iter()
        .all(|r| r.get::<String, _>("outcome") == "completed"));
}
