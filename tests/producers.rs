//! The producers (`clients/python`: blocking, asyncio, Celery; `clients/js`:
//! Node.js, BullMQ) against a real server, a real Redis and real workers: a
//! producer whose every answer is lost once (the request served, the
//! connection reset before the answer arrives) leaves each event in the log
//! once; the Celery and BullMQ examples, their worker SIGKILLed after the
//! fourth step and started again, show `rejoin watch` ten progress events
//! and the completion, each once; a task that raises for the last time
//! leaves its job failed with its message, and one that is retried does not;
//! a producer answered 503 or 429 with `Retry-After` waits as long as asked;
//! docs/PRODUCERS.md's script, asyncio and Node.js blocks run as written.
//!
//! Needs `PRODUCERS_PYTHON` (a Python with `clients/python[celery]`
//! installed), Node.js with `clients/js`'s dev dependencies (bullmq), and
//! Redis (`REDIS_URL`, default redis://127.0.0.1:6379/0): ignored by a plain
//! `cargo test`; `.ci/run` installs them and runs the ignored tests.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::relay::Relay;
use common::{spawn_app, TestApp, BIN, PATIENCE};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

/// Long enough for a worker to come back and redo a job.
const REDELIVERY: Duration = Duration::from_secs(90);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> String {
    std::env::var("PRODUCERS_PYTHON")
        .expect("this test needs PRODUCERS_PYTHON: a Python with clients/python[celery]")
}

/// What a producer process is told: the server (or the relay before it),
/// a service token, Redis and a queue of this test's own.
struct Env {
    url: String,
    token: String,
    queue: String,
}

impl Env {
    fn of(app: &TestApp, addr: std::net::SocketAddr) -> Env {
        Env {
            url: format!("http://{addr}"),
            token: app.service(),
            queue: format!("rejoin-test-{}", Uuid::new_v4()),
        }
    }

    fn command(&self, program: &str, dir: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(dir)
            .env("REJOIN_URL", &self.url)
            .env("REJOIN_TOKEN", &self.token)
            .env("QUEUE", &self.queue)
            .env(
                "REDIS_URL",
                std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into()),
            )
            .kill_on_drop(true);
        cmd
    }

    /// Runs a command to its end; the JSON lines it printed.
    async fn run(&self, program: &str, dir: &Path, args: &[&str]) -> (bool, Vec<Value>) {
        let out = tokio::time::timeout(PATIENCE, self.command(program, dir, args).output())
            .await
            .unwrap_or_else(|_| panic!("{program} {args:?} ends in time"))
            .expect("the command runs");
        let lines = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if !out.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
        (out.status.success(), lines)
    }

    /// Starts a worker in a process group of its own, so that a SIGKILL
    /// takes it whole (Celery's pool processes with it).
    fn worker(&self, program: &str, dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Worker {
        let mut cmd = self.command(program, dir, args);
        cmd.envs(vars.iter().copied());
        cmd.process_group(0).stdout(Stdio::null());
        Worker(cmd.spawn().expect("the worker starts"))
    }
}

struct Worker(Child);

impl Worker {
    fn kill(&mut self) {
        let pid = self.0.id().expect("running") as i32;
        // SAFETY: signals our own child's process group.
        assert_eq!(unsafe { libc::kill(-pid, libc::SIGKILL) }, 0);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.0.id().is_some() {
            self.kill();
        }
    }
}

fn job_of(line: &Value) -> Uuid {
    line["jobId"].as_str().expect("a jobId").parse().unwrap()
}

/// The job's logged events of `kind`, their payloads.
async fn logged(app: &TestApp, job: Uuid, kind: &str) -> Vec<Value> {
    app.events_of(job, kind)
        .await
        .into_iter()
        .map(|e| e.payload)
        .collect()
}

/// The job's logged progress, in seq order.
async fn percentages(app: &TestApp, job: Uuid) -> Vec<f64> {
    logged(app, job, "progress")
        .await
        .iter()
        .map(|p| p["progress"].as_f64().unwrap())
        .collect()
}

/// 10 %, 20 %, ... 100 %.
fn tens() -> Vec<f64> {
    (1..=10).map(|i| f64::from(i * 10)).collect()
}

/// Each event in the log once: ten progress events (10 %, 20 %, ...), the
/// message and the completion.
async fn each_once(app: &TestApp, job: Uuid) {
    assert_eq!(percentages(app, job).await, tens());
    assert_eq!(logged(app, job, "message").await.len(), 1);
    assert_eq!(logged(app, job, "completed").await.len(), 1);
}

/// Runs a producer through a relay that loses the first answer to every
/// request: each event is in the log once, and every append's first
/// answer was lost.
async fn every_answer_lost_once(program: &str, dir: &Path, args: &[&str]) {
    let app = spawn_app().await;
    let relay = Relay::start(app.addr).await;
    relay.lose_every_other_answer();
    let env = Env::of(&app, relay.addr());
    let (ok, lines) = env.run(program, dir, args).await;
    assert!(ok, "the producer succeeds");
    let job = job_of(&lines[0]);
    let seqs: Vec<i64> = lines.last().unwrap()["seqs"]
        .as_array()
        .expect("the seqs it posted")
        .iter()
        .map(|s| s.as_i64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 11);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    each_once(&app, job).await;
    let appends = format!("POST /v1/jobs/{job}/events ");
    let lost = relay.lost();
    let lost_appends = lost.iter().filter(|l| l.starts_with(&appends)).count();
    assert_eq!(
        lost_appends, 12,
        "every append's first answer lost: {lost:?}"
    );
    assert!(lost[0].starts_with("POST /v1/jobs "), "{lost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PRODUCERS_PYTHON (.ci/run installs it)"]
async fn a_python_producer_whose_every_answer_is_lost_once_appends_each_event_once() {
    let dir = root().join("clients/python/tests");
    every_answer_lost_once(&python(), &dir, &["produce.py", "sync"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PRODUCERS_PYTHON (.ci/run installs it)"]
async fn an_asyncio_producer_whose_every_answer_is_lost_once_appends_each_event_once() {
    let dir = root().join("clients/python/tests");
    every_answer_lost_once(&python(), &dir, &["produce.py", "async"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs clients/js's dev dependencies (.ci/run installs them)"]
async fn a_node_producer_whose_every_answer_is_lost_once_appends_each_event_once() {
    let dir = root().join("clients/js/test");
    every_answer_lost_once("node", &dir, &["produce.mjs", "run"]).await;
}

/// Runs a producer through a relay that answers every new connection with
/// `status` and `Retry-After: 1` for its first 1.5 s. The producer's own
/// backoff (10 attempts of at most 0.1 s) would give up within a second: it
/// finishes only by waiting as long as the server asked.
async fn waits_as_asked(status: u16, program: &str, dir: &Path, args: &[&str]) {
    let app = spawn_app().await;
    let relay = Relay::start(app.addr).await;
    relay.refuse(status, Some(1), Duration::from_millis(1500));
    let env = Env::of(&app, relay.addr());
    let started = std::time::Instant::now();
    let (ok, lines) = env.run(program, dir, args).await;
    assert!(ok, "the producer succeeds once the refusals stop");
    assert!(started.elapsed() >= Duration::from_secs(1));
    let refused = relay
        .accepted()
        .iter()
        .filter(|a| a.refused.is_some())
        .count();
    assert!(refused >= 1, "the relay refused the first attempt");
    each_once(&app, job_of(&lines[0])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PRODUCERS_PYTHON (.ci/run installs it)"]
async fn a_python_producer_answered_503_with_retry_after_waits_as_asked() {
    let dir = root().join("clients/python/tests");
    waits_as_asked(503, &python(), &dir, &["produce.py", "sync"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs clients/js's dev dependencies (.ci/run installs them)"]
async fn a_node_producer_answered_429_with_retry_after_waits_as_asked() {
    let dir = root().join("clients/js/test");
    waits_as_asked(429, "node", &dir, &["produce.mjs", "run"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PRODUCERS_PYTHON (.ci/run installs it)"]
async fn a_python_block_that_raises_fails_its_job_with_the_message() {
    let app = spawn_app().await;
    let env = Env::of(&app, app.addr);
    let dir = root().join("clients/python/tests");
    let (ok, lines) = env.run(&python(), &dir, &["produce.py", "raise"]).await;
    assert!(!ok, "the error reaches the caller");
    let job = job_of(&lines[0]);
    assert_eq!(logged(&app, job, "progress").await.len(), 3);
    let failed = logged(&app, job, "failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["error"]["code"], "ValueError");
    assert_eq!(failed[0]["error"]["message"], "shelf 3 fell over");
}

/// `rejoin watch` on a job: its JSON lines and whether it exited 0.
fn watch(app: &TestApp, job: Uuid, token: &str) -> tokio::task::JoinHandle<(bool, Vec<Value>)> {
    let mut child = Command::new(BIN)
        .args(["watch", "--url", &format!("ws://{}/ws/progress", app.addr)])
        .args(["--job", &job.to_string(), "--token", token])
        .args(["--retry-base-secs", "0.05", "--retry-cap-secs", "0.2"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    tokio::spawn(async move {
        let mut lines = Vec::new();
        let mut stdout = stdout.lines();
        while let Ok(Some(line)) = stdout.next_line().await {
            lines.push(serde_json::from_str(&line).expect("a JSON line"));
        }
        (child.wait().await.unwrap().success(), lines)
    })
}

/// An example's job, its worker SIGKILLed once the fourth step is in the
/// log and started again: `rejoin watch` prints ten progress events and the
/// completion, each once, and exits 0.
async fn example_survives_a_sigkill(
    dir: &Path,
    program: &str,
    enqueue: &[&str],
    worker: &[&str],
    vars: &[(&str, &str)],
) {
    let app = spawn_app().await;
    let env = Env::of(&app, app.addr);
    let (ok, lines) = env.run(program, dir, enqueue).await;
    assert!(ok, "enqueue succeeds");
    let job = job_of(&lines[0]);
    let token = lines[0]["clientToken"].as_str().expect("a client token");
    let watcher = watch(&app, job, token);

    let mut first = env.worker(program, dir, worker, vars);
    common::within(REDELIVERY, "the fourth step", || async {
        (logged(&app, job, "progress").await.len() >= 4).then_some(())
    })
    .await;
    first.kill();
    let steps = logged(&app, job, "progress").await.len();
    assert!(steps < 10, "the worker was killed mid-task ({steps} steps)");

    let _second = env.worker(program, dir, worker, vars);
    let (ok, lines) = tokio::time::timeout(REDELIVERY, watcher)
        .await
        .expect("the job finishes once the work is redelivered")
        .unwrap();
    assert!(ok, "rejoin watch exits 0: {lines:?}");
    let events: Vec<&Value> = lines.iter().filter(|l| l["type"] == "event").collect();
    let progress: Vec<i64> = events
        .iter()
        .filter(|e| e["event"] == "progress")
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(progress.len(), 10, "{lines:?}");
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
    assert_eq!(
        events.iter().filter(|e| e["event"] == "completed").count(),
        1
    );
    let finished: Vec<&Value> = lines.iter().filter(|l| l["type"] == "finished").collect();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0]["status"], "completed");
    assert_eq!(percentages(&app, job).await, tens());
    assert_eq!(logged(&app, job, "completed").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis, Celery and BullMQ (.ci/run installs them)"]
async fn the_celery_example_finishes_its_job_once_across_a_sigkill_after_the_fourth_step() {
    let dir = root().join("clients/python/examples");
    let python = python();
    example_survives_a_sigkill(
        &dir,
        &python,
        &["celery_scan.py", "enqueue"],
        &[
            "-m",
            "celery",
            "-A",
            "celery_scan",
            "worker",
            "--loglevel=WARNING",
        ],
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis, Celery and BullMQ (.ci/run installs them)"]
async fn the_bullmq_example_finishes_its_job_once_across_a_sigkill_after_the_fourth_step() {
    let dir = root().join("clients/js/examples");
    example_survives_a_sigkill(
        &dir,
        "node",
        &["bullmq-scan.mjs", "enqueue"],
        &["bullmq-scan.mjs", "worker"],
        &[("LOCK_MS", "2000")],
    )
    .await;
}

/// A task that reports a step and raises, retried once: the job fails once,
/// after both runs, with the error's message.
async fn a_task_that_raises_twice(dir: &Path, program: &str, enqueue: &[&str], worker: &[&str]) {
    let app = spawn_app().await;
    let env = Env::of(&app, app.addr);
    let (ok, lines) = env.run(program, dir, enqueue).await;
    assert!(ok, "enqueue succeeds");
    let job = job_of(&lines[0]);
    let _worker = env.worker(program, dir, worker, &[]);
    let failed = common::within(REDELIVERY, "the job to fail", || async {
        let failed = logged(&app, job, "failed").await;
        (!failed.is_empty()).then_some(failed)
    })
    .await;
    assert_eq!(failed[0]["error"]["message"], "the shelf fell over");
    let steps = logged(&app, job, "progress").await;
    assert_eq!(steps.len(), 2, "both runs reported: {steps:?}");
    assert_eq!(app.get_job(job).await["status"], "failed");
    assert_eq!(logged(&app, job, "failed").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis, Celery and BullMQ (.ci/run installs them)"]
async fn a_celery_task_that_raises_after_its_retry_fails_its_job_with_the_message() {
    let dir = root().join("clients/python/tests");
    let python = python();
    a_task_that_raises_twice(
        &dir,
        &python,
        &["failing_tasks.py", "enqueue"],
        &[
            "-m",
            "celery",
            "-A",
            "failing_tasks",
            "worker",
            "--loglevel=WARNING",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis, Celery and BullMQ (.ci/run installs them)"]
async fn a_bullmq_processor_that_throws_on_its_last_attempt_fails_its_job_with_the_message() {
    let dir = root().join("clients/js/test");
    a_task_that_raises_twice(
        &dir,
        "node",
        &["produce.mjs", "enqueue"],
        &["produce.mjs", "worker"],
    )
    .await;
}

/// The code blocks of `lang` in docs/PRODUCERS.md, in order.
fn guide_blocks(lang: &str) -> Vec<String> {
    let guide = std::fs::read_to_string(root().join("docs/PRODUCERS.md")).unwrap();
    let fence = format!("```{lang}\n");
    guide
        .split(&fence)
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PRODUCERS_PYTHON (.ci/run installs it)"]
async fn the_guides_script_asyncio_and_node_blocks_run_as_written() {
    let app = spawn_app().await;
    let env = Env::of(&app, app.addr);
    let here = format!("http://{}", app.addr);
    let python_blocks = guide_blocks("python");
    // The script as written, given what it leaves to its reader: a token
    // and rows.
    let script = format!(
        "import os\nSERVICE_TOKEN = os.environ['REJOIN_TOKEN']\nrows = ['a', 'b', 'c']\n{}",
        python_blocks[0].replace("http://127.0.0.1:8080", &here)
    );
    // asyncio's block runs inside a coroutine.
    let coroutine = format!(
        "import asyncio, os\nSERVICE_TOKEN = os.environ['REJOIN_TOKEN']\nurl = os.environ['REJOIN_URL']\n\
         async def main():\n{}\nasyncio.run(main())\n",
        python_blocks[1]
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    let node = format!(
        "const SERVICE_TOKEN = process.env.REJOIN_TOKEN;\n{}",
        guide_blocks("js")[0].replace("http://127.0.0.1:8080", &here)
    );
    let dir = root().join("clients/js");
    for (program, code, flag) in [
        (python(), script, "-c"),
        (python(), coroutine, "-c"),
        ("node".to_owned(), node, "--input-type=module"),
    ] {
        let args: Vec<&str> = if flag == "-c" {
            vec!["-c", &code]
        } else {
            vec![flag, "-e", &code]
        };
        let (ok, _) = env.run(&program, &dir, &args).await;
        assert!(ok, "{program} runs the guide's block:\n{code}");
    }
    let completed = app
        .get_json("/v1/jobs?status=completed", Some(&app.service()))
        .await;
    assert_eq!(
        completed["jobs"].as_array().unwrap().len(),
        3,
        "{completed}"
    );
}
