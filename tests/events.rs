//! Reading the log: a job's events, the global log paged under concurrent
//! appends, NDJSON, the SSE tail resumed with Last-Event-ID, metrics and the
//! OpenAPI document.

use crate::common;

use std::collections::BTreeSet;

use common::{next_json, spawn_app, PATIENCE};
use futures_util::StreamExt;
use rejoin::auth::Role;
use serde_json::{json, Value};

#[tokio::test]
async fn a_jobs_events_come_in_seq_order_after_a_cursor() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    for p in [1.0, 2.0, 3.0, 4.0] {
        app.progress(job, p).await;
    }
    let support = app.token(Role::Support, None);
    let page = app
        .get_json(
            &format!("/v1/jobs/{job}/events?after=2&limit=2"),
            Some(&support),
        )
        .await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(
        (events[0]["seq"].as_i64(), events[1]["seq"].as_i64()),
        (Some(3), Some(4))
    );
    assert_eq!(events[0]["kind"], "progress");
    assert_eq!(events[0]["data"]["progress"], 2.0);
    assert_eq!(page["nextAfter"], 4);
    let res = app
        .get_as(
            &format!("/v1/jobs/{job}/events"),
            &app.token(Role::Analytics, None),
        )
        .await;
    assert_eq!(res.status(), 403);
}

#[tokio::test]
async fn paging_the_global_log_while_appends_run_skips_and_repeats_nothing() {
    let app = spawn_app().await;
    let jobs: Vec<_> = futures_util::future::join_all((0..4).map(|_| app.create_job())).await;
    let analytics = app.token(Role::Analytics, None);

    // Appenders run while a reader pages through the log, small pages.
    let writer = {
        let http = app.http.clone();
        let base = app.url("");
        let token = app.service();
        let jobs = jobs.clone();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for (i, job) in jobs.into_iter().enumerate() {
                let (http, base, token) = (http.clone(), base.clone(), token.clone());
                tasks.push(tokio::spawn(async move {
                    for n in 0..150 {
                        let res = http
                            .post(format!("{base}/v1/jobs/{job}/events"))
                            .bearer_auth(&token)
                            .json(&json!({"type": "progress", "progress": (n % 100) as f64, "data": {"w": i}}))
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(res.status(), 201);
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        })
    };

    let mut seen = Vec::new();
    let mut after = 0;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let done = writer.is_finished();
        let page: Value = app
            .get_as(&format!("/v1/events?after={after}&limit=7"), &analytics)
            .await
            .json()
            .await
            .unwrap();
        let events = page["events"].as_array().unwrap();
        seen.extend(events.iter().map(|e| e["position"].as_i64().unwrap()));
        after = page["nextAfter"].as_i64().unwrap();
        if events.is_empty() && done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "paging never finished"
        );
    }
    writer.await.unwrap();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "positions strictly increase"
    );
    let total = app.count_events().await;
    assert_eq!(seen.len() as i64, total, "every event once");
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());

    // NDJSON streams the whole log in one response.
    let res = app
        .http
        .get(app.url("/v1/events"))
        .bearer_auth(&analytics)
        .header("Accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "application/x-ndjson");
    let text = res.text().await.unwrap();
    let positions: Vec<i64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["position"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(positions, (1..=total).collect::<Vec<_>>());

    let res = app
        .get_as("/v1/events", &app.token(Role::Support, None))
        .await;
    assert_eq!(res.status(), 403);
}

/// Reads SSE events (id, data) from a response until `n` have arrived.
async fn sse_events(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buf: &mut String,
    n: usize,
) -> Vec<(i64, Value)> {
    let mut out = Vec::new();
    while out.len() < n {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut id = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse::<i64>().unwrap());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str::<Value>(v.trim()).unwrap());
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                out.push((id, data));
            }
        }
        if out.len() >= n {
            break;
        }
        let chunk = tokio::time::timeout(PATIENCE, body.next())
            .await
            .expect("an SSE event in time")
            .expect("the stream is open")
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    out
}

#[tokio::test]
async fn the_live_tail_resumes_from_last_event_id_with_nothing_skipped() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    let analytics = app.token(Role::Analytics, None);
    let open = |last: Option<i64>| {
        let mut req = app
            .http
            .get(app.url("/v1/events/stream"))
            .bearer_auth(&analytics);
        if let Some(id) = last {
            req = req.header("Last-Event-ID", id.to_string());
        }
        req.send()
    };
    let res = open(None).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = res.bytes_stream();
    let mut buf = String::new();
    // Live: events appended after the tail opened.
    for p in [1.0, 2.0, 3.0] {
        app.progress(job, p).await;
    }
    let got = sse_events(&mut body, &mut buf, 3).await;
    assert_eq!(
        got.iter()
            .map(|(_, d)| d["seq"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [2, 3, 4]
    );
    assert!(got.iter().all(|(id, d)| d["position"] == *id));
    let last_id = got[1].0; // pretend the third was never processed
    drop(body);

    // While away, more happens; the tail resumes after the last processed id.
    for p in [4.0, 5.0] {
        app.progress(job, p).await;
    }
    let res = open(Some(last_id)).await.unwrap();
    let mut body = res.bytes_stream();
    let mut buf = String::new();
    let got = sse_events(&mut body, &mut buf, 3).await;
    let ids: Vec<i64> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [last_id + 1, last_id + 2, last_id + 3]);
    app.progress(job, 6.0).await;
    let live = sse_events(&mut body, &mut buf, 1).await;
    assert_eq!(live[0].0, last_id + 4);

    let res = open(None).await;
    drop(res);
    let res = app
        .http
        .get(app.url("/v1/events/stream"))
        .bearer_auth(&analytics)
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn metrics_count_connects_by_outcome_replays_and_commits() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    let mut ws = app.ws_client(job).await;
    let hello = next_json(&mut ws).await;
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    drop(ws);
    app.wait_for_job(job, "the drop", |s| s["session"]["state"] == "grace")
        .await;
    app.progress(job, 5.0).await;
    app.progress(job, 6.0).await;
    let mut ws = app.ws_reconnect(job, 0, &epoch).await;
    assert_eq!(next_json(&mut ws).await["missed"], 2);
    assert_eq!(
        common::refused_status(app.ws(&format!("jobId={job}&token=a.b.c")).await),
        401
    );

    let text = app.metrics().await;
    for line in [
        r#"rejoin_connects_total{outcome="fresh"} 1"#,
        r#"rejoin_connects_total{outcome="resumed"} 1"#,
        r#"rejoin_connects_total{outcome="rejected"} 1"#,
        r#"rejoin_connect_rejected_total{reason="invalid_token"} 1"#,
        r#"rejoin_disconnects_total{code="1006"} 1"#,
        "rejoin_replayed_events_total 2",
        "rejoin_connections 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(text.contains("rejoin_append_batch_size_count"));
    assert!(text.contains("rejoin_commit_seconds_bucket"));
}

#[tokio::test]
async fn the_openapi_document_lists_every_http_route() {
    let app = spawn_app().await;
    let doc = common::get_json_at(&app.http, app.addr, "/openapi.json", None).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    let expected: BTreeSet<&str> = [
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/token",
        "/v1/jobs/{job_id}/history",
        "/v1/jobs/{job_id}/stream",
        "/v1/events",
        "/v1/events/stream",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/stream/{path}",
        "/v1/stream/jobs/{job_id}",
    ]
    .into_iter()
    .collect();
    assert_eq!(paths, expected);
    assert!(doc["components"]["schemas"]["AppendRequest"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}
