//! Nothing a client sends stops the log: hostile stream lifetimes, ids that
//! cross between jobs and streams, an event the server cannot read already
//! in the log, a task of the engine that dies, and browsers on the stream
//! routes under `--allowed-origins`. Each against a real server, which keeps
//! taking writes with `/readyz` green, or says at once that it cannot.

use std::process::Stdio;

use futures_util::StreamExt;

use crate::common;

use common::{serve_args, spawn_announcing, spawn_with, TestApp, BIN, PATIENCE, SECRET};
use rejoin::domain::stream::stream_id;
use rejoin::log::{EventRow, Pages};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

fn stream(app: &TestApp, method: Method, path: &str) -> reqwest::RequestBuilder {
    app.http
        .request(method, app.url(&format!("/v1/stream/{path}")))
        .bearer_auth(app.service())
}

async fn ready(app: &TestApp) {
    let res = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "the server is ready");
}

/// A write on another stream and on a job both go through.
async fn still_writes(app: &TestApp, tag: &str) {
    let res = stream(app, Method::PUT, &format!("other-{tag}"))
        .header("content-type", "text/plain")
        .body("fine")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "another stream is created"
    );
    let job = app.create_job().await;
    app.progress(job, 10.0).await;
    ready(app).await;
}

#[tokio::test]
async fn hostile_lifetimes_are_refused_and_the_log_keeps_taking_writes() {
    let app = spawn_with(&[]).await;
    let before = app.count_events().await;
    let far = (chrono::Utc::now() + chrono::Duration::days(11 * 365)).to_rfc3339();
    let past = (chrono::Utc::now() - chrono::Duration::seconds(5)).to_rfc3339();
    let cases: [(&str, &str, &str); 9] = [
        ("stream-ttl", "10000000000000", "at most"),
        ("stream-ttl", "18446744073709551615", "at most"),
        ("stream-ttl", "99999999999999999999999", "at most"),
        ("stream-ttl", "0", "at least 1"),
        ("stream-ttl", "-5", "whole number"),
        ("stream-expires-at", "9999-12-31T23:59:59Z", "ten years"),
        ("stream-expires-at", &far, "ten years"),
        ("stream-expires-at", &past, "future"),
        ("stream-expires-at", "1970-01-01T00:00:00Z", "future"),
    ];
    for (i, (name, value, says)) in cases.iter().enumerate() {
        let res = stream(&app, Method::PUT, &format!("lifetime-{i}"))
            .header(*name, *value)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{name}: {value}");
        // The job API's error body.
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_request", "{body}");
        let text = body["error"]["message"].as_str().unwrap();
        assert!(text.contains(says), "{name}: {value} answers {text}");
    }
    assert_eq!(app.count_events().await, before, "nothing was appended");
    still_writes(&app, "a").await;

    // The longest lifetimes allowed are taken, folded and scheduled.
    let res = stream(&app, Method::PUT, "longest")
        .header(
            "stream-ttl",
            rejoin::domain::stream::MAX_LIFETIME_SECS.to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let app = app.restart().await;
    let res = stream(&app, Method::HEAD, "longest").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    still_writes(&app, "b").await;
}

/// A stream created by an older version with a lifetime past the
/// calendar's end (this version refuses it at the door) is folded and
/// scheduled without harm: it never expires.
#[tokio::test]
async fn a_lifetime_past_the_calendar_already_in_the_log_never_expires() {
    let mut app = spawn_with(&[]).await;
    app.stop().await;
    let id = stream_id("/v1/stream/from-the-past");
    let created = json!({
        "path": "/v1/stream/from-the-past",
        "contentType": "text/plain",
        "ttlSecs": u64::MAX,
        "offset": "0000000000000000_0000000000000000",
        "closed": false,
    });
    append_raw(
        &app.db_url(),
        id,
        "stream_created",
        None,
        &created.to_string(),
    )
    .await;
    let app = app.restart().await;
    let res = stream(&app, Method::GET, "from-the-past?offset=-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = stream(&app, Method::POST, "from-the-past")
        .header("content-type", "text/plain")
        .body("still here")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    still_writes(&app, "c").await;
    app.restart().await;
}

/// Appends one row to `id`'s chain in the log at `db`, as a version of
/// rejoin with `schema` (this one's if `None`) would have written it.
async fn append_raw(db: &str, id: Uuid, kind: &str, schema: Option<i32>, payload: &str) {
    let store = rejoin::log::open(db).await.unwrap();
    let mut pages = Pages::job(store.events.as_ref(), &id.to_string(), 0, i64::MAX);
    let mut last: Option<EventRow> = None;
    while let Some(rows) = pages.next().await.unwrap() {
        last = rows.into_iter().last().or(last);
    }
    let mut row = EventRow {
        position: 0,
        job_id: id.to_string(),
        seq: last.as_ref().map_or(1, |r| r.seq + 1),
        session_id: None,
        kind: kind.into(),
        schema_version: schema.unwrap_or(rejoin::domain::event::SCHEMA_VERSION),
        payload: payload.into(),
        idempotency_key: None,
        at: rejoin::domain::event::format_time(&chrono::Utc::now()),
        hash: String::new(),
    };
    let prev = last.map(|r| r.hash).unwrap_or_default();
    row.hash = rejoin::log::chain::event_hash(&prev, &row);
    store.events.append(&[row]).await.unwrap();
    store.events.close().await;
}

#[tokio::test]
async fn an_event_the_server_cannot_read_sets_its_one_job_aside() {
    let mut app = spawn_with(&[]).await;
    let bad = app.create_job().await;
    app.progress(bad, 10.0).await;
    let good = app.create_job().await;
    app.stop().await;
    // A newer version's event: this one cannot decode it.
    let newer = rejoin::domain::event::SCHEMA_VERSION + 1;
    append_raw(
        &app.db_url(),
        bad,
        "progress",
        Some(newer),
        r#"{"progress":50}"#,
    )
    .await;

    // Twice: from the whole log, then from the checkpoint the first start
    // wrote (which does not hold the job set aside).
    let mut app = app;
    for _ in 0..2 {
        app = app.restart().await;
        ready(&app).await;
        app.progress(good, 20.0).await;
        let res = app
            .post_event(bad, json!({"type": "progress", "progress": 60}))
            .await;
        assert_eq!(res.status(), StatusCode::CONFLICT);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unreadable", "{body}");
        let res = app
            .http
            .get(app.url(&format!("/v1/jobs/{bad}")))
            .bearer_auth(app.service())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CONFLICT);
        assert_eq!(app.get_job(good).await["progress"], 20.0);
        still_writes(&app, &Uuid::new_v4().to_string()).await;
    }
    app.stop().await;

    let out = std::process::Command::new(BIN)
        .args(["verify", "--database-url", &app.db_url()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "verify reports it: {said}");
    assert!(
        said.contains(&bad.to_string()),
        "verify names the job: {said}"
    );
}

#[tokio::test]
async fn a_writer_that_dies_is_never_hidden_and_the_process_exits_for_its_supervisor() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/rejoin.db", dir.path().display());
    let start = |extra: &'static [&'static str]| {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(serve_args("127.0.0.1:0", &db, SECRET, extra));
        cmd.stderr(Stdio::piped());
        spawn_announcing(cmd)
    };
    let (mut child, addr) = start(&["--test-panic-on-payload", "poison-pill"])
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{addr}{path}");
    let service = common::token_for("service", None);
    let res = common::post_json_at(
        &http,
        addr.parse().unwrap(),
        "/v1/jobs",
        &service,
        &json!({}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let job: Value = res.json().await.unwrap();
    let job = job["jobId"].as_str().unwrap().to_owned();
    let res = http
        .post(url(&format!("/v1/jobs/{job}/events")))
        .bearer_auth(&service)
        .json(&json!({"type": "progress", "progress": 5, "message": "poison-pill"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    // From the moment that answer is given, the node says it is not ready
    // and why (until the process is gone); it exits non-zero, naming what
    // stopped.
    if let Ok(res) = http.get(url("/readyz")).send().await {
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = res.json().await.unwrap_or_default();
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("the log writer stopped"), "{body}");
    }
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("the process exits")
        .unwrap();
    assert!(!status.success(), "it exits non-zero: {status}");
    let mut stderr = String::new();
    use tokio::io::AsyncReadExt;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("the log writer stopped"), "{stderr}");

    // A start on the same log folds it and serves, the job included.
    let (mut child, addr) = start(&[]).await.unwrap();
    let res = http
        .post(format!("http://{addr}/v1/jobs/{job}/events"))
        .bearer_auth(&service)
        .json(&json!({"type": "progress", "progress": 6}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    common::terminate(&mut child).await;
}

#[tokio::test]
async fn jobs_and_streams_never_share_an_id() {
    let app = spawn_with(&[]).await;
    // A job under a stream's id.
    let res = stream(&app, Method::PUT, "taken")
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let before = app.count_events().await;
    let res = app
        .post_as(
            "/v1/jobs",
            &app.service(),
            &json!({"jobId": stream_id("/v1/stream/taken")}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "id_in_use", "{body}");
    // A stream at a path whose id a job has.
    let job = app
        .create_job_from(json!({"jobId": stream_id("/v1/stream/squatted")}))
        .await;
    assert_eq!(job, stream_id("/v1/stream/squatted"));
    let after_job = app.count_events().await;
    assert_eq!(after_job, before + 1);
    let res = stream(&app, Method::PUT, "squatted")
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let res = stream(&app, Method::POST, "squatted")
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.count_events().await, after_job, "nothing appended");
    app.progress(job, 1.0).await;
}

#[tokio::test]
async fn browsers_use_streams_under_allowed_origins() {
    let app = spawn_with(&["--allowed-origins", "https://app.example"]).await;
    let res = app
        .http
        .request(Method::OPTIONS, app.url("/v1/stream/board"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PUT")
        .header(
            "access-control-request-headers",
            "authorization,content-type,producer-id,producer-epoch,producer-seq,stream-ttl",
        )
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let h = |res: &reqwest::Response, name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
            .unwrap_or_default()
    };
    assert_eq!(
        h(&res, "access-control-allow-origin"),
        "https://app.example"
    );
    for method in ["put", "post", "delete", "head", "get"] {
        assert!(h(&res, "access-control-allow-methods").contains(method));
    }
    for name in [
        "producer-id",
        "producer-epoch",
        "producer-seq",
        "stream-ttl",
    ] {
        assert!(h(&res, "access-control-allow-headers").contains(name));
    }
    let res = stream(&app, Method::PUT, "board")
        .header("origin", "https://app.example")
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(
        h(&res, "access-control-allow-origin"),
        "https://app.example"
    );
    assert!(h(&res, "access-control-expose-headers").contains("stream-next-offset"));
    // Another origin's page is shown nothing.
    let res = stream(&app, Method::GET, "board?offset=-1")
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
    // The job API keeps its own CORS.
    let res = app
        .http
        .request(Method::OPTIONS, app.url("/v1/jobs"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    assert_eq!(
        h(&res, "access-control-allow-origin"),
        "https://app.example"
    );
}

#[tokio::test]
async fn forks_nest_to_a_documented_depth_and_the_deepest_reads_everything() {
    let app = spawn_with(&[]).await;
    let res = stream(&app, Method::PUT, "f0")
        .header("content-type", "text/plain")
        .body("0")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let depth = 64;
    for i in 1..=depth + 1 {
        let res = stream(&app, Method::PUT, &format!("f{i}"))
            .header("stream-forked-from", format!("/v1/stream/f{}", i - 1))
            .header("content-type", "text/plain")
            .body(format!(",{i}"))
            .send()
            .await
            .unwrap();
        if i <= depth {
            assert_eq!(res.status(), StatusCode::CREATED, "fork {i}");
        } else {
            assert_eq!(res.status(), StatusCode::BAD_REQUEST, "fork {i}");
            assert!(res.text().await.unwrap().contains("at most 64"));
        }
    }
    let res = stream(&app, Method::GET, &format!("f{depth}?offset=-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.unwrap();
    let expected: Vec<String> = (0..=depth).map(|i| i.to_string()).collect();
    assert_eq!(text, expected.join(","));
}

#[tokio::test]
async fn a_request_without_a_valid_token_is_answered_before_its_body() {
    // A body that never comes would be cut off only after ten minutes.
    let app = spawn_with(&["--body-timeout-secs", "600"]).await;
    for (path, token) in [
        ("/v1/stream/big", None),
        ("/v1/stream/big", Some("not-a-token")),
        ("/v1/jobs", None),
        ("/v1/jobs", Some("not-a-token")),
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: text/plain\r\nContent-Length: 16000000\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 512];
        let n = tokio::time::timeout(PATIENCE, tcp.read(&mut answer))
            .await
            .expect("answered without the body")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 401"), "{path}: {answer}");
    }
    ready(&app).await;
}

#[tokio::test]
async fn a_job_stream_reads_from_a_plain_seq_as_its_docs_say() {
    let app = spawn_with(&[]).await;
    let job = app.create_job().await;
    let mut seqs = Vec::new();
    for p in [10.0, 20.0, 30.0] {
        seqs.push(app.progress(job, p).await);
    }
    let from = seqs[1];
    let res = app
        .http
        .get(app.url(&format!("/v1/stream/jobs/{job}?offset={from}")))
        .bearer_auth(app.service())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let events: Vec<Value> = res.json().await.unwrap();
    let read: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(read, vec![seqs[2]]);
}

/// Opens a job's SSE stream from `offset` and reads until it is up to date.
async fn sse_up_to_date(app: &TestApp, job: Uuid, token: &str, offset: &str) -> reqwest::Response {
    let res = app
        .http
        .get(app.url(&format!("/v1/stream/jobs/{job}?offset={offset}&live=sse")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res
}

async fn read_until(res: &mut reqwest::Response, what: &str) -> String {
    let mut text = String::new();
    tokio::time::timeout(PATIENCE, async {
        while !text.contains(what) {
            let chunk = res.chunk().await.unwrap().expect("more of the stream");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
    .expect("the stream says it");
    text
}

#[tokio::test]
async fn a_job_sse_reader_that_reopens_within_grace_continues_its_session() {
    let app = spawn_with(&[]).await;
    let job = app.create_job().await;
    app.progress(job, 10.0).await;
    let token = app.token(rejoin::auth::Role::Client, Some(job));
    let mut res = sse_up_to_date(&app, job, &token, "-1").await;
    let text = read_until(&mut res, "upToDate").await;
    let offset = text
        .split("\"streamNextOffset\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    drop(res);
    let first = app
        .wait_for_job(job, "the reader's session waits in its grace window", |j| {
            j["watchers"][0]["state"] == "grace"
        })
        .await;
    let session = first["watchers"][0]["sessionId"].clone();

    // The reader reopens from the offset it was given (as the protocol's
    // clients do every minute): the same session, one watcher.
    let mut res = sse_up_to_date(&app, job, &token, &offset).await;
    read_until(&mut res, "upToDate").await;
    let state = app
        .wait_for_job(job, "the reader is connected again", |j| {
            j["watchers"][0]["state"] == "connected"
        })
        .await;
    let watchers = state["watchers"].as_array().unwrap();
    assert_eq!(watchers.len(), 1, "{state}");
    assert_eq!(watchers[0]["sessionId"], session);
    app.progress(job, 20.0).await;
    read_until(&mut res, "20").await;
}

#[tokio::test]
async fn large_appends_are_read_back_a_few_at_a_time_and_whole() {
    let mut app = spawn_with(&["--stream-max-body-bytes", "6000000"]).await;
    let res = stream(&app, Method::PUT, "big")
        .header("content-type", "application/octet-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let mut sent = Vec::new();
    for i in 0..3u8 {
        let body = vec![b'a' + i; 4_500_000];
        sent.extend_from_slice(&body);
        let res = stream(&app, Method::POST, "big")
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
    }
    // Read back whole, chunk by chunk, as a client does.
    let (mut offset, mut read) = ("-1".to_owned(), Vec::new());
    loop {
        let res = stream(&app, Method::GET, &format!("big?offset={offset}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let next = res.headers()["stream-next-offset"]
            .to_str()
            .unwrap()
            .to_owned();
        let done = res.headers().contains_key("stream-up-to-date");
        read.extend_from_slice(&res.bytes().await.unwrap());
        if done {
            break;
        }
        offset = next;
    }
    assert!(read == sent, "the stream reads back as written");
    app.stop().await;

    // The log's pages stop after the row that takes them past their bytes.
    let store = rejoin::log::open(&app.db_url()).await.unwrap();
    let id = stream_id("/v1/stream/big").to_string();
    let mut pages = Pages::job(store.events.as_ref(), &id, 0, i64::MAX);
    let mut sizes = Vec::new();
    while let Some(rows) = pages.next().await.unwrap() {
        let bytes: Vec<usize> = rows.iter().map(|r| r.payload.len()).collect();
        let before_last: usize = bytes[..bytes.len() - 1].iter().sum();
        assert!(before_last < rejoin::log::PAGE_BYTES, "{bytes:?}");
        sizes.push(rows.len());
    }
    assert_eq!(sizes, vec![3, 1], "pages of a few large events");
    store.events.close().await;
}

#[tokio::test]
async fn a_resume_from_far_back_counts_what_it_missed_exactly_whatever_the_connection_history() {
    let app = spawn_with(&["--connect-rate-per-ip", "0"]).await;
    let job = app.create_job().await;
    let epoch = app.epoch().await;
    let first = app.progress(job, 1.0).await;
    let mut ws = app.ws_client(job).await;
    common::next_json(&mut ws).await;
    ws.close(None).await.unwrap();
    // Far more connection events than a job's state keeps the seqs of,
    // with job events among them.
    let mut posted = Vec::new();
    for round in 0..160 {
        let mut ws = app.ws_reconnect(job, first, &epoch).await;
        let hello = common::next_json(&mut ws).await;
        assert_eq!(hello["type"], "reconnected");
        ws.close(None).await.unwrap();
        // Its close is recorded before the next resume takes the session.
        while ws.next().await.is_some() {}
        if round % 40 == 0 {
            posted.push(app.progress(job, f64::from(round) / 2.0 + 1.0).await);
        }
    }
    let history = app
        .get_json(&format!("/v1/jobs/{job}/history"), Some(&app.service()))
        .await;
    let connection_events = history.to_string().matches("\"reconnected\"").count();
    assert!(connection_events >= 160, "{connection_events}");

    let mut ws = app.ws_reconnect(job, first, &epoch).await;
    let hello = common::next_json(&mut ws).await;
    assert_eq!(hello["missed"], posted.len(), "{hello}");
    for seq in &posted {
        let msg = common::next_json(&mut ws).await;
        assert_eq!(msg["seq"], *seq);
    }
    // And from the start: every job event.
    let mut ws = app.ws_reconnect(job, 0, &epoch).await;
    let hello = common::next_json(&mut ws).await;
    assert_eq!(hello["missed"], posted.len() + 1, "{hello}");
}

/// Values a stranger may put in any header or query parameter: extremes,
/// overflow, garbage, empty, and a few random strings (from a fixed seed).
fn hostile_values() -> Vec<String> {
    let mut values: Vec<String> = [
        "",
        " ",
        "0",
        "-0",
        "1",
        "-1",
        "01",
        "+1",
        "1.5",
        "1e308",
        "1e-308",
        "NaN",
        "inf",
        "-inf",
        "true",
        "TRUE",
        "false",
        "now",
        "4294967296",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999999999999",
        "0000000000000000_0000000000000000",
        "9999999999999999_9999999999999999",
        "0000000000000001_9999999999999999",
        "_",
        "1_",
        "9999-12-31T23:59:59Z",
        "0000-01-01T00:00:00Z",
        "+275760-09-13T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "1970-01-01T00:00:00Z",
        "/v1/stream/",
        "/v1/stream/../../etc/passwd",
        "/v1/stream/jobs/00000000-0000-0000-0000-000000000000",
        "application/json; charset=utf-8",
        "text/plain",
        "*/*",
        "ünïcödé",
        "\u{202e}rtl",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    values.push("9".repeat(4096));
    values.push("a".repeat(8000));
    // A few random strings of visible ASCII, from a fixed seed.
    let mut seed: u64 = 0x5eed_1234_abcd_0001;
    for _ in 0..24 {
        let len = (seed % 40) as usize;
        let s: String = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                char::from(b' ' + (seed % 95) as u8)
            })
            .collect();
        values.push(s);
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_header_or_query_value_gets_a_5xx_or_stops_the_writer() {
    let app = spawn_with(&["--connect-rate-per-ip", "0", "--stream-long-poll-secs", "0"]).await;
    let job = app.create_job().await;
    app.progress(job, 5.0).await;
    let res = stream(&app, Method::PUT, "base")
        .header("content-type", "application/json")
        .body("[1,2,3]")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let headers = [
        "stream-ttl",
        "stream-expires-at",
        "stream-seq",
        "stream-closed",
        "stream-forked-from",
        "stream-fork-offset",
        "stream-fork-sub-offset",
        "producer-id",
        "producer-epoch",
        "producer-seq",
        "content-type",
        "if-none-match",
    ];
    let values = hostile_values();
    let fresh = std::sync::atomic::AtomicUsize::new(0);
    let send = |method: Method, path: String, header: Option<(&str, &str)>| {
        let mut req = stream(&app, method.clone(), &path);
        if let Some((name, value)) = header {
            match reqwest::header::HeaderValue::from_str(value) {
                Ok(v) => req = req.header(name, v),
                Err(_) => return None,
            }
        }
        if method == Method::POST || method == Method::PUT {
            req = req.body("[{\"n\":1}]");
            if header.is_none_or(|(n, _)| n != "content-type") {
                req = req.header("content-type", "application/json");
            }
        }
        Some((format!("{method} {path} {header:?}"), req.send()))
    };
    for name in headers {
        // Each header on the requests that read it: a create at a fresh
        // path, an append, a read of a stream that is there.
        let methods: &[Method] = match name {
            "content-type" => &[Method::PUT, Method::POST],
            "if-none-match" => &[Method::GET],
            n if n.starts_with("producer-") || n == "stream-seq" => &[Method::POST],
            "stream-closed" => &[Method::PUT, Method::POST],
            _ => &[Method::PUT],
        };
        for value in &values {
            let n = fresh.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for method in methods {
                let path = match *method {
                    Method::PUT => format!("p-{n}"),
                    _ => "base".to_owned(),
                };
                let method = method.clone();
                let Some((what, res)) = send(method, path, Some((name, value))) else {
                    continue;
                };
                let res = res.await.unwrap();
                assert!(!res.status().is_server_error(), "{what}: {}", res.status());
            }
        }
    }
    for param in ["offset", "live", "cursor"] {
        for value in &values {
            let value: String = url_escape(value);
            for path in [
                format!("base?{param}={value}"),
                format!("base?offset=-1&{param}={value}"),
                format!("jobs/{job}?{param}={value}"),
                format!("jobs/{job}?offset=-1&{param}={value}"),
            ] {
                let Some((what, res)) = send(Method::GET, path, None) else {
                    continue;
                };
                let res = res.await.unwrap();
                assert!(!res.status().is_server_error(), "{what}: {}", res.status());
            }
        }
    }
    // The writer is alive: other streams and jobs take writes, /readyz is
    // green, and the log restarts clean.
    still_writes(&app, "after").await;
    let app = app.restart().await;
    still_writes(&app, "restarted").await;
    app.progress(job, 6.0).await;
}

/// Percent-escapes everything but unreserved characters.
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn live_stream_readers_are_admitted_against_the_connection_limit() {
    let app = spawn_with(&["--max-connections", "2", "--stream-long-poll-secs", "30"]).await;
    for path in ["a", "b", "c"] {
        let res = stream(&app, Method::PUT, path)
            .header("content-type", "text/plain")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let mut held = Vec::new();
    for path in ["a", "b"] {
        let mut res = stream(&app, Method::GET, &format!("{path}?offset=now&live=sse"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.chunk().await.unwrap();
        held.push(res);
    }
    // Both places are taken: an SSE reader and a long-poll are refused.
    let res = stream(&app, Method::GET, "c?offset=now&live=sse")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let res = stream(&app, Method::GET, "c?offset=now&live=long-poll")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    // A place given back is taken again.
    drop(held.pop());
    common::eventually("a place is free again", || async {
        let res = stream(&app, Method::GET, "c?offset=now&live=sse")
            .send()
            .await
            .unwrap();
        (res.status() == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test]
async fn concurrent_reads_past_half_a_ttl_record_one_touch() {
    use rejoin::clock::ManualClock;
    let clock = std::sync::Arc::new(ManualClock::starting_now());
    let app = common::spawn_on_clock(&[], clock.clone()).await;
    let res = stream(&app, Method::PUT, "touched")
        .header("content-type", "text/plain")
        .header("stream-ttl", "10")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    clock.advance(chrono::Duration::seconds(6));
    let id = stream_id("/v1/stream/touched");
    let held = app.engine.stream(id).await.unwrap().unwrap();
    // Twenty readers at once, each a millisecond after the last, all past
    // half the TTL since the stream's last recorded activity.
    for _ in 0..20 {
        clock.advance(chrono::Duration::milliseconds(1));
        app.engine.stream_read(id, &held);
    }
    common::eventually("a touch is recorded", || async {
        (!app.events_of(id, "stream_touched").await.is_empty()).then_some(())
    })
    .await;
    // Whatever the reads queued is decided before this append.
    let res = stream(&app, Method::POST, "touched")
        .header("content-type", "text/plain")
        .body("y")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.events_of(id, "stream_touched").await.len(), 1);
}

#[tokio::test]
async fn deadlines_due_at_one_instant_are_decided_in_batches() {
    use rejoin::clock::{Clock, ManualClock};
    use std::sync::atomic::Ordering;
    let clock = std::sync::Arc::new(ManualClock::starting_now());
    let app = common::spawn_on_clock(&[], clock.clone()).await;
    let count = 200;
    for i in 0..count {
        let res = stream(&app, Method::PUT, &format!("expiring-{i}"))
            .header("stream-ttl", "10")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let before = app.engine.stats().commits.load(Ordering::Relaxed);
    clock.advance(chrono::Duration::seconds(11));
    app.engine.deadlines_decided_through(clock.now()).await;
    let commits = app.engine.stats().commits.load(Ordering::Relaxed) - before;
    for i in [0, count / 2, count - 1] {
        let res = stream(&app, Method::HEAD, &format!("expiring-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "expired");
    }
    // One at a time, that was 200 commits.
    assert!(
        commits < count / 4,
        "{commits} commits for {count} expiries"
    );
}
