//! One owner per log: a second `rejoin serve` on a SQLite log refuses to
//! start and names the process holding it; a SIGKILL leaves no stale lock;
//! the read-only commands work beside a running server; and a log changed
//! behind the server's back is caught up from, not fought with.

use crate::common;

use std::time::{Duration, Instant};

use common::{create_job_at, next_json, progress_at, serve_binary, spawn_app, BIN};
use rejoin::domain::event::ProgressReported;
use rejoin::domain::{Event, EventBody};
use serde_json::Value;

fn sqlite_url(dir: &std::path::Path) -> String {
    format!("sqlite://{}", dir.join("rejoin.db").display())
}

#[tokio::test]
async fn a_second_serve_on_the_same_log_refuses_and_names_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let (mut first, addr) = serve_binary(&url, &[]).await;
    let http = reqwest::Client::new();
    let job = create_job_at(&http, addr).await;
    progress_at(&http, addr, job, 32.0).await;

    let started = Instant::now();
    let second = tokio::process::Command::new(BIN)
        .args(common::serve_args("127.0.0.1:0", &url, common::SECRET, &[]))
        .output()
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(!second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    let holder = format!("pid {}", first.id().unwrap());
    assert!(said.contains(&holder), "names the holder: {said}");
    assert!(said.contains("rejoin.db"), "names the log: {said}");
    assert!(second.stdout.is_empty(), "never announced an address");
    eprintln!("the second serve stopped after {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // The read-only commands work beside the running server.
    let history = tokio::process::Command::new(BIN)
        .args([
            "history",
            &job.to_string(),
            "--json",
            "--database-url",
            &url,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        history.status.success(),
        "{}",
        String::from_utf8_lossy(&history.stderr)
    );
    let history: Value = serde_json::from_slice(&history.stdout).unwrap();
    assert!(history.get("sessions").is_some(), "{history}");

    // The first server was untouched: its appends still work.
    progress_at(&http, addr, job, 40.0).await;

    // A SIGKILL leaves no lock behind: the next start is at once.
    first.kill().await.unwrap();
    let (_third, addr) = serve_binary(&url, &[]).await;
    let state = common::get_json_at(
        &http,
        addr,
        &format!("/v1/jobs/{job}"),
        Some(&common::token_for("service", None)),
    )
    .await;
    assert_eq!(state["progress"], 40.0, "{state}");
}

#[tokio::test]
async fn appends_keep_working_after_the_log_changed_behind_the_servers_back() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    let mut ws = app.ws_client(job).await;
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    let first = app.progress(job, 10.0).await;
    assert_eq!(next_json(&mut ws).await["seq"], first);

    // Another connection to the log appends an event the server never saw.
    let store = rejoin::log::open(&app.db_url()).await.unwrap();
    let mut state = rejoin::engine::jobs::load_job(store.events.as_ref(), job)
        .await
        .unwrap();
    let mut event = Event::new(
        job,
        None,
        chrono::Utc::now(),
        EventBody::ProgressReported(ProgressReported {
            progress: 20.0,
            message: Some("written elsewhere".into()),
            data: None,
        }),
    );
    let row = rejoin::log::chain::seal(&mut state, &mut event);
    store.events.append(&[row]).await.unwrap();

    // The server's next append finds the seq taken, catches up, and goes on.
    let next = app.progress(job, 30.0).await;
    assert_eq!(next, event.seq + 1, "decided again after the log's event");
    let behind = next_json(&mut ws).await;
    assert_eq!(
        behind["seq"], event.seq,
        "the watcher gets the event it missed"
    );
    assert_eq!(behind["message"], "written elsewhere");
    assert_eq!(next_json(&mut ws).await["seq"], next);
    let state = app.get_job(job).await;
    assert_eq!(
        (state["lastSeq"].as_i64(), state["progress"].as_f64()),
        (Some(next), Some(30.0))
    );
    let report = rejoin::log::verify::verify(store.events.as_ref())
        .await
        .unwrap();
    assert!(report.first_broken.is_none(), "the chain holds: {report:?}");
    store.events.close().await;
}
