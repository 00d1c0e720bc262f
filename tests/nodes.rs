//! Two `rejoin serve` processes on one PostgreSQL log: an event posted to one
//! reaches a client on the other; a client that drops from one resumes on the
//! other; a reconnect to one replaces the socket held by the other; a grace
//! window expires once, whichever node's scheduler gets there; a node killed
//! with SIGKILL has its sessions recorded and expired by the other, once.
//!
//! Needs `REJOIN_TEST_POSTGRES_URL`: ignored by a plain `cargo test`;
//! `.ci/run`'s PostgreSQL pass runs them.

use crate::common;

use std::net::SocketAddr;

use common::{
    create_job_at, events_of, next_close, next_json, progress_at, serve_binary, token_for,
    ws_connect,
};
use serde_json::Value;
use tokio::process::Child;
use uuid::Uuid;

struct Node {
    child: Child,
    addr: SocketAddr,
}

const NODE_FLAGS: [&str; 4] = ["--grace-secs", "1", "--node-lease-secs", "2"];

async fn node(url: &str) -> Node {
    let (child, addr) = serve_binary(url, &NODE_FLAGS).await;
    Node { child, addr }
}

/// Two nodes on a fresh schema, or `None` without a PostgreSQL server.
async fn cluster() -> Option<(String, Node, Node)> {
    std::env::var_os("REJOIN_TEST_POSTGRES_URL")?;
    let (url, mut nodes) = common::spawn_nodes(2, &NODE_FLAGS).await;
    let (child, addr) = nodes.pop().unwrap();
    let b = Node { child, addr };
    let (child, addr) = nodes.pop().unwrap();
    Some((url, Node { child, addr }, b))
}

/// Waits until the node at `addr` shows `job`'s session in `state`.
async fn wait_for_session(addr: SocketAddr, job: Uuid, state: &str) -> Value {
    common::eventually(&format!("the session {state} on {addr}"), || async {
        let service = token_for("service", None);
        let path = format!("/v1/jobs/{job}");
        let job_state =
            common::get_json_at(&reqwest::Client::new(), addr, &path, Some(&service)).await;
        (job_state["session"]["state"] == state).then_some(job_state)
    })
    .await
}

/// Waits until `job`'s grace window has expired (on whichever node).
async fn expired(url: &str, job: Uuid) {
    common::eventually(&format!("job {job}'s grace expiry"), || async {
        (!events_of(url, job, "grace_expired").await.is_empty()).then_some(())
    })
    .await;
}

fn query(job: Uuid) -> String {
    format!("jobId={job}&token={}", token_for("client", Some(job)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: REJOIN_TEST_POSTGRES_URL (.ci/run sets it)"]
async fn an_event_posted_to_one_node_reaches_a_client_on_the_other_on_postgres() {
    let Some((_, a, b)) = cluster().await else {
        panic!("this test needs PostgreSQL: set REJOIN_TEST_POSTGRES_URL");
    };
    let job = create_job_at(&reqwest::Client::new(), a.addr).await;
    let mut ws = ws_connect(b.addr, &query(job)).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    for p in [10.0, 20.0, 30.0] {
        let seq = progress_at(&reqwest::Client::new(), a.addr, job, p).await;
        let event = next_json(&mut ws).await;
        assert_eq!(event["seq"], seq);
        assert_eq!(event["progress"], p);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: REJOIN_TEST_POSTGRES_URL (.ci/run sets it)"]
async fn a_client_that_drops_from_one_node_resumes_on_the_other_on_postgres() {
    let Some((_, a, b)) = cluster().await else {
        panic!("this test needs PostgreSQL: set REJOIN_TEST_POSTGRES_URL");
    };
    let job = create_job_at(&reqwest::Client::new(), a.addr).await;
    let mut ws = ws_connect(a.addr, &query(job)).await.unwrap();
    let hello = next_json(&mut ws).await;
    let last = progress_at(&reqwest::Client::new(), a.addr, job, 10.0).await;
    assert_eq!(next_json(&mut ws).await["seq"], last);
    drop(ws); // abrupt: no close frame
              // Missed while away, posted to either node.
    let missed = [
        progress_at(&reqwest::Client::new(), b.addr, job, 20.0).await,
        progress_at(&reqwest::Client::new(), a.addr, job, 30.0).await,
    ];

    // The drop is recorded on A; B must see it before the resume can continue
    // the session.
    let state = wait_for_session(b.addr, job, "grace").await;
    assert_eq!(state["session"]["sessionId"], hello["sessionId"]);
    let resume = format!(
        "{}&reconnect=true&lastSeq={last}&epoch={}",
        query(job),
        hello["epoch"].as_str().unwrap()
    );
    let mut ws = ws_connect(b.addr, &resume).await.unwrap();
    let back = next_json(&mut ws).await;
    assert_eq!(back["type"], "reconnected");
    assert_eq!(back["resumed"], true);
    assert_eq!(back["sessionId"], hello["sessionId"]);
    assert_eq!(back["missed"], 2);
    for seq in missed {
        assert_eq!(next_json(&mut ws).await["seq"], seq);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: REJOIN_TEST_POSTGRES_URL (.ci/run sets it)"]
async fn a_reconnect_to_one_node_replaces_the_socket_held_by_the_other_on_postgres() {
    let Some((url, a, b)) = cluster().await else {
        panic!("this test needs PostgreSQL: set REJOIN_TEST_POSTGRES_URL");
    };
    let job = create_job_at(&reqwest::Client::new(), a.addr).await;
    let mut old = ws_connect(a.addr, &query(job)).await.unwrap();
    let hello = next_json(&mut old).await;
    let last = hello["lastSeq"].as_i64().unwrap();
    // No waiting for B to hear of the connect: an attach is decided on the
    // log's latest word.
    let resume = format!(
        "{}&reconnect=true&lastSeq={last}&epoch={}",
        query(job),
        hello["epoch"].as_str().unwrap()
    );
    let mut new = ws_connect(b.addr, &resume).await.unwrap();
    let back = next_json(&mut new).await;
    assert_eq!(back["type"], "reconnected");
    assert_eq!(back["resumed"], true);
    assert_eq!(
        next_close(&mut old).await,
        (1000, "Client reconnecting".to_owned())
    );
    // Recorded once, as replaced, and live events now go to the new socket.
    assert_eq!(events_of(&url, job, "replaced").await.len(), 1);
    let seq = progress_at(&reqwest::Client::new(), a.addr, job, 40.0).await;
    assert_eq!(next_json(&mut new).await["seq"], seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: REJOIN_TEST_POSTGRES_URL (.ci/run sets it)"]
async fn a_grace_window_expires_once_whichever_node_gets_there_on_postgres() {
    let Some((url, a, b)) = cluster().await else {
        panic!("this test needs PostgreSQL: set REJOIN_TEST_POSTGRES_URL");
    };
    let mut jobs = Vec::new();
    for _ in 0..5 {
        let job = create_job_at(&reqwest::Client::new(), a.addr).await;
        let mut ws = ws_connect(b.addr, &query(job)).await.unwrap();
        next_json(&mut ws).await;
        ws.close(None).await.unwrap();
        jobs.push(job);
    }
    // Both nodes hold each deadline (1 s); each window expires exactly once.
    for job in &jobs {
        expired(&url, *job).await;
    }
    // Once both nodes hold every session as ended, neither scheduler can
    // record another expiry (decide refuses an ended session): then count.
    for job in &jobs {
        for node in [&a, &b] {
            wait_for_session(node.addr, *job, "ended").await;
        }
    }
    for job in jobs {
        assert_eq!(
            events_of(&url, job, "grace_expired").await.len(),
            1,
            "job {job}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: REJOIN_TEST_POSTGRES_URL (.ci/run sets it)"]
async fn a_killed_nodes_sessions_are_recorded_and_expired_by_the_other_once_on_postgres() {
    let Some((url, mut a, b)) = cluster().await else {
        panic!("this test needs PostgreSQL: set REJOIN_TEST_POSTGRES_URL");
    };
    let mut held = Vec::new();
    let mut jobs = Vec::new();
    for _ in 0..3 {
        let job = create_job_at(&reqwest::Client::new(), b.addr).await;
        let mut ws = ws_connect(a.addr, &query(job)).await.unwrap();
        let hello = next_json(&mut ws).await;
        jobs.push((job, hello["sessionId"].as_str().unwrap().to_owned()));
        held.push(ws);
    }
    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();

    // A's lease (2 s) runs out; B records each session as closed by a lost
    // server (1012), then expires its grace window (1 s).
    for (job, session) in &jobs {
        expired(&url, *job).await;
        let closes = events_of(&url, *job, "disconnected").await;
        assert_eq!(closes.len(), 1, "job {job}: {closes:?}");
        assert_eq!(closes[0].payload["code"], 1012);
        assert_eq!(closes[0].session_id.as_deref(), Some(session.as_str()));
    }
    // A node started afterwards finds nothing left to record: counted after
    // its lease keeper has looked twice.
    let c = node(&url).await;
    let http = reqwest::Client::new();
    common::eventually("C's lease keeper to look twice", || async {
        (common::metric_at(&http, c.addr, "rejoin_lease_checks_total ").await >= 2.0).then_some(())
    })
    .await;
    for (job, _) in &jobs {
        assert_eq!(events_of(&url, *job, "disconnected").await.len(), 1);
        assert_eq!(events_of(&url, *job, "grace_expired").await.len(), 1);
    }
    drop((held, b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: REJOIN_TEST_POSTGRES_URL (.ci/run sets it)"]
async fn a_node_that_joins_starts_from_a_checkpoint_and_the_tail_on_postgres() {
    let Some((url, a, mut b)) = cluster().await else {
        panic!("this test needs PostgreSQL: set REJOIN_TEST_POSTGRES_URL");
    };
    let http = reqwest::Client::new();
    let running = create_job_at(&http, a.addr).await;
    progress_at(&http, a.addr, running, 10.0).await;
    let finished = create_job_at(&http, b.addr).await;
    let res = http
        .post(format!("http://{}/v1/jobs/{finished}/events", b.addr))
        .bearer_auth(token_for("service", None))
        .json(&serde_json::json!({"type": "completed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    // B's graceful stop writes a checkpoint of the shared log's live state.
    common::terminate(&mut b.child).await;
    let tail = [
        progress_at(&http, a.addr, running, 20.0).await,
        progress_at(&http, a.addr, running, 30.0).await,
    ];

    let c = node(&url).await;
    let position = common::metric_at(&http, c.addr, "rejoin_checkpoint_position ").await;
    assert!(position > 0.0, "C started from a checkpoint");
    let folded = common::metric_at(&http, c.addr, "rejoin_startup_events_folded ").await;
    assert!(
        folded >= 2.0,
        "C folded the tail after it ({folded} events)"
    );
    assert!(folded < 8.0, "and only the tail ({folded} events)");
    let service = token_for("service", None);
    let state = |job: Uuid| {
        let (http, service) = (http.clone(), service.clone());
        let path = format!("/v1/jobs/{job}");
        async move { common::get_json_at(&http, c.addr, &path, Some(&service)).await }
    };
    assert_eq!(state(running).await["lastSeq"], tail[1]);
    assert_eq!(state(finished).await["status"], "completed");
    // And it follows the log from there: A's next event reaches C's client.
    let mut ws = ws_connect(c.addr, &query(running)).await.unwrap();
    assert_eq!(next_json(&mut ws).await["lastSeq"], tail[1]);
    let seq = progress_at(&http, a.addr, running, 40.0).await;
    assert_eq!(next_json(&mut ws).await["seq"], seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: REJOIN_TEST_POSTGRES_URL (.ci/run sets it)"]
async fn watchers_of_one_job_on_both_nodes_receive_every_event_and_keep_their_sessions_on_postgres()
{
    let Some((_, a, b)) = cluster().await else {
        panic!("this test needs PostgreSQL: set REJOIN_TEST_POSTGRES_URL");
    };
    let http = reqwest::Client::new();
    let job = create_job_at(&http, a.addr).await;
    let mut on_a = ws_connect(a.addr, &query(job)).await.unwrap();
    let hello_a = next_json(&mut on_a).await;
    let mut on_b = ws_connect(b.addr, &query(job)).await.unwrap();
    let hello_b = next_json(&mut on_b).await;
    assert_ne!(hello_a["sessionId"], hello_b["sessionId"]);
    for (p, via) in [(10.0, a.addr), (20.0, b.addr), (30.0, a.addr)] {
        let seq = progress_at(&http, via, job, p).await;
        assert_eq!(next_json(&mut on_a).await["seq"], seq);
        assert_eq!(next_json(&mut on_b).await["seq"], seq);
    }
    // The watcher on A takes its own session over on B (a half-open socket
    // left on A): only A's socket of that session closes; B's other watcher
    // stays.
    let resume = format!(
        "{}&reconnect=true&sessionId={}&lastSeq=0&epoch={}",
        query(job),
        hello_a["sessionId"].as_str().unwrap(),
        hello_a["epoch"].as_str().unwrap()
    );
    let mut moved = ws_connect(b.addr, &resume).await.unwrap();
    let hello = next_json(&mut moved).await;
    assert_eq!(hello["resumed"], true);
    assert_eq!(hello["sessionId"], hello_a["sessionId"]);
    assert_eq!(
        next_close(&mut on_a).await,
        (1000, "Client reconnecting".to_owned())
    );
    for _ in 0..3 {
        next_json(&mut moved).await; // the replay from lastSeq 0
    }
    let seq = progress_at(&http, a.addr, job, 40.0).await;
    assert_eq!(next_json(&mut moved).await["seq"], seq);
    assert_eq!(next_json(&mut on_b).await["seq"], seq);
}
