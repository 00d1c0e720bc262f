//! The server as a value: [`Application::build`] opens the log, rebuilds state,
//! records sockets the previous process left connected, and binds the listener
//! (so the port is known before anything runs); [`Application::run`] serves
//! until the given shutdown future resolves, then stops in order: no new
//! connections, every socket closed with 1001 and its close recorded, the
//! writer drained, a checkpoint written, the database closed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Authority, SecretHome};
use crate::clock::{Clock, SystemClock};
use crate::config::ServeArgs;
use crate::engine::RetentionSettings;
use crate::engine::{Engine, EngineSettings, EngineTasks};
use crate::http::connections::{self, Connections, Limits};
use crate::http::rate::{self, ConnectRate};
use crate::http::request::TrustedProxies;
use crate::http::{self, AppState, HttpSettings, Shared};
use crate::http::{RejectionLog, UpgradeSettings};
use crate::log;
use crate::webhook::Endpoint;

pub struct Application {
    /// The SQLite log's lock, held until the server has stopped.
    owner: Option<log::owner::Owner>,
    listener: TcpListener,
    state: AppState,
    tasks: EngineTasks,
    engine_stop: CancellationToken,
    shutdown_timeout: Duration,
}

fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        value.is_finite() && value > 0.0 && value < 1e9,
        "{name} must be a positive number of seconds"
    );
    Ok(Duration::from_secs_f64(value))
}

impl Application {
    /// Builds the server on the system clock.
    pub async fn build(args: ServeArgs) -> anyhow::Result<Self> {
        #[cfg(feature = "test-switches")]
        if args.clock_skew_ms != 0 {
            let skew = chrono::Duration::milliseconds(args.clock_skew_ms);
            return Self::build_with_clock(args, Arc::new(crate::clock::Skewed(skew))).await;
        }
        Self::build_with_clock(args, Arc::new(SystemClock)).await
    }

    pub async fn build_with_clock(args: ServeArgs, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let grace = seconds("--grace-secs", args.grace_secs)?;
        let heartbeat_interval =
            seconds("--heartbeat-interval-secs", args.heartbeat_interval_secs)?;
        let heartbeat_timeout = seconds("--heartbeat-timeout-secs", args.heartbeat_timeout_secs)?;
        let node_lease = seconds("--node-lease-secs", args.node_lease_secs)?;
        let checkpoint_every = seconds("--checkpoint-every-secs", args.checkpoint_every_secs)?;
        let shutdown_timeout = seconds("--shutdown-timeout-secs", args.shutdown_timeout_secs)?;
        anyhow::ensure!(args.send_queue > 0, "--send-queue must be at least 1");
        anyhow::ensure!(
            args.max_watchers_per_job > 0,
            "--max-watchers-per-job must be at least 1"
        );
        let demo = if args.demo {
            Some(seconds("--demo-duration-secs", args.demo_duration_secs)?)
        } else {
            None
        };

        let proxies = Arc::new(TrustedProxies::parse(&args.trusted_proxies)?);
        let limits = ConnectionLimits::from_flags(
            args.max_tcp_connections,
            args.max_connections,
            args.max_connections_per_address,
        )?;
        let header_timeout = seconds("--header-timeout-secs", args.header_timeout_secs)?;
        let proxy_idle_timeout =
            seconds("--proxy-idle-timeout-secs", args.proxy_idle_timeout_secs)?;
        let body_timeout = seconds("--body-timeout-secs", args.body_timeout_secs)?;
        let url = &args.database.url();
        let sqlite_file = args.database.sqlite_file();
        // Only `serve` generates the secrets it does not find.
        let secret_dir = sqlite_file.as_deref().map(crate::config::secret_dir_of);
        let keys = secret_dir.as_deref().map(SecretHome::Create);
        let auth = Authority::from_args(&args.jwt, keys).await?;
        let webhook = Endpoint::from_args(&args.webhook, secret_dir.as_deref())?.map(Arc::new);
        if let Some(w) = &webhook {
            tracing::info!(endpoint = %w.display_url(), "webhook notifications on");
        }
        let store = log::open(url).await?;
        // One process owns a SQLite log (a shared PostgreSQL log has leases).
        let owner = match &sqlite_file {
            Some(path) => match log::owner::take(path) {
                Ok(owner) => Some(owner),
                Err(e) => {
                    store.events.close().await;
                    return Err(e);
                }
            },
            None => None,
        };
        let listener =
            listen(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
        let engine_stop = CancellationToken::new();
        #[cfg(feature = "test-switches")]
        let store = if args.unsafe_ack_before_commit {
            tracing::warn!("--unsafe-ack-before-commit: appends are answered before they are durable; acknowledged events WILL be lost in a crash");
            log::Log {
                events: log::write_behind::WriteBehind::wrap(store.events.clone()),
                ..store
            }
        } else {
            store
        };
        #[cfg(feature = "test-switches")]
        let store = match args.test_panic_on_payload.clone() {
            Some(marker) => log::Log {
                events: log::fault::PanicOn::wrap(store.events.clone(), marker),
                ..store
            },
            None => store,
        };
        let settings = EngineSettings {
            grace,
            node_lease,
            job_cache_entries: args.job_cache_entries,
            checkpoint_every_events: args.checkpoint_every_events,
            checkpoint_every,
            windows: crate::engine::JobOptions {
                stall_after_secs: Some(args.stall_after_secs),
                timeout_secs: Some(args.job_timeout_secs),
                notify: None,
            },
            webhook,
            retention: retention_settings(&args)?,
            ..EngineSettings::default()
        };
        let started = Engine::start(store.clone(), clock, settings, engine_stop.clone()).await?;
        let (engine, tasks) = (started.engine, started.tasks);
        let state = AppState::new(Shared {
            engine: engine.clone(),
            store,
            clock: started.clock,
            auth: Arc::new(auth),
            settings: Arc::new(HttpSettings {
                public_url: args.public_url.clone(),
                max_body_bytes: args.max_body_bytes,
                client_token_ttl_secs: args.client_token_ttl_secs,
                max_client_token_ttl_secs: args.max_client_token_ttl_secs,
                streams: crate::http::StreamSettings {
                    open: args.stream_auth == crate::config::StreamAuth::None,
                    max_body_bytes: args.stream_max_body_bytes,
                    long_poll: std::time::Duration::from_secs_f64(
                        args.stream_long_poll_secs.clamp(0.0, 3600.0),
                    ),
                },
            }),
            upgrade: Arc::new(UpgradeSettings {
                heartbeat_interval,
                heartbeat_timeout,
                allowed_origins: args.allowed_origins.clone(),
                max_frame_bytes: args.max_frame_bytes,
                send_queue: args.send_queue,
                max_connections: limits.sockets,
                max_watchers_per_job: args.max_watchers_per_job,
            }),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            capacity_warning: Arc::new(rate::LogEvery::new(Duration::from_secs(10))),
            rejections: Arc::new(RejectionLog::new(Duration::from_secs(10))),
            connect_rate: Arc::new(ConnectRate::new(
                args.connect_rate_per_ip,
                args.connect_burst_per_ip,
            )),
            connections: Connections::new(
                Limits {
                    max_open: limits.tcp,
                    per_address: limits.per_address,
                    header_timeout,
                    proxy_idle_timeout,
                    body_timeout,
                    max_body_bytes: args.max_body_bytes,
                    max_stream_body_bytes: args.stream_max_body_bytes,
                },
                proxies.clone(),
                engine.clone(),
            ),
            proxies,
            demo,
        });
        if demo.is_some() {
            tracing::warn!("demo mode is on: anyone can start jobs at /demo");
        }
        Ok(Application {
            owner,
            listener,
            state,
            tasks,
            engine_stop,
            shutdown_timeout,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn engine(&self) -> &Engine {
        &self.state.engine
    }

    /// Serves until `shutdown` resolves, then stops gracefully, within the
    /// shutdown deadline: past it, logs what it gave up on and returns
    /// [`ShutdownTimedOut`].
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let deadline = self.shutdown_timeout;
        let sockets = self.state.tasks.clone();
        let stopping = CancellationToken::new();
        let progress = Arc::new(Mutex::new(Stage::Serving));
        let work = self.serve_then_stop(shutdown, stopping.clone(), progress.clone());
        let expired = async {
            stopping.cancelled().await;
            tokio::time::sleep(deadline).await;
        };
        tokio::select! {
            done = work => done,
            () = expired => {
                let stage = *progress.lock().unwrap_or_else(|p| p.into_inner());
                let gave_up = stage.gave_up(sockets.len());
                tracing::error!(
                    deadline_secs = deadline.as_secs_f64(),
                    stage = stage.name(),
                    gave_up = %gave_up,
                    "shutdown deadline passed; exiting without finishing (nothing unacknowledged was lost: what was not committed was never answered)"
                );
                Err(ShutdownTimedOut { deadline, gave_up }.into())
            }
        }
    }

    async fn serve_then_stop(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        stopping: CancellationToken,
        progress: Arc<Mutex<Stage>>,
    ) -> anyhow::Result<()> {
        let Application {
            owner,
            listener,
            state,
            tasks,
            engine_stop,
            ..
        } = self;
        let at = move |stage: Stage| *progress.lock().unwrap_or_else(|p| p.into_inner()) = stage;
        let store = state.store.clone();
        let engine = state.engine.clone();
        let (sockets, closing) = (state.tasks.clone(), state.shutdown.clone());
        tokio::spawn(sweep_limiters(
            state.connect_rate.clone(),
            state.rejections.clone(),
            closing.clone(),
        ));
        let connections = state.connections.clone();
        let app = http::router(state);
        let signalled = {
            let at = at.clone();
            let engine = engine.clone();
            async move {
                // A signal, or an essential task that stopped.
                tokio::select! {
                    () = shutdown => {}
                    () = engine.died() => {}
                }
                at(Stage::Requests);
                stopping.cancel();
                // Upgraded sockets are not the connections' to wait for:
                // close them now.
                closing.cancel();
            }
        };
        connections::serve(listener, app, connections, signalled)
            .await
            .context("serving HTTP")?;
        // Every socket closes with 1001 and records its close; wait for all.
        sockets.close();
        at(Stage::Sockets);
        sockets.wait().await;
        tracing::info!("sockets closed; draining the log writer");
        at(Stage::Writer);
        engine_stop.cancel();
        // A task's panic is caught where it runs and recorded in the
        // engine's health; these only wait for each to end.
        tasks.scheduler.await.context("the scheduler panicked")?;
        tasks.writer.await.context("the log writer panicked")?;
        tasks.index.await.context("the job indexer panicked")?;
        tasks
            .checkpoints
            .await
            .context("the checkpoint writer panicked")?;
        // The next start folds nothing: every event is in this checkpoint.
        // Not after a task failed: the state in memory may be what failed,
        // and the next start folds it again from the log.
        at(Stage::Checkpoint);
        let failure = engine.failure();
        if failure.is_none() {
            match engine.checkpoint_now().await {
                Ok(h) => tracing::info!(position = h.position, jobs = h.jobs, "checkpoint written"),
                Err(e) => tracing::warn!(error = %e, "cannot write the shutdown checkpoint"),
            }
        }
        at(Stage::Closing);
        if let Some(leases) = tasks.leases {
            leases.await.context("the lease keeper panicked")?;
        }
        store.events.close().await;
        drop(owner);
        if let Some(failure) = failure {
            anyhow::bail!("{failure}; stopped (the next start rebuilds from the log)");
        }
        tracing::info!("log flushed; bye");
        Ok(())
    }
}

/// Forgets idle per-address buckets and old rejection records every
/// [`rate::SWEEP_EVERY`], until the server stops.
async fn sweep_limiters(
    rate: Arc<ConnectRate>,
    rejections: Arc<RejectionLog>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(rate::SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {
                let now = std::time::Instant::now();
                let tracked = rate.sweep(now);
                rejections.sweep(now);
                tracing::trace!(tracked, "rate limiter swept");
            }
        }
    }
}

/// Where a graceful shutdown has got to, for the deadline's report.
#[derive(Clone, Copy, Debug)]
enum Stage {
    Serving,
    /// Waiting for HTTP requests in flight.
    Requests,
    /// Sockets still closing (each records its close).
    Sockets,
    Writer,
    Checkpoint,
    Closing,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Serving => "serving",
            Stage::Requests => "requests",
            Stage::Sockets => "sockets",
            Stage::Writer => "writer",
            Stage::Checkpoint => "checkpoint",
            Stage::Closing => "closing",
        }
    }

    /// What is left undone when shutdown stops here, with `open` sockets
    /// not yet closed.
    fn gave_up(self, open: usize) -> String {
        let after_sockets =
            "draining the log writer, the shutdown checkpoint and closing the database";
        match self {
            Stage::Serving | Stage::Requests => format!(
                "HTTP requests in flight, recording the closes of {open} open sockets, {after_sockets}"
            ),
            Stage::Sockets => format!("recording the closes of {open} sockets, {after_sockets}"),
            Stage::Writer => after_sockets.to_owned(),
            Stage::Checkpoint => {
                "the shutdown checkpoint (the next start folds from the last one) and closing the database".to_owned()
            }
            Stage::Closing => "closing the database".to_owned(),
        }
    }
}

/// A graceful shutdown that did not finish within its deadline.
#[derive(Debug, thiserror::Error)]
#[error("shutdown did not finish within {}s; gave up on {gave_up}", deadline.as_secs_f64())]
pub struct ShutdownTimedOut {
    pub deadline: Duration,
    pub gave_up: String,
}

/// Binds with a deep accept backlog: after a restart, thousands of clients
/// reconnect at once, and a full backlog drops their SYNs, which costs each of
/// them a one-second retransmission.
/// Retention as configured: none unless `--retain-finished` is set; a
/// round every tenth of the window, from once a second to once a minute.
fn retention_settings(args: &ServeArgs) -> anyhow::Result<Option<RetentionSettings>> {
    let Some(keep) = args.retain_finished else {
        return Ok(None);
    };
    let archive =
        match &args.archive_dir {
            Some(dir) => Some(crate::log::archive::Archive::open(dir).with_context(|| {
                format!("cannot create the archive directory {}", dir.display())
            })?),
            None => None,
        };
    let tenth = keep.num_milliseconds().max(0) as u64 / 10;
    let every = Duration::from_millis(tenth.clamp(1_000, 60_000));
    tracing::info!(
        keep_secs = keep.num_seconds(),
        archive = ?args.archive_dir,
        "retention on: finished units older than this leave the log"
    );
    Ok(Some(RetentionSettings {
        keep,
        archive,
        every,
        #[cfg(feature = "test-switches")]
        crash_at_step: args.test_crash_at_sweep_step,
        #[cfg(not(feature = "test-switches"))]
        crash_at_step: None,
    }))
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Pending connections the kernel may queue (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 8192;

/// The process's open-file limit (1024 when it cannot be read).
pub fn open_file_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if ok {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    }
}

/// Descriptors kept from TCP connections, for the database and files.
const FILES_ROOM: usize = 64;
/// Connections kept from sockets and streams, for HTTP requests.
const HTTP_ROOM: usize = 192;

/// The connection limits, from the flags or their defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// TCP connections (`--max-tcp-connections`).
    pub tcp: usize,
    /// WebSockets and streams (`--max-connections`).
    pub sockets: usize,
    /// TCP connections from one address (`--max-connections-per-address`).
    pub per_address: usize,
}

impl ConnectionLimits {
    pub fn from_flags(
        tcp: Option<usize>,
        sockets: Option<usize>,
        per_address: Option<usize>,
    ) -> anyhow::Result<Self> {
        let tcp = tcp.unwrap_or_else(|| open_file_limit().saturating_sub(FILES_ROOM).max(64));
        let sockets = sockets.unwrap_or_else(|| tcp.saturating_sub(HTTP_ROOM).max(tcp / 2));
        let per_address = per_address.unwrap_or((tcp / 8).max(16));
        anyhow::ensure!(tcp > 0, "--max-tcp-connections must be at least 1");
        anyhow::ensure!(
            sockets < tcp,
            "--max-connections ({sockets}) must be below --max-tcp-connections ({tcp}), so HTTP requests keep room"
        );
        anyhow::ensure!(
            per_address > 0,
            "--max-connections-per-address must be at least 1"
        );
        Ok(ConnectionLimits {
            tcp,
            sockets,
            per_address,
        })
    }
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is
/// called, not when it is first polled: a SIGTERM right after the address is
/// printed stops the server gracefully rather than killing it.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            () = wait(term) => {},
            () = wait(int) => {},
        }
        tracing::info!("shutdown signal received");
    }
}
