//! `rejoin bench SCENARIO`: the load generator. Each scenario drives rejoin
//! over its real interfaces (or the store, for the log's own figures), runs a
//! baseline side by side in the same process, and prints figures and ratios.
//! `--smoke` shrinks every scenario to seconds, for CI.
//!
//! Run it on a release build: `cargo run --release -- bench appends`.

mod appends;
mod fanout;
pub mod idle;
mod peer;
mod replay;
mod resume;
mod startup;
mod storm;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::app::Application;
use crate::config::{BenchArgs, BenchScenario, ServeArgs};
use crate::domain::event::{JobCreated, ProgressReported};
use crate::domain::{Event, EventBody, JobState};
use crate::log::chain::seal;
use crate::log::{EventRow, LogStore};

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let mode = if args.smoke { "smoke" } else { "full" };
    let build = if cfg!(debug_assertions) {
        "debug build: figures are not meaningful"
    } else {
        "release build"
    };
    let backend = if args.postgres.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!(
        "rejoin bench {:?} ({mode}, {build}, {backend})",
        args.scenario
    );
    match args.scenario {
        BenchScenario::Appends => appends::run(&args).await?,
        BenchScenario::Fanout => fanout::run(&args).await?,
        BenchScenario::Resume => resume::run(&args).await?,
        BenchScenario::Replay => replay::run(&args).await?,
        BenchScenario::Idle => idle::run(&args).await?,
        BenchScenario::Storm => storm::run(&args).await?,
        BenchScenario::Peer => peer::run(&args).await?,
        BenchScenario::Startup => startup::run(&args).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// A fresh database for a scenario: a SQLite file `name`.db in `dir`, or,
/// with `--postgres URL`, a new schema on that server.
pub async fn database(args: &BenchArgs, dir: &Path, name: &str) -> anyhow::Result<String> {
    let Some(server) = &args.postgres else {
        return Ok(format!(
            "sqlite://{}",
            dir.join(format!("{name}.db")).display()
        ));
    };
    Ok(crate::log::postgres::fresh_schema(server, &format!("bench_{name}")).await?)
}

/// Latency samples and their percentiles.
#[derive(Debug, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Nearest-rank percentile.
    pub fn percentile(&mut self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        self.0.sort_unstable();
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    pub fn summary(&mut self) -> String {
        format!(
            "p50 {} p90 {} p99 {} max {} (n={})",
            ms(self.percentile(50.0)),
            ms(self.percentile(90.0)),
            ms(self.percentile(99.0)),
            ms(self.percentile(100.0)),
            self.len()
        )
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// `1234567.8` → `1,234,568`.
pub fn rate(per_sec: f64) -> String {
    let n = per_sec.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rejoin server in this process, on a temp database, port 0.
pub struct BenchServer {
    pub addr: SocketAddr,
    pub secret: String,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl BenchServer {
    pub async fn start(url: &str, extra: &[&str]) -> anyhow::Result<BenchServer> {
        let secret = Uuid::new_v4().simple().to_string();
        // The same command line as a spawned server's, less the subcommand.
        let argv = serve_args("127.0.0.1:0", url, &secret, extra);
        let app = Application::build(ServeArgs::from_args(&argv[1..])?).await?;
        let addr = app.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run(async {
            let _ = stopped.await;
        }));
        Ok(BenchServer {
            addr,
            secret,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()?,
            stop: Some(stop),
            handle: Some(handle),
        })
    }

    pub fn token(&self, role: &str, job: Option<Uuid>) -> String {
        Self::tokens(&self.secret).mint(role, job)
    }

    pub fn tokens(secret: &str) -> Tokens {
        Tokens {
            key: jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn create_job(&self, service: &str) -> anyhow::Result<Uuid> {
        create_job(&self.http, &self.addr.to_string(), service).await
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await??;
        }
        Ok(())
    }
}

/// A WebSocket client connection.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Creates a job on the server at `addr` and returns its id.
pub async fn create_job(http: &reqwest::Client, addr: &str, service: &str) -> anyhow::Result<Uuid> {
    let body: serde_json::Value = http
        .post(format!("http://{addr}/v1/jobs"))
        .bearer_auth(service)
        .json(&json!({}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(body["jobId"].as_str().unwrap_or_default().parse()?)
}

/// The first text message of a socket, as JSON.
pub async fn first_message(ws: &mut Ws) -> anyhow::Result<serde_json::Value> {
    use futures_util::StreamExt;
    loop {
        match ws.next().await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                return Ok(serde_json::from_str(t.as_str())?)
            }
            Some(Ok(_)) => continue,
            other => anyhow::bail!("no first message: {other:?}"),
        }
    }
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))
}

/// Starts `rejoin ARGS…` as its own process (for figures that must be its own,
/// like memory, or to kill it) and waits for the address on its first line.
pub async fn spawn_rejoin(args: &[&str]) -> anyhow::Result<(tokio::process::Child, String)> {
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command.args(args).env("REJOIN_LOG", "warn");
    spawn_announcing(command).await
}

/// The command line of a bench's `rejoin serve`: `listen`, the log at `db`,
/// tokens signed with `secret`, no per-address limit (every client is on
/// loopback), then `extra`.
pub fn serve_args<'a>(
    listen: &'a str,
    db: &'a str,
    secret: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "serve",
        "--listen",
        listen,
        "--database-url",
        db,
        "--jwt-secret",
        secret,
        "--connect-rate-per-ip",
        "0",
    ];
    args.extend_from_slice(extra);
    args
}

/// Starts a server process that prints `… http://ADDR` as its first line, and
/// returns it with that address.
pub async fn spawn_announcing(
    mut command: tokio::process::Command,
) -> anyhow::Result<(tokio::process::Child, String)> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let line = lines
        .next_line()
        .await?
        .ok_or_else(|| anyhow::anyhow!("the process printed no address"))?;
    let addr = line.rsplit("http://").next().unwrap_or_default().to_owned();
    Ok((child, addr))
}

/// A free loopback port, for a server that must come back on the same one.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A reconnect delay drawn uniformly from `[0, min(cap, base * 2^attempt))`
/// ("full jitter"), as rejoin.js and a well-behaved mobile client wait.
pub fn full_jitter(attempt: u32, base_ms: u64, cap_ms: u64) -> Duration {
    let ceiling = cap_ms.min(base_ms.saturating_mul(1 << attempt.min(20)));
    Duration::from_millis(random_below(ceiling.max(1)))
}

/// A random number in `[0, n)`.
pub fn random_below(n: u64) -> u64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes) % n.max(1)
}

/// Mints HS256 tokens for a server whose secret the bench chose.
pub struct Tokens {
    key: jsonwebtoken::EncodingKey,
}

impl Tokens {
    pub fn mint(&self, role: &str, job: Option<Uuid>) -> String {
        let claims = json!({"sub": "bench", "role": role, "job": job, "exp": Utc::now().timestamp() + 86_400});
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &self.key)
            .expect("signing with an HMAC key cannot fail")
    }

    pub fn service(&self) -> String {
        self.mint("service", None)
    }

    pub fn client(&self, job: Uuid) -> String {
        self.mint("client", Some(job))
    }
}

/// Builds events for a job as the writer would (seq and hash chained), for
/// filling a log quickly through the store.
pub struct JobWriter {
    pub state: JobState,
}

impl JobWriter {
    pub fn new(job: Uuid) -> Self {
        JobWriter {
            state: JobState::genesis(job),
        }
    }

    pub fn push(&mut self, rows: &mut Vec<EventRow>, at: DateTime<Utc>, body: EventBody) {
        let mut event = Event::new(self.state.job_id, None, at, body);
        rows.push(seal(&mut self.state, &mut event));
    }

    /// An event of one of the job's sessions.
    pub fn push_session(
        &mut self,
        rows: &mut Vec<EventRow>,
        at: DateTime<Utc>,
        session: Uuid,
        body: EventBody,
    ) {
        let mut event = Event::new(self.state.job_id, Some(session), at, body);
        rows.push(seal(&mut self.state, &mut event));
    }
}

pub fn progress(p: f64) -> EventBody {
    EventBody::ProgressReported(ProgressReported {
        progress: p,
        message: Some("Processing book 9 of 20".into()),
        data: Some(json!({"book": 9, "shelf": "B"})),
    })
}

pub fn created() -> EventBody {
    EventBody::JobCreated(JobCreated { metadata: None })
}

/// Appends `rows` through the store in batches of `batch`.
pub async fn append_all(
    store: &Arc<dyn LogStore>,
    rows: &[EventRow],
    batch: usize,
) -> anyhow::Result<()> {
    for chunk in rows.chunks(batch) {
        store.append(chunk).await?;
    }
    Ok(())
}
