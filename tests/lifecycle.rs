//! Job lifecycle deadlines: a job that goes quiet stalls (once per quiet
//! spell) and a job that runs too long times out, both decided from the log
//! by the same scheduler as grace windows: on time, once, after a SIGKILL and
//! with two nodes on one PostgreSQL log. In-process servers run on a clock
//! the test moves (windows of a minute or an hour pass at once); a server
//! process restarted after its deadlines is started with its clock ahead.

use crate::common;

use std::sync::Arc;

use common::{
    create_job_from, events_of, next_close, next_json, serve_binary, spawn_app, spawn_on_clock,
    spawn_with, token_for, ws_connect,
};
use rejoin::clock::{Clock, ManualClock};
use serde_json::{json, Value};
use uuid::Uuid;

async fn job_state(http: &reqwest::Client, addr: std::net::SocketAddr, job: Uuid) -> Value {
    common::get_json_at(
        http,
        addr,
        &format!("/v1/jobs/{job}"),
        Some(&token_for("service", None)),
    )
    .await
}

/// Polls the log until `job` has at least one event of `kind`.
async fn wait_for_kind(url: &str, job: Uuid, kind: &str) -> Vec<common::LoggedEvent> {
    common::eventually(&format!("a `{kind}` in the log"), || async {
        Some(events_of(url, job, kind).await).filter(|found| !found.is_empty())
    })
    .await
}

#[tokio::test]
async fn a_quiet_job_stalls_once_its_watchers_hear_it_and_the_next_event_clears_it() {
    let clock = Arc::new(ManualClock::starting_now());
    let app = spawn_on_clock(&[], clock.clone()).await;
    let job = create_job_from(&app.http, app.addr, &json!({"stallAfterSecs": 60})).await;
    let mut ws = app.ws_client(job).await;
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    let last = app.progress(job, 40.0).await;
    let progress = next_json(&mut ws).await;
    assert_eq!(progress["seq"], last);

    // Just short of the window, nothing; at it, the stall.
    clock.advance(chrono::Duration::seconds(59));
    app.engine.deadlines_decided_through(clock.now()).await;
    assert!(app.events_of(job, "stalled").await.is_empty());
    clock.advance(chrono::Duration::seconds(1));
    let stalled = next_json(&mut ws).await;
    assert_eq!(stalled["type"], "stalled");
    assert_eq!(stalled["seq"], last + 1);
    assert_eq!(stalled["since"], progress["at"]);
    let since: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(stalled["since"].clone()).unwrap();
    let at: chrono::DateTime<chrono::Utc> = serde_json::from_value(stalled["at"].clone()).unwrap();
    assert_eq!(at - since, chrono::Duration::seconds(60), "{stalled}");
    let state = app.get_job(job).await;
    assert_eq!(state["stalled"], true);
    assert_eq!(state["stalledSince"], progress["at"]);

    // The stall does not restart its own clock: more windows pass with no
    // second `stalled`.
    clock.advance(chrono::Duration::seconds(180));
    app.engine.deadlines_decided_through(clock.now()).await;
    assert_eq!(app.events_of(job, "stalled").await.len(), 1);

    // The next job event clears it, and a new quiet spell stalls again.
    let next = app.progress(job, 50.0).await;
    assert_eq!(next_json(&mut ws).await["seq"], next);
    let state = app.get_job(job).await;
    assert_eq!(state["stalled"], false);
    assert!(state.get("stalledSince").is_none());
    clock.advance(chrono::Duration::seconds(60));
    let again = next_json(&mut ws).await;
    assert_eq!(again["type"], "stalled");
    assert_eq!(app.events_of(job, "stalled").await.len(), 2);
}

#[tokio::test]
async fn a_job_that_runs_past_its_timeout_fails_once_and_refuses_later_events() {
    let clock = Arc::new(ManualClock::starting_now());
    let app = spawn_on_clock(&[], clock.clone()).await;
    let job = create_job_from(&app.http, app.addr, &json!({"timeoutSecs": 3600})).await;
    let mut ws = app.ws_client(job).await;
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    app.progress(job, 10.0).await;
    next_json(&mut ws).await;

    // Job events do not move the timeout: it counts from the creation.
    clock.advance(chrono::Duration::seconds(3599));
    app.progress(job, 20.0).await;
    next_json(&mut ws).await;
    clock.advance(chrono::Duration::seconds(1));
    let failed = next_json(&mut ws).await;
    assert_eq!(failed["type"], "failed");
    assert_eq!(failed["error"]["code"], "timeout");
    assert_eq!(next_close(&mut ws).await, (1000, "job finished".to_owned()));
    let late = app
        .post_event(job, json!({"type": "progress", "progress": 90.0}))
        .await;
    assert_eq!(late.status(), 409);
    let body: Value = late.json().await.unwrap();
    assert_eq!(body["error"]["code"], "job_finished");
    clock.advance(chrono::Duration::seconds(7200));
    app.engine.deadlines_decided_through(clock.now()).await;
    assert_eq!(app.events_of(job, "failed").await.len(), 1);
    let state = app.get_job(job).await;
    assert_eq!(state["status"], "failed");
    assert_eq!(state["timeoutSecs"], 3600);
}

#[tokio::test]
async fn the_servers_default_windows_apply_to_jobs_created_without_their_own() {
    let app = spawn_with(&["--stall-after-secs", "1", "--job-timeout-secs", "3600"]).await;
    let job = app.create_job().await;
    let state = app.get_job(job).await;
    assert_eq!(state["stallAfterSecs"], 1);
    assert_eq!(state["timeoutSecs"], 3600);
    // 0 turns a default off for one job.
    let off = create_job_from(&app.http, app.addr, &json!({"stallAfterSecs": 0})).await;
    assert!(app.get_job(off).await.get("stallAfterSecs").is_none());
    app.wait_for_job(job, "the stall", |s| s["stalled"] == true)
        .await;
}

#[tokio::test]
async fn windows_out_of_range_are_refused_and_create_nothing() {
    let app = spawn_app().await;
    let before = app.count_events().await;
    for body in [
        json!({"stallAfterSecs": 999_999_999}),
        json!({"timeoutSecs": -1}),
        json!({"timeoutSecs": "soon"}),
    ] {
        let res = app.post_as("/v1/jobs", &app.service(), &body).await;
        assert_eq!(res.status(), 400, "{body}");
    }
    assert_eq!(app.count_events().await, before);
}

#[tokio::test]
async fn deadlines_that_passed_while_the_server_was_down_fire_once_at_its_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::fresh_database(dir.path()).await;
    let (mut first, addr) = serve_binary(&url, &[]).await;
    let http = reqwest::Client::new();
    let stalls = create_job_from(&http, addr, &json!({"stallAfterSecs": 1})).await;
    let times_out = create_job_from(&http, addr, &json!({"timeoutSecs": 1})).await;
    first.kill().await.unwrap(); // SIGKILL, before either deadline

    // Both deadlines pass while nothing runs: the next start finds its
    // clock (set 5 s ahead) past them.
    let (_second, addr) = serve_binary(&url, &["--clock-skew-ms", "5000"]).await;
    wait_for_kind(&url, stalls, "stalled").await;
    wait_for_kind(&url, times_out, "failed").await;
    assert_eq!(job_state(&http, addr, stalls).await["stalled"], true);
    let failed = job_state(&http, addr, times_out).await;
    assert_eq!(failed["error"]["code"], "timeout");
    assert_eq!(events_of(&url, stalls, "stalled").await.len(), 1);
    assert_eq!(events_of(&url, times_out, "failed").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: REJOIN_TEST_POSTGRES_URL (.ci/run sets it)"]
async fn two_nodes_on_one_log_fire_each_deadline_once_on_postgres() {
    let (url, nodes) = common::spawn_nodes(2, &[]).await;
    let (a, b) = (nodes[0].1, nodes[1].1);
    let http = reqwest::Client::new();
    let job = create_job_from(&http, a, &json!({"stallAfterSecs": 1, "timeoutSecs": 2})).await;
    let mut ws = ws_connect(
        b,
        &format!("jobId={job}&token={}", token_for("client", Some(job))),
    )
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    assert_eq!(next_json(&mut ws).await["type"], "stalled");
    let failed = next_json(&mut ws).await;
    assert_eq!(failed["error"]["code"], "timeout");
    assert_eq!(next_close(&mut ws).await.0, 1000);
    assert_eq!(events_of(&url, job, "stalled").await.len(), 1);
    assert_eq!(events_of(&url, job, "failed").await.len(), 1);
}
