//! The crash harness. Round after round on one database: writers append as
//! fast as the server answers and record every acknowledged event; clients are
//! connected; the server is killed with SIGKILL at a random moment and started
//! again. Then: every acknowledged event is in the log with its own payload,
//! every job's seqs run 1, 2, 3, … with no gap and no duplicate, every session
//! that was connected got `disconnected` 1012 and later its grace expiry, and
//! `rejoin verify` passes. Checkpoints are written throughout, and each
//! restart starts from the newest one.
//!
//! Beside them, idempotent producers append to a Durable Stream: every
//! append the server acknowledged is in the stream after the restart, once,
//! in its producer's order; and each producer then retries the append it
//! had in flight when the server died (and its last acknowledged one): the
//! retry is appended if the first attempt was not committed, and is a
//! duplicate (204) if it was, so nothing is ever in the stream twice.
//!
//! A negative control runs the same rounds against a server that answers
//! before committing (`--unsafe-ack-before-commit`): the harness must see it
//! lose events.
//!
//! CI runs a few rounds; the long form:
//! `REJOIN_CRASH_ITERATIONS=200 cargo test --release --test crash_harness -- --nocapture`

use crate::common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{create_job_at, next_json, serve_binary, token_for, ws_connect, PATIENCE};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_rejoin");
const WRITERS: u64 = 8;
const JOBS_PER_ROUND: usize = 4;
/// Idempotent producers appending to the round's Durable Stream.
const PRODUCERS: u64 = 2;

fn iterations() -> usize {
    std::env::var("REJOIN_CRASH_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
}

async fn start(db: &Path, unsafe_ack: bool) -> (Child, SocketAddr) {
    // Checkpoints are written all along (every 100 events), so a crash can
    // land before, during or after one.
    let mut extra = vec!["--grace-secs", "1", "--checkpoint-every-events", "100"];
    if unsafe_ack {
        extra.push("--unsafe-ack-before-commit");
    }
    serve_binary(&format!("sqlite://{}", db.display()), &extra).await
}

/// How a round ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Crash {
    /// SIGKILL: the process dies, what it wrote stays in the page cache.
    Kill,
    /// SIGKILL, then what was not yet synced is lost: the WAL past its last
    /// complete commit is cut at a random point and a torn, random sector
    /// written there (see docs/RELIABILITY.md for what this models).
    PowerLoss,
    /// SIGKILL against a server that answers before committing (the negative
    /// control).
    UnsafeAck,
}

/// An append the server acknowledged with 201.
#[derive(Clone, Debug)]
struct Acked {
    job: Uuid,
    seq: i64,
    writer: u64,
    n: u64,
}

/// What one round saw.
#[derive(Default, Debug)]
struct Round {
    acked: usize,
    lost: Vec<Acked>,
}

/// A producer's appends to the round's stream: the last seq it sent (in
/// flight when the server died, or acknowledged), and those acknowledged.
#[derive(Default, Debug, Clone)]
struct Produced {
    sent: Option<u64>,
    acked: Vec<u64>,
}

/// One producer append: `Producer-Seq` `seq`, body `p<producer>:<seq>;`.
async fn produce(
    http: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
    producer: u64,
    seq: u64,
) -> Option<reqwest::StatusCode> {
    http.post(format!("http://{addr}{path}"))
        .bearer_auth(token_for("service", None))
        .header("content-type", "text/plain")
        .header("producer-id", format!("p{producer}"))
        .header("producer-epoch", "0")
        .header("producer-seq", seq.to_string())
        .body(format!("p{producer}:{seq};"))
        .send()
        .await
        .ok()
        .map(|r| r.status())
}

/// Totals over the rounds, printed for docs/RELIABILITY.md.
#[derive(Default, Debug)]
struct Totals {
    rounds: usize,
    acked: usize,
    lost: usize,
    sessions: usize,
    torn: usize,
    dropped_bytes: usize,
    /// Stream appends acknowledged, and the in-flight ones retried after
    /// the restart: appended then (not committed before) or duplicates.
    stream_acked: usize,
    retried_appended: usize,
    retried_duplicate: usize,
}

/// One round against the running `server`: load, SIGKILL, restart, check.
/// Returns the restarted server for the next round.
async fn round(
    db: &Path,
    server: (Child, SocketAddr),
    crash: Crash,
    totals: &mut Totals,
) -> ((Child, SocketAddr), Round) {
    let unsafe_ack = crash == Crash::UnsafeAck;
    let (mut child, addr) = server;
    let http = reqwest::Client::new();
    let mut jobs = Vec::new();
    let mut sessions = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..JOBS_PER_ROUND {
        let job = create_job_at(&http, addr).await;
        if unsafe_ack {
            // Answered before its commit: wait until the job is really there.
            common::eventually(&format!("job {job} to appear"), || async {
                let res = http
                    .get(format!("http://{addr}/v1/jobs/{job}"))
                    .bearer_auth(token_for("service", None))
                    .send()
                    .await
                    .unwrap();
                (res.status() == 200).then_some(())
            })
            .await;
        }
        let mut ws = ws_connect(
            addr,
            &format!("jobId={job}&token={}", token_for("client", Some(job))),
        )
        .await
        .unwrap();
        let hello = next_json(&mut ws).await;
        sessions.push(hello["sessionId"].as_str().unwrap().to_owned());
        jobs.push(job);
        // Keep reading, so the server never closes a slow consumer.
        readers.push(tokio::spawn(async move {
            while let Some(Ok(_)) = ws.next().await {}
        }));
    }

    let stream_path = format!("/v1/stream/crash-{}", Uuid::new_v4());
    let created = http
        .put(format!("http://{addr}{stream_path}"))
        .bearer_auth(token_for("service", None))
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let produced = Arc::new(Mutex::new(vec![Produced::default(); PRODUCERS as usize]));
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let (http, path, produced) = (http.clone(), stream_path.clone(), produced.clone());
        producers.push(tokio::spawn(async move {
            for seq in 0.. {
                produced.lock().unwrap()[p as usize].sent = Some(seq);
                match produce(&http, addr, &path, p, seq).await {
                    Some(s) if s == 200 => produced.lock().unwrap()[p as usize].acked.push(seq),
                    _ => return,
                }
            }
        }));
    }

    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (http, jobs, acked) = (http.clone(), jobs.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let service = token_for("service", None);
            for n in 0.. {
                let job = jobs[(n as usize + w as usize) % jobs.len()];
                let body = json!({"type": "progress", "progress": 10.0, "data": {"w": w, "n": n}});
                let Ok(res) = http
                    .post(format!("http://{addr}/v1/jobs/{job}/events"))
                    .bearer_auth(&service)
                    .json(&body)
                    .send()
                    .await
                else {
                    return; // the server is gone
                };
                if res.status() != 201 {
                    return;
                }
                let Ok(v) = res.json::<Value>().await else {
                    return;
                };
                let seq = v["seq"].as_i64().expect("a 201 names its seq");
                acked.lock().unwrap().push(Acked {
                    job,
                    seq,
                    writer: w,
                    n,
                });
            }
        }));
    }

    // A random moment, then SIGKILL.
    let mut bytes = [0u8; 2];
    getrandom::fill(&mut bytes).unwrap();
    let after = 100 + u64::from(u16::from_le_bytes(bytes)) % 600;
    tokio::time::sleep(Duration::from_millis(after)).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    for w in writers.into_iter().chain(producers) {
        w.await.unwrap();
    }
    for r in readers {
        r.abort();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    if crash == Crash::PowerLoss {
        // Right after a checkpoint the WAL may hold no commit: everything is
        // in the database file, and only a torn tail is written.
        if let Some((end, cut)) = tear_wal_tail(&db.with_extension("db-wal")) {
            totals.torn += usize::from(end > 32);
            totals.dropped_bytes += cut - end;
        }
    }

    let (child, addr) = start(db, unsafe_ack).await;

    // Every acknowledged event is there, with its own payload.
    let log = read_log(db);
    let mut result = Round {
        acked: acked.len(),
        lost: Vec::new(),
    };
    for a in &acked {
        let stored = log.get(&(a.job, a.seq));
        let ours = stored.is_some_and(|(kind, _, payload)| {
            kind == "progress" && payload["data"] == json!({"w": a.writer, "n": a.n})
        });
        if !ours {
            result.lost.push(a.clone());
        }
    }
    totals.rounds += 1;
    totals.acked += result.acked;
    totals.lost += result.lost.len();
    if unsafe_ack {
        return ((child, addr), result);
    }

    // The stream holds every acknowledged append once, in order; each
    // producer's retries append nothing twice.
    let produced = std::mem::take(&mut *produced.lock().unwrap());
    let stream_text = |http: reqwest::Client| {
        let path = stream_path.clone();
        async move {
            let res = http
                .get(format!("http://{addr}{path}?offset=-1"))
                .bearer_auth(token_for("service", None))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            res.text().await.unwrap()
        }
    };
    let before = stream_text(http.clone()).await;
    for (p, made) in produced.iter().enumerate() {
        let p = p as u64;
        let mine: Vec<u64> = before
            .split(';')
            .filter_map(|a| a.strip_prefix(&format!("p{p}:")))
            .map(|n| n.parse().unwrap())
            .collect();
        let expected: Vec<u64> = (0..mine.len() as u64).collect();
        assert_eq!(
            mine, expected,
            "producer {p}'s appends, in order, once each"
        );
        for a in &made.acked {
            assert!(
                mine.contains(a),
                "producer {p}'s acknowledged append {a} lost"
            );
        }
        totals.acked += made.acked.len();
        totals.stream_acked += made.acked.len();
        // Its in-flight append again: a duplicate if it was committed.
        if let Some(sent) = made.sent {
            let status = produce(&http, addr, &stream_path, p, sent).await.unwrap();
            let committed = mine.contains(&sent);
            let expected = if committed { 204 } else { 200 };
            assert_eq!(status, expected, "producer {p}'s retry of seq {sent}");
            if committed {
                totals.retried_duplicate += 1;
            } else {
                totals.retried_appended += 1;
            }
        }
        if let Some(last) = made.acked.last() {
            let status = produce(&http, addr, &stream_path, p, *last).await.unwrap();
            assert_eq!(
                status, 204,
                "producer {p}'s retry of acknowledged seq {last}"
            );
        }
    }
    let after = stream_text(http.clone()).await;
    let appends: Vec<&str> = after.split(';').filter(|a| !a.is_empty()).collect();
    let unique: HashSet<&&str> = appends.iter().collect();
    assert_eq!(unique.len(), appends.len(), "an append in the stream twice");
    assert!(after.starts_with(&before), "the stream's data changed");

    // Every job's seqs: 1, 2, 3, … (none missing, none twice).
    let mut seqs: HashMap<Uuid, Vec<i64>> = HashMap::new();
    for (job, seq) in log.keys() {
        seqs.entry(*job).or_default().push(*seq);
    }
    for (job, mut s) in seqs {
        s.sort_unstable();
        let expected: Vec<i64> = (1..=s.len() as i64).collect();
        assert_eq!(s, expected, "job {job}'s seqs");
    }

    // Every connected session was recorded as closed by the restart (1012),
    // then expired once its fresh grace window passed.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let log = read_log(db);
        let mut expired = 0;
        for session in &sessions {
            let mine: Vec<&(String, Option<String>, Value)> = log
                .values()
                .filter(|(_, s, _)| s.as_deref() == Some(session))
                .collect();
            let closes: Vec<_> = mine.iter().filter(|e| e.0 == "disconnected").collect();
            assert_eq!(closes.len(), 1, "one close for session {session}");
            assert_eq!(closes[0].2["code"], 1012, "session {session}");
            assert_eq!(closes[0].2["reason"], "server restart");
            expired += mine.iter().filter(|e| e.0 == "grace_expired").count();
        }
        if expired == sessions.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "grace windows expired: {expired} of {}",
            sessions.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    totals.sessions += sessions.len();

    let verify = Command::new(BIN)
        .arg("verify")
        .arg("--database-url")
        .arg(format!("sqlite://{}", db.display()))
        .output()
        .await
        .unwrap();
    assert!(
        verify.status.success(),
        "rejoin verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    ((child, addr), result)
}

/// Cuts the WAL at a random point past the end of its last complete, valid
/// commit and writes a random partial sector there: the unsynced tail of a
/// transaction in flight, torn by a power cut.
fn tear_wal_tail(wal: &Path) -> Option<(usize, usize)> {
    let Ok(mut bytes) = std::fs::read(wal) else {
        return None;
    };
    let end = last_commit_end(&bytes);
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).unwrap();
    let span = (bytes.len() - end) as u64 + 1;
    let cut = end + (u64::from_le_bytes(r) % span) as usize;
    bytes.truncate(cut);
    let mut torn = vec![0u8; 1 + r[0] as usize * 2];
    getrandom::fill(&mut torn).unwrap();
    bytes.extend_from_slice(&torn);
    std::fs::write(wal, bytes).unwrap();
    Some((end, cut))
}

/// The byte offset just past the last commit frame whose salts and
/// checksum chain are valid (the format of sqlite.org/fileformat2.html#walformat);
/// the header's end when there is none.
fn last_commit_end(wal: &[u8]) -> usize {
    const HEADER: usize = 32;
    const FRAME_HEADER: usize = 24;
    if wal.len() < HEADER {
        return 0;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let magic = be(&wal[0..4]);
    let big_endian = magic & 1 == 1;
    let word = |b: &[u8]| {
        if big_endian {
            be(b)
        } else {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
    };
    let checksum = |data: &[u8], (mut s0, mut s1): (u32, u32)| {
        for pair in data.chunks_exact(8) {
            s0 = s0.wrapping_add(word(&pair[0..4])).wrapping_add(s1);
            s1 = s1.wrapping_add(word(&pair[4..8])).wrapping_add(s0);
        }
        (s0, s1)
    };
    let page = be(&wal[8..12]) as usize;
    let salts = &wal[16..24];
    let mut sum = checksum(&wal[0..24], (0, 0));
    if sum != (be(&wal[24..28]), be(&wal[28..32])) {
        return HEADER;
    }
    let mut at = HEADER;
    let mut last = HEADER;
    while at + FRAME_HEADER + page <= wal.len() {
        let frame = &wal[at..at + FRAME_HEADER + page];
        if &frame[8..16] != salts {
            break;
        }
        sum = checksum(&frame[0..8], sum);
        sum = checksum(&frame[FRAME_HEADER..], sum);
        if sum != (be(&frame[16..20]), be(&frame[20..24])) {
            break;
        }
        at += FRAME_HEADER + page;
        if be(&frame[4..8]) != 0 {
            last = at;
        }
    }
    last
}

/// Every stored event by (job, seq): kind, session, payload.
fn read_log(db: &Path) -> HashMap<(Uuid, i64), (String, Option<String>, Value)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT job_id, seq, kind, session_id, payload FROM events")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
            ))
        })
        .unwrap();
    let mut log = HashMap::new();
    let mut seen = HashSet::new();
    for row in rows {
        let (job, seq, kind, session, payload) = row.unwrap();
        let job: Uuid = job.parse().unwrap();
        assert!(seen.insert((job, seq)), "({job}, {seq}) stored twice");
        log.insert(
            (job, seq),
            (kind, session, serde_json::from_str(&payload).unwrap()),
        );
    }
    log
}

/// Runs `rounds` rounds ending in `crash` on a fresh database; stops at the
/// first round that lost an acknowledged event when `stop_at_loss`, and
/// otherwise asserts that none did.
async fn rounds(crash: Crash, rounds: usize, stop_at_loss: bool) -> (Totals, Option<usize>) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("harness.db");
    let mut server = start(&db, crash == Crash::UnsafeAck).await;
    let mut totals = Totals::default();
    for i in 0..rounds {
        let (next, round) = round(&db, server, crash, &mut totals).await;
        server = next;
        if stop_at_loss && !round.lost.is_empty() {
            return (totals, Some(i));
        }
        assert!(
            round.lost.is_empty(),
            "round {i}: {} of {} acknowledged events lost, e.g. {:?}",
            round.lost.len(),
            round.acked,
            &round.lost[..round.lost.len().min(3)]
        );
        assert!(round.acked > 0, "round {i} acknowledged nothing");
    }
    (totals, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_event_is_lost_across_sigkills() {
    let (totals, _) = rounds(Crash::Kill, iterations(), false).await;
    println!(
        "crash harness: {} SIGKILL rounds, {} acknowledged events checked, {} lost, {} sessions recorded 1012 and expired; {} of them stream appends, in-flight retries {} appended and {} duplicates, none twice",
        totals.rounds,
        totals.acked,
        totals.lost,
        totals.sessions,
        totals.stream_acked,
        totals.retried_appended,
        totals.retried_duplicate
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_catches_an_acknowledgement_before_commit() {
    let (totals, caught) = rounds(Crash::UnsafeAck, 10, true).await;
    let round = caught.expect("acknowledging before the commit must lose events");
    println!(
        "negative control: loss detected in round {} ({} of {} acknowledged events lost)",
        round + 1,
        totals.lost,
        totals.acked
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_event_is_lost_when_the_unsynced_tail_is_torn() {
    let (totals, _) = rounds(Crash::PowerLoss, iterations(), false).await;
    println!(
        "power loss (torn WAL tail): {} rounds, {} acknowledged events checked, {} lost; {} WALs cut past a valid commit, {} bytes of unsynced tail dropped in all; {} stream appends, in-flight retries {} appended and {} duplicates",
        totals.rounds,
        totals.acked,
        totals.lost,
        totals.torn,
        totals.dropped_bytes,
        totals.stream_acked,
        totals.retried_appended,
        totals.retried_duplicate
    );
}
