//! The support page in headless Chromium, against a real server with a
//! scripted job history: what a person would see, and a screenshot of it.
//!
//! Needs Debian's `chromium` (`.ci/run` installs it). Without it the test says
//! so and passes on a developer machine, but fails under CI (`CI` set).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{spawn_with, story};
use rejoin::auth::Role;

/// Runs headless Chromium on `url` with `args` and returns its stdout.
async fn run_chromium(bin: &PathBuf, url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(common::cdp::FLAGS)
        .args(["--window-size=1280,1500", "--virtual-time-budget=20000"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium finishes")
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn the_support_page_shows_the_jobs_timeline() {
    let Some(bin) = common::cdp::chromium() else {
        return;
    };
    let app = spawn_with(&["--grace-secs", "0.3"]).await;
    let story = story::build(&app).await;
    let token = app.token(Role::Support, None);
    let url = app.url(&format!("/support#token={token}&job={}", story.job));

    let dom = run_chromium(&bin, &url, &["--dump-dom"]).await;
    assert!(
        dom.contains(r#"data-loaded="true""#),
        "the page did not load the job:\n{dom}"
    );
    std::fs::write(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("support-page.html"),
        &dom,
    )
    .unwrap();
    for seen in [
        "Sessions (2)",
        "Session 1",
        &story.first_session,
        "ended (grace expired)",
        "3 sockets",
        "replayed 2",
        "closed 1006 connection lost",
        "resumed the session",
        "replayed 2 missed events",
        "socket closed 1000 Client reconnecting: another connection took over",
        "grace expired: the client did not come back",
        "Session 2",
        &story.second_session,
        "closed 1000 user left the screen",
        "Refused connection attempts (1)",
        "refused 401 invalid_token",
    ] {
        assert!(dom.contains(seen), "the page does not show {seen:?}");
    }
    // The timeline bars: session 1 had three connected stretches and two gaps.
    let first = dom.split("Session 2").next().unwrap();
    assert_eq!(first.matches(r#"<span class="connected""#).count(), 3);
    assert_eq!(first.matches(r#"<span class="gap""#).count(), 2);

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("support-page.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(&bin, &url, &[&format!("--screenshot={}", shot.display())]).await;
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    assert!(
        png.len() > 20_000,
        "the screenshot has content ({} bytes)",
        png.len()
    );
    println!("screenshot: {}", shot.display());

    // A wrong token shows the refusal, not a broken page.
    let url = app.url(&format!("/support#token=nope&job={}", story.job));
    let dom = run_chromium(&bin, &url, &["--dump-dom"]).await;
    assert!(dom.contains("Could not load the job: 401"), "{dom}");
}
