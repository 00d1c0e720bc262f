//! A scripted job history, built through the real WebSocket and HTTP paths: a
//! connect, an abrupt drop, a reconnect with missed events, a replaced socket,
//! a rejected token, a grace expiry, and a second session closed by the client.

use futures_util::SinkExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::{next_json, refused_status, TestApp};
use rejoin::auth::Role;

pub struct Story {
    pub job: Uuid,
    pub first_session: String,
    pub second_session: String,
}

/// Needs a server with a short grace window (`--grace-secs 0.3`).
pub async fn build(app: &TestApp) -> Story {
    let job = app.create_job().await;
    let client = app.token(Role::Client, Some(job));

    // Session 1: connect, see one event, drop abruptly.
    let mut a = app.ws_client(job).await;
    let hello = next_json(&mut a).await;
    let first_session = hello["sessionId"].as_str().unwrap().to_owned();
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    app.progress(job, 10.0).await;
    let last = next_json(&mut a).await["seq"].as_i64().unwrap();
    drop(a);
    app.wait_for_job(job, "the drop", |s| s["session"]["state"] == "grace")
        .await;

    // Two events while away; the client resumes and gets both.
    app.progress(job, 20.0).await;
    app.progress(job, 30.0).await;
    let resume = format!("jobId={job}&token={client}&reconnect=true&lastSeq={last}&epoch={epoch}");
    let mut b = app.ws(&resume).await.unwrap();
    let hello: Value = next_json(&mut b).await;
    assert_eq!(
        (hello["resumed"].as_bool(), hello["missed"].as_u64()),
        (Some(true), Some(2))
    );
    next_json(&mut b).await;
    let last = next_json(&mut b).await["seq"].as_i64().unwrap();

    // Another connection of the same client takes over: b is replaced.
    let resume = format!("jobId={job}&token={client}&reconnect=true&lastSeq={last}&epoch={epoch}");
    let mut c = app.ws(&resume).await.unwrap();
    next_json(&mut c).await;
    assert_eq!(super::next_close(&mut b).await.0, 1000);

    // Someone tries with a bad token.
    let bad = format!("jobId={job}&token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl");
    assert_eq!(refused_status(app.ws(&bad).await), 401);

    // The phone vanishes for good: the window expires.
    drop(c);
    app.wait_for_job(job, "the grace expiry", |s| {
        s["session"]["state"] == "ended"
    })
    .await;

    // Later, a fresh connect: a new session, closed by the client.
    let mut d = app.ws_client(job).await;
    let hello = next_json(&mut d).await;
    let second_session = hello["sessionId"].as_str().unwrap().to_owned();
    d.send(Message::Close(Some(CloseFrame {
        code: 1000.into(),
        reason: "user left the screen".into(),
    })))
    .await
    .unwrap();
    app.wait_for_job(job, "the client's close", |s| {
        s["session"]["state"] == "grace" && s["session"]["sessionId"] == second_session.as_str()
    })
    .await;
    Story {
        job,
        first_session,
        second_session,
    }
}
