//! The log's guarantees: append-only in the database itself, hash chains that
//! `rejoin verify` checks, group commit, and a server that starts with no
//! configuration.

use crate::common;

use std::time::Duration;

use common::{spawn_app, Db};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_rejoin");

#[tokio::test]
async fn the_database_refuses_update_and_delete_on_events() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    app.progress(job, 10.0).await;
    let mut db = Db::connect(&app.db_url()).await;
    let update = db
        .execute("UPDATE events SET payload = '{}' WHERE seq = 2")
        .await
        .unwrap_err();
    assert!(update.contains("append-only"), "{update}");
    let delete = db.execute("DELETE FROM events").await.unwrap_err();
    assert!(delete.contains("append-only"), "{delete}");
    let epoch = db
        .execute("UPDATE log_meta SET epoch = 'x'")
        .await
        .unwrap_err();
    assert!(epoch.contains("immutable"), "{epoch}");
    if app.is_postgres() {
        let truncate = db.execute("TRUNCATE events").await.unwrap_err();
        assert!(truncate.contains("append-only"), "{truncate}");
    }
    assert_eq!(app.count_events().await, 2);
}

async fn verify(url: &str) -> (bool, String) {
    let out = tokio::process::Command::new(BIN)
        .args(["verify", "--database-url", url])
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn verify_passes_on_a_good_log_and_names_the_first_tampered_event() {
    let mut app = spawn_app().await;
    let a = app.create_job().await;
    let b = app.create_job().await;
    for p in [10.0, 20.0, 30.0] {
        app.progress(a, p).await;
        app.progress(b, p).await;
    }
    app.stop().await;
    let url = app.db_url();
    let (ok, out) = verify(&url).await;
    assert!(ok, "{out}");
    assert!(out.contains("8 events in 2 jobs"), "{out}");

    // Tamper with job a's seq 3 (progress 20 -> 99), with the triggers dropped.
    let mut db = Db::connect(&url).await;
    let drop_trigger = if app.is_postgres() {
        "DROP TRIGGER events_append_only ON events"
    } else {
        "DROP TRIGGER events_refuse_update"
    };
    db.execute(drop_trigger).await.unwrap();
    db.execute(&format!(
        "UPDATE events SET payload = replace(payload, '20.0', '99.0') WHERE job_id = '{a}' AND seq = 3"
    ))
    .await
    .unwrap();
    let position = db
        .scalar(&format!(
            "SELECT position FROM events WHERE job_id = '{a}' AND seq = 3"
        ))
        .await;
    db.close().await;
    let (ok, out) = verify(&url).await;
    assert!(!ok, "verify must fail: {out}");
    assert!(
        out.contains(&format!("position {position} (job {a}, seq 3)")),
        "{out}"
    );
}

#[tokio::test]
async fn concurrent_appends_share_commits_and_are_acknowledged_only_after_them() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    let stats = app.engine.stats();
    let commits_before = stats.commits.load(std::sync::atomic::Ordering::SeqCst);
    let events_before = stats.events.load(std::sync::atomic::Ordering::SeqCst);

    // Hold the log's write lock from another connection (SQLite's, or the
    // advisory lock PostgreSQL appends take): the writer's first commit waits
    // on it while the other appends queue behind.
    let mut blocker = Db::connect(&app.db_url()).await;
    if app.is_postgres() {
        blocker.execute("BEGIN").await.unwrap();
        blocker
            .execute(&format!(
                "SELECT pg_advisory_xact_lock({})",
                rejoin::log::postgres::APPEND_LOCK
            ))
            .await
            .unwrap();
    } else {
        blocker.execute("BEGIN IMMEDIATE").await.unwrap();
    }

    const N: usize = 64;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let http = app.http.clone();
        let url = app.url(&format!("/v1/jobs/{job}/events"));
        let token = app.service();
        tasks.spawn(async move {
            let res = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"type": "progress", "progress": (i % 100) as f64}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 201);
            res.json::<Value>().await.unwrap()["seq"].as_i64().unwrap()
        });
    }
    // Wait until every append has reached the writer: some in the batch that is
    // blocked on the lock, the rest queued.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        let queued = stats.queued.load(std::sync::atomic::Ordering::SeqCst);
        let taken = stats.taken.load(std::sync::atomic::Ordering::SeqCst);
        // `taken` includes the job creation before the appends.
        if queued + taken > N as u64 && taken >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "appends never queued"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Nothing is acknowledged while nothing can be committed.
    assert!(
        tasks.try_join_next().is_none(),
        "an append was acknowledged before its commit"
    );
    assert_eq!(
        stats.commits.load(std::sync::atomic::Ordering::SeqCst),
        commits_before
    );

    blocker.execute("COMMIT").await.unwrap();
    let mut seqs = Vec::new();
    while let Some(seq) = tasks.join_next().await {
        seqs.push(seq.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (2..2 + N as i64).collect::<Vec<_>>());
    let commits = stats.commits.load(std::sync::atomic::Ordering::SeqCst) - commits_before;
    let events = stats.events.load(std::sync::atomic::Ordering::SeqCst) - events_before;
    assert_eq!(events, N as u64);
    assert!(commits < N as u64 / 4, "{N} appends took {commits} commits");
    assert_eq!(app.count_events().await, 1 + N as i64);
}

#[tokio::test]
async fn the_binary_starts_with_no_configuration_and_stops_cleanly_on_sigterm() {
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(cwd.path())
        .env_remove("REJOIN_DATABASE_URL")
        .env_remove("REJOIN_JWT_SECRET");
    let (mut child, addr) = common::start_binary(cmd).await;

    // The default data directory, database and generated secret exist.
    let secret = cwd.path().join("sqlite/jwt-secret");
    assert!(cwd.path().join("sqlite/rejoin.db").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // `rejoin token` signs with the same generated secret.
    let out = tokio::process::Command::new(BIN)
        .args(["token", "--role", "service"])
        .current_dir(cwd.path())
        .env_remove("REJOIN_JWT_SECRET")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let http = reqwest::Client::new();
    let res = http
        .post(format!("http://{addr}/v1/jobs"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    // From another directory, `rejoin token` never makes a key of its own: it
    // says where it looked and how to point it at the server's data directory,
    // and with that directory it signs tokens the server takes.
    let elsewhere = tempfile::tempdir().unwrap();
    let token_from = |dir: &std::path::Path, extra: &[&str]| {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(["token", "--role", "service"])
            .args(extra)
            .current_dir(dir)
            .env_remove("REJOIN_JWT_SECRET")
            .env_remove("REJOIN_DATA_DIR")
            .env_remove("REJOIN_DATABASE_URL");
        cmd
    };
    let lost = token_from(elsewhere.path(), &[]).output().await.unwrap();
    assert!(!lost.status.success());
    let said = String::from_utf8_lossy(&lost.stderr);
    let looked = elsewhere.path().join("sqlite/jwt-secret");
    assert!(said.contains(&looked.display().to_string()), "{said}");
    assert!(
        said.contains("--data-dir") && said.contains("--jwt-secret-file"),
        "{said}"
    );
    assert!(!elsewhere.path().join("sqlite").exists(), "wrote nothing");
    let data_dir = cwd.path().join("sqlite");
    let found = token_from(
        elsewhere.path(),
        &["--data-dir", data_dir.to_str().unwrap()],
    )
    .output()
    .await
    .unwrap();
    assert!(
        found.status.success(),
        "{}",
        String::from_utf8_lossy(&found.stderr)
    );
    let token = String::from_utf8(found.stdout).unwrap().trim().to_owned();
    let res = http
        .get(format!("http://{addr}/v1/jobs"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the server takes it");

    let pid = child.id().unwrap() as i32;
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the server exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        common::count_events(&format!(
            "sqlite://{}",
            cwd.path().join("sqlite/rejoin.db").display()
        ))
        .await,
        1
    );
}
