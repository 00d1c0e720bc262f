//! `rejoin-bench SCENARIO`: the load generator, a binary of its own beside
//! the server. Each scenario drives rejoin over its real interfaces (or the
//! store, for the log's own figures), runs a baseline side by side in the
//! same run, and prints figures and ratios. `--smoke` shrinks every scenario
//! to seconds, for CI.
//!
//! Run it on a release build: `cargo build --release &&
//! ./target/release/rejoin-bench appends`.

mod appends;
mod commits;
mod disk;
mod durable;
mod fanout;
mod hostile;
pub mod idle;
mod limiter;
mod notify;
mod peer;
mod relay;
mod replay;
mod resume;
mod retention;
mod startup;
mod storm;
mod streams;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Parser, ValueEnum};
use serde_json::json;
use uuid::Uuid;

use rejoin::domain::event::{JobCreated, ProgressReported};
use rejoin::domain::{Event, EventBody, JobState};
use rejoin::log::chain::seal;
use rejoin::log::{EventLog, EventRow};
pub use rejoin_testkit::{
    first_message, free_port, rss_kib, serve_args, spawn_announcing, status_kib, InProcess, Tokens,
    Ws,
};

#[tokio::main]
async fn main() -> ExitCode {
    // The baselines that run as processes of their own are this program's
    // hidden modes: the idle scenario's bare server, the durable floor's
    // relay (`relay-server DB`), and the HTTP ceiling (`ceiling-server`).
    let mode = std::env::args_os().nth(1);
    let result = if mode.as_ref().is_some_and(|a| a == "bare-server") {
        idle::bare_server().await.map(|()| ExitCode::SUCCESS)
    } else if mode.as_ref().is_some_and(|a| a == "ceiling-server") {
        durable::ceiling_server().await.map(|()| ExitCode::SUCCESS)
    } else if mode.as_ref().is_some_and(|a| a == "relay-server") {
        let db = std::env::args().nth(2).unwrap_or_else(|| "relay.db".into());
        relay::serve(&db).await.map(|()| ExitCode::SUCCESS)
    } else {
        match BenchArgs::try_parse() {
            Ok(args) => run(args).await,
            Err(e) => e.exit(),
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rejoin-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.rejoin {
        let _ = REJOIN_BIN.set(path.clone());
    }
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
        BenchScenario::Notify => notify::run(&args).await?,
        BenchScenario::Limiter => limiter::run(&args).await?,
        BenchScenario::Streams => {
            durable::run(&args).await?;
            streams::run(&args).await?
        }
        BenchScenario::Readers => hostile::readers(&args).await?,
        BenchScenario::Large => hostile::large(&args).await?,
        BenchScenario::Churn => hostile::churn(&args).await?,
        BenchScenario::Retention => retention::run(&args).await?,
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
    Ok(rejoin::log::postgres::fresh_schema(server, &format!("bench_{name}")).await?)
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

/// One figure over several runs.
#[derive(Default)]
pub struct Sample(Vec<f64>);

impl Sample {
    pub fn push(&mut self, x: f64) {
        self.0.push(x);
    }

    /// The middle value (the mean of the two middle ones for an even count).
    pub fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    /// The median with its unit and, over several runs, the range:
    /// `1.23 ms (1.10–1.40)`.
    fn range(&self, scale: f64, decimals: usize, unit: &str) -> String {
        let show = |x: f64| format!("{:.*}", decimals, x * scale);
        let median = show(self.median());
        if self.0.len() < 2 {
            return format!("{median}{unit}");
        }
        let lo = self.0.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{median}{unit} ({}–{})", show(lo), show(hi))
    }

    /// Seconds as milliseconds: `1.23 ms (1.10–1.40)`.
    pub fn ms(&self) -> String {
        self.range(1000.0, 2, " ms")
    }

    /// A share as a percentage.
    pub fn percent(&self) -> String {
        self.range(100.0, 0, "%")
    }

    /// A count.
    pub fn count(&self) -> String {
        self.range(1.0, 0, "")
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

/// A rejoin server in this process, on a temp database, port 0, with a
/// secret of its own.
pub struct BenchServer {
    pub addr: SocketAddr,
    pub secret: String,
    pub http: reqwest::Client,
    server: InProcess,
}

impl BenchServer {
    pub async fn start(url: &str, extra: &[&str]) -> anyhow::Result<BenchServer> {
        let secret = Uuid::new_v4().simple().to_string();
        // The same command line as a spawned server's, less the subcommand.
        let argv = serve_args("127.0.0.1:0", url, &secret, extra);
        let server = InProcess::start(&argv[1..]).await?;
        Ok(BenchServer {
            addr: server.addr,
            secret,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()?,
            server,
        })
    }

    pub fn token(&self, role: &str, job: Option<Uuid>) -> String {
        Tokens::new(&self.secret).mint(role, job)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn create_job(&self, service: &str) -> anyhow::Result<Uuid> {
        create_job(&self.http, &self.addr.to_string(), service).await
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.server.stop().await
    }
}

/// Reads a Durable Stream from its start as a client does, one chunk (one
/// answer) at a time, handing each chunk's body to `page`, until the answer
/// that is up to date.
pub async fn read_stream_pages(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    mut page: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut offset = "-1".to_owned();
    loop {
        let res = http
            .get(format!("{url}?offset={offset}"))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?;
        let next = res
            .headers()
            .get("stream-next-offset")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let done = res.headers().contains_key("stream-up-to-date");
        page(&res.bytes().await?)?;
        if done || next == offset {
            return Ok(());
        }
        offset = next;
    }
}

/// Opens a client socket on `job` at `addr` and reads its first message
/// (`connected`).
pub async fn open_socket(addr: &str, tokens: &Tokens, job: Uuid) -> anyhow::Result<Ws> {
    let url = format!(
        "ws://{addr}/ws/progress?jobId={job}&token={}",
        tokens.client(job)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    first_message(&mut ws).await?;
    Ok(ws)
}

/// Creates a job on the server at `addr` and returns its id.
pub async fn create_job(http: &reqwest::Client, addr: &str, service: &str) -> anyhow::Result<Uuid> {
    rejoin_testkit::create_job_with(http, addr, service).await
}

/// One of this program's hidden modes (`bare-server`, `ceiling-server`,
/// `relay-server DB`) started as its own process, with the address it
/// announces.
pub async fn spawn_baseline(mode: &[&str]) -> anyhow::Result<(tokio::process::Child, String)> {
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command.args(mode);
    spawn_announcing(command).await
}

/// The `rejoin` server binary: `--rejoin PATH`, or the one built beside this
/// load generator (`target/release/rejoin` beside `target/release/rejoin-bench`).
pub fn rejoin_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = REJOIN_BIN.get() {
        return Ok(path.clone());
    }
    let me = std::env::current_exe()?;
    let beside = me.with_file_name("rejoin");
    anyhow::ensure!(
        beside.exists(),
        "no rejoin binary at {}: build it (cargo build --release) or pass --rejoin PATH",
        beside.display()
    );
    Ok(beside)
}

static REJOIN_BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Starts the `rejoin` binary with `args` as its own process (for figures
/// that must be its own, like memory, or to kill it) and waits for the
/// address on its first line.
pub async fn spawn_rejoin<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
) -> anyhow::Result<(tokio::process::Child, String)> {
    let mut command = tokio::process::Command::new(rejoin_binary()?);
    command.args(args).env("REJOIN_LOG", "warn");
    spawn_announcing(command).await
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
    EventBody::JobCreated(JobCreated::default())
}

/// Appends `rows` through the store in batches of `batch`.
pub async fn append_all(
    store: &Arc<dyn EventLog>,
    rows: &[EventRow],
    batch: usize,
) -> anyhow::Result<()> {
    for chunk in rows.chunks(batch) {
        store.append(chunk).await?;
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchScenario {
    /// Durable appends: 64 appenders vs raw batched inserts and the bare
    /// relay, one appender, HTTP vs the relay over HTTP.
    Appends,
    /// Fan-out: progress POSTed to jobs watched over WebSockets, POST to receipt.
    Fanout,
    /// Resume at the head for logs of 10, 1,000 and 100,000 events; a 1,000-event replay.
    Resume,
    /// Fold a stored log of 1,000,000 events into state.
    Replay,
    /// Idle sockets: server memory per connection against a bare server; the
    /// connection limit.
    Idle,
    /// Reconnect storm: clients on live jobs, the server killed and restarted
    /// under them.
    Storm,
    /// The peer: rejoin and a Socket.IO 4 server with connection-state
    /// recovery side by side (fan-out, TCP-reset and silent drops, a restart,
    /// idle memory). Needs Node.js and npm; installs the peer with `npm ci`.
    Peer,
    /// Start-up as history grows: logs of 20,000, 200,000 and 1,000,000
    /// finished jobs plus 1,000 live ones, started without and with a
    /// checkpoint; RSS; cold reads of finished jobs.
    Startup,
    /// Webhook notifications under the fan-out load and under appends,
    /// against the same load without a webhook.
    Notify,
    /// The per-address connect limiter under a storm from 50,000 addresses,
    /// against a bare locked map and the previous per-attempt sweep.
    Limiter,
    /// Durable Streams: appends side by side with another server
    /// (`--peer`) and the HTTP ceiling, driven from this process; then
    /// appends (plain, and as an idempotent producer) and catch-up reads
    /// through the protocol beside the job API's.
    Streams,
    /// The server CPU of 2,000 stream appends with and without 300 idle SSE
    /// readers on other streams.
    Readers,
    /// 40 appends of 8 MiB to one stream, a restart, a read from the start
    /// and a HEAD: the server's peak RSS.
    Large,
    /// 400 watchers on 40 jobs, each reset every ~2 s, for --soak-secs
    /// (1,800): anonymous RSS over time.
    Churn,
    /// The fan-out load while retention's sweep removes a million events of
    /// finished jobs, beside the same load and log without retention.
    Retention,
}

#[derive(Clone, Debug, Parser)]
#[command(
    name = "rejoin-bench",
    version,
    about = "rejoin's load generator: each scenario against its own server on a temporary database"
)]
pub struct BenchArgs {
    pub scenario: BenchScenario,
    /// A few seconds' version of the scenario (CI runs this so none rots).
    #[arg(long)]
    pub smoke: bool,
    /// For `idle`: how long to watch memory while the sockets sit idle
    /// (default 600 s, 2 s with --smoke); for `churn`, how long the churn
    /// runs (default 1,800 s, 1 s with --smoke).
    #[arg(long)]
    pub soak_secs: Option<u64>,
    /// Run against PostgreSQL at this URL instead of SQLite (every scenario
    /// but `peer`): each database the scenario needs is a fresh schema there.
    #[arg(long)]
    pub postgres: Option<String>,
    /// For `peer`: the folder holding the Socket.IO server (default
    /// `benches/socketio` in the source tree).
    #[arg(long)]
    pub peer_dir: Option<std::path::PathBuf>,
    /// For `streams`: another Durable Streams server to put beside rejoin
    /// under the same load, by the base URL its streams are under
    /// (`BASE/NAME`), e.g. `http://127.0.0.1:4437`. Start it on a fresh data
    /// directory.
    #[arg(long)]
    pub peer: Option<String>,
    /// The `rejoin` binary to run the servers with (default: the one beside
    /// this program).
    #[arg(long)]
    pub rejoin: Option<PathBuf>,
    /// For `appends`, `fanout` and `streams`: how many times each side runs,
    /// alternating, before the medians (default 3, 1 with --smoke).
    #[arg(long)]
    pub runs: Option<usize>,
}

impl BenchArgs {
    pub fn runs(&self) -> usize {
        self.runs.unwrap_or(if self.smoke { 1 } else { 3 }).max(1)
    }
}
