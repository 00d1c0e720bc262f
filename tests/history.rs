//! The connection history, over HTTP and from `rejoin history`, tells exactly
//! the story a scripted client lived through.

use crate::common;

use common::{spawn_with, story};
use rejoin::auth::Role;
use serde_json::Value;

fn kinds(session: &Value) -> Vec<&str> {
    session["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect()
}

/// The parts of a history that do not depend on when it is read.
fn stable(h: &Value) -> Value {
    let mut h = h.clone();
    for s in h["sessions"].as_array_mut().unwrap() {
        s.as_object_mut().unwrap().remove("connectedMs");
        s.as_object_mut().unwrap().remove("disconnectedMs");
    }
    h["totals"].as_object_mut().unwrap().remove("connectedMs");
    h["totals"]
        .as_object_mut()
        .unwrap()
        .remove("disconnectedMs");
    serde_json::json!({"sessions": h["sessions"], "rejected": h["rejected"], "totals": h["totals"]})
}

#[tokio::test]
async fn the_history_tells_the_story_over_http_and_from_the_cli() {
    let app = spawn_with(&["--grace-secs", "0.3"]).await;
    let story = story::build(&app).await;
    let job = story.job;

    let res = app
        .get_as(
            &format!("/v1/jobs/{job}/history"),
            &app.token(Role::Support, None),
        )
        .await;
    assert_eq!(res.status(), 200);
    let h: Value = res.json().await.unwrap();
    assert_eq!(h["totalSessions"], 2);
    let sessions = h["sessions"].as_array().unwrap();
    let (first, second) = (&sessions[0], &sessions[1]);

    assert_eq!(first["sessionId"], story.first_session.as_str());
    assert_eq!(
        kinds(first),
        [
            "connected",
            "disconnected",
            "reconnected",
            "replaced",
            "reconnected",
            "disconnected",
            "grace_expired"
        ]
    );
    let ev = |i: usize| &first["events"][i]["details"];
    assert_eq!(ev(1)["code"], 1006);
    assert_eq!(ev(1)["reason"], "connection lost");
    assert_eq!(ev(2)["resumed"], true);
    assert_eq!(ev(2)["missed"], 2);
    assert!(ev(2)["gapMs"].as_i64().unwrap() >= 0);
    assert_eq!(ev(3)["reason"], "Client reconnecting");
    assert_eq!(ev(4)["missed"], 0);
    assert_eq!(first["state"], "ended");
    assert_eq!(first["endReason"], "grace_expired");
    assert_eq!(first["sockets"], 3);
    assert_eq!(first["resumes"], 2);
    assert_eq!(first["replayed"], 2);
    assert!(first["disconnectedMs"].as_i64().unwrap() >= 300, "{first}");

    assert_eq!(second["sessionId"], story.second_session.as_str());
    assert_eq!(kinds(second), ["connected", "disconnected"]);
    assert_eq!(second["events"][1]["details"]["code"], 1000);
    assert_eq!(
        second["events"][1]["details"]["reason"],
        "user left the screen"
    );
    assert_eq!(second["state"], "grace");

    let rejected = h["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["details"]["status"], 401);
    assert_eq!(rejected[0]["details"]["code"], "invalid_token");

    let t = &h["totals"];
    assert_eq!(
        (
            t["sessions"].as_u64(),
            t["connects"].as_u64(),
            t["reconnects"].as_u64(),
            t["resumed"].as_u64()
        ),
        (Some(2), Some(2), Some(2), Some(2))
    );
    assert_eq!(
        (
            t["disconnects"].as_u64(),
            t["replaced"].as_u64(),
            t["rejected"].as_u64(),
            t["graceExpiries"].as_u64()
        ),
        (Some(3), Some(1), Some(1), Some(1))
    );
    assert_eq!(t["replayed"], 2);

    // Events in each session are in seq order.
    for s in sessions {
        let seqs: Vec<i64> = s["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_i64().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    }

    // Paging by session.
    let support = app.token(Role::Support, None);
    let page = app
        .get_json(
            &format!("/v1/jobs/{job}/history?offset=1&limit=1"),
            Some(&support),
        )
        .await;
    assert_eq!(page["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(
        page["sessions"][0]["sessionId"],
        story.second_session.as_str()
    );
    assert!(page.get("nextOffset").is_none());

    // Roles: analytics and clients may not read it.
    for token in [
        app.token(Role::Analytics, None),
        app.token(Role::Client, Some(job)),
    ] {
        let res = app.get_as(&format!("/v1/jobs/{job}/history"), &token).await;
        assert_eq!(res.status(), 403);
    }

    // The CLI reads the database directly and tells the same story.
    let cli = |json: bool| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rejoin"));
        cmd.args(["history", &job.to_string(), "--database-url", &app.db_url()]);
        if json {
            cmd.arg("--json");
        }
        cmd.output()
    };
    let out = cli(true).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from_cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stable(&from_cli), stable(&h));

    let out = cli(false).await.unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for expected in [
        "sessions 2 | connects 2 | reconnects 2 (2 resumed) | disconnects 3",
        "closed 1006 connection lost",
        "resumed the session",
        "replayed 2 missed events",
        "socket closed 1000 Client reconnecting: another connection took over",
        "grace expired",
        "closed 1000 user left the screen",
        "refused 401 invalid_token",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
