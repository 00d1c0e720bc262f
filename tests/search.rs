//! `GET /v1/jobs` and `rejoin jobs`: finding jobs by status, stall, creation
//! time and metadata, newest first, paged exactly while jobs are being
//! created, from the job index (rebuilt from the log when it is missing).

use crate::common;

use std::collections::HashSet;

use common::{next_json, spawn_app, token_for, TestApp, BIN};
use serde_json::{json, Value};
use uuid::Uuid;

async fn list(app: &TestApp, query: &str) -> Value {
    let res = app
        .get_as(&format!("/v1/jobs?{query}"), &app.service())
        .await;
    assert_eq!(res.status(), 200, "{query}");
    res.json().await.unwrap()
}

fn ids(page: &Value) -> Vec<Uuid> {
    page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["jobId"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn filters_find_exactly_the_matching_jobs_newest_first() {
    let app = spawn_app().await;
    let before = chrono::Utc::now();
    let u1_running = app
        .create_job_from(json!({"metadata": {"user": "u1", "n": 5}}))
        .await;
    app.progress(u1_running, 30.0).await;
    let u1_done = app
        .create_job_from(json!({"metadata": {"user": "u1", "vip": true}}))
        .await;
    app.post_event(u1_done, json!({"type": "completed"})).await;
    let u2_pending = app
        .create_job_from(json!({"metadata": {"user": "u2"}}))
        .await;
    let stalls = app
        .create_job_from(json!({"metadata": {"user": "u2"}, "stallAfterSecs": 1}))
        .await;
    app.wait_for_job(stalls, "the stall", |s| s["stalled"] == true)
        .await;
    let mut ws = app.ws_client(u2_pending).await;
    next_json(&mut ws).await;

    let all = list(&app, "").await;
    assert_eq!(ids(&all), [stalls, u2_pending, u1_done, u1_running]);
    assert!(all.get("nextAfter").is_none());
    let pending = &all["jobs"][1];
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["watchers"], 1);
    assert_eq!(pending["metadata"], json!({"user": "u2"}));
    assert_eq!(all["jobs"][3]["progress"], 30.0);

    assert_eq!(
        ids(&list(&app, "meta.user=u1").await),
        [u1_done, u1_running]
    );
    // A stall does not start a job that never reported anything.
    assert_eq!(
        ids(&list(&app, "meta.user=u2&status=pending").await),
        [stalls, u2_pending]
    );
    assert_eq!(ids(&list(&app, "status=completed").await), [u1_done]);
    assert_eq!(
        ids(&list(&app, "status=running&stalled=false").await),
        [u1_running]
    );
    assert_eq!(ids(&list(&app, "stalled=true").await), [stalls]);
    assert_eq!(ids(&list(&app, "meta.n=5").await), [u1_running]);
    assert_eq!(ids(&list(&app, "meta.vip=true").await), [u1_done]);
    assert!(ids(&list(&app, "meta.user=u3").await).is_empty());

    let since = before.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    assert_eq!(ids(&list(&app, &format!("since={since}")).await).len(), 4);
    assert!(ids(&list(&app, &format!("until={since}")).await).is_empty());
}

#[tokio::test]
async fn pages_never_skip_or_repeat_a_job_while_jobs_are_being_created() {
    let app = std::sync::Arc::new(spawn_app().await);
    let mut existing = Vec::new();
    for _ in 0..30 {
        existing.push(app.create_job_from(json!({})).await);
    }
    let creator = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut more = Vec::new();
            for _ in 0..30 {
                more.push(app.create_job_from(json!({})).await);
            }
            more
        })
    };
    let mut seen = Vec::new();
    let mut query = "limit=7".to_owned();
    loop {
        let page = list(&app, &query).await;
        seen.extend(ids(&page));
        match page.get("nextAfter").and_then(Value::as_str) {
            Some(cursor) => query = format!("limit=7&after={cursor}"),
            None => break,
        }
    }
    let more = creator.await.unwrap();
    let unique: HashSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "a job was listed twice");
    for job in &existing {
        assert!(unique.contains(job), "job {job} was skipped");
    }
    // Newest first: the jobs that existed before, in reverse creation order.
    let old: Vec<Uuid> = seen
        .iter()
        .copied()
        .filter(|j| existing.contains(j))
        .collect();
    let mut expected = existing.clone();
    expected.reverse();
    assert_eq!(old, expected);
    assert!(seen
        .iter()
        .all(|j| existing.contains(j) || more.contains(j)));
}

#[tokio::test]
async fn bad_filters_get_400_and_only_support_and_service_may_list() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    for (query, says) in [
        ("status=finished", "`status`"),
        ("stalled=yes", "`stalled`"),
        ("since=yesterday", "`since`"),
        ("limit=0", "`limit`"),
        ("limit=1000", "`limit`"),
        ("after=-3", "`after`"),
        ("meta.a.b=1", "metadata keys"),
        ("colour=red", "unknown parameter"),
        ("status=running&status=failed", "twice"),
    ] {
        let res = app
            .get_as(&format!("/v1/jobs?{query}"), &app.service())
            .await;
        assert_eq!(res.status(), 400, "{query}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_query");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{query}: {message}");
    }
    for role in ["client", "analytics"] {
        let res = app.get_as("/v1/jobs", &token_for(role, Some(job))).await;
        assert_eq!(res.status(), 403, "{role}");
    }
    let res = app.get_as("/v1/jobs", &token_for("support", None)).await;
    assert_eq!(res.status(), 200);
    let res = app.http.get(app.url("/v1/jobs")).send().await.unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn a_missing_index_is_rebuilt_from_the_log_and_the_cli_lists_the_same() {
    let app = spawn_app().await;
    let a = app
        .create_job_from(json!({"metadata": {"team": "x"}}))
        .await;
    let b = app
        .create_job_from(json!({"metadata": {"team": "y"}}))
        .await;
    app.post_event(
        b,
        json!({"type": "failed", "error": {"code": "E", "message": "m"}}),
    )
    .await;
    let listed = list(&app, "").await;
    assert_eq!(ids(&listed), [b, a]);

    // The index is derived: dropped, it comes back from the log.
    let mut db = common::Db::connect(&app.db_url()).await;
    db.execute("DROP TABLE job_index").await.unwrap();
    db.close().await;
    let app = app.restart().await;
    let rebuilt = list(&app, "").await;
    assert_eq!(rebuilt["jobs"], listed["jobs"]);

    let out = std::process::Command::new(BIN)
        .args(["jobs", "--json", "--meta", "team=y", "--database-url"])
        .arg(app.db_url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(cli["jobs"][0]["jobId"], b.to_string());
    assert_eq!(cli["jobs"][0]["status"], "failed");
}
