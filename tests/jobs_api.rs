//! The job API against a real server: creation, appends, idempotency, terminal
//! events, malformed input, state folded from the log, restarts.

use crate::common;

use common::{spawn_app, spawn_with};
use rejoin::auth::Role;
use rejoin::domain::World;
use serde_json::{json, Value};
use uuid::Uuid;

#[tokio::test]
async fn creating_a_job_answers_201_then_200_for_the_same_id() {
    let app = spawn_app().await;
    let job = Uuid::new_v4();
    let body = json!({"jobId": job, "metadata": {"shelf": 3}, "clientTokenTtlSecs": 120});
    let first = app.post_as("/v1/jobs", &app.service(), &body).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["jobId"], job.to_string());
    assert!(first["websocketUrl"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/ws/progress?jobId={job}")));
    // The client token is for this job and verifies against the server.
    let token = first["clientToken"].as_str().unwrap();
    let state = app.get_as(&format!("/v1/jobs/{job}"), token).await;
    assert_eq!(state.status(), 200);

    let again = app.post_as("/v1/jobs", &app.service(), &body).await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["jobId"], job.to_string());
    assert_eq!(app.count_events().await, 1, "re-creation appends nothing");

    let state = app.get_job(job).await;
    assert_eq!(state["status"], "pending");
    assert_eq!(state["metadata"], json!({"shelf": 3}));
    assert_eq!(state["lastSeq"], 0);
}

#[tokio::test]
async fn appends_get_increasing_seqs_and_the_state_is_the_fold_of_the_log() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    let mut seqs = Vec::new();
    for p in [10.0, 25.5, 40.0] {
        seqs.push(app.progress(job, p).await);
    }
    let res = app
        .post_event(
            job,
            json!({"type": "progress", "progress": 45, "message": "Processing book 9 of 20", "data": {"book": 9}}),
        )
        .await;
    assert_eq!(res.status(), 201);
    seqs.push(res.json::<Value>().await.unwrap()["seq"].as_i64().unwrap());
    let res = app
        .post_event(
            job,
            json!({"type": "message", "name": "book_found", "data": {"isbn": "978-0"}}),
        )
        .await;
    seqs.push(res.json::<Value>().await.unwrap()["seq"].as_i64().unwrap());
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0]),
        "seqs increase: {seqs:?}"
    );

    let state = app.get_job(job).await;
    assert_eq!(state["status"], "running");
    assert_eq!(state["progress"], 45.0);
    assert_eq!(state["message"], "Processing book 9 of 20");
    assert_eq!(state["lastSeq"], *seqs.last().unwrap());

    // Fold the database file independently and compare.
    let store = rejoin::log::open(&app.db_url()).await.unwrap();
    let mut world = World::default();
    rejoin::log::for_each_event(store.events.as_ref(), 0, |_, e| {
        world.apply(&e);
        Ok(())
    })
    .await
    .unwrap();
    let folded = &world.jobs[&job];
    assert_eq!(state["lastSeq"], folded.last_seq);
    assert_eq!(state["progress"], folded.progress);
    assert_eq!(state["message"], folded.message.clone().unwrap());
    assert_eq!(state["status"], folded.status.as_str());
    assert_eq!(state["headSeq"], folded.head_seq);
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_appends_nothing() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    let send = |key: &'static str, progress: f64| {
        app.http
            .post(app.url(&format!("/v1/jobs/{job}/events")))
            .bearer_auth(app.service())
            .header("Idempotency-Key", key)
            .json(&json!({"type": "progress", "progress": progress}))
            .send()
    };
    let first = send("scan-42-step-3", 30.0).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let before = app.count_events().await;

    let retry = send("scan-42-step-3", 30.0).await.unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.json::<Value>().await.unwrap(), first);
    assert_eq!(app.count_events().await, before);

    // The same key for a different event is a conflict, not a silent retry.
    let reused = send("scan-42-step-3", 31.0).await.unwrap();
    assert_eq!(reused.status(), 409);
    let body: Value = reused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    assert_eq!(app.count_events().await, before);

    // Keys survive a restart: they are read back from the log.
    let app = app.restart().await;
    let retry = app
        .http
        .post(app.url(&format!("/v1/jobs/{job}/events")))
        .bearer_auth(app.service())
        .header("Idempotency-Key", "scan-42-step-3")
        .json(&json!({"type": "progress", "progress": 30.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.json::<Value>().await.unwrap(), first);
    assert_eq!(app.count_events().await, before);
}

#[tokio::test]
async fn nothing_is_appended_after_a_terminal_event() {
    for terminal in [
        json!({"type": "completed", "result": {"books": 20}}),
        json!({"type": "failed", "error": {"code": "AI_TIMEOUT", "message": "model timed out"}}),
        json!({"type": "cancelled", "reason": "user cancelled"}),
    ] {
        let app = spawn_app().await;
        let job = app.create_job().await;
        app.progress(job, 50.0).await;
        let res = app.post_event(job, terminal.clone()).await;
        assert_eq!(res.status(), 201);
        let before = app.count_events().await;
        for next in [
            json!({"type": "progress", "progress": 60}),
            terminal.clone(),
        ] {
            let res = app.post_event(job, next).await;
            assert_eq!(res.status(), 409);
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["error"]["code"], "job_finished");
        }
        assert_eq!(app.count_events().await, before);
        let state = app.get_job(job).await;
        assert_eq!(state["status"], terminal["type"]);
    }
}

#[tokio::test]
async fn malformed_bodies_get_400_and_append_nothing() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    let before = app.count_events().await;
    let cases: &[(&str, &str)] = &[
        ("not json", "invalid_json"),
        ("[1, 2", "invalid_json"),
        ("{}", "invalid_json"),
        (r#"{"type": "teleport"}"#, "invalid_json"),
        (r#"{"type": "progress"}"#, "invalid_json"),
        (
            r#"{"type": "progress", "progress": "half"}"#,
            "invalid_json",
        ),
        (r#"{"type": "progress", "progress": 101}"#, "invalid_event"),
        (r#"{"type": "progress", "progress": -3}"#, "invalid_event"),
        (
            r#"{"type": "progress", "progress": 5, "colour": "red"}"#,
            "invalid_json",
        ),
        (r#"{"type": "message"}"#, "invalid_json"),
        (r#"{"type": "message", "name": " "}"#, "invalid_event"),
        (r#"{"type": "failed"}"#, "invalid_json"),
        (
            r#"{"type": "failed", "error": {"code": "X"}}"#,
            "invalid_json",
        ),
    ];
    for (body, code) in cases {
        let res = app
            .http
            .post(app.url(&format!("/v1/jobs/{job}/events")))
            .bearer_auth(app.service())
            .header("content-type", "application/json")
            .body(*body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "body {body}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["code"], *code, "body {body}: {err}");
        assert!(!err["error"]["message"].as_str().unwrap().is_empty());
    }

    // A bad job id, a bad idempotency key, a wrong content type.
    let res = app
        .post_as(
            "/v1/jobs/not-a-uuid/events",
            &app.service(),
            &json!({"type": "progress", "progress": 1}),
        )
        .await;
    assert_eq!(res.status(), 400);
    let res = app
        .http
        .post(app.url(&format!("/v1/jobs/{job}/events")))
        .bearer_auth(app.service())
        .header("Idempotency-Key", "has spaces in it")
        .json(&json!({"type": "progress", "progress": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = app
        .http
        .post(app.url(&format!("/v1/jobs/{job}/events")))
        .bearer_auth(app.service())
        .header("content-type", "text/plain")
        .body(r#"{"type": "progress", "progress": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);

    // Unknown jobs are 404, and create refuses unknown fields.
    let res = app
        .post_event(Uuid::new_v4(), json!({"type": "progress", "progress": 1}))
        .await;
    assert_eq!(res.status(), 404);
    let res = app
        .post_as("/v1/jobs", &app.service(), &json!({"jobId": "nope"}))
        .await;
    assert_eq!(res.status(), 400);
    let res = app
        .post_as(
            "/v1/jobs",
            &app.service(),
            &json!({"clientTokenTtlSecs": 0}),
        )
        .await;
    assert_eq!(res.status(), 400);

    assert_eq!(app.count_events().await, before);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let app = spawn_with(&["--max-body-bytes", "1024"]).await;
    let job = app.create_job().await;
    let before = app.count_events().await;
    let big = json!({"type": "progress", "progress": 1, "data": {"blob": "x".repeat(4096)}});
    let res = app.post_event(job, big).await;
    assert_eq!(res.status(), 413);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["code"], "payload_too_large");
    assert_eq!(app.count_events().await, before);
}

#[tokio::test]
async fn state_as_of_a_seq_is_the_fold_up_to_it() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    let s1 = app.progress(job, 10.0).await;
    app.progress(job, 20.0).await;
    app.post_event(job, json!({"type": "completed"})).await;

    let as_of = |seq: i64| {
        app.http
            .get(app.url(&format!("/v1/jobs/{job}?asOfSeq={seq}")))
            .bearer_auth(app.token(Role::Support, None))
            .send()
    };
    let then: Value = as_of(s1).await.unwrap().json().await.unwrap();
    assert_eq!(then["progress"], 10.0);
    assert_eq!(then["status"], "running");
    assert_eq!(then["lastSeq"], s1);
    let now = app.get_job(job).await;
    assert_eq!(now["status"], "completed");
    let last: Value = as_of(now["headSeq"].as_i64().unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(last, now);

    assert_eq!(as_of(0).await.unwrap().status(), 400);
    assert_eq!(as_of(99).await.unwrap().status(), 400);
    // Clients may read the present, not the past.
    let res = app
        .get_as(
            &format!("/v1/jobs/{job}?asOfSeq=1"),
            &app.token(Role::Client, Some(job)),
        )
        .await;
    assert_eq!(res.status(), 403);
}

#[tokio::test]
async fn state_is_identical_after_a_restart() {
    let app = spawn_app().await;
    let a = app.create_job().await;
    let b = app.create_job().await;
    app.progress(a, 33.0).await;
    app.post_event(a, json!({"type": "message", "name": "book_found"}))
        .await;
    app.progress(b, 90.0).await;
    app.post_event(
        b,
        json!({"type": "failed", "error": {"code": "E", "message": "m"}}),
    )
    .await;
    let before = (app.get_job(a).await, app.get_job(b).await);
    let app = app.restart().await;
    let after = (app.get_job(a).await, app.get_job(b).await);
    assert_eq!(before, after);
    // Appends continue the same chains.
    assert_eq!(
        app.progress(a, 34.0).await,
        before.0["headSeq"].as_i64().unwrap() + 1
    );
}

#[tokio::test]
async fn client_tokens_are_refreshed_for_their_own_job_only() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    let other = app.create_job().await;
    let client = app.token(Role::Client, Some(job));
    let res = app
        .http
        .post(app.url(&format!("/v1/jobs/{job}/token")))
        .bearer_auth(&client)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let fresh = body["clientToken"].as_str().unwrap();
    let res = app.get_as(&format!("/v1/jobs/{job}"), fresh).await;
    assert_eq!(res.status(), 200);

    let res = app
        .http
        .post(app.url(&format!("/v1/jobs/{other}/token")))
        .bearer_auth(&client)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = app
        .http
        .post(app.url(&format!("/v1/jobs/{}/token", Uuid::new_v4())))
        .bearer_auth(app.service())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn health_and_readiness_answer_without_a_token() {
    let app = spawn_app().await;
    let res = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert!(!body["epoch"].as_str().unwrap().is_empty());
    let res = app.http.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}
