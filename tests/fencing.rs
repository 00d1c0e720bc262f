//! Fencing: two `rejoin serve` processes on one PostgreSQL log, one of them
//! stalled (SIGSTOP), cut off from the database or on a skewed clock. A node
//! that lost its lease closes its sockets (1012) before it sends anything
//! more on them; the client resumes from the log on the other node; every
//! deadline is decided once, on the database's clock; a database outage
//! answers 503 and loses nothing acknowledged.
//!
//! Needs `REJOIN_TEST_POSTGRES_URL`: ignored by a plain `cargo test`;
//! `.ci/run`'s PostgreSQL pass runs them.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{
    create_job_at, events_of, eventually, next_json, postgres_address, progress_at, serve_binary,
    token_for, ws_connect, Proxy, Ws, PATIENCE,
};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::process::Child;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// The close a fenced node's client gets.
const FENCED: &str = "server lost its lease; reconnect";

/// Lease of the stalled-node tests: short, so a test's stall is short.
const LEASE_SECS: f64 = 2.0;

struct Node {
    child: Child,
    addr: SocketAddr,
}

impl Node {
    async fn start(url: &str, extra: &[&str]) -> Node {
        let (child, addr) = serve_binary(url, extra).await;
        Node { child, addr }
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY: signals our own child process.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    async fn status(&self, path: &str) -> u16 {
        reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .map_or(0, |r| r.status().as_u16())
    }
}

/// A fresh schema on the test server, or `None` without one.
async fn fresh() -> Option<String> {
    std::env::var_os("REJOIN_TEST_POSTGRES_URL")?;
    let dir = tempfile::tempdir().unwrap();
    Some(common::fresh_database(dir.path()).await)
}

fn query(job: Uuid) -> String {
    format!("jobId={job}&token={}", token_for("client", Some(job)))
}

/// The job's logged events of `kind` for `session`.
async fn session_events(
    url: &str,
    job: Uuid,
    kind: &str,
    session: &str,
) -> Vec<common::LoggedEvent> {
    events_of(url, job, kind)
        .await
        .into_iter()
        .filter(|e| e.session_id.as_deref() == Some(session))
        .collect()
}

/// Reads the socket to its end: the seqs of the job messages it received,
/// and the close frame.
async fn drain(ws: &mut Ws) -> (Vec<i64>, Option<(u16, String)>) {
    let mut seqs = Vec::new();
    loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("the socket ends in time")
        {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if let Some(seq) = v["seq"].as_i64() {
                    seqs.push(seq);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return (
                    seqs,
                    frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                )
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return (seqs, None),
        }
    }
}

/// A client watches a job on A; A is stopped (SIGSTOP) until B has recorded
/// the session as lost and `then` has happened in the log; an event is
/// posted to B meanwhile; A is continued. Checks what every stall must
/// show: the socket closed 1012 within one lease period of SIGCONT, having
/// received nothing at or after the loss's seq; the client, reconnecting to
/// B with its `sessionId`, gets what it missed; the loss is logged once.
/// Returns the `reconnected` and the client's first session id.
async fn stall_until(grace_secs: &str, then: &str) -> Option<(Value, String)> {
    let url = fresh().await?;
    let lease = LEASE_SECS.to_string();
    let flags = ["--grace-secs", grace_secs, "--node-lease-secs", &lease];
    let a = Node::start(&url, &flags).await;
    let b = Node::start(&url, &flags).await;
    let http = reqwest::Client::new();
    let job = create_job_at(&http, b.addr).await;
    let mut ws = ws_connect(a.addr, &query(job)).await.unwrap();
    let hello = next_json(&mut ws).await;
    let session = hello["sessionId"].as_str().unwrap().to_owned();
    let first = progress_at(&http, b.addr, job, 10.0).await;
    assert_eq!(next_json(&mut ws).await["seq"], first);

    a.signal(libc::SIGSTOP);
    let lost = eventually("B to record the session as lost", || async {
        session_events(&url, job, "disconnected", &session)
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(lost.payload["code"], 1012, "{:?}", lost.payload);
    let missed = progress_at(&http, b.addr, job, 20.0).await;
    assert!(missed > lost.seq);
    if then != "disconnected" {
        eventually(then, || async {
            (!session_events(&url, job, then, &session).await.is_empty()).then_some(())
        })
        .await;
    }
    a.signal(libc::SIGCONT);
    let woke = Instant::now();
    let (mut received, close) = drain(&mut ws).await;
    let closed_after = woke.elapsed();
    println!("the socket closed {closed_after:?} after SIGCONT");
    received.insert(0, first);
    assert_eq!(close, Some((1012, FENCED.to_owned())));
    assert!(
        closed_after < Duration::from_secs_f64(LEASE_SECS),
        "closed {closed_after:?} after the node woke"
    );
    // Nothing was sent on the socket after the log recorded its session lost.
    assert!(
        received.iter().all(|seq| *seq < lost.seq),
        "{received:?} vs {}",
        lost.seq
    );

    // The client reconnects to the other node with what it had.
    let last = received.iter().copied().max().unwrap_or(0);
    let resume = format!(
        "{}&reconnect=true&lastSeq={last}&epoch={}&sessionId={session}",
        query(job),
        hello["epoch"].as_str().unwrap()
    );
    let mut ws = ws_connect(b.addr, &resume).await.unwrap();
    let back = next_json(&mut ws).await;
    let mut replayed = Vec::new();
    for _ in 0..back["missed"].as_u64().unwrap() {
        replayed.push(next_json(&mut ws).await);
    }
    assert_eq!(back["type"], "reconnected");
    assert_eq!(replayed[0]["progress"], 20.0);
    assert_eq!(replayed.last().unwrap()["seq"], missed);

    // Once for the session, whichever node got there: the loss and (if it
    // came) the expiry of its window.
    let disconnects = session_events(&url, job, "disconnected", &session).await;
    assert_eq!(disconnects.len(), 1, "{disconnects:?}");
    assert!(
        session_events(&url, job, "grace_expired", &session)
            .await
            .len()
            <= 1
    );
    drop((a, b));
    Some((back, session))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: REJOIN_TEST_POSTGRES_URL (.ci/run sets it)"]
async fn a_node_stalled_past_its_lease_and_the_grace_window_fences_and_its_client_starts_over_elsewhere_on_postgres(
) {
    let Some((back, session)) = stall_until("3", "grace_expired").await else {
        panic!("this test needs PostgreSQL: set REJOIN_TEST_POSTGRES_URL");
    };
    assert_eq!(back["resumed"], false);
    assert_ne!(back["sessionId"], session.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: REJOIN_TEST_POSTGRES_URL (.ci/run sets it)"]
async fn a_node_stalled_past_its_lease_only_fences_and_its_client_resumes_on_the_other_on_postgres()
{
    let Some((back, session)) = stall_until("30", "disconnected").await else {
        panic!("this test needs PostgreSQL: set REJOIN_TEST_POSTGRES_URL");
    };
    assert_eq!(back["resumed"], true);
    assert_eq!(back["sessionId"], session.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: REJOIN_TEST_POSTGRES_URL (.ci/run sets it)"]
async fn a_node_cut_off_from_the_database_fences_itself_and_serves_again_once_it_heals_on_postgres()
{
    let Some(url) = fresh().await else {
        panic!("this test needs PostgreSQL: set REJOIN_TEST_POSTGRES_URL");
    };
    let proxy = Proxy::start(postgres_address(&url)).await;
    let lease = LEASE_SECS.to_string();
    let flags = ["--grace-secs", "30", "--node-lease-secs", &lease];
    let a = Node::start(&proxy.url_for(&url), &flags).await;
    let b = Node::start(&url, &flags).await;
    let http = reqwest::Client::new();
    let job = create_job_at(&http, b.addr).await;
    let mut ws = ws_connect(a.addr, &query(job)).await.unwrap();
    let hello = next_json(&mut ws).await;
    let first = progress_at(&http, b.addr, job, 10.0).await;
    assert_eq!(next_json(&mut ws).await["seq"], first);

    proxy.cut();
    // The client stays connected until A's lease runs out, then is told to
    // reconnect; meanwhile the job goes on through B.
    let missed = progress_at(&http, b.addr, job, 20.0).await;
    let (received, close) = drain(&mut ws).await;
    assert_eq!(close, Some((1012, FENCED.to_owned())));
    assert!(!received.contains(&missed), "{received:?}");
    assert_eq!(a.status("/readyz").await, 503);

    let resume = format!(
        "{}&reconnect=true&lastSeq={first}&epoch={}&sessionId={}",
        query(job),
        hello["epoch"].as_str().unwrap(),
        hello["sessionId"].as_str().unwrap()
    );
    let mut ws = ws_connect(b.addr, &resume).await.unwrap();
    let back = next_json(&mut ws).await;
    assert_eq!(back["resumed"], true);
    assert_eq!(back["missed"], 1);
    assert_eq!(next_json(&mut ws).await["seq"], missed);

    // Healed: A takes a new lease and serves again, events posted to B
    // included.
    proxy.heal();
    eventually("A to be ready again", || async {
        (a.status("/readyz").await == 200).then_some(())
    })
    .await;
    let mut again = ws_connect(a.addr, &query(job)).await.unwrap();
    assert_eq!(next_json(&mut again).await["type"], "connected");
    let later = progress_at(&http, b.addr, job, 30.0).await;
    assert_eq!(next_json(&mut again).await["seq"], later);
    assert_eq!(next_json(&mut ws).await["seq"], later);
    let fenced = common::metric_at(&http, a.addr, "rejoin_fenced_total ").await;
    assert_eq!(fenced, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: REJOIN_TEST_POSTGRES_URL (.ci/run sets it)"]
async fn appends_answer_503_while_the_database_is_down_and_nothing_acknowledged_is_lost_on_postgres(
) {
    let Some(url) = fresh().await else {
        panic!("this test needs PostgreSQL: set REJOIN_TEST_POSTGRES_URL");
    };
    // Both nodes reach the database through one proxy: cutting it is the
    // database restarting, as its clients see it. The outage is shorter
    // than the lease, so sockets stay open through it.
    let proxy = Proxy::start(postgres_address(&url)).await;
    let through = proxy.url_for(&url);
    let flags = ["--grace-secs", "30", "--node-lease-secs", "20"];
    let a = Node::start(&through, &flags).await;
    let b = Node::start(&through, &flags).await;
    let http = reqwest::Client::new();
    let job = create_job_at(&http, a.addr).await;
    let mut ws = ws_connect(b.addr, &query(job)).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "connected");

    // Load: one poster after another, recording what was acknowledged.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let poster = {
        let http = http.clone();
        let addr = a.addr;
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut n = 0u32;
            while !*stop.borrow() {
                n += 1;
                let res = http
                    .post(format!("http://{addr}/v1/jobs/{job}/events"))
                    .bearer_auth(token_for("service", None))
                    .header("Idempotency-Key", format!("k{n}"))
                    .json(&json!({"type": "progress", "progress": f64::from(n % 100)}))
                    .send()
                    .await
                    .unwrap();
                let status = res.status().as_u16();
                let retry_after = res.headers().contains_key("retry-after");
                if status == 201 {
                    let body: Value = res.json().await.unwrap();
                    acknowledged.push(body["seq"].as_i64().unwrap());
                }
                let _ = seen_tx.send((status, retry_after));
            }
            acknowledged
        })
    };
    until_status(&mut seen, 201).await;
    proxy.cut();
    assert!(
        until_status(&mut seen, 503).await,
        "a 503 without Retry-After"
    );
    assert_eq!(a.status("/readyz").await, 503);
    proxy.heal();
    until_status(&mut seen, 201).await;
    until_status(&mut seen, 201).await;
    stop_tx.send_replace(true);
    let acknowledged = poster.await.unwrap();
    assert_eq!(a.status("/readyz").await, 200);

    // Every acknowledged event is in the log and reached the client on the
    // other node, whose socket stayed open: the follower recovered by itself.
    let logged: Vec<i64> = events_of(&url, job, "progress")
        .await
        .iter()
        .map(|e| e.seq)
        .collect();
    for seq in &acknowledged {
        assert!(
            logged.contains(seq),
            "acknowledged seq {seq} is not in the log"
        );
    }
    let last = *acknowledged.last().unwrap();
    let mut received = Vec::new();
    while received.last() != Some(&last) {
        let m = next_json(&mut ws).await;
        received.push(m["seq"].as_i64().expect("a job event"));
    }
    for seq in &acknowledged {
        assert!(
            received.contains(seq),
            "acknowledged seq {seq} never reached the client"
        );
    }
    let after = progress_at(&http, a.addr, job, 100.0).await;
    assert_eq!(next_json(&mut ws).await["seq"], after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: REJOIN_TEST_POSTGRES_URL (.ci/run sets it)"]
async fn a_node_with_a_skewed_clock_writes_and_keeps_deadlines_on_the_database_clock_on_postgres() {
    let Some(url) = fresh().await else {
        panic!("this test needs PostgreSQL: set REJOIN_TEST_POSTGRES_URL");
    };
    let flags = ["--grace-secs", "2", "--node-lease-secs", "2"];
    let _a = Node::start(&url, &flags).await;
    // B's clock is 30 s ahead: uncorrected, it would stamp events 30 s in
    // the future and expire every grace window at once.
    let skewed = [&flags[..], &["--clock-skew-ms", "30000"]].concat();
    let b = Node::start(&url, &skewed).await;
    let http = reqwest::Client::new();
    let mut db = common::Db::connect(&url).await;

    let job = create_job_at(&http, b.addr).await;
    let mut ws = ws_connect(b.addr, &query(job)).await.unwrap();
    let hello = next_json(&mut ws).await;
    let session = hello["sessionId"].as_str().unwrap().to_owned();
    // The close is stamped between these two readings of the database's
    // clock, however long the test takes to notice it; 30 s of skew would
    // put it far outside them.
    let before = db_now(&mut db).await;
    drop(ws); // abrupt: B records the close and opens the window
    let closed = eventually("B to record the close", || async {
        session_events(&url, job, "disconnected", &session)
            .await
            .into_iter()
            .next()
    })
    .await;
    let after = db_now(&mut db).await;
    let slack = chrono::Duration::seconds(1);
    assert!(
        closed.at >= before - slack && closed.at <= after + slack,
        "B stamped the close at {}, outside the database's {before} .. {after}",
        closed.at
    );
    let until: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(closed.payload["graceUntil"].clone()).unwrap();
    assert_eq!(until - closed.at, chrono::Duration::seconds(2));

    // The window expires once, when the database's clock says so, whichever
    // node's scheduler decides it.
    let expired = eventually("the window to expire", || async {
        session_events(&url, job, "grace_expired", &session)
            .await
            .into_iter()
            .next()
    })
    .await;
    let now = db_now(&mut db).await;
    assert!(
        now >= until - chrono::Duration::milliseconds(300),
        "expired at {now}, before the window's end {until}"
    );
    assert!(expired.at >= until);
    let offset = common::metric_at(&http, b.addr, "rejoin_clock_offset_seconds ").await;
    assert!((offset + 30.0).abs() < 1.0, "offset {offset}");
    db.close().await;
}

/// Reads the poster's answers until one has status `want`; whether it
/// carried `Retry-After`. Anything but 201 or 503 fails the test.
async fn until_status(
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<(u16, bool)>,
    want: u16,
) -> bool {
    loop {
        let (status, retry_after) = seen.recv().await.expect("the poster runs");
        if status == want {
            return retry_after;
        }
        assert!(status == 201 || status == 503, "append answered {status}");
    }
}

/// The database's clock now.
async fn db_now(db: &mut common::Db) -> chrono::DateTime<chrono::Utc> {
    let us = db
        .scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")
        .await;
    chrono::DateTime::from_timestamp_micros(us).unwrap()
}
