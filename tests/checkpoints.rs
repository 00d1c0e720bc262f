//! Memory that holds live work and start-ups from checkpoints (SPEC §7), on
//! the test database (SQLite, or PostgreSQL with `REJOIN_TEST_POSTGRES_URL`):
//! a server started from a checkpoint, from a corrupt or foreign one, or
//! from none, answers exactly as the one before it; finished jobs leave
//! memory and are read back from the log; the cache stays within its bound.

use crate::common;

use common::{next_close, next_json, spawn_on, spawn_with, Db, TestApp};
use serde_json::{json, Value};
use uuid::Uuid;

/// Short grace windows, a cache of two finished jobs.
const ARGS: &[&str] = &["--grace-secs", "1.5", "--job-cache-entries", "2"];

/// Reads `path` with a service token: (status, body).
async fn read(app: &TestApp, path: &str) -> (u16, Value) {
    let res = app.get_as(path, &app.service()).await;
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Posts the job's first progress event with `key` as its Idempotency-Key.
async fn post_keyed(app: &TestApp, job: Uuid, key: &str) -> reqwest::Response {
    app.http
        .post(app.url(&format!("/v1/jobs/{job}/events")))
        .bearer_auth(app.service())
        .header("Idempotency-Key", key)
        .json(&json!({"type": "progress", "progress": 10, "message": "ten"}))
        .send()
        .await
        .unwrap()
}

/// A finished job: created, two progress events (the first keyed), completed.
async fn finished_job(app: &TestApp, key: &str) -> Uuid {
    let job = app.create_job().await;
    assert_eq!(post_keyed(app, job, key).await.status(), 201);
    app.progress(job, 50.0).await;
    let res = app
        .post_event(job, json!({"type": "completed", "result": {"books": 3}}))
        .await;
    assert_eq!(res.status(), 201);
    job
}

/// Every answer about `job` that must not change across a restart.
async fn answers(app: &TestApp, job: Uuid, key: &str) -> Vec<(u16, Value)> {
    let mut out = vec![
        read(app, &format!("/v1/jobs/{job}")).await,
        read(app, &format!("/v1/jobs/{job}?asOfSeq=2")).await,
        read(app, &format!("/v1/jobs/{job}/events")).await,
        read(app, &format!("/v1/jobs/{job}/history")).await,
    ];
    // An idempotent retry of the first, keyed append: its first answer.
    let res = post_keyed(app, job, key).await;
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    out.push((res.status().as_u16(), res.json().await.unwrap()));
    // A new event on a finished job: 409 (its request id is this request's
    // own, not part of the answer being compared).
    let res = app
        .post_event(job, json!({"type": "progress", "progress": 60}))
        .await;
    let status = res.status().as_u16();
    let mut body: Value = res.json().await.unwrap();
    assert!(body["error"]["requestId"].is_string(), "{body}");
    body["error"].as_object_mut().unwrap().remove("requestId");
    out.push((status, body));
    out
}

/// A running job whose only watcher dropped: its grace window is open.
async fn job_in_grace(app: &TestApp) -> Uuid {
    let job = app.create_job().await;
    app.progress(job, 30.0).await;
    let mut ws = app.ws_client(job).await;
    next_json(&mut ws).await;
    drop(ws);
    app.wait_for_job(job, "the grace window", |s| {
        s["session"]["state"] == "grace"
    })
    .await;
    job
}

async fn metric(app: &TestApp, line_start: &str) -> f64 {
    common::metric_at(&app.http, app.addr, line_start).await
}

async fn restart_after(app: &mut TestApp, change: &[&str]) -> TestApp {
    app.stop().await;
    if !change.is_empty() {
        let mut db = Db::connect(&app.database_url).await;
        for sql in change {
            db.execute(sql).await.unwrap();
        }
        db.close().await;
    }
    spawn_on(
        app.dir.clone(),
        app.database_url.clone(),
        app.extra_args.clone(),
    )
    .await
}

#[tokio::test]
async fn a_server_started_from_a_checkpoint_answers_as_one_that_folded_the_whole_log() {
    let mut app = spawn_with(ARGS).await;
    let finished = finished_job(&app, "first-progress").await;
    // Three more finished jobs push the first out of the two-entry cache.
    for i in 0..3 {
        finished_job(&app, &format!("other-{i}")).await;
    }
    let before = answers(&app, finished, "first-progress").await;
    assert_eq!(before[0].0, 200);
    assert_eq!(before[0].1["status"], "completed");
    assert_eq!(before[1].1["progress"], 10.0, "as of seq 2");
    assert_eq!(before[4].1["seq"], 2, "the retry answers the first seq");
    assert_eq!(before[5].0, 409);
    assert_eq!(before[5].1["error"]["code"], "job_finished");

    // From the checkpoint written at shutdown: nothing left to fold.
    let mut app = restart_after(&mut app, &[]).await;
    let startup = app.engine.startup().clone();
    assert!(startup.checkpoint.is_some(), "{startup:?}");
    assert_eq!(startup.folded, 0, "{startup:?}");
    assert_eq!(answers(&app, finished, "first-progress").await, before);

    // Without any checkpoint (the table is derived): the whole log, the
    // same answers.
    let mut app = restart_after(
        &mut app,
        &["DELETE FROM checkpoint_parts", "DELETE FROM checkpoints"],
    )
    .await;
    let startup = app.engine.startup().clone();
    assert_eq!(startup.checkpoint, None);
    assert_eq!(startup.folded as i64, app.count_events().await);
    assert!(startup.ignored.is_empty());
    assert_eq!(answers(&app, finished, "first-progress").await, before);

    // A corrupt checkpoint is ignored, with the reason.
    let mut app = restart_after(
        &mut app,
        &["UPDATE checkpoint_parts SET body = '[{\"x\":1}]'"],
    )
    .await;
    let startup = app.engine.startup().clone();
    assert_eq!(startup.checkpoint, None);
    assert!(
        startup.ignored.iter().any(|r| r.contains("digest")),
        "{startup:?}"
    );
    assert_eq!(answers(&app, finished, "first-progress").await, before);

    // So is one written by another version of the fold.
    let app = restart_after(&mut app, &["UPDATE checkpoints SET fold_version = 99"]).await;
    let startup = app.engine.startup().clone();
    assert_eq!(startup.checkpoint, None);
    assert!(
        startup
            .ignored
            .iter()
            .any(|r| r.contains("fold version 99")),
        "{startup:?}"
    );
    assert_eq!(answers(&app, finished, "first-progress").await, before);
}

#[tokio::test]
async fn open_grace_windows_expire_on_time_after_a_start_from_a_checkpoint() {
    let mut app = spawn_with(ARGS).await;
    let job = job_in_grace(&app).await;
    let mut app = restart_after(&mut app, &[]).await;
    assert!(app.engine.startup().checkpoint.is_some());
    let state = app
        .wait_for_job(job, "the grace expiry", |s| {
            s["session"]["state"] == "ended"
        })
        .await;
    let expired = app.events_of(job, "grace_expired").await;
    assert_eq!(expired.len(), 1, "{state}");
    let until: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(expired[0].payload["graceUntil"].clone()).unwrap();
    let late = expired[0].at - until;
    assert!(late >= chrono::Duration::zero(), "expired early: {late}");
    assert!(
        late < chrono::Duration::milliseconds(1500),
        "expired late: {late}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_reconnect_to_a_finished_job_read_back_from_the_log_gets_its_end() {
    let mut app = spawn_with(ARGS).await;
    let job = finished_job(&app, "k").await;
    for i in 0..3 {
        finished_job(&app, &format!("other-{i}")).await;
    }
    let mut app = restart_after(&mut app, &[]).await;
    let (live, cached) = app.engine.jobs_in_memory();
    assert_eq!((live, cached), (0, 0), "a checkpoint holds only live jobs");
    let epoch = app.epoch().await;
    let mut ws = app.ws_reconnect(job, 2, &epoch).await;
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "reconnected");
    assert_eq!(hello["status"], "completed");
    assert_eq!(hello["lastSeq"], 4);
    assert_eq!(hello["missed"], 2);
    let missed: Vec<Value> = vec![next_json(&mut ws).await, next_json(&mut ws).await];
    assert_eq!(missed[0]["seq"], 3);
    assert_eq!(missed[0]["progress"], 50.0);
    assert_eq!(missed[1]["type"], "completed");
    assert_eq!(missed[1]["result"], json!({"books": 3}));
    assert_eq!(next_close(&mut ws).await, (1000, "job finished".to_owned()));
    app.stop().await;
}

#[tokio::test]
async fn jobs_held_in_memory_stay_within_the_cache_setting() {
    let mut app = spawn_with(&["--job-cache-entries", "5"]).await;
    let mut jobs = Vec::new();
    for i in 0..40 {
        let job = app.create_job().await;
        app.progress(job, f64::from(i)).await;
        let res = app.post_event(job, json!({"type": "completed"})).await;
        assert_eq!(res.status(), 201);
        jobs.push(job);
    }
    assert_eq!(
        metric(&app, "rejoin_jobs_in_memory{held=\"live\"} ").await,
        0.0
    );
    assert_eq!(
        metric(&app, "rejoin_jobs_in_memory{held=\"cached\"} ").await,
        5.0
    );
    let misses = metric(&app, "rejoin_job_cache_misses_total ").await;

    // Every one of them is still there, read back from the log.
    for (i, job) in jobs.iter().enumerate() {
        let state = app.get_job(*job).await;
        assert_eq!(state["status"], "completed");
        assert_eq!(state["progress"], 100.0);
        assert_eq!(state["lastSeq"], 3, "job {i}");
    }
    assert_eq!(
        metric(&app, "rejoin_jobs_in_memory{held=\"cached\"} ").await,
        5.0
    );
    let read_back = metric(&app, "rejoin_job_cache_misses_total ").await - misses;
    assert!(read_back >= 35.0, "{read_back} jobs read back from the log");
    let hits = metric(&app, "rejoin_job_cache_hits_total ").await;
    app.get_job(jobs[39]).await;
    assert_eq!(
        metric(&app, "rejoin_job_cache_hits_total ").await,
        hits + 1.0
    );

    // An unknown job is not found, and nothing is kept for it.
    let (status, _) = read(&app, &format!("/v1/jobs/{}", Uuid::new_v4())).await;
    assert_eq!(status, 404);
    assert_eq!(app.engine.jobs_in_memory(), (0, 5));
    app.stop().await;
}

#[tokio::test]
async fn after_a_crash_a_start_folds_only_what_follows_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let db = common::fresh_database(dir.path()).await;
    let args = ["--checkpoint-every-events", "10"];
    let (mut server, addr) = common::serve_binary(&db, &args).await;
    let http = reqwest::Client::new();
    let job = common::create_job_at(&http, addr).await;
    let mut last = 0;
    for p in 0..35 {
        last = common::progress_at(&http, addr, job, f64::from(p)).await;
    }
    let position = common::eventually("a checkpoint past position 30", || async {
        let position = common::metric_at(&http, addr, "rejoin_checkpoint_position ").await;
        (position >= 30.0).then_some(position)
    })
    .await;
    // SIGKILL: no shutdown checkpoint.
    server.kill().await.unwrap();
    let total = common::count_events(&db).await as f64;
    let (mut server, addr) = common::serve_binary(&db, &args).await;
    let folded = common::metric_at(&http, addr, "rejoin_startup_events_folded ").await;
    assert!(
        folded <= total - position,
        "folded {folded} of {total} events; a checkpoint was at {position}"
    );
    let service = common::token_for("service", None);
    let state = common::get_json_at(&http, addr, &format!("/v1/jobs/{job}"), Some(&service)).await;
    assert_eq!(state["lastSeq"], last);
    assert_eq!(state["progress"], 34.0);
    server.kill().await.unwrap();
}

#[tokio::test]
async fn operators_write_list_and_delete_checkpoints_with_the_cli() {
    let mut app = spawn_with(&[]).await;
    let running = app.create_job().await;
    app.progress(running, 10.0).await;
    finished_job(&app, "k").await;
    app.stop().await;
    let cli = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(common::BIN);
        cmd.arg("checkpoint")
            .args(args)
            .args(["--database-url", &app.database_url]);
        async move {
            let out = cmd.output().await.unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    };
    cli(&["--delete"]).await;
    assert_eq!(cli(&["--list"]).await.trim(), "no checkpoints");
    let written = cli(&[]).await;
    assert!(written.contains(": 1 live jobs"), "{written}");
    let listed = cli(&["--list"]).await;
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains("1 jobs in 1 parts"), "{listed}");
    // The next start uses it and folds nothing.
    let app = restart_after(&mut app, &[]).await;
    assert!(app.engine.startup().checkpoint.is_some());
    assert_eq!(app.engine.startup().folded, 0);
    assert_eq!(app.get_job(running).await["lastSeq"], 2);
}

#[tokio::test]
async fn a_checkpoint_whose_views_another_version_wrote_is_kept_and_its_jobs_views_refolded() {
    // A window that outlasts the restarts: the job reads the same after.
    let mut app = spawn_with(&["--grace-secs", "600"]).await;
    let job = job_in_grace(&app).await;
    let before = read(&app, &format!("/v1/jobs/{job}")).await;
    assert_eq!(before.1["counts"]["connects"], 1, "{before:?}");
    app.stop().await;

    // The checkpoint written at shutdown, rewritten as if another version
    // of the views had written it (its decision state untouched).
    let log = rejoin::log::open(&app.database_url).await.unwrap();
    let header = log.checkpoints.checkpoints().await.unwrap().remove(0);
    let parts: Vec<String> = log
        .checkpoints
        .checkpoint_parts(&header.id)
        .await
        .unwrap()
        .iter()
        .map(|body| {
            let mut part: Value = serde_json::from_str(body).unwrap();
            part["views"] = Value::from(0);
            for job in part["jobs"].as_array_mut().unwrap() {
                job["view"] = serde_json::json!({"an older shape": true});
            }
            part.to_string()
        })
        .collect();
    log.checkpoints
        .delete_checkpoints_except(&[])
        .await
        .unwrap();
    let id = "views-of-another-version";
    for (i, body) in parts.iter().enumerate() {
        log.checkpoints
            .write_checkpoint_part(id, i as i32, body)
            .await
            .unwrap();
    }
    let digest = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        parts.iter().for_each(|b| h.update(b.as_bytes()));
        hex::encode(h.finalize())
    };
    let rewritten = rejoin::log::CheckpointHeader {
        id: id.to_owned(),
        digest,
        ..header.clone()
    };
    log.checkpoints
        .write_checkpoint_header(&rewritten)
        .await
        .unwrap();
    log.events.close().await;

    let app = spawn_on(
        app.dir.clone(),
        app.database_url.clone(),
        app.extra_args.clone(),
    )
    .await;
    let startup = app.engine.startup().clone();
    assert_eq!(startup.checkpoint, Some(header.position), "{startup:?}");
    assert!(startup.ignored.is_empty(), "{startup:?}");
    assert_eq!(read(&app, &format!("/v1/jobs/{job}")).await, before);
}
