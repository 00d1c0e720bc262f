//! Configuration: the command line, every setting a flag with an environment
//! variable beside it. `rejoin --help` and `rejoin serve --help` document each.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use uuid::Uuid;

use crate::auth::{JwtArgs, Role};
use crate::webhook::WebhookArgs;

#[derive(Debug, Parser)]
#[command(
    name = "rejoin",
    version,
    about = "Resumable WebSocket progress for long-running jobs, backed by an append-only event log"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Print the configuration `rejoin serve` would run with, given the same
    /// flags and environment: every setting, its value and where it came
    /// from, with secrets redacted.
    Config(Box<ConfigArgs>),
    /// Print a token signed with the server's key.
    Token(TokenArgs),
    /// Walk every job's hash chain and name the first event that does not match.
    Verify(VerifyArgs),
    /// Print one job's connection history.
    History(HistoryArgs),
    /// List jobs, newest first, from the job index (the filters of
    /// `GET /v1/jobs`).
    Jobs(JobsArgs),
    /// Fold the log (all of it, from a position, or one job) into NDJSON events
    /// or a summary.
    Replay(ReplayArgs),
    /// Write a checkpoint of the log's live state now, list the checkpoints,
    /// or delete them (they are derived: a start without one folds the log).
    Checkpoint(CheckpointArgs),
    /// Follow a job over its WebSocket from a terminal: one JSON line per
    /// update, resuming after drops; exit 0 when the job completed, 1
    /// otherwise.
    Watch(WatchArgs),
}

#[derive(Clone, Debug, Args)]
pub struct WatchArgs {
    /// The WebSocket endpoint: `ws://HOST:PORT/ws/progress` (plain WebSocket;
    /// behind TLS, watch from inside the network or through a local tunnel).
    #[arg(long)]
    pub url: String,
    /// The job to follow.
    #[arg(long)]
    pub job: Uuid,
    /// The job's client token (renewed before it expires).
    #[arg(long, env = "REJOIN_WATCH_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Resume from this seq (the last one processed) instead of connecting
    /// afresh.
    #[arg(long)]
    pub last_seq: Option<i64>,
    /// The session to resume.
    #[arg(long)]
    pub session_id: Option<Uuid>,
    /// The epoch of the log the last seq is from.
    #[arg(long)]
    pub epoch: Option<String>,
    /// Seconds between the watcher's pings; a connection silent for two of
    /// them is taken as dropped.
    #[arg(long, default_value_t = 15.0)]
    pub ping_secs: f64,
    /// The first retry comes within this many seconds; each later one within
    /// twice the one before (full jitter).
    #[arg(long, default_value_t = 0.5)]
    pub retry_base_secs: f64,
    /// The longest wait between attempts, in seconds.
    #[arg(long, default_value_t = 20.0)]
    pub retry_cap_secs: f64,
}

#[derive(Clone, Debug, Args)]
pub struct DatabaseArgs {
    /// The data directory: the SQLite log (`rejoin.db`) and the secrets
    /// `rejoin serve` generates (`jwt-secret`, `webhook-secret`) live here,
    /// unless --database-url names another file. Give every command the same
    /// one (or run them from the same directory).
    #[arg(long, env = "REJOIN_DATA_DIR", default_value = "sqlite")]
    pub data_dir: PathBuf,

    /// Where the log lives, when not `rejoin.db` in --data-dir. A SQLite file
    /// (`sqlite://PATH`, `sqlite:PATH` or a plain path;
    /// `sqlite:///var/lib/rejoin/rejoin.db` for an absolute one), created
    /// with its migrations on first start, owned by one process; the
    /// generated secrets live beside it. Or a PostgreSQL database,
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?sslmode=require]`,
    /// migrated by the first node to start, which several nodes share (each
    /// holds a lease; give them all the same JWT key). Put a password in
    /// REJOIN_DATABASE_URL, not on the command line.
    #[arg(long, env = "REJOIN_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl DatabaseArgs {
    /// The log's URL: --database-url, or `rejoin.db` in --data-dir.
    pub fn url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => default_database_url(&self.data_dir),
        }
    }

    /// The SQLite log's file; none for PostgreSQL.
    pub fn sqlite_file(&self) -> Option<PathBuf> {
        crate::log::sqlite::database_path(&self.url())
    }

    /// Where the generated secrets are kept: beside a SQLite log; none for
    /// PostgreSQL.
    pub fn secret_dir(&self) -> Option<PathBuf> {
        self.sqlite_file().map(|file| secret_dir_of(&file))
    }
}

/// The directory of a SQLite log's generated secrets: its own.
pub fn secret_dir_of(sqlite_file: &Path) -> PathBuf {
    sqlite_file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The log in a data directory.
pub fn default_database_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("rejoin.db").display())
}

#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is
    /// printed on standard output).
    #[arg(long, env = "REJOIN_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub jwt: JwtArgs,

    #[command(flatten)]
    pub webhook: WebhookArgs,

    /// How long a session survives without a socket, in seconds.
    #[arg(long, env = "REJOIN_GRACE_SECS", default_value_t = 60.0)]
    pub grace_secs: f64,

    /// Seconds between the server's WebSocket pings.
    #[arg(long, env = "REJOIN_HEARTBEAT_INTERVAL_SECS", default_value_t = 20.0)]
    pub heartbeat_interval_secs: f64,

    /// Seconds without any frame from the client before its socket is closed as
    /// dead (recorded as 1006 `heartbeat timeout`).
    #[arg(long, env = "REJOIN_HEARTBEAT_TIMEOUT_SECS", default_value_t = 60.0)]
    pub heartbeat_timeout_secs: f64,

    /// Browser origins allowed to open sockets and to call the HTTP API
    /// (CORS, with a bearer token), comma-separated (`*` allows any).
    /// Requests without an Origin header (native clients) are allowed.
    #[arg(long, env = "REJOIN_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Base URL clients reach this server at (`https://rejoin.example.com`),
    /// used for the `websocketUrl` of new jobs. Default: from the Host header.
    #[arg(long, env = "REJOIN_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Largest accepted HTTP request body, in bytes (larger ones get 413).
    #[arg(long, env = "REJOIN_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Who may use the Durable Streams at `/v1/stream/`: `token` (a bearer
    /// token with the stream or service role) or `none` (no token; for
    /// deployments whose gateway authenticates). Job streams always need a
    /// token.
    #[arg(long, env = "REJOIN_STREAM_AUTH", value_enum, default_value_t = StreamAuth::Token)]
    pub stream_auth: StreamAuth,

    /// Largest accepted body of a stream append or create, in bytes.
    #[arg(long, env = "REJOIN_STREAM_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub stream_max_body_bytes: usize,

    /// How long a stream's long-poll read waits for data before answering
    /// 204, in seconds.
    #[arg(long, env = "REJOIN_STREAM_LONG_POLL_SECS", default_value_t = 15.0)]
    pub stream_long_poll_secs: f64,

    /// Largest accepted inbound WebSocket frame or message, in bytes.
    #[arg(long, env = "REJOIN_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Messages queued for one socket before a client that cannot keep up is
    /// closed with 1013.
    #[arg(long, env = "REJOIN_SEND_QUEUE", default_value_t = 256)]
    pub send_queue: usize,

    /// Lifetime of client tokens minted for new jobs, in seconds.
    #[arg(long, env = "REJOIN_CLIENT_TOKEN_TTL_SECS", default_value_t = 3600)]
    pub client_token_ttl_secs: u64,

    /// Longest client token lifetime a request may ask for, in seconds.
    #[arg(
        long,
        env = "REJOIN_MAX_CLIENT_TOKEN_TTL_SECS",
        default_value_t = 86_400
    )]
    pub max_client_token_ttl_secs: u64,

    /// Most open WebSockets and event streams; further ones get 503.
    /// Default: --max-tcp-connections less 192, the room HTTP requests
    /// (health checks, appends, operators) keep when sockets are at their
    /// limit.
    #[arg(long, env = "REJOIN_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Most TCP connections open at once, sockets included. At the limit a
    /// new connection closes the oldest one with no request in progress, or
    /// is reset when every connection is busy. Default: the process's
    /// open-file limit less 64 (kept for the database and files).
    #[arg(long, env = "REJOIN_MAX_TCP_CONNECTIONS")]
    pub max_tcp_connections: Option<usize>,

    /// Most TCP connections from one peer address; more are reset at once.
    /// Peers in --trusted-proxies are exempt. Default: an eighth of
    /// --max-tcp-connections (at least 16).
    #[arg(long, env = "REJOIN_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: Option<usize>,

    /// Seconds a connection has to send a complete request head, from its
    /// start and from the end of each response (an idle kept-alive
    /// connection is closed after it too).
    #[arg(long, env = "REJOIN_HEADER_TIMEOUT_SECS", default_value_t = 10.0)]
    pub header_timeout_secs: f64,

    /// The same for connections from --trusted-proxies, which load balancers
    /// keep open between requests: longer than the balancer's own idle
    /// timeout (60 s on common ones), so the server never closes a
    /// connection the balancer is about to reuse.
    #[arg(long, env = "REJOIN_PROXY_IDLE_TIMEOUT_SECS", default_value_t = 75.0)]
    pub proxy_idle_timeout_secs: f64,

    /// Seconds a request's whole body has to arrive; after it, 408 and the
    /// connection closes.
    #[arg(long, env = "REJOIN_BODY_TIMEOUT_SECS", default_value_t = 10.0)]
    pub body_timeout_secs: f64,

    /// Most watchers (sessions that have not ended: phones, tabs, support)
    /// one job may have; a fresh connect beyond it gets 409
    /// `too_many_watchers`.
    #[arg(long, env = "REJOIN_MAX_WATCHERS_PER_JOB", default_value_t = 16)]
    pub max_watchers_per_job: usize,

    /// WebSocket connection attempts per second one client address earns
    /// (beyond its burst); more get 429 with `Retry-After`. 0 turns the limit
    /// off. Behind a load balancer, list it in --trusted-proxies, or every
    /// client counts as the balancer's address.
    #[arg(long, env = "REJOIN_CONNECT_RATE_PER_IP", default_value_t = 20.0)]
    pub connect_rate_per_ip: f64,

    /// Proxies and load balancers in front of this server, as addresses or
    /// CIDR blocks, comma-separated (`10.0.0.0/8,192.0.2.7`). Only requests
    /// from these have `Forwarded` / `X-Forwarded-For` (and `x-request-id`)
    /// believed, for the per-address connect limit and the address recorded
    /// on `connected`; from anyone else the headers are ignored. Default: none.
    #[arg(long, env = "REJOIN_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,

    /// Connection attempts one address may make at once.
    #[arg(long, env = "REJOIN_CONNECT_BURST_PER_IP", default_value_t = 100)]
    pub connect_burst_per_ip: u32,

    /// On a PostgreSQL log shared by several nodes: seconds a node's lease
    /// lasts without renewal (renewed four times per lease). A node that
    /// cannot renew it in time (stalled, cut off from the database) closes
    /// every socket it holds (1012) before another node records those
    /// sessions as disconnected. Keep it well under --grace-secs, so that a
    /// fenced client can still resume.
    #[arg(long, env = "REJOIN_NODE_LEASE_SECS", default_value_t = 10.0)]
    pub node_lease_secs: f64,

    /// Seconds without a job event after which a job not finished gets a
    /// `stalled` event (once per quiet spell), for jobs created without
    /// `stallAfterSecs`. 0: off.
    #[arg(long, env = "REJOIN_STALL_AFTER_SECS", default_value_t = 0)]
    pub stall_after_secs: u64,

    /// Seconds after its creation at which a job still not finished fails
    /// with error code `timeout`, for jobs created without `timeoutSecs`.
    /// 0: none.
    #[arg(long, env = "REJOIN_JOB_TIMEOUT_SECS", default_value_t = 0)]
    pub job_timeout_secs: u64,

    /// How long finished units stay in the log: finished jobs (completed,
    /// failed, cancelled, timed out), counted from their terminal event,
    /// and deleted or expired streams, from their end. A number with a unit:
    /// `30d`, `12h`, `10m`, `10s`. Unset: everything is kept. Live jobs,
    /// open streams and anything with a pending deadline or notification
    /// are never removed.
    #[arg(long, env = "REJOIN_RETAIN_FINISHED", value_parser = duration)]
    pub retain_finished: Option<chrono::Duration>,

    /// Where retention writes the events of the units it removes, before it
    /// removes them: gzip NDJSON files by day (DuckDB, pandas and Spark
    /// read them as they are). Unset: units are removed without an archive.
    #[arg(long, env = "REJOIN_ARCHIVE_DIR", requires = "retain_finished")]
    pub archive_dir: Option<std::path::PathBuf>,

    /// Finished jobs kept in memory for quick reads, besides the live ones
    /// (not finished, or with a session connected or in grace, which are
    /// always held). Others are read back from the log by index when asked
    /// for.
    #[arg(long, env = "REJOIN_JOB_CACHE_ENTRIES", default_value_t = 10_000)]
    pub job_cache_entries: usize,

    /// Write a checkpoint of the live state after this many events (0: only
    /// by time). A start folds only the events after the newest checkpoint.
    #[arg(
        long,
        env = "REJOIN_CHECKPOINT_EVERY_EVENTS",
        default_value_t = 100_000
    )]
    pub checkpoint_every_events: u64,

    /// Write a checkpoint this many seconds after the last one, if any event
    /// came since. One is also written at every graceful shutdown.
    #[arg(long, env = "REJOIN_CHECKPOINT_EVERY_SECS", default_value_t = 300.0)]
    pub checkpoint_every_secs: f64,

    /// Seconds a graceful shutdown (SIGTERM, Ctrl-C) may take: closing the
    /// sockets and recording their closes, draining the log writer, the
    /// checkpoint. Past it the process logs what it gave up on and exits
    /// with status 1 (the log stays consistent: what was not committed was
    /// never acknowledged).
    #[arg(long, env = "REJOIN_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30.0)]
    pub shutdown_timeout_secs: f64,

    /// Log lines on standard error: `text` for people, `json` (one object
    /// per line, with `request_id`, `job` and `session` where there is one)
    /// for log collectors. `REJOIN_LOG` sets the filter (default `info`).
    #[arg(long, env = "REJOIN_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Breaks durability on purpose: answers appends before they are
    /// committed. Only for the crash harness's negative control, which must
    /// see it lose events; only in a build with the `test-switches` feature.
    #[cfg(feature = "test-switches")]
    #[arg(long, hide = true)]
    pub unsafe_ack_before_commit: bool,

    /// Runs this node's clock this many milliseconds off the system clock:
    /// a node with a skewed clock, for tests (`test-switches` builds only).
    #[cfg(feature = "test-switches")]
    #[arg(long, hide = true, default_value_t = 0, allow_negative_numbers = true)]
    pub clock_skew_ms: i64,

    /// Makes the log writer panic on an append whose payload contains this
    /// text: a task's death, for tests (`test-switches` builds only).
    #[cfg(feature = "test-switches")]
    #[arg(long, hide = true)]
    pub test_panic_on_payload: Option<String>,

    /// Kills the process (SIGKILL) at this step of the first retention
    /// batch: 1 marker written, 2 archive written, 3 removal committed
    /// (`test-switches` builds only).
    #[cfg(feature = "test-switches")]
    #[arg(long, hide = true)]
    pub test_crash_at_sweep_step: Option<u8>,

    /// Demo mode: serve /demo, where anyone can start a simulated job and make
    /// the server drop its socket. Off by default; never for production.
    #[arg(long, env = "REJOIN_DEMO")]
    pub demo: bool,

    /// How long a simulated demo job runs, in seconds.
    #[arg(long, env = "REJOIN_DEMO_DURATION_SECS", default_value_t = 60.0)]
    pub demo_duration_secs: f64,
}

#[derive(Clone, Debug, Args)]
pub struct ConfigArgs {
    /// Print it as JSON: `{"setting": {"value", "source"}}`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Clone, Debug, Args)]
pub struct TokenArgs {
    /// The token's role.
    #[arg(long, value_enum)]
    pub role: Role,
    /// The job a client token may watch (required for `--role client`).
    #[arg(long)]
    pub job: Option<Uuid>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
    /// The `sub` claim. Default: `rejoin-cli:<role>`.
    #[arg(long)]
    pub sub: Option<String>,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub jwt: JwtArgs,
}

#[derive(Clone, Debug, Args)]
pub struct CheckpointArgs {
    /// List the checkpoints instead of writing one.
    #[arg(long, conflicts_with = "delete")]
    pub list: bool,
    /// Delete every checkpoint instead of writing one.
    #[arg(long)]
    pub delete: bool,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Clone, Debug, Args)]
pub struct VerifyArgs {
    /// Also prove this archive: each file's chains against its heads, and
    /// against the log's records of what retention removed.
    #[arg(long)]
    pub archive: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

impl ServeArgs {
    /// Parses `rejoin serve` arguments (without the program and subcommand
    /// names), as tests and embedders build a configuration.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let argv = std::iter::once(std::ffi::OsString::from("rejoin-serve"))
            .chain(args.into_iter().map(Into::into));
        Wrapper::try_parse_from(argv).map(|w| w.serve)
    }
}

#[derive(Clone, Debug, Args)]
pub struct HistoryArgs {
    /// The job.
    pub job: Uuid,
    /// Print the history as JSON (the shape of `GET /v1/jobs/{id}/history`'s
    /// sessions, rejected attempts and totals).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Clone, Debug, Args)]
pub struct JobsArgs {
    /// pending, running, completed, failed or cancelled.
    #[arg(long, value_parser = job_status)]
    pub status: Option<crate::domain::JobStatus>,
    /// Only stalled (true) or not stalled (false) jobs.
    #[arg(long)]
    pub stalled: Option<bool>,
    /// Created at or after this RFC 3339 time.
    #[arg(long, value_parser = rfc3339)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Created before this RFC 3339 time.
    #[arg(long, value_parser = rfc3339)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// KEY=VALUE: a top-level metadata key and the value it must have
    /// (repeatable).
    #[arg(long, value_parser = key_value)]
    pub meta: Vec<(String, String)>,
    /// Jobs per page (1 to 200).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// The cursor a previous page printed.
    #[arg(long)]
    pub after: Option<i64>,
    /// Print the page as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

fn job_status(text: &str) -> Result<crate::domain::JobStatus, String> {
    crate::domain::JobStatus::parse(text)
        .ok_or_else(|| "pending, running, completed, failed or cancelled".to_owned())
}

/// A duration with a unit: `30d`, `12h`, `10m`, `10s` (at least a second).
pub fn duration(text: &str) -> Result<chrono::Duration, String> {
    let usage = || format!("a number with a unit (s, m, h or d) such as 30d or 10s, not `{text}`");
    let text = text.trim();
    let split = text.len().saturating_sub(1);
    let (number, unit) = (
        text.get(..split).unwrap_or(""),
        text.get(split..).unwrap_or(""),
    );
    let n: i64 = number.parse().map_err(|_| usage())?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3_600),
        "d" => n.checked_mul(86_400),
        _ => None,
    };
    secs.filter(|s| (1..=crate::domain::stream::MAX_LIFETIME_SECS as i64 * 10).contains(s))
        .map(chrono::Duration::seconds)
        .ok_or_else(usage)
}

fn rfc3339(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| "an RFC 3339 time such as 2026-12-01T09:00:00Z".to_owned())
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("KEY=VALUE, not `{text}`"))
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReplayFormat {
    /// One event per line, as `GET /v1/events` prints them.
    Ndjson,
    /// Jobs, sessions, reconnects, gap percentiles, grace expiries, close codes.
    Summary,
    /// The summary as JSON.
    Json,
}

#[derive(Clone, Debug, Args)]
pub struct ReplayArgs {
    /// Start after this global position (or, with --job, after this seq).
    #[arg(long, default_value_t = 0)]
    pub from: i64,
    /// Only this job's events.
    #[arg(long)]
    pub job: Option<Uuid>,
    #[arg(long, value_enum, default_value = "summary")]
    pub format: ReplayFormat,
    /// Read this archive too: the events retention removed and the log
    /// still holds, as one history in position order.
    #[arg(long)]
    pub archive: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Who may use the Durable Streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StreamAuth {
    /// A bearer token with the stream or service role.
    Token,
    /// No token (a gateway in front authenticates).
    None,
}
