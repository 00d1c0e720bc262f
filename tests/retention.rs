//! Retention: finished units leave the log whole, through the one path the
//! database allows, into an archive that is proven against the log's
//! records; readers of a removed job hear 410 `job_archived`; a SIGKILL at
//! any step of a sweep loses nothing and archives nothing twice; and the
//! database stays its size under rounds of load.

use std::path::Path;
use std::time::Duration;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common;
use common::{eventually, spawn_with, within, TestApp, BIN, PATIENCE, SECRET};
use rejoin::auth::Role;

/// Creates `n` jobs and finishes each (`steps` progress events, then
/// completed), 50 at a time; returns their ids.
async fn finished_jobs(app: &TestApp, n: usize, steps: usize) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let done = join_all(chunk.iter().map(|i| async move {
            let job = app.create_job().await;
            for step in 1..=steps {
                app.progress(job, (100 * step / (steps + 1)) as f64).await;
            }
            let res = app
                .post_event(job, json!({"type": "completed", "result": {"n": i}}))
                .await;
            assert_eq!(res.status(), 201);
            job
        }))
        .await;
        ids.extend(done);
    }
    ids
}

/// The `rejoin` binary's `args` against the app's log; its exit status
/// and standard output.
fn cli(app: &TestApp, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .args(["--database-url", &app.database_url])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Every line of every archive data file under `dir`, parsed (with gzip
/// from the standard library's point of view: the files are plain gzip).
fn archived_lines(dir: &Path) -> Vec<Value> {
    use std::io::BufRead;
    let mut lines = Vec::new();
    for day in std::fs::read_dir(dir).unwrap().flatten() {
        if !day.file_type().unwrap().is_dir() {
            continue;
        }
        for file in std::fs::read_dir(day.path()).unwrap().flatten() {
            let path = file.path();
            if !path.to_string_lossy().ends_with(".ndjson.gz") {
                continue;
            }
            let gz = flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap());
            for line in std::io::BufReader::new(gz).lines() {
                lines.push(serde_json::from_str(&line.unwrap()).unwrap());
            }
        }
    }
    lines
}

async fn status_of(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_leave_whole_into_the_archive_and_readers_hear_410() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let archive_arg = archive.display().to_string();
    let app = spawn_with(&["--retain-finished", "2s", "--archive-dir", &archive_arg]).await;
    let live = app.create_job().await;
    app.progress(live, 10.0).await;
    let jobs = finished_jobs(&app, 2_000, 1).await;
    // A stream that is deleted leaves too; one that stays open does not.
    let stream = |method, path: &str| {
        app.http
            .request(method, app.url(&format!("/v1/stream/{path}")))
            .bearer_auth(app.service())
    };
    for path in ["gone", "open"] {
        let res = stream(reqwest::Method::PUT, path)
            .header("content-type", "text/plain")
            .body("data")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }
    let res = stream(reqwest::Method::DELETE, "gone")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);

    // Within 30 s of their end every finished unit is gone: the live job,
    // the open stream and the records of what left are all the log holds.
    within(
        Duration::from_secs(30),
        "the finished units to leave the log",
        || async {
            let m = app.metrics().await;
            let jobs = metric(&m, "rejoin_retention_removed_units_total{kind=\"job\"}");
            let streams = metric(&m, "rejoin_retention_removed_units_total{kind=\"stream\"}");
            (jobs == 2_000.0 && streams == 1.0).then_some(())
        },
    )
    .await;
    let m = app.metrics().await;
    let removed = metric(&m, "rejoin_retention_removed_events_total") as usize;
    assert!(metric(&m, "rejoin_archive_written_bytes_total") > 0.0);
    let horizon = metric(&m, "rejoin_retention_horizon_position") as i64;
    assert!(horizon > 0);

    let mut db = common::Db::connect(&app.database_url).await;
    let kept = db
        .scalar("SELECT count(*) FROM events WHERE kind <> 'units_removed'")
        .await;
    // The live job's two events and the open stream's creation.
    assert_eq!(kept, 3, "only live units are left");
    let live_state = app.get_job(live).await;
    assert_eq!(live_state["status"], "running");
    assert_eq!(live_state["progress"], 10.0);
    // Every other DELETE and UPDATE is still refused.
    let delete = db
        .execute("DELETE FROM events WHERE kind = 'job_created'")
        .await;
    assert!(delete.unwrap_err().contains("append-only"));
    let update = db.execute("UPDATE events SET payload = '{}'").await;
    assert!(update.unwrap_err().contains("append-only"));
    db.close().await;

    // Every removed event is in the archive, once.
    let lines = archived_lines(&archive);
    assert_eq!(lines.len(), removed, "the archive holds what was removed");
    let stream_lines = lines
        .iter()
        .filter(|l| l["kind"].as_str().unwrap().starts_with("stream_"))
        .count();
    assert_eq!(lines.len() - stream_lines, 6_000, "each job's three events");
    let mut seen = std::collections::HashSet::new();
    for line in &lines {
        assert!(
            seen.insert(line["position"].as_i64().unwrap()),
            "archived once"
        );
        for column in ["jobId", "seq", "position", "kind", "at", "data", "hash"] {
            assert!(!line[column].is_null(), "{column} in {line}");
        }
    }
    let job = jobs[7];
    let of_job: Vec<&Value> = lines
        .iter()
        .filter(|l| l["jobId"] == job.to_string())
        .collect();
    let kinds: Vec<&str> = of_job.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["job_created", "progress", "completed"]);

    // Readers of a removed job hear 410 job_archived, with when it finished.
    let service = app.service();
    let client = app.token(Role::Client, Some(job));
    let support = app.token(Role::Support, None);
    let finished_at = of_job[2]["at"].as_str().unwrap().to_owned();
    let gone = [
        app.get_as(&format!("/v1/jobs/{job}"), &service).await,
        app.get_as(&format!("/v1/jobs/{job}/history"), &support)
            .await,
        app.get_as(&format!("/v1/jobs/{job}/events"), &service)
            .await,
        app.http
            .get(app.url(&format!("/v1/jobs/{job}/stream?token={client}")))
            .send()
            .await
            .unwrap(),
        app.get_as(&format!("/v1/stream/jobs/{job}"), &service)
            .await,
        app.post_event(job, json!({"type": "progress", "progress": 1}))
            .await,
        app.post_as("/v1/jobs", &service, &json!({"jobId": job}))
            .await,
    ];
    for res in gone {
        let url = res.url().to_string();
        let (status, body) = status_of(res).await;
        assert_eq!(status, StatusCode::GONE, "{url}: {body}");
        assert_eq!(body["error"]["code"], "job_archived", "{url}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&finished_at),
            "{url}: {body}"
        );
    }
    let refused = app
        .ws(&format!("jobId={job}&token={client}"))
        .await
        .unwrap_err();
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(res) => assert_eq!(res.status(), 410),
        other => panic!("the upgrade is refused with 410, not {other}"),
    }
    // A job that never existed is still 404.
    let (status, _) = status_of(
        app.get_as(&format!("/v1/jobs/{}", Uuid::new_v4()), &service)
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The global log from before the horizon says where it is whole from.
    let analytics = app.token(Role::Analytics, None);
    let res = app.get_as("/v1/events?after=0", &analytics).await;
    assert_eq!(res.status(), StatusCode::GONE);
    assert_eq!(
        res.headers()["rejoin-horizon"],
        horizon.to_string().as_str()
    );
    let res = app
        .get_as(&format!("/v1/events?after={horizon}"), &analytics)
        .await;
    assert_eq!(res.status(), StatusCode::OK);

    // The log and the archive prove themselves, and replay reads both as
    // one history.
    let (ok, out) = cli(&app, &["verify"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("retention removed 2001 units ({removed} events)")),
        "{out}"
    );
    let (ok, out) = cli(&app, &["verify", "--archive", &archive_arg]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("2001 units, {removed} events")),
        "{out}"
    );
    let (ok, out) = cli(
        &app,
        &["replay", "--archive", &archive_arg, "--format", "ndjson"],
    );
    assert!(ok);
    let positions: Vec<i64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["position"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let total = common::Db::connect(&app.database_url).await;
    let in_log = count_rows(total).await;
    assert_eq!(positions.len() as i64, removed as i64 + in_log);
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "one order");

    // The archive opens without rejoin: DuckDB, where it is installed.
    if let Ok(python) = std::env::var("DUCKDB_PYTHON") {
        let glob = format!("{archive_arg}/*/*.ndjson.gz");
        let script = format!(
            "import duckdb; print(duckdb.sql(\"SELECT count(*), count(DISTINCT jobId) FROM read_json_auto('{glob}')\").fetchone())"
        );
        let out = std::process::Command::new(python)
            .args(["-c", &script])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(text.trim(), format!("({removed}, 2001)"));
    }
}

async fn count_rows(mut db: common::Db) -> i64 {
    let n = db.scalar("SELECT count(*) FROM events").await;
    db.close().await;
    n
}

/// A metric's value in the `/metrics` text (0 if absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_at_each_step_of_a_sweep_loses_nothing_and_archives_nothing_twice() {
    for step in ["1", "2", "3"] {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("rejoin.db").display());
        let archive = dir.path().join("archive");
        let archive_arg = archive.display().to_string();
        let flags = ["--retain-finished", "1s", "--archive-dir", &archive_arg];
        let crash = [&flags[..], &["--test-crash-at-sweep-step", step]].concat();
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(common::serve_args("127.0.0.1:0", &db, SECRET, &crash));
        let (mut child, addr) = common::start_binary(cmd).await;
        let http = reqwest::Client::new();
        let mut jobs = Vec::new();
        for _ in 0..20 {
            let job = common::create_job_at(&http, addr).await;
            let res = http
                .post(format!("http://{addr}/v1/jobs/{job}/events"))
                .bearer_auth(common::token_for("service", None))
                .json(&json!({"type": "completed"}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 201);
            jobs.push(job);
        }
        // The first batch kills the process at the step.
        let status = tokio::time::timeout(PATIENCE, child.wait())
            .await
            .expect("the sweep reaches the step")
            .unwrap();
        assert!(!status.success(), "step {step}: killed");

        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(common::serve_args("127.0.0.1:0", &db, SECRET, &flags));
        let (mut child, addr) = common::start_binary(cmd).await;
        let url = format!("http://{addr}/metrics");
        eventually("the sweep to resume and finish", || async {
            let events = common::count_events(&db).await;
            let records = {
                let mut d = common::Db::connect(&db).await;
                let n = d
                    .scalar("SELECT count(*) FROM events WHERE kind = 'units_removed'")
                    .await;
                d.close().await;
                n
            };
            (events == records).then_some(())
        })
        .await;
        let _ = http.get(url).send().await;
        child.kill().await.unwrap();

        // Every job's two events are in the archive exactly once, and the
        // log's records and the archive prove each other.
        let lines = archived_lines(&archive);
        assert_eq!(lines.len(), 40, "step {step}: every event archived once");
        let positions: std::collections::HashSet<i64> = lines
            .iter()
            .map(|l| l["position"].as_i64().unwrap())
            .collect();
        assert_eq!(positions.len(), 40, "step {step}: no event twice");
        for job in &jobs {
            let n = lines
                .iter()
                .filter(|l| l["jobId"] == job.to_string())
                .count();
            assert_eq!(n, 2, "step {step}: job {job}");
        }
        assert!(!archive.join(".pending").exists());
        let out = std::process::Command::new(BIN)
            .args(["verify", "--archive", &archive_arg, "--database-url", &db])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "step {step}: {text}");
        assert!(text.contains("20 units, 40 events"), "step {step}: {text}");
    }
}

/// The log's size on disk: the SQLite file's pages, or PostgreSQL's events
/// table after a vacuum (its indexes are printed beside it).
async fn log_bytes(app: &TestApp) -> i64 {
    let mut db = common::Db::connect(&app.database_url).await;
    let bytes = if app.is_postgres() {
        // Index pages a deletion emptied are recycled by the vacuum after
        // the one that marks them deleted.
        db.execute("VACUUM events").await.unwrap();
        db.execute("VACUUM events").await.unwrap();
        let indexes = db.scalar("SELECT pg_indexes_size('events')").await;
        let table = db.scalar("SELECT pg_relation_size('events')").await;
        eprintln!("events: table {table} bytes, its indexes {indexes}");
        table
    } else {
        db.scalar("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")
            .await
    };
    db.close().await;
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_rounds_of_load_and_retention_leave_the_log_its_size() {
    // The window passes when the test moves the clock: each round's load is
    // all in the log at once, then all of it leaves.
    let clock = std::sync::Arc::new(rejoin::clock::ManualClock::starting_now());
    let app = common::spawn_on_clock(&["--retain-finished", "60s"], clock.clone()).await;
    let sizes = three_rounds(&app, || clock.advance(chrono::Duration::seconds(61))).await;
    within_a_fifth(&sizes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: REJOIN_TEST_POSTGRES_URL (.ci/run sets it)"]
async fn three_rounds_on_postgres_leave_the_events_table_its_size_after_vacuum() {
    let Ok(server) = std::env::var("REJOIN_TEST_POSTGRES_URL") else {
        panic!("this test needs PostgreSQL: set REJOIN_TEST_POSTGRES_URL");
    };
    // A node's clock is the database's here: the window passes in real
    // time, longer than a round's load takes, so each round is whole in the
    // table before it leaves.
    let db = rejoin::log::postgres::fresh_schema(&server, "t")
        .await
        .unwrap();
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let extra = vec!["--retain-finished".to_owned(), "20s".to_owned()];
    let app = common::spawn_on(dir, db, extra).await;
    let sizes = three_rounds(&app, || {}).await;
    within_a_fifth(&sizes);
}

/// Three rounds of 500 jobs the size of a bookshelf scan (twenty steps
/// each), each followed by its retention (`pass` lets the window pass);
/// the log's size after each.
async fn three_rounds(app: &TestApp, pass: impl Fn()) -> Vec<i64> {
    let mut sizes = Vec::new();
    for round in 1..=3u64 {
        finished_jobs(app, 500, 20).await;
        pass();
        within(
            Duration::from_secs(90),
            "the round's jobs to leave",
            || async {
                let m = app.metrics().await;
                (metric(&m, "rejoin_retention_removed_units_total{kind=\"job\"}")
                    >= (500 * round) as f64)
                    .then_some(())
            },
        )
        .await;
        sizes.push(log_bytes(app).await);
    }
    eprintln!("the log's bytes after each round: {sizes:?}");
    sizes
}

fn within_a_fifth(sizes: &[i64]) {
    let first = sizes[0] as f64;
    for (round, size) in sizes.iter().enumerate().skip(1) {
        let grew = *size as f64 / first;
        assert!(
            grew <= 1.2,
            "after round {} the log is {size} bytes, {grew:.2} times its size after round 1 ({sizes:?})",
            round + 1
        );
    }
}
