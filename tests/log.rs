//! The log's guarantees: append-only in the database itself, hash chains that
//! `rejoin verify` checks, group commit, and a server that starts with no
//! configuration.

mod common;

use std::time::Duration;

use common::spawn_app;
use serde_json::{json, Value};
use sqlx::Connection;

const BIN: &str = env!("CARGO_BIN_EXE_rejoin");

async fn connect(db: &std::path::Path) -> sqlx::SqliteConnection {
    sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap()
}

#[tokio::test]
async fn the_database_refuses_update_and_delete_on_events() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    app.progress(job, 10.0).await;
    let mut conn = connect(&app.db_path()).await;
    let update = sqlx::query("UPDATE events SET payload = '{}' WHERE seq = 2")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(update.to_string().contains("append-only"), "{update}");
    let delete = sqlx::query("DELETE FROM events")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(delete.to_string().contains("append-only"), "{delete}");
    let epoch = sqlx::query("UPDATE log_meta SET epoch = 'x'")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(epoch.to_string().contains("immutable"), "{epoch}");
    assert_eq!(app.count_events().await, 2);
}

async fn verify(db: &std::path::Path) -> (bool, String) {
    let out = tokio::process::Command::new(BIN)
        .args(["verify", "--database-url"])
        .arg(format!("sqlite://{}", db.display()))
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
    let db = app.db_path();
    let (ok, out) = verify(&db).await;
    assert!(ok, "{out}");
    assert!(out.contains("8 events in 2 jobs"), "{out}");

    // Tamper with job a's seq 3 (progress 20 -> 99), with the triggers dropped.
    let mut conn = connect(&db).await;
    sqlx::query("DROP TRIGGER events_refuse_update")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE events SET payload = replace(payload, '20.0', '99.0') WHERE job_id = ? AND seq = 3",
    )
    .bind(a.to_string())
    .execute(&mut conn)
    .await
    .unwrap();
    let position: i64 =
        sqlx::query_scalar("SELECT position FROM events WHERE job_id = ? AND seq = 3")
            .bind(a.to_string())
            .fetch_one(&mut conn)
            .await
            .unwrap();
    conn.close().await.unwrap();
    let (ok, out) = verify(&db).await;
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

    // Hold SQLite's write lock from another connection: the writer's first
    // commit waits on it while the other appends queue behind.
    let mut blocker = connect(&app.db_path()).await;
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .unwrap();

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

    sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();
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
        common::count_events(&cwd.path().join("sqlite/rejoin.db")).await,
        1
    );
}
