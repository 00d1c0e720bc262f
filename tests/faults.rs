//! Faults under the log: a disk that fills up (a small tmpfs), and a database
//! that cannot be opened at start.
//!
//! The disk-full test mounts a 2 MiB tmpfs, so it needs root: a plain
//! `cargo test` ignores it, `cargo test -- --ignored` (CI, as root) runs it.

use crate::common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::spawn_in;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_rejoin");

/// A small tmpfs, unmounted on drop.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            return None;
        }
        Some(SmallDisk {
            path: dir.path().to_owned(),
            _dir: dir,
        })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Fills the filesystem at `dir` with one file until writes fail.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

#[tokio::test]
#[ignore = "mounts a 2 MiB tmpfs, so it needs root: `cargo test -- --ignored faults::` as root (.ci/run does)"]
async fn a_full_disk_answers_503_keeps_serving_reads_and_recovers_when_space_returns() {
    let disk = SmallDisk::mount("2m").expect("this test needs root, to mount a tmpfs");
    let dir = Arc::new(tempfile::tempdir_in(&disk.path).unwrap());
    let app = spawn_in(dir.clone(), vec![]).await;
    let job = app.create_job().await;
    let mut ws = app.ws_client(job).await;
    common::next_json(&mut ws).await;
    let first = app.progress(job, 1.0).await;

    let filler = fill(&disk.path);
    let service = app.service();
    let mut acked = vec![first];
    let mut refused = None;
    for i in 0..5_000 {
        let res = app
            .post_as(
                &format!("/v1/jobs/{job}/events"),
                &service,
                &json!({"type": "progress", "progress": 2.0, "message": format!("{i:0>200}")}),
            )
            .await;
        match res.status().as_u16() {
            201 => acked.push(res.json::<Value>().await.unwrap()["seq"].as_i64().unwrap()),
            503 => {
                assert_eq!(res.headers()["retry-after"], "1");
                refused = Some(res.json::<Value>().await.unwrap());
                break;
            }
            other => panic!("append {i}: unexpected {other}"),
        }
    }
    let refused = refused.expect("a full disk refuses appends");
    assert_eq!(refused["error"]["code"], "log_unavailable");

    // Reads go on: the job, its events (every acknowledged one, nothing half
    // written), health, and the socket still open.
    let state = app.get_job(job).await;
    assert_eq!(state["lastSeq"], *acked.last().unwrap());
    let events = app
        .get_json(
            &format!("/v1/jobs/{job}/events"),
            Some(&app.token(rejoin::auth::Role::Support, None)),
        )
        .await;
    let seqs: Vec<i64> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "progress")
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, acked, "exactly the acknowledged events are there");
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Space returns: appends work again and reach the socket, in order.
    std::fs::remove_file(filler).unwrap();
    let seq = app.progress(job, 3.0).await;
    assert!(seq > *acked.last().unwrap());
    loop {
        let msg = common::next_json(&mut ws).await;
        if msg["seq"] == seq {
            break;
        }
    }
    let verify = std::process::Command::new(BIN)
        .args(["verify", "--database-url", &app.db_url()])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    drop(ws);
    let mut app = app;
    app.stop().await;
}

#[tokio::test]
async fn a_database_that_cannot_be_opened_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![7u8; 8192]).unwrap();
    for (url, says) in [
        (
            format!("sqlite://{}/rejoin.db", not_a_dir.display()),
            not_a_dir.display().to_string(),
        ),
        (
            format!("sqlite://{}", garbage.display()),
            garbage.display().to_string(),
        ),
    ] {
        let out = tokio::process::Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--jwt-secret",
                common::SECRET,
                "--database-url",
                &url,
            ])
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "{url} must not start");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("cannot open the log"), "{url}: {stderr}");
        assert!(stderr.contains(&says), "{url}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
