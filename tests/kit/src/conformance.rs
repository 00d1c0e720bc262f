//! The client conformance suite's runner: every scenario of
//! `clients/conformance/scenarios.json` against one client, through that
//! client's watcher (its `rejoin-watch`: one JSON line per update on stdout,
//! exit 0 when the job completed).
//!
//! For each scenario the runner starts a real `rejoin serve` on a fresh
//! SQLite file, puts a [`Relay`] between it and the client, creates a job,
//! and plays the steps: it starts the watcher with `--url` (the relay),
//! `--job`, `--token` and fast timings, posts events, cuts the connection
//! (reset or silent), kills and restarts the server, replaces the log's
//! epoch, refuses connections with a status of its own, takes the session
//! over from a socket of its own, and finishes the job. Then it checks what
//! the watcher printed against the scenario's `expect`: the connection
//! states it went through, whether each connection resumed, every event
//! once and in order, how the job ended, the exit status, and how often it
//! knocked while refused.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use uuid::Uuid;

use crate::client::post_json_at;
use crate::process::serve_binary_at;
use crate::relay::{Drop, Relay};
use crate::socket::{first_message, ws_connect, Ws};
use crate::tokens::{Tokens, SECRET};

/// The longest the runner waits for anything a scenario expects.
const WAIT: Duration = Duration::from_secs(20);

/// Timings every watcher is started with, so that drops are found and
/// retries made in well under a second.
pub const FAST: [&str; 6] = [
    "--ping-secs",
    "0.5",
    "--retry-base-secs",
    "0.1",
    "--retry-cap-secs",
    "0.5",
];

/// One scenario of the file.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub proves: String,
    steps: Vec<Value>,
    expect: Value,
}

/// The scenarios in `file` (a JSON array of `{name, proves, steps, expect}`).
pub fn load(file: &Path) -> anyhow::Result<Vec<Scenario>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let all: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
    let list = all["scenarios"]
        .as_array()
        .ok_or_else(|| anyhow!("{} has no \"scenarios\" array", file.display()))?;
    list.iter()
        .map(|s| {
            let field = |k: &str| {
                s[k].as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow!("a scenario without a string {k:?}: {s}"))
            };
            Ok(Scenario {
                name: field("name")?,
                proves: field("proves")?,
                steps: s["steps"]
                    .as_array()
                    .cloned()
                    .ok_or_else(|| anyhow!("scenario {s} has no steps"))?,
                expect: s["expect"].clone(),
            })
        })
        .collect()
}

/// The scenario file of this workspace.
pub fn default_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/conformance/scenarios.json")
}

/// The client under test: its watcher's command line, to which the runner
/// appends `--url … --job … --token …` and the timings.
#[derive(Clone, Debug)]
pub struct Client {
    pub command: Vec<String>,
}

/// Runs one scenario; `Err` says what the watcher did wrong, with its output.
pub async fn run(rejoin: &Path, client: &Client, scenario: &Scenario) -> anyhow::Result<()> {
    let mut world = World::start(rejoin, client.clone()).await?;
    let result = world.play(scenario).await;
    let transcript = world.transcript();
    world.shut().await;
    result.map_err(|e| anyhow!("{e:#}\n  the watcher printed:\n{transcript}"))
}

/// What one start of the watcher printed, and how it ended.
struct Run {
    child: Option<Child>,
    /// Each line, with when the runner read it.
    lines: Arc<Mutex<Vec<(Instant, Value)>>>,
    /// The task reading its stdout: done once the pipe is.
    reader: Option<tokio::task::JoinHandle<()>>,
    exit: Option<i32>,
    started: Instant,
    /// The position it was started from (`--session-id`, `--last-seq`, `--epoch`).
    given: Option<(String, i64, String)>,
    /// The seq it was told to resume after (`--last-seq`).
    resumed_after: Option<i64>,
}

impl Run {
    fn lines(&self) -> Vec<Value> {
        self.timed().into_iter().map(|(_, l)| l).collect()
    }

    fn timed(&self) -> Vec<(Instant, Value)> {
        self.lines.lock().unwrap().clone()
    }

    fn of_type(&self, kind: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["type"] == kind)
            .collect()
    }

    fn lives(&self) -> usize {
        self.of_type("connection")
            .iter()
            .filter(|l| l["state"] == "live")
            .count()
    }

    fn seqs(&self) -> Vec<i64> {
        self.of_type("event")
            .iter()
            .filter_map(|l| l["seq"].as_i64())
            .collect()
    }

    /// The connection states, each change once.
    fn states(&self) -> Vec<String> {
        let mut states: Vec<String> = Vec::new();
        for line in self.of_type("connection") {
            let state = line["state"].as_str().unwrap_or_default().to_owned();
            if states.last() != Some(&state) {
                states.push(state);
            }
        }
        states
    }

    /// The position it would resume from: session, last seq, epoch.
    fn position(&self) -> anyhow::Result<(String, i64, String)> {
        let hello = self
            .of_type("state")
            .pop()
            .ok_or_else(|| anyhow!("the watcher printed no state line"))?;
        let session = hello["sessionId"].as_str().unwrap_or_default().to_owned();
        let epoch = hello["epoch"].as_str().unwrap_or_default().to_owned();
        ensure!(
            !session.is_empty() && !epoch.is_empty(),
            "a state line without sessionId or epoch: {hello}"
        );
        let last = self
            .seqs()
            .last()
            .copied()
            .or(hello["lastSeq"].as_i64())
            .unwrap_or(0);
        Ok((session, last, epoch))
    }
}

struct World {
    dir: tempfile::TempDir,
    rejoin: PathBuf,
    client: Client,
    http: reqwest::Client,
    tokens: Tokens,
    server: Child,
    addr: std::net::SocketAddr,
    relay: Relay,
    job: Uuid,
    /// The seqs of every job event the runner posted, in order.
    posted: Vec<i64>,
    runs: Vec<Run>,
    /// When the watcher's token expires (seconds since the epoch).
    token_exp: i64,
    /// The sockets that took a session over.
    takers: Vec<Ws>,
}

impl World {
    async fn start(rejoin: &Path, client: Client) -> anyhow::Result<World> {
        let dir = tempfile::tempdir()?;
        let (server, addr) = serve(rejoin, dir.path()).await;
        let relay = Relay::start(addr).await;
        let tokens = Tokens::new(SECRET);
        let http = reqwest::Client::new();
        let job =
            crate::client::create_job_with(&http, &addr.to_string(), &tokens.service()).await?;
        Ok(World {
            dir,
            rejoin: rejoin.to_owned(),
            client,
            http,
            tokens,
            server,
            addr,
            relay,
            job,
            posted: Vec::new(),
            runs: Vec::new(),
            token_exp: 0,
            takers: Vec::new(),
        })
    }

    async fn play(&mut self, scenario: &Scenario) -> anyhow::Result<()> {
        for (i, step) in scenario.steps.iter().enumerate() {
            self.step(step)
                .await
                .with_context(|| format!("step {} {step}", i + 1))?;
        }
        self.exited().await.context("after the last step")?;
        self.check(&scenario.expect)
    }

    fn run(&mut self) -> anyhow::Result<&mut Run> {
        self.runs
            .last_mut()
            .ok_or_else(|| anyhow!("no watcher started yet"))
    }

    async fn step(&mut self, step: &Value) -> anyhow::Result<()> {
        let count = step["count"].as_u64().unwrap_or(1) as usize;
        match step["do"].as_str().unwrap_or_default() {
            "start" => self.start_client(step).await,
            "live" => {
                let run = self.run()?;
                until(&format!("live connection {count}"), || run.lives() >= count).await
            }
            "post" => {
                for _ in 0..count {
                    let p = (self.posted.len() as f64 + 1.0) / 100.0;
                    let seq = self
                        .append(json!({"type": "progress", "progress": p, "message": "working"}))
                        .await?;
                    self.posted.push(seq);
                }
                Ok(())
            }
            "seen" => {
                let last = *self
                    .posted
                    .last()
                    .ok_or_else(|| anyhow!("nothing posted"))?;
                let run = self.run()?;
                until(&format!("seq {last} printed"), || {
                    run.seqs().last().is_some_and(|s| *s >= last)
                })
                .await
            }
            "cut" => {
                self.relay.cut(match step["how"].as_str() {
                    Some("silent") => Drop::Silent,
                    _ => Drop::Reset,
                });
                Ok(())
            }
            "refuse" => {
                let status = step["status"].as_u64().unwrap_or(429) as u16;
                let secs = step["secs"].as_f64().unwrap_or(1.0);
                self.relay.refuse(
                    status,
                    step["retry_after"].as_u64(),
                    Duration::from_secs_f64(secs),
                );
                Ok(())
            }
            "kill_server" => {
                self.kill().await?;
                self.restart().await
            }
            "restart_server" => {
                self.relay.retarget(None);
                let pid = self
                    .server
                    .id()
                    .ok_or_else(|| anyhow!("the server is gone"))?;
                // SAFETY: a signal to our own child.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                tokio::time::timeout(WAIT, self.server.wait()).await??;
                self.restart().await
            }
            "new_epoch" => {
                self.kill().await?;
                let url = db_url(self.dir.path());
                let mut db = crate::db::Db::connect(&url).await;
                // The log as a restore into a new log would leave it: the
                // same events under another epoch. (The log keeps its meta
                // row immutable; the runner lifts that for one update.)
                let epoch = Uuid::new_v4();
                for sql in [
                    "DROP TRIGGER log_meta_refuse_update".to_owned(),
                    format!("UPDATE log_meta SET epoch = '{epoch}'"),
                    "CREATE TRIGGER log_meta_refuse_update BEFORE UPDATE ON log_meta BEGIN \
                     SELECT RAISE(ABORT, 'log_meta is immutable: UPDATE refused'); END"
                        .to_owned(),
                ] {
                    db.execute(&sql).await.map_err(|e| anyhow!(e))?;
                }
                db.close().await;
                self.restart().await
            }
            "finish" => {
                let status = step["status"].as_str().unwrap_or("completed");
                let event = match status {
                    "completed" => json!({"type": "completed", "result": {"ok": true}}),
                    "failed" => {
                        json!({"type": "failed", "error": {"code": "boom", "message": "it broke"}})
                    }
                    "cancelled" => json!({"type": "cancelled", "reason": "the user cancelled"}),
                    other => bail!("no such ending: {other}"),
                };
                let seq = self.append(event).await?;
                self.posted.push(seq);
                Ok(())
            }
            "take_over" => {
                let (session, last, epoch) = self.run()?.position()?;
                let token = self.tokens.client(self.job);
                let query = format!(
                    "jobId={}&token={token}&reconnect=true&sessionId={session}&lastSeq={last}&epoch={epoch}",
                    self.job
                );
                let mut ws = ws_connect(self.addr, &query).await?;
                let hello = first_message(&mut ws).await?;
                ensure!(
                    hello["resumed"] == true,
                    "the take-over did not resume: {hello}"
                );
                self.takers.push(ws);
                Ok(())
            }
            "wait_token_expiry" => {
                let left = self.token_exp - chrono::Utc::now().timestamp();
                // Expiry is a wall-clock fact: wait it out (one second past,
                // as the server counts whole seconds).
                tokio::time::sleep(Duration::from_secs((left + 1).max(0) as u64)).await;
                Ok(())
            }
            "stop_client" => {
                let run = self.run()?;
                if let Some(child) = run.child.as_ref().and_then(Child::id) {
                    // SAFETY: a signal to our own child.
                    unsafe { libc::kill(child as i32, libc::SIGTERM) };
                }
                self.exited().await
            }
            "exit" => self.exited().await,
            other => bail!("no such step: {other:?}"),
        }
    }

    async fn start_client(&mut self, step: &Value) -> anyhow::Result<()> {
        let mut job = self.job;
        if step["job"] == "unknown" {
            job = Uuid::new_v4();
        }
        let now = chrono::Utc::now().timestamp();
        let token_job = if step["token"] == "other_job" {
            Uuid::new_v4()
        } else {
            job
        };
        self.token_exp = match (&step["token"], step["expires_in_secs"].as_i64()) {
            (t, _) if t == "expired" => now - 60,
            (_, Some(secs)) => now + secs,
            _ => now + 3600,
        };
        let token = self.tokens.claims(&json!({
            "sub": "conformance", "role": "client", "job": token_job, "exp": self.token_exp,
        }));
        let mut args: Vec<String> = vec![
            "--url".into(),
            format!("ws://{}/ws/progress", self.relay.addr()),
            "--job".into(),
            job.to_string(),
            "--token".into(),
            token,
        ];
        args.extend(FAST.iter().map(|s| s.to_string()));
        let mut resumed_after = None;
        let mut given = None;
        if let Some(from) = step["position"].as_str() {
            let (session, last, mut epoch) = self.run()?.position()?;
            if from == "previous_other_epoch" {
                epoch = Uuid::new_v4().to_string();
            }
            resumed_after = Some(last);
            given = Some((session.clone(), last, epoch.clone()));
            args.extend([
                "--session-id".into(),
                session,
                "--last-seq".into(),
                last.to_string(),
                "--epoch".into(),
                epoch,
            ]);
        }
        let (program, rest) = self
            .client
            .command
            .split_first()
            .ok_or_else(|| anyhow!("no client command"))?;
        let mut child = Command::new(program)
            .args(rest)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("CONFORMANCE_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut reader = BufReader::new(child.stdout.take().expect("piped")).lines();
        let kept = lines.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| json!({"type": "not-json", "line": line}));
                kept.lock().unwrap().push((Instant::now(), value));
            }
        });
        self.runs.push(Run {
            child: Some(child),
            lines,
            reader: Some(reader),
            exit: None,
            started: Instant::now(),
            given,
            resumed_after,
        });
        Ok(())
    }

    async fn append(&self, event: Value) -> anyhow::Result<i64> {
        let path = format!("/v1/jobs/{}/events", self.job);
        let res = post_json_at(&self.http, self.addr, &path, &self.tokens.service(), &event).await;
        ensure!(res.status() == 201, "posting {event}: {}", res.status());
        let body: Value = res.json().await?;
        body["seq"]
            .as_i64()
            .ok_or_else(|| anyhow!("no seq in {body}"))
    }

    async fn kill(&mut self) -> anyhow::Result<()> {
        self.relay.retarget(None);
        self.server.start_kill()?;
        tokio::time::timeout(WAIT, self.server.wait()).await??;
        Ok(())
    }

    async fn restart(&mut self) -> anyhow::Result<()> {
        let (server, addr) = serve(&self.rejoin, self.dir.path()).await;
        self.server = server;
        self.addr = addr;
        self.relay.retarget(Some(addr));
        Ok(())
    }

    /// Waits for the watcher to exit and keeps its status.
    async fn exited(&mut self) -> anyhow::Result<()> {
        let run = self.run()?;
        let Some(mut child) = run.child.take() else {
            return Ok(());
        };
        let status = tokio::time::timeout(WAIT, child.wait())
            .await
            .map_err(|_| anyhow!("the watcher did not exit within {WAIT:?}"))??;
        // Its last lines may still be in the pipe.
        if let Some(reader) = run.reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
        }
        run.exit = Some(status.code().unwrap_or(-1));
        Ok(())
    }

    fn check(&self, expect: &Value) -> anyhow::Result<()> {
        let run = self.runs.last().ok_or_else(|| anyhow!("no watcher ran"))?;
        if let Some(exit) = expect["exit"].as_i64() {
            ensure!(
                run.exit == Some(exit as i32),
                "exit status {:?}, expected {exit}",
                run.exit
            );
        }
        if let Some(states) = expect["states"].as_array() {
            let want: Vec<&str> = states.iter().filter_map(Value::as_str).collect();
            ensure!(
                run.states() == want,
                "connection states {:?}, expected {want:?}",
                run.states()
            );
        }
        if let Some(resumed) = expect["resumed"].as_array() {
            let hellos = run.of_type("state");
            let got: Vec<Value> = hellos
                .iter()
                .map(|s| s["resumed"].clone())
                .map(|r| if r.is_null() { Value::Bool(false) } else { r })
                .collect();
            // A hello a client read from the job's event stream (`via:
            // stream`, after the socket's own was lost with its close) is the
            // stream's session: its `resumed` says nothing of the socket's.
            let agrees = got.len() == resumed.len()
                && got
                    .iter()
                    .zip(resumed)
                    .zip(&hellos)
                    .all(|((g, want), hello)| g == want || hello["via"] == "stream");
            ensure!(agrees, "resumed {got:?}, expected {resumed:?}");
        }
        let seqs = run.seqs();
        match expect["events"].as_str().unwrap_or("all") {
            "all" => {
                // A fresh connect starts at the job's state (its lastSeq); a
                // resume after the position it was given.
                let after = run.resumed_after.unwrap_or_else(|| {
                    run.of_type("state")
                        .first()
                        .filter(|h| h["hello"] == "connected")
                        .and_then(|h| h["lastSeq"].as_i64())
                        .unwrap_or(0)
                });
                let want: Vec<i64> = self.posted.iter().copied().filter(|s| *s > after).collect();
                ensure!(seqs == want, "event seqs {seqs:?}, expected {want:?}");
            }
            "again_after_new_epoch" => {
                // Before the new epoch: a prefix, in order; after its hello:
                // the whole job again, once.
                let lines = run.lines();
                let hello = lines
                    .iter()
                    .rposition(|l| l["type"] == "state")
                    .ok_or_else(|| anyhow!("no state line"))?;
                let after: Vec<i64> = lines[hello..]
                    .iter()
                    .filter(|l| l["type"] == "event")
                    .filter_map(|l| l["seq"].as_i64())
                    .collect();
                ensure!(
                    after == self.posted,
                    "after the new epoch: seqs {after:?}, expected the whole job {:?}",
                    self.posted
                );
                let before = &seqs[..seqs.len() - after.len()];
                ensure!(
                    before == &self.posted[..before.len()],
                    "before the new epoch: seqs {before:?}, expected a prefix of {:?}",
                    self.posted
                );
            }
            "none" => ensure!(seqs.is_empty(), "events printed: {seqs:?}"),
            other => bail!("no such events expectation: {other}"),
        }
        let finished: Vec<Value> = run.of_type("finished");
        match expect["finished"].as_str() {
            Some(status) => ensure!(
                finished.len() == 1 && finished[0]["status"] == status,
                "finished lines {finished:?}, expected one with status {status}"
            ),
            None => ensure!(
                finished.is_empty(),
                "finished lines {finished:?}, expected none"
            ),
        }
        self.check_resumes(run)?;
        if let Some(most) = expect["refused_at_most"].as_u64() {
            let refused = self
                .relay
                .accepted()
                .iter()
                .filter(|a| a.refused.is_some())
                .count();
            ensure!(
                refused as u64 <= most,
                "{refused} connections while refused, expected at most {most}"
            );
            ensure!(
                refused > 0,
                "the refusal was never met: the scenario tests nothing"
            );
        }
        Ok(())
    }

    /// Every upgrade the watcher sent with `reconnect=true` names the position
    /// it had: the session and epoch of its last hello (or those it was
    /// given) and the last seq it had processed before the connection that
    /// request led to (a resume from its own `lastSeq`, not the server's
    /// replay and the client's dedup).
    fn check_resumes(&self, run: &Run) -> anyhow::Result<()> {
        let lines = run.timed();
        for accepted in self.relay.accepted() {
            let Some(request) = accepted.request.as_deref() else {
                continue;
            };
            let target = request.split(' ').nth(1).unwrap_or_default();
            let Some(query) = target.strip_prefix("/ws/progress?") else {
                continue;
            };
            if accepted.at < run.started {
                continue;
            }
            let param = |name: &str| {
                query.split('&').find_map(|kv| {
                    kv.strip_prefix(name)
                        .and_then(|v| v.strip_prefix('='))
                        .map(str::to_owned)
                })
            };
            if param("reconnect").as_deref() != Some("true") {
                continue;
            }
            // What the watcher had shown before the hello this request led to.
            let next_hello = lines
                .iter()
                .position(|(at, l)| *at > accepted.at && l["type"] == "state")
                .unwrap_or(lines.len());
            let before = &lines[..next_hello];
            let hello = before.iter().rev().find(|(_, l)| l["type"] == "state");
            let (session, epoch) = match (hello, &run.given) {
                (Some((_, h)), _) => (
                    h["sessionId"].as_str().map(str::to_owned),
                    h["epoch"].as_str().map(str::to_owned),
                ),
                (None, Some((s, _, e))) => (Some(s.clone()), Some(e.clone())),
                (None, None) => (None, None),
            };
            let last = before
                .iter()
                .rev()
                .find(|(_, l)| l["type"] == "event")
                .and_then(|(_, l)| l["seq"].as_i64())
                .or_else(|| {
                    before
                        .iter()
                        .find(|(_, l)| l["type"] == "state" && l["hello"] == "connected")
                        .and_then(|(_, l)| l["lastSeq"].as_i64())
                })
                .or(run.resumed_after);
            let want = [
                ("sessionId", session),
                ("lastSeq", last.map(|n| n.to_string())),
                ("epoch", epoch),
            ];
            for (name, value) in want {
                if let Some(value) = value {
                    ensure!(
                        param(name).as_deref() == Some(value.as_str()),
                        "a resume sent {name}={:?}, expected {value}: {}",
                        param(name),
                        redacted(request)
                    );
                }
            }
        }
        Ok(())
    }

    fn transcript(&self) -> String {
        let mut out = String::new();
        for (i, run) in self.runs.iter().enumerate() {
            for line in run.lines() {
                out.push_str(&format!("    [{}] {line}\n", i + 1));
            }
            out.push_str(&format!("    [{}] exit {:?}\n", i + 1, run.exit));
        }
        out
    }

    async fn shut(mut self) {
        for run in &mut self.runs {
            if let Some(mut child) = run.child.take() {
                let _ = child.kill().await;
            }
        }
        let _ = self.server.kill().await;
    }
}

/// `rejoin serve` on the log in `dir`, tokens expiring on the second.
async fn serve(rejoin: &Path, dir: &Path) -> (Child, std::net::SocketAddr) {
    serve_binary_at(rejoin, &db_url(dir), SECRET, &["--jwt-leeway-secs", "0"]).await
}

/// The SQLite log of a scenario's server.
fn db_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("rejoin.db").display())
}

/// Polls `check` every 10 ms until it holds, for at most [`WAIT`].
async fn until(what: &str, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    while !check() {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// A request line without its token.
fn redacted(request: &str) -> String {
    request
        .split('&')
        .map(|kv| {
            if kv.starts_with("token=") {
                "token=…"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}
