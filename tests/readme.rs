//! The README's walk-through, run as written: its lines go, one at a time,
//! to a bash shell against a real server on its own SQLite file, with
//! `cargo run -q --` standing for the built binary and
//! `localhost:8080` for the server's address; the `watch` lines run the
//! binary's watcher in the background, as they would in a terminal. Then
//! every message the README shows in a comment is checked against what the
//! server and the watcher printed: the README's messages are the server's.

use crate::common;

use std::sync::{Arc, Mutex};

use common::{spawn_announcing, BIN, PATIENCE};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// The walk-through's first `sh` block.
fn walkthrough_block() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## Walk-through").expect("a walk-through")..];
    section
        .split("```sh\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap()
        .to_owned()
}

/// The walk-through's shell lines, without comments.
fn walkthrough() -> Vec<String> {
    walkthrough_block()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The `"key":value` pairs a comment shows in full (a value with `…` in it
/// is elided; a nested object or array is compared whole), one list per
/// top-level `{…}` in the comment.
fn documented(comment: &str) -> Vec<Vec<(String, Value)>> {
    let mut objects = Vec::new();
    let mut rest = comment;
    while let Some(start) = rest.find('{') {
        let Some(len) = balanced(&rest[start..]) else {
            break;
        };
        let inner = &rest[start + 1..start + len - 1];
        let mut pairs = Vec::new();
        for field in top_level_fields(inner) {
            let Some((key, value)) = field.split_once("\":") else {
                continue;
            };
            let key = key.trim().trim_start_matches('"');
            let value = value.trim();
            if value.contains('…') || key.contains('…') {
                continue;
            }
            if let Ok(v) = serde_json::from_str::<Value>(value) {
                pairs.push((key.to_owned(), v));
            }
        }
        objects.push(pairs);
        rest = &rest[start + len..];
    }
    objects
}

/// The length of the `{…}` (or `[…]`) that `text` starts with, brackets
/// inside strings aside; `None` if it does not close.
fn balanced(text: &str) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            '{' | '[' if !in_string => depth += 1,
            '}' | ']' if !in_string => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + c.len_utf8());
                }
            }
            _ => {}
        }
    }
    None
}

/// An object's inside split at its own commas (not those of nested values
/// or strings).
fn top_level_fields(inner: &str) -> Vec<&str> {
    let (mut fields, mut from) = (Vec::new(), 0);
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            '{' | '[' if !in_string => depth += 1,
            '}' | ']' if !in_string => depth = depth.saturating_sub(1),
            ',' if !in_string && depth == 0 => {
                fields.push(&inner[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    fields.push(&inner[from..]);
    fields
}

/// Whether `v` holds every pair (numbers compared as numbers).
fn shows(v: &Value, pairs: &[(String, Value)]) -> bool {
    pairs.iter().all(|(k, want)| match (&v[k], want) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (got, want) => got == want,
    })
}

/// A watcher's update lines, told apart from the commands' output.
fn is_watch_line(v: &Value) -> bool {
    matches!(
        v["type"].as_str(),
        Some("connection" | "state" | "event" | "finished")
    )
}

/// A bash shell: its output lines, with the watchers' update lines routed
/// aside as they come.
struct Shell {
    stdin: tokio::process::ChildStdin,
    output: mpsc::UnboundedReceiver<String>,
    child: tokio::process::Child,
}

impl Drop for Shell {
    /// The shell and its background jobs (a watcher left running when a
    /// check failed) go together: they share its process group.
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: a signal to the process group this test started.
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        }
    }
}

impl Shell {
    fn start(db: &str, watched: Arc<Mutex<Vec<Value>>>) -> Shell {
        let mut child = tokio::process::Command::new("bash")
            .args(["--noprofile", "--norc"])
            .env("REJOIN_DATABASE_URL", db)
            .env("REJOIN", BIN)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, output) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                // A background watcher's line may land right after curl's
                // output, which ends without a newline: split the values.
                let values: Result<Vec<Value>, _> = serde_json::Deserializer::from_str(&line)
                    .into_iter()
                    .collect();
                let rest = match values {
                    Ok(values) => {
                        let (watch, rest): (Vec<Value>, Vec<Value>) =
                            values.into_iter().partition(is_watch_line);
                        watched.lock().unwrap().extend(watch);
                        if rest.is_empty() {
                            continue;
                        }
                        rest.iter().map(Value::to_string).collect()
                    }
                    Err(_) => line,
                };
                if tx.send(rest).is_err() {
                    return;
                }
            }
        });
        Shell {
            stdin: child.stdin.take().unwrap(),
            output,
            child,
        }
    }

    /// Runs one line; its output and exit status.
    async fn run(&mut self, line: &str) -> (String, i32) {
        // Curl prints no newline after its body: the marker starts a line
        // of its own whatever came before.
        let script = format!("{line}\nprintf '\\n__done__ %s\\n' \"$?\"\n");
        self.stdin.write_all(script.as_bytes()).await.unwrap();
        let mut out = String::new();
        loop {
            let next = tokio::time::timeout(PATIENCE, self.output.recv())
                .await
                .expect("the line finishes in time")
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
    common::eventually(what, || async { check().then_some(()) }).await;
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

    let watched = Arc::new(Mutex::new(Vec::<Value>::new()));
    let mut shell = Shell::start(&db, watched.clone());
    // `cargo run … -- ARGS` is the built binary with ARGS; in a subshell
    // (`&`, `$(…)`) it replaces the subshell, as `cargo run` execs the
    // program, so `kill %1` reaches the watcher itself.
    let (_, status) = shell
        .run(r#"cargo() { while [ "$1" != "--" ]; do shift; done; shift; if [ "$BASH_SUBSHELL" -gt 0 ]; then exec "$REJOIN" "$@"; else "$REJOIN" "$@"; fi; }"#)
        .await;
    assert_eq!(status, 0);
    let lines_of = |kind: &'static str, field: &'static str, value: &'static str| {
        let watched = watched.clone();
        move || {
            watched
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l["type"] == kind && l[field] == value)
                .count()
        }
    };

    let mut outputs = Vec::new();
    let mut watchers = 0;
    for line in walkthrough() {
        let line = line.replace("localhost:8080", &addr);
        if line == "kill %1" {
            let progressed = lines_of("event", "event", "progress");
            until("the progress to reach the watcher", || progressed() == 1).await;
        }
        let (out, status) = shell.run(&line).await;
        assert_eq!(status, 0, "`{line}` failed: {out}");
        if line.contains(" watch ") {
            watchers += 1;
            let live = lines_of("connection", "state", "live");
            until("the watcher live", || live() == watchers).await;
        } else {
            outputs.push((line, out));
        }
    }
    let finished = lines_of("finished", "status", "completed");
    until("the watcher's end", || finished() == 1).await;
    let watched = watched.lock().unwrap().clone();

    // The create answer, printed by `echo "$CREATED"`.
    let created: Value = serde_json::from_str(&outputs[2].1).unwrap();
    assert!(created["clientToken"].is_string(), "{created}");
    let hellos: Vec<&Value> = watched.iter().filter(|l| l["type"] == "state").collect();
    assert_eq!(hellos.len(), 2, "{watched:#?}");
    assert_eq!(hellos[0]["hello"], "connected");
    assert_eq!(hellos[0]["jobId"], created["jobId"]);
    assert_eq!(hellos[1]["hello"], "reconnected");
    assert_eq!(hellos[1]["resumed"], true);
    assert_eq!(hellos[1]["sessionId"], hellos[0]["sessionId"]);
    let events: Vec<(&str, i64)> = watched
        .iter()
        .filter(|l| l["type"] == "event")
        .map(|l| (l["event"].as_str().unwrap(), l["seq"].as_i64().unwrap()))
        .collect();
    assert_eq!(events[0], ("progress", 3), "the README's --last-seq 3");
    assert_eq!(events.len(), 3, "each event once: {events:?}");

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

    // Each message the README shows is one the server or the watcher
    // printed, field for field where it is not elided.
    let mut printed: Vec<Value> = watched;
    printed.extend(
        outputs
            .iter()
            .filter_map(|(_, out)| serde_json::from_str::<Value>(out).ok()),
    );
    let block = walkthrough_block();
    let comments = block
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("# {"));
    let mut checked = 0;
    for comment in comments {
        for pairs in documented(comment) {
            assert!(
                printed.iter().any(|p| shows(p, &pairs)),
                "the README shows {pairs:?} ({comment}), which nothing printed: {printed:#?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} documented messages found");
}
