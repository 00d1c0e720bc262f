//! Durable Streams at `/v1/stream/{path}`, as rejoin serves them beside
//! what the protocol's own conformance suite checks (`.ci/run` runs it):
//! streams are events in the log and survive restarts, a producer's retry
//! after a restart appends nothing, tokens and roles, TTL expiry as a
//! deadline (on a clock the test moves), and every job as a read-only
//! stream whose SSE readers are sessions in its history.

use std::sync::Arc;
use std::time::Duration;

use crate::common;

use common::{spawn_on_clock, spawn_with, TestApp, PATIENCE};
use rejoin::auth::Role;
use rejoin::clock::{Clock, ManualClock};
use rejoin::domain::stream::stream_id;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A request to a stream, with a service token.
fn stream(app: &TestApp, method: Method, path: &str) -> reqwest::RequestBuilder {
    app.http
        .request(method, app.url(&format!("/v1/stream/{path}")))
        .bearer_auth(app.service())
}

fn header(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// An append by the producer `importer`, epoch 0, with this seq.
fn producer(app: &TestApp, seq: u64) -> reqwest::RequestBuilder {
    stream(app, Method::POST, "notes")
        .header("content-type", "text/plain")
        .header("producer-id", "importer")
        .header("producer-epoch", "0")
        .header("producer-seq", seq.to_string())
}

async fn read_all(app: &TestApp, path: &str) -> (String, String) {
    let res = stream(app, Method::GET, &format!("{path}?offset=-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "stream-up-to-date").as_deref(), Some("true"));
    let next = header(&res, "stream-next-offset").unwrap();
    (res.text().await.unwrap(), next)
}

#[tokio::test]
async fn appends_are_events_in_the_log_and_survive_a_restart() {
    let app = spawn_with(&[]).await;
    let res = stream(&app, Method::PUT, "notes")
        .header("content-type", "text/plain")
        .body("one ")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = stream(&app, Method::POST, "notes")
        .header("content-type", "text/plain")
        .body("two ")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = producer(&app, 0).body("three").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (before, tail) = read_all(&app, "notes").await;
    assert_eq!(before, "one two three");

    let id = stream_id("/v1/stream/notes");
    assert_eq!(app.events_of(id, "stream_created").await.len(), 1);
    assert_eq!(app.events_of(id, "stream_appended").await.len(), 2);

    let app = app.restart().await;
    let (after, tail_after) = read_all(&app, "notes").await;
    assert_eq!(
        (after.as_str(), tail_after.as_str()),
        (before.as_str(), tail.as_str())
    );
    // The producer's retry after the restart is known from the log.
    let res = producer(&app, 0).body("three").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&res, "producer-seq").as_deref(), Some("0"));
    assert_eq!(app.events_of(id, "stream_appended").await.len(), 2);
    assert_eq!(read_all(&app, "notes").await.0, "one two three");
    // A gap is refused with what it expected.
    let res = producer(&app, 2).body("five").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(header(&res, "producer-expected-seq").as_deref(), Some("1"));
}

#[tokio::test]
async fn streams_need_a_stream_or_service_token_unless_opened() {
    let app = spawn_with(&[]).await;
    let url = app.url("/v1/stream/guarded");
    let put = |token: Option<String>| {
        let mut req = app.http.put(&url).header("content-type", "text/plain");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    assert_eq!(put(None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    for role in [Role::Support, Role::Analytics] {
        let res = put(Some(app.token(role, None))).await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{role:?}");
    }
    let job = app.create_job().await;
    let res = put(Some(app.token(Role::Client, Some(job)))).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = put(Some(app.token(Role::Stream, None))).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = put(Some(app.service())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let open = spawn_with(&["--stream-auth", "none"]).await;
    let res = open
        .http
        .put(open.url("/v1/stream/open"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    // A job's stream needs a token even then.
    let job = open.create_job().await;
    let res = open
        .http
        .get(open.url(&format!("/v1/stream/jobs/{job}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_ttl_expires_the_stream_by_a_deadline_and_reads_keep_it_alive() {
    let clock = Arc::new(ManualClock::starting_now());
    let app = spawn_on_clock(&[], clock.clone()).await;
    let put = |path: &'static str| {
        stream(&app, Method::PUT, path)
            .header("content-type", "text/plain")
            .header("stream-ttl", "10")
            .body("x")
            .send()
    };
    assert_eq!(put("idle").await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(put("read").await.unwrap().status(), StatusCode::CREATED);

    clock.advance(chrono::Duration::seconds(6));
    assert_eq!(read_all(&app, "read").await.0, "x");
    clock.advance(chrono::Duration::seconds(5));
    app.engine.deadlines_decided_through(clock.now()).await;

    let idle = stream_id("/v1/stream/idle");
    let read = stream_id("/v1/stream/read");
    assert_eq!(app.events_of(idle, "stream_deleted").await.len(), 1);
    let status = stream(&app, Method::GET, "idle?offset=-1").send().await;
    assert_eq!(status.unwrap().status(), StatusCode::NOT_FOUND);
    // The read at +6 s moved the window: recorded when it would have ended.
    assert_eq!(app.events_of(read, "stream_touched").await.len(), 1);
    assert_eq!(app.events_of(read, "stream_deleted").await.len(), 0);
    assert_eq!(read_all(&app, "read").await.0, "x");

    clock.advance(chrono::Duration::seconds(11));
    app.engine.deadlines_decided_through(clock.now()).await;
    assert_eq!(app.events_of(read, "stream_deleted").await.len(), 1);
    // The path is free again: a new stream, empty.
    let res = stream(&app, Method::PUT, "idle").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(read_all(&app, "idle").await.0, "");
}

#[tokio::test]
async fn a_long_poll_wakes_on_the_append_it_waits_for() {
    let app = spawn_with(&["--stream-long-poll-secs", "30"]).await;
    let res = stream(&app, Method::PUT, "chat")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    let tail = header(&res, "stream-next-offset").unwrap();
    let poll = stream(
        &app,
        Method::GET,
        &format!("chat?offset={tail}&live=long-poll"),
    )
    .send();
    let append = async {
        // The poll is parked once its request is in; appending before it
        // is fine too (it then answers at once with the same data).
        tokio::time::sleep(Duration::from_millis(50)).await;
        let res = stream(&app, Method::POST, "chat")
            .header("content-type", "application/json")
            .body(r#"[{"text":"hi"},{"text":"there"}]"#)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
    };
    let (res, ()) = tokio::time::timeout(PATIENCE, async { tokio::join!(poll, append) })
        .await
        .unwrap();
    let res = res.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(header(&res, "stream-cursor").is_some());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body, json!([{"text": "hi"}, {"text": "there"}]));
}

/// A job's stream: read with its client token, a job event per message,
/// closed with the job's end; writes refused.
#[tokio::test]
async fn a_job_is_a_read_only_stream_that_closes_when_it_ends() {
    let app = spawn_with(&[]).await;
    let job = app.create_job().await;
    let other = app.create_job().await;
    app.progress(job, 40.0).await;
    let path = format!("/v1/stream/jobs/{job}");
    let client = app.token(Role::Client, Some(job));
    let get = |query: &str, token: &str| {
        app.http
            .get(app.url(&format!("{path}{query}")))
            .bearer_auth(token)
            .send()
    };
    let res = get("?offset=-1", &client).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "stream-closed"), None);
    let next = header(&res, "stream-next-offset").unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body[0]["type"], "progress");
    assert_eq!(body[0]["progress"], 40.0);

    let res = get("", &app.token(Role::Client, Some(other)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        get("", &app.token(Role::Support, None))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let res = app
        .http
        .post(app.url(&path))
        .bearer_auth(app.service())
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);

    let done = app
        .post_event(job, json!({"type": "completed", "result": {"books": 3}}))
        .await;
    assert_eq!(done.status(), StatusCode::CREATED);
    let res = get(&format!("?offset={next}"), &client).await.unwrap();
    assert_eq!(header(&res, "stream-closed").as_deref(), Some("true"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert_eq!(body[0]["type"], "completed");
    let res = get("?offset=now&live=long-poll", &client).await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&res, "stream-closed").as_deref(), Some("true"));
}

/// An SSE reader of a job's stream gets every job event once, then the
/// close, and is a session in the job's connection history.
#[tokio::test]
async fn an_sse_reader_of_a_job_is_a_session_in_its_history() {
    use futures_util::StreamExt;
    let app = spawn_with(&[]).await;
    let job = app.create_job().await;
    app.progress(job, 10.0).await;
    let res = app
        .http
        .get(app.url(&format!("/v1/stream/jobs/{job}?offset=-1&live=sse")))
        .bearer_auth(app.token(Role::Client, Some(job)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        header(&res, "content-type").as_deref(),
        Some("text/event-stream")
    );
    let mut body = res.bytes_stream();
    let mut text = String::new();
    let mut finished = false;
    let read = async {
        while let Some(chunk) = body.next().await {
            text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
            if text.contains("upToDate") && !finished {
                finished = true;
                app.progress(job, 60.0).await;
                let res = app.post_event(job, json!({"type": "completed"})).await;
                assert_eq!(res.status(), StatusCode::CREATED);
            }
        }
    };
    tokio::time::timeout(PATIENCE, read).await.unwrap();
    let data: Vec<Value> = text
        .split("\n\n")
        .filter(|block| block.starts_with("event: data"))
        .map(|block| {
            let json: String = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .collect();
            serde_json::from_str(&json).unwrap()
        })
        .collect();
    let kinds: Vec<&str> = data
        .iter()
        .map(|d| d[0]["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["progress", "progress", "completed"]);
    assert!(text.contains(r#""streamClosed":true"#), "{text}");

    let history = app
        .get_json(&format!("/v1/jobs/{job}/history"), Some(&app.service()))
        .await;
    let session = &history["sessions"][0];
    let first = &session["events"][0];
    assert_eq!(first["kind"], "reconnected");
    assert_eq!(first["details"]["transport"], "durable-streams");
    assert_eq!(first["details"]["clientLastSeq"], 0);
}

/// A follower process (`clients/durable-streams/run follow|follow-py`) and
/// the lines it printed so far.
struct Follower {
    name: String,
    child: tokio::process::Child,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Follower {
    fn start(how: &str, url: &str, token: &str, mode: &str) -> Follower {
        use tokio::io::AsyncBufReadExt;
        let run = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/durable-streams/run");
        let mut child = tokio::process::Command::new(run)
            .args([how, url, token, mode])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("clients/durable-streams/run starts");
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut out = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(line)) = out.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Follower {
            name: format!("{how} {mode}"),
            child,
            lines,
        }
    }

    /// The job event seqs printed so far.
    fn seqs(&self) -> Vec<i64> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.as_str() != "END")
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap_or_else(|_| panic!("{l}"));
                v["seq"].as_i64().unwrap()
            })
            .collect()
    }
}

/// The protocol's official clients, TypeScript and Python, each over SSE
/// and long-poll, follow a job through a relay that cuts every connection
/// three times mid-stream: each yields every job event once, in order, and
/// then ends with the job.
#[tokio::test]
#[ignore = "needs the official clients: clients/durable-streams/run build (.ci/run does it)"]
async fn the_official_clients_follow_a_job_across_three_cuts() {
    use rejoin_testkit::relay::{Drop, Relay};
    let app = spawn_with(&[]).await;
    let job = app.create_job().await;
    let relay = Relay::start(app.addr).await;
    let url = format!("http://{}/v1/stream/jobs/{job}", relay.addr());
    let token = app.token(Role::Client, Some(job));
    let mut followers: Vec<Follower> = [
        ("follow", "sse"),
        ("follow", "long-poll"),
        ("follow-py", "sse"),
        ("follow-py", "long-poll"),
    ]
    .into_iter()
    .map(|(how, mode)| Follower::start(how, &url, &token, mode))
    .collect();

    let mut posted = Vec::new();
    let mut progress = 0.0;
    for _ in 0..3 {
        for _ in 0..5 {
            progress += 1.0;
            posted.push(app.progress(job, progress).await);
        }
        // Every follower holds the latest event; then every connection
        // through the relay is reset, and more events come while the
        // followers reconnect.
        let last = *posted.last().unwrap();
        for f in &followers {
            common::eventually(&format!("{} to reach seq {last}", f.name), || async {
                f.seqs().contains(&last).then_some(())
            })
            .await;
        }
        relay.cut(Drop::Reset);
        for _ in 0..3 {
            progress += 1.0;
            posted.push(app.progress(job, progress).await);
        }
    }
    let done = app
        .post_event(job, json!({"type": "completed", "result": {"books": 42}}))
        .await;
    assert_eq!(done.status(), StatusCode::CREATED);
    let done: Value = done.json().await.unwrap();
    posted.push(done["seq"].as_i64().unwrap());

    for f in &mut followers {
        let status = tokio::time::timeout(PATIENCE * 2, f.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not end with the job: {:?}", f.name, f.lines))
            .unwrap();
        assert!(status.success(), "{}", f.name);
        let lines = f.lines.lock().unwrap().clone();
        assert_eq!(lines.last().map(String::as_str), Some("END"), "{}", f.name);
        assert_eq!(f.seqs(), posted, "{}: every event once, in order", f.name);
    }
    let resets = relay.accepted().len();
    assert!(
        resets > followers.len(),
        "the followers reconnected: {resets} connections"
    );
}

/// Two nodes on one PostgreSQL log, no stickiness: what one node
/// acknowledged, the other reads at once; a producer's retry on the other
/// node is a duplicate; a deletion on one is seen by a `PUT` on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: REJOIN_TEST_POSTGRES_URL (.ci/run sets it)"]
async fn any_node_reads_and_decides_what_another_acknowledged_on_postgres() {
    let (_url, nodes) = common::spawn_nodes(2, &["--stream-auth", "none"]).await;
    let (a, b) = (nodes[0].1, nodes[1].1);
    let http = reqwest::Client::new();
    let url = |node: std::net::SocketAddr| format!("http://{node}/v1/stream/shared");
    let append = |node, seq: u64, body: &'static str| {
        http.post(url(node))
            .header("content-type", "text/plain")
            .header("producer-id", "p")
            .header("producer-epoch", "0")
            .header("producer-seq", seq.to_string())
            .body(body)
            .send()
    };
    let res = http.put(url(a)).header("content-type", "text/plain").send();
    assert_eq!(res.await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(append(a, 0, "one ").await.unwrap().status(), StatusCode::OK);
    let read = |node| http.get(format!("{}?offset=-1", url(node))).send();
    assert_eq!(read(b).await.unwrap().text().await.unwrap(), "one ");
    // The retry lands on the other node: known there too.
    assert_eq!(
        append(b, 0, "one ").await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(append(b, 1, "two").await.unwrap().status(), StatusCode::OK);
    assert_eq!(read(a).await.unwrap().text().await.unwrap(), "one two");

    let res = http.delete(url(a)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = http.put(url(b)).header("content-type", "text/plain").send();
    assert_eq!(res.await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(read(a).await.unwrap().text().await.unwrap(), "");
}
