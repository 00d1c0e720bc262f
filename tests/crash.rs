//! A server killed with SIGKILL while clients are connected: after a restart
//! the log shows their sockets closed with 1012 `server restart`, a client
//! resumes its session, and a grace window still expires on time.

use crate::common;

use std::net::SocketAddr;

use common::{
    create_job_at, events_of, next_json, progress_at, serve_binary, token_for, ws_connect,
};
use serde_json::Value;
use tokio::process::Child;
use uuid::Uuid;

/// Starts `rejoin serve` on port 0 and waits for the address it prints.
async fn start(db: &std::path::Path, grace: &str) -> (Child, SocketAddr) {
    serve_binary(
        &format!("sqlite://{}", db.display()),
        &["--grace-secs", grace],
    )
    .await
}

async fn job_state(http: &reqwest::Client, addr: SocketAddr, job: Uuid) -> Value {
    http.get(format!("http://{addr}/v1/jobs/{job}"))
        .bearer_auth(token_for("support", None))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn after_sigkill_sessions_are_recorded_as_server_restart_and_resume_or_expire_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rejoin.db");
    let url = format!("sqlite://{}", db.display());
    let http = reqwest::Client::new();
    let (mut first, addr) = start(&db, "2").await;

    let resuming = create_job_at(&http, addr).await;
    let abandoned = create_job_at(&http, addr).await;
    let mut ws = ws_connect(
        addr,
        &format!(
            "jobId={resuming}&token={}",
            token_for("client", Some(resuming))
        ),
    )
    .await
    .unwrap();
    let hello = next_json(&mut ws).await;
    let session = hello["sessionId"].clone();
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    let mut other = ws_connect(
        addr,
        &format!(
            "jobId={abandoned}&token={}",
            token_for("client", Some(abandoned))
        ),
    )
    .await
    .unwrap();
    next_json(&mut other).await;
    progress_at(&http, addr, resuming, 40.0).await;
    let last = next_json(&mut ws).await["seq"].as_i64().unwrap();

    first.start_kill().unwrap();
    first.wait().await.unwrap();
    drop((ws, other));

    let (mut second, addr) = start(&db, "2").await;
    for job in [resuming, abandoned] {
        let d = events_of(&url, job, "disconnected").await;
        assert_eq!(d.len(), 1, "one disconnect for {job}");
        assert_eq!(d[0].payload["code"], 1012);
        assert_eq!(d[0].payload["reason"], "server restart");
    }
    let missed = progress_at(&http, addr, resuming, 50.0).await;

    // The client comes back to the new process and resumes its session.
    let query = format!(
        "jobId={resuming}&token={}&reconnect=true&lastSeq={last}&epoch={epoch}",
        token_for("client", Some(resuming))
    );
    let mut ws = ws_connect(addr, &query).await.unwrap();
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "reconnected");
    assert_eq!(hello["resumed"], true);
    assert_eq!(hello["sessionId"], session);
    assert_eq!(hello["missed"], 1);
    assert_eq!(next_json(&mut ws).await["seq"], missed);

    // The other session's window, opened by the restart, expires on time.
    common::eventually("the grace window to expire", || async {
        (job_state(&http, addr, abandoned).await["session"]["state"] == "ended").then_some(())
    })
    .await;
    let until: chrono::DateTime<chrono::Utc> = events_of(&url, abandoned, "disconnected").await[0]
        .payload["graceUntil"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let expired = events_of(&url, abandoned, "grace_expired").await;
    assert_eq!(expired.len(), 1);
    let late = expired[0].at - until;
    assert!(late >= chrono::Duration::zero(), "expired {late} early");
    assert!(
        late < chrono::Duration::milliseconds(1500),
        "expired {late} late"
    );
    assert!(events_of(&url, resuming, "grace_expired").await.is_empty());

    let pid = second.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(second.wait().await.unwrap().success());
}
