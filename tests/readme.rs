//! The README's walk-through, run as written: its lines go, one at a time,
//! to a bash shell against a real server on its own SQLite file, with
//! `cargo run --release -q --` standing for the built binary and
//! `localhost:8080` for the server's address. The `websocat` lines are
//! played by a WebSocket client here (the same URL, expanded by the shell;
//! `kill %1` drops it without a close frame), so the test needs only curl.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{spawn_announcing, BIN, PATIENCE};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

/// The walk-through's shell lines: its first `sh` block, without comments.
fn walkthrough() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## Walk-through").expect("a walk-through")..];
    let block = section
        .split("```sh\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// What one watcher received: its messages, and its close.
#[derive(Default, Debug)]
struct Watched {
    messages: Vec<Value>,
    close: Option<(u16, String)>,
}

struct Shell {
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    _child: tokio::process::Child,
}

impl Shell {
    /// Runs one line; its output and exit status.
    async fn run(&mut self, line: &str) -> (String, i32) {
        // Curl prints no newline after its body: the marker starts a line
        // of its own whatever came before.
        let script = format!("{line}\nprintf '\\n__done__ %s\\n' \"$?\"\n");
        self.stdin.write_all(script.as_bytes()).await.unwrap();
        let mut out = String::new();
        loop {
            let next = tokio::time::timeout(PATIENCE, self.stdout.next_line())
                .await
                .expect("the line finishes in time")
                .unwrap()
                .expect("the shell is running");
            if let Some(status) = next.strip_prefix("__done__ ") {
                return (out.trim().to_owned(), status.parse().unwrap());
            }
            out.push_str(&next);
            out.push('\n');
        }
    }
}

async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walk_through_works_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("rejoin.db").display());
    let mut serve = tokio::process::Command::new(BIN);
    serve
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("REJOIN_DATABASE_URL", &db)
        .stderr(std::process::Stdio::null());
    let (_server, addr) = tokio::time::timeout(PATIENCE, spawn_announcing(serve))
        .await
        .expect("the server starts")
        .unwrap();

    let mut child = tokio::process::Command::new("bash")
        .args(["--noprofile", "--norc"])
        .env("REJOIN_DATABASE_URL", &db)
        .env("REJOIN", BIN)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut shell = Shell {
        stdin: child.stdin.take().unwrap(),
        stdout: BufReader::new(child.stdout.take().unwrap()).lines(),
        _child: child,
    };
    // `cargo run --release -q -- ARGS` is the built binary with ARGS.
    let (_, status) = shell.run(r#"cargo() { shift 4; "$REJOIN" "$@"; }"#).await;
    assert_eq!(status, 0);

    let mut outputs = Vec::new();
    let mut watchers: Vec<Arc<Mutex<Watched>>> = Vec::new();
    let mut live: Option<tokio::task::JoinHandle<()>> = None;
    for line in walkthrough() {
        let line = line.replace("localhost:8080", &addr);
        if let Some(rest) = line.strip_prefix("websocat") {
            let quoted = &rest[rest.find('"').unwrap()..=rest.rfind('"').unwrap()];
            let (url, status) = shell.run(&format!("printf '%s\\n' {quoted}")).await;
            assert_eq!(status, 0);
            let (mut ws, _) = tokio_tungstenite::connect_async(url.trim()).await.unwrap();
            let watched = Arc::new(Mutex::new(Watched::default()));
            watchers.push(watched.clone());
            live = Some(tokio::spawn(async move {
                while let Some(Ok(msg)) = ws.next().await {
                    let mut w = watched.lock().unwrap();
                    match msg {
                        Message::Text(t) => w.messages.push(serde_json::from_str(&t).unwrap()),
                        Message::Close(f) => {
                            w.close = f.map(|f| (u16::from(f.code), f.reason.to_string()));
                            return;
                        }
                        _ => {}
                    }
                }
            }));
            let w = watchers.last().unwrap().clone();
            until("the watcher's first message", || {
                !w.lock().unwrap().messages.is_empty()
            })
            .await;
        } else if line == "kill %1" {
            let w = watchers.last().unwrap().clone();
            until("the progress to reach the watcher", || {
                w.lock()
                    .unwrap()
                    .messages
                    .iter()
                    .any(|m| m["type"] == "progress")
            })
            .await;
            live.take().unwrap().abort(); // the socket is dropped, no close frame
        } else {
            let (out, status) = shell.run(&line).await;
            assert_eq!(status, 0, "`{line}` failed: {out}");
            outputs.push((line, out));
        }
    }
    let second = watchers[1].clone();
    until("the close after completed", || {
        second.lock().unwrap().close.is_some()
    })
    .await;

    // The create answer, printed by `echo "$CREATED"`.
    let created: Value = serde_json::from_str(&outputs[2].1).unwrap();
    assert!(created["clientToken"].is_string(), "{created}");

    let first = watchers[0].lock().unwrap();
    assert_eq!(first.messages[0]["type"], "connected");
    assert_eq!(first.messages[0]["jobId"], created["jobId"]);
    assert_eq!(first.messages[1]["type"], "progress");
    assert_eq!(first.messages[1]["progress"], 45.0);
    assert_eq!(first.messages[1]["seq"], 3, "the README's lastSeq=3");

    let second = second.lock().unwrap();
    let types: Vec<&str> = second
        .messages
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["reconnected", "progress", "completed"]);
    assert_eq!(second.messages[0]["resumed"], true);
    assert_eq!(second.messages[0]["missed"], 1);
    assert_eq!(second.messages[1]["progress"], 60.0);
    assert_eq!(second.close, Some((1000, "job finished".to_owned())));

    // Every curl printed JSON; the last three read the job back.
    let json = |i: usize| -> Value {
        let (line, out) = &outputs[i];
        serde_json::from_str(out).unwrap_or_else(|_| panic!("`{line}` printed {out}"))
    };
    let n = outputs.len();
    assert_eq!(json(n - 3)["status"], "completed");
    let as_of = json(n - 2);
    assert_eq!(as_of["status"], "running");
    assert_eq!(as_of["progress"], 45.0);
    assert_eq!(json(n - 1)["sessions"].as_array().unwrap().len(), 1);
}
