//! The support page in headless Chromium, against a real server with a
//! scripted job history: what a person would see, and a screenshot of it.
//!
//! Needs Debian's `chromium` (`.ci/run` installs it). Without it the test says
//! so and passes on a developer machine, but fails under CI (`CI` set).

use crate::common;

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
#[ignore = "needs Chromium: Debian's chromium, or CHROMIUM=PATH (.ci/run installs it)"]
async fn the_support_page_shows_the_jobs_timeline() {
    let bin = common::cdp::chromium();
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

#[tokio::test]
#[ignore = "needs Chromium: Debian's chromium, or CHROMIUM=PATH (.ci/run installs it)"]
async fn support_staff_find_a_job_open_it_and_watch_an_event_arrive_live() {
    use common::cdp::Browser;
    use serde_json::json;
    let bin = common::cdp::chromium();
    let app = spawn_with(&[]).await;
    let mut jobs = Vec::new();
    for (user, stall) in [("u1", 0), ("u2", 0), ("u1", 1)] {
        let body = json!({"metadata": {"user": user}, "stallAfterSecs": stall});
        jobs.push(app.create_job_from(body).await);
    }
    let stalls = jobs[2];
    app.progress(stalls, 20.0).await;
    app.wait_for_job(stalls, "the stall", |s| s["stalled"] == true)
        .await;

    let token = app.token(Role::Support, None);
    let mut b = Browser::launch(&bin).await;
    b.goto(&app.url(&format!("/support#token={token}"))).await;
    let patience = Duration::from_secs(15);
    // Search: metadata user = u1 finds two jobs, the stalled one first.
    b.eval(
        r##"document.getElementById("s-key").value = "user";
           document.getElementById("s-value").value = "u1";
           document.querySelector("#search button").click(); true"##,
    )
    .await;
    b.wait_until(
        r##"document.getElementById("results").dataset.count === "2""##,
        "two results",
        patience,
    )
    .await;
    let listed = b
        .eval(r##"[...document.querySelectorAll("tr.result")].map(r => r.dataset.job)"##)
        .await;
    assert_eq!(listed, json!([stalls.to_string(), jobs[0].to_string()]));
    let flagged = b
        .eval(r##"document.querySelector("tr.result .stalled-flag") !== null"##)
        .await;
    assert_eq!(flagged, true);

    // Open the stalled job: its state, the stall on its event list.
    b.eval(r##"document.querySelector("tr.result button.open").click(); true"##)
        .await;
    b.wait_until(
        r##"document.body.dataset.loaded === "true""##,
        "the job",
        patience,
    )
    .await;
    let text = b.eval("document.body.innerText").await;
    let text = text.as_str().unwrap();
    assert!(text.contains(&stalls.to_string()), "{text}");
    assert!(text.contains("stalled: no job event since"), "{text}");
    assert!(
        text.contains("stalls after") && text.contains("1 s without an event"),
        "{text}"
    );

    // Live: an event posted now appears without a reload.
    b.eval("window.notReloaded = true").await;
    let seq = app.progress(stalls, 55.0).await;
    b.wait_until(
        &format!(r##"document.querySelector('#job-events tr[data-seq="{seq}"]') !== null"##),
        "the live event",
        patience,
    )
    .await;
    assert_eq!(b.eval("window.notReloaded === true").await, true);
    let shown = b
        .eval(&format!(
            r##"document.querySelector('#job-events tr[data-seq="{seq}"]').innerText"##
        ))
        .await;
    assert!(shown.as_str().unwrap().contains("55%"), "{shown}");
    b.wait_until(
        r##"!document.querySelector("#state .stalled-flag")"##,
        "the stall to clear on screen",
        patience,
    )
    .await;

    // The job finishes: the page says so, stops following, shows the last
    // progress message as past, and draws its timeline to its end.
    let mut ws = app.ws_client(stalls).await;
    common::next_json(&mut ws).await;
    let done = app
        .post_event(stalls, json!({"type": "completed", "result": {"books": 3}}))
        .await;
    assert_eq!(done.status(), 201);
    b.wait_until(
        r##"document.getElementById("live-state").textContent.includes("nothing more will come")"##,
        "the page to see the job finished",
        patience,
    )
    .await;
    let text = b.eval("document.body.innerText").await;
    let text = text.as_str().unwrap();
    assert!(!text.contains("following live"), "{text}");
    assert!(text.contains("completed: {\"books\":3}"), "{text}");
    // (labels are upper-cased by the page's style)
    assert!(
        text.to_lowercase().contains("last progress message"),
        "{text}"
    );
    let reach = b
        .eval(
            r##"(() => { const s = [...document.querySelectorAll(".session .bar span")].pop();
                 return parseFloat(s.style.left) + parseFloat(s.style.width); })()"##,
        )
        .await;
    assert!(
        reach.as_f64().unwrap() > 95.0,
        "the last session's bar reaches the axis's end: {reach}"
    );

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("support-search-live.png");
    b.screenshot(&shot).await;
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000);
    println!("screenshot: {}", shot.display());
}

#[tokio::test]
#[ignore = "needs Chromium: Debian's chromium, or CHROMIUM=PATH (.ci/run installs it)"]
async fn the_support_page_shows_a_job_retention_removed_as_archived() {
    let bin = common::cdp::chromium();
    let app = spawn_with(&["--retain-finished", "1s"]).await;
    let job = app.create_job().await;
    app.progress(job, 50.0).await;
    let res = app
        .post_event(job, serde_json::json!({"type": "completed"}))
        .await;
    assert_eq!(res.status(), 201);
    let service = app.service();
    common::within(
        Duration::from_secs(30),
        "retention to remove the job",
        || async {
            let res = app.get_as(&format!("/v1/jobs/{job}"), &service).await;
            (res.status() == 410).then_some(())
        },
    )
    .await;
    let token = app.token(Role::Support, None);
    let url = app.url(&format!("/support#token={token}&job={job}"));
    let dom = run_chromium(&bin, &url, &["--dump-dom"]).await;
    assert!(
        dom.contains(r#"data-archived="true""#),
        "the page does not show the job as archived:\n{dom}"
    );
    for seen in ["Archived: the job finished at", "with its 3 events"] {
        assert!(
            dom.contains(seen),
            "the page does not show {seen:?}:\n{dom}"
        );
    }
    assert!(!dom.contains("Could not load the job"));
}
