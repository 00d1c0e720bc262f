//! Scenario 7, the peer: rejoin and a Socket.IO 4 server with connection-state
//! recovery (`benches/socketio`, installed from npm with `npm ci`) run the same
//! loads side by side, each as its own process on its own port:
//!
//! - fan-out: sockets on their own jobs, events POSTed at a fixed total rate,
//!   the time from the POST to the client's receipt;
//! - drops: every socket dropped every 2–5 s, by TCP reset or silently (the
//!   socket is abandoned open, as a phone that changed networks leaves one
//!   behind), the client back 0.2–1 s later with its resume state;
//! - restart: the server killed (SIGKILL) and started again under the clients,
//!   who come back with full-jitter backoff;
//! - idle memory per connection.
//!
//! Delivery counts the events whose POST was acknowledged and that reached
//! their client's application, after the client's own duplicate filter (rejoin:
//! `seq`; Socket.IO has none).
//!
//! Both servers check the same HS256 tokens on every handshake and POST. The
//! client side is one Rust program speaking each server's wire protocol (rejoin
//! JSON frames; Engine.IO 4 / Socket.IO 5 packets over the WebSocket
//! transport, including the `pid`/`offset` recovery handshake).

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::{
    create_job, free_port, full_jitter, ms, random_below, rate, rss_kib, spawn_announcing,
    Latencies, Tokens, Ws,
};
use crate::BenchArgs;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Rejoin,
    SocketIo,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Rejoin => "rejoin",
            Kind::SocketIo => "socket.io",
        }
    }
}

/// How a client loses its socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DropKind {
    /// The connection is reset (RST): the server learns at once.
    Reset,
    /// The socket is abandoned, still open: the server learns nothing until
    /// its heartbeat gives up.
    Silent,
}

struct Sizes {
    fanout: (usize, u64, u64),
    drops: (usize, u64, u64),
    restart: (usize, u64, u64),
    idle: usize,
    settle: Duration,
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let sizes = if args.smoke {
        Sizes {
            fanout: (20, 100, 2),
            drops: (10, 50, 3),
            restart: (10, 50, 3),
            idle: 100,
            settle: Duration::from_secs(4),
        }
    } else {
        Sizes {
            fanout: (1_000, 500, 10),
            drops: (200, 400, 30),
            restart: (200, 400, 15),
            idle: 10_000,
            settle: Duration::from_secs(15),
        }
    };
    let dir = peer_dir(args)?;
    let version = install(&dir).await?;
    println!(
        "  peer: socket.io {version} (node {})",
        node_version().await?
    );

    let mut table: Vec<(String, [String; 2])> = Vec::new();
    let mut fanout_p = [(Duration::ZERO, Duration::ZERO); 2];
    let mut idle_kib = [0.0; 2];
    for (i, kind) in [Kind::Rejoin, Kind::SocketIo].into_iter().enumerate() {
        let (n, per_sec, secs) = sizes.fanout;
        let mut server = Server::start(kind, &dir).await?;
        let mut report = load(&mut server, n, 1, per_sec, secs, None, false, sizes.settle).await?;
        let (p50, p99) = (
            report.latencies.percentile(50.0),
            report.latencies.percentile(99.0),
        );
        fanout_p[i] = (p50, p99);
        println!("  {:<9} fan-out: {}", kind.name(), report.line());
        println!("            POST to receipt {}", report.latencies.summary());
        put(
            &mut table,
            &format!("fan-out {n} sockets {per_sec}/s: p50 / p99"),
            i,
            format!("{} / {}", ms(p50), ms(p99)),
        );
        put(&mut table, "fan-out delivered", i, report.delivered());
        server.stop().await;

        // The configuration every peer is measured with: ten watchers a job.
        let mut server = Server::start(kind, &dir).await?;
        let mut report = load(&mut server, n, 10, per_sec, secs, None, false, sizes.settle).await?;
        let (p50, p99) = (
            report.latencies.percentile(50.0),
            report.latencies.percentile(99.0),
        );
        println!(
            "  {:<9} fan-out, 10 per job: {}",
            kind.name(),
            report.line()
        );
        println!("            POST to receipt {}", report.latencies.summary());
        put(
            &mut table,
            &format!("fan-out {n} sockets, 10 per job, {per_sec}/s: p50 / p99"),
            i,
            format!("{} / {}", ms(p50), ms(p99)),
        );
        put(
            &mut table,
            "fan-out 10 per job delivered",
            i,
            report.delivered(),
        );
        server.stop().await;

        for mode in [DropKind::Reset, DropKind::Silent] {
            let (n, per_sec, secs) = sizes.drops;
            let mut server = Server::start(kind, &dir).await?;
            let report = load(
                &mut server,
                n,
                1,
                per_sec,
                secs,
                Some(mode),
                false,
                sizes.settle,
            )
            .await?;
            println!("  {:<9} {mode:?} drops: {}", kind.name(), report.line());
            let label = match mode {
                DropKind::Reset => "drops by TCP reset every 2-5 s: delivered",
                DropKind::Silent => "silent drops (half-open) every 2-5 s: delivered",
            };
            put(&mut table, label, i, report.delivered());
            server.stop().await;
        }

        let (n, per_sec, secs) = sizes.restart;
        let mut server = Server::start(kind, &dir).await?;
        let report = load(&mut server, n, 1, per_sec, secs, None, true, sizes.settle).await?;
        println!("  {:<9} restart: {}", kind.name(), report.line());
        put(
            &mut table,
            "across a SIGKILL restart: delivered",
            i,
            report.delivered(),
        );
        server.stop().await;

        let mut server = Server::start(kind, &dir).await?;
        idle_kib[i] = idle(&mut server, sizes.idle).await?;
        println!(
            "  {:<9} idle: {:.2} KiB per connection ({} sockets)",
            kind.name(),
            idle_kib[i],
            sizes.idle
        );
        put(
            &mut table,
            &format!(
                "idle memory per connection ({} sockets)",
                rate(sizes.idle as f64)
            ),
            i,
            format!("{:.2} KiB", idle_kib[i]),
        );
        server.stop().await;
    }

    println!();
    println!(
        "  {:<50} {:>22} {:>22}",
        "",
        "rejoin",
        format!("socket.io {version}")
    );
    for (label, [a, b]) in &table {
        println!("  {label:<50} {a:>22} {b:>22}");
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!(
        "  rejoin / socket.io: fan-out p50 {:.2}x, p99 {:.2}x; idle memory {:.2}x",
        ratio(fanout_p[0].0, fanout_p[1].0),
        ratio(fanout_p[0].1, fanout_p[1].1),
        idle_kib[0] / idle_kib[1].max(1e-9)
    );
    Ok(())
}

fn put(table: &mut Vec<(String, [String; 2])>, label: &str, column: usize, value: String) {
    if let Some(row) = table.iter_mut().find(|(l, _)| l == label) {
        row.1[column] = value;
    } else {
        let mut row = [String::new(), String::new()];
        row[column] = value;
        table.push((label.to_owned(), row));
    }
}

/// Where the peer lives: `--peer-dir`, else `benches/socketio` here or in the
/// source tree this binary was built from.
fn peer_dir(args: &BenchArgs) -> anyhow::Result<PathBuf> {
    let candidates = match &args.peer_dir {
        Some(dir) => vec![dir.clone()],
        None => vec![
            PathBuf::from("benches/socketio"),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../socketio"),
        ],
    };
    candidates
        .into_iter()
        .find(|d| d.join("server.js").is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no Socket.IO peer (server.js) found; pass --peer-dir PATH/benches/socketio"
            )
        })
}

/// `npm ci` when the peer's packages are missing or older than its lock file;
/// returns the installed socket.io version.
async fn install(dir: &Path) -> anyhow::Result<String> {
    let installed = dir.join("node_modules/socket.io/package.json");
    let stale = match (
        std::fs::metadata(&installed).and_then(|m| m.modified()),
        std::fs::metadata(dir.join("package-lock.json")).and_then(|m| m.modified()),
    ) {
        (Ok(have), Ok(want)) => have < want,
        _ => true,
    };
    if stale {
        println!("  installing the peer: npm ci in {}", dir.display());
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir)
            .status()
            .await
            .context("running npm (the peer needs Node.js and npm)")?;
        anyhow::ensure!(status.success(), "npm ci failed in {}", dir.display());
    }
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(&installed)?)?;
    Ok(manifest["version"].as_str().unwrap_or("?").to_owned())
}

async fn node_version() -> anyhow::Result<String> {
    let out = Command::new("node")
        .arg("--version")
        .output()
        .await
        .context("running node")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// One server under test, as its own process on a fixed port (so a restart
/// comes back where the clients look for it).
struct Server {
    kind: Kind,
    peer_dir: PathBuf,
    addr: String,
    secret: String,
    tokens: Tokens,
    http: reqwest::Client,
    child: Child,
    db: String,
    _data: tempfile::TempDir,
}

impl Server {
    async fn start(kind: Kind, peer_dir: &Path) -> anyhow::Result<Server> {
        let data = tempfile::tempdir()?;
        let db = format!("sqlite://{}", data.path().join("peer.db").display());
        let secret = Uuid::new_v4().simple().to_string();
        let addr = format!("127.0.0.1:{}", free_port()?);
        let child = spawn(kind, peer_dir, &addr, &db, &secret).await?;
        Ok(Server {
            kind,
            peer_dir: peer_dir.to_owned(),
            addr,
            tokens: Tokens::new(&secret),
            secret,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()?,
            child,
            db,
            _data: data,
        })
    }

    /// SIGKILL, then the same server again on the same port and data.
    async fn restart(&mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        self.child = spawn(
            self.kind,
            &self.peer_dir,
            &self.addr,
            &self.db,
            &self.secret,
        )
        .await?;
        Ok(())
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    async fn new_job(&self) -> anyhow::Result<Uuid> {
        match self.kind {
            Kind::Rejoin => create_job(&self.http, &self.addr, &self.tokens.service()).await,
            Kind::SocketIo => Ok(Uuid::new_v4()),
        }
    }

    fn post_url(&self, job: Uuid) -> String {
        match self.kind {
            Kind::Rejoin => format!("http://{}/v1/jobs/{job}/events", self.addr),
            Kind::SocketIo => format!("http://{}/jobs/{job}/events", self.addr),
        }
    }

    fn body(&self, k: u64, t: u64) -> Value {
        match self.kind {
            Kind::Rejoin => json!({"type": "progress", "progress": 50.0, "data": {"k": k, "t": t}}),
            Kind::SocketIo => json!({"k": k, "t": t}),
        }
    }

    fn client(&self, job: Uuid) -> Client {
        Client {
            kind: self.kind,
            addr: self.addr.clone(),
            job,
            token: self.tokens.client(job),
            last_seq: None,
            epoch: None,
            pid: None,
            offset: None,
            early: VecDeque::new(),
        }
    }
}

async fn spawn(
    kind: Kind,
    peer_dir: &Path,
    addr: &str,
    db: &str,
    secret: &str,
) -> anyhow::Result<Child> {
    let command = match kind {
        Kind::Rejoin => {
            let mut c = Command::new(super::rejoin_binary()?);
            // Every client comes from 127.0.0.1: the per-address cap must
            // not be what refuses the idle scenario's 10,000 sockets.
            c.args(super::serve_args(
                addr,
                db,
                secret,
                &["--max-connections-per-address", super::idle::UNCAPPED],
            ))
            .env("REJOIN_LOG", "error");
            c
        }
        Kind::SocketIo => {
            let mut c = Command::new("node");
            c.arg("server.js")
                .current_dir(peer_dir)
                .env("JWT_SECRET", secret)
                .env("PORT", addr.rsplit(':').next().unwrap_or("0"));
            c
        }
    };
    Ok(spawn_announcing(command).await?.0)
}

/// An event as the client's application sees it: the producer's per-job
/// counter and its send time.
struct Received {
    k: u64,
    t: u64,
}

/// A client of either server, keeping what it needs to resume.
struct Client {
    kind: Kind,
    addr: String,
    job: Uuid,
    token: String,
    // rejoin
    last_seq: Option<i64>,
    epoch: Option<String>,
    // Socket.IO
    pid: Option<String>,
    offset: Option<String>,
    /// Events that came before the connect packet (Socket.IO may send a
    /// room's broadcast first), handed out before the socket's next ones.
    early: VecDeque<Received>,
}

impl Client {
    /// Opens a socket and completes the handshake, resuming when it can.
    async fn connect(&mut self) -> anyhow::Result<Ws> {
        match self.kind {
            Kind::Rejoin => {
                let mut url = format!(
                    "ws://{}/ws/progress?jobId={}&token={}",
                    self.addr, self.job, self.token
                );
                if let (Some(seq), Some(epoch)) = (self.last_seq, &self.epoch) {
                    url.push_str(&format!("&reconnect=true&lastSeq={seq}&epoch={epoch}"));
                }
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
                let hello = super::first_message(&mut ws).await?;
                self.epoch = hello["epoch"].as_str().map(str::to_owned);
                if self.last_seq.is_none() {
                    self.last_seq = hello["lastSeq"].as_i64();
                }
                Ok(ws)
            }
            Kind::SocketIo => {
                let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", self.addr);
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
                let open = next_text(&mut ws).await?;
                anyhow::ensure!(open.starts_with('0'), "no Engine.IO open packet: {open}");
                let mut auth = json!({"token": self.token, "job": self.job});
                if let (Some(pid), Some(offset)) = (&self.pid, &self.offset) {
                    auth["pid"] = json!(pid);
                    auth["offset"] = json!(offset);
                }
                ws.send(Message::Text(format!("40{auth}").into())).await?;
                loop {
                    let packet = next_text(&mut ws).await?;
                    if let Some(body) = packet.strip_prefix("40") {
                        let body: Value = serde_json::from_str(body)?;
                        self.pid = body["pid"].as_str().map(str::to_owned);
                        return Ok(ws);
                    } else if let Some(event) = self.socket_io_event(&packet) {
                        self.early.push_back(event);
                    } else if packet == "2" {
                        ws.send(Message::Text("3".into())).await?;
                    } else {
                        anyhow::bail!("Socket.IO connect refused: {packet}");
                    }
                }
            }
        }
    }

    /// The next application event on `ws`, answering Engine.IO pings on the
    /// way; `None` when the socket ends.
    async fn next_event(&mut self, ws: &mut Ws) -> Option<Received> {
        if let Some(event) = self.early.pop_front() {
            return Some(event);
        }
        loop {
            let text = match ws.next().await? {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            };
            match self.kind {
                Kind::Rejoin => {
                    let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                        continue;
                    };
                    let Some(seq) = v["seq"].as_i64() else {
                        continue;
                    };
                    if self.last_seq.is_some_and(|last| seq <= last) {
                        continue; // at-least-once across connections: drop what was seen
                    }
                    self.last_seq = Some(seq);
                    if let Some(event) = received(&v["data"]) {
                        return Some(event);
                    }
                }
                Kind::SocketIo => {
                    let text = text.as_str();
                    if text == "2" {
                        if ws.send(Message::Text("3".into())).await.is_err() {
                            return None;
                        }
                    } else if let Some(event) = self.socket_io_event(text) {
                        return Some(event);
                    }
                }
            }
        }
    }

    /// A Socket.IO event packet, `42["event",DATA,OFFSET]`; keeps its offset
    /// for the recovery handshake.
    fn socket_io_event(&mut self, packet: &str) -> Option<Received> {
        let array = packet.strip_prefix("42")?;
        let Ok(Value::Array(parts)) = serde_json::from_str::<Value>(array) else {
            return None;
        };
        if let Some(offset) = parts.get(2).and_then(Value::as_str) {
            self.offset = Some(offset.to_owned());
        }
        parts.get(1).and_then(received)
    }
}

fn received(data: &Value) -> Option<Received> {
    Some(Received {
        k: data["k"].as_u64()?,
        t: data["t"].as_u64()?,
    })
}

async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(_)) => continue,
            other => anyhow::bail!("the socket ended during the handshake: {other:?}"),
        }
    }
}

/// Loses the socket the way `mode` says. A silently dropped socket is kept
/// open in `abandoned` until the run ends.
fn lose(ws: Ws, mode: DropKind, abandoned: &mut Vec<Ws>) {
    match mode {
        DropKind::Reset => {
            if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_ref() {
                let _ = tcp.set_zero_linger();
            }
        }
        DropKind::Silent => abandoned.push(ws),
    }
}

/// What a load run saw.
struct Report {
    acked: u64,
    failed_posts: u64,
    delivered: u64,
    duplicates: u64,
    reconnects: u64,
    latencies: Latencies,
}

impl Report {
    fn lost(&self) -> u64 {
        self.acked.saturating_sub(self.delivered)
    }

    fn delivered(&self) -> String {
        format!(
            "{:.2} % ({} lost)",
            self.delivered as f64 * 100.0 / self.acked.max(1) as f64,
            self.lost()
        )
    }

    fn line(&self) -> String {
        format!(
            "acknowledged {}, delivered {}, lost {}, duplicates {}, POSTs failed {}, reconnects {}",
            self.acked,
            self.delivered,
            self.lost(),
            self.duplicates,
            self.failed_posts,
            self.reconnects
        )
    }
}

/// `n` clients, `watchers` to a job, `per_sec` events POSTed in total for
/// `secs` seconds; sockets dropped by `drops`, or the server restarted a
/// third of the way in. Waits up to `settle` after the last POST for
/// deliveries (every watcher must get every acknowledged event).
#[allow(clippy::too_many_arguments)]
async fn load(
    server: &mut Server,
    n: usize,
    watchers: usize,
    per_sec: u64,
    secs: u64,
    drops: Option<DropKind>,
    restart: bool,
    settle: Duration,
) -> anyhow::Result<Report> {
    let job_count = n / watchers;
    let mut jobs = Vec::with_capacity(job_count);
    for _ in 0..job_count {
        jobs.push(server.new_job().await?);
    }
    let base = Instant::now();
    let latencies = Arc::new(Mutex::new(Latencies::default()));
    let delivered = Arc::new(AtomicU64::new(0));
    let reconnects = Arc::new(AtomicU64::new(0));
    let dropping = Arc::new(AtomicBool::new(drops.is_some()));
    let (done_tx, done) = tokio::sync::watch::channel(false);
    let mut clients = Vec::with_capacity(n);
    let mut client_jobs = Vec::with_capacity(n);
    for (j, job) in jobs
        .iter()
        .enumerate()
        .flat_map(|jj| std::iter::repeat_n(jj, watchers))
    {
        client_jobs.push(j);
        let mut client = server.client(*job);
        let mut ws = client.connect().await?;
        let (latencies, delivered, reconnects, dropping, mut done) = (
            latencies.clone(),
            delivered.clone(),
            reconnects.clone(),
            dropping.clone(),
            done.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut seen = HashSet::new();
            let mut duplicates = 0u64;
            let mut abandoned = Vec::new();
            'connected: loop {
                let drop_at = tokio::time::Instant::now()
                    + Duration::from_millis(2_000 + random_below(3_000));
                loop {
                    tokio::select! {
                        event = client.next_event(&mut ws) => match event {
                            Some(event) => {
                                let at = base.elapsed();
                                if seen.insert(event.k) {
                                    delivered.fetch_add(1, Ordering::Relaxed);
                                    let latency = at.saturating_sub(Duration::from_nanos(event.t));
                                    latencies.lock().unwrap_or_else(|p| p.into_inner()).push(latency);
                                } else {
                                    duplicates += 1;
                                }
                            }
                            None => break,
                        },
                        _ = tokio::time::sleep_until(drop_at), if dropping.load(Ordering::Relaxed) => {
                            if let Some(mode) = drops {
                                lose(ws, mode, &mut abandoned);
                            }
                            tokio::time::sleep(Duration::from_millis(200 + random_below(800))).await;
                            ws = reconnect(&mut client, &reconnects, &done).await?;
                            continue 'connected;
                        }
                        _ = done.changed() => break 'connected,
                    }
                }
                // The server closed or died: come back with backoff.
                if *done.borrow() {
                    break;
                }
                ws = reconnect(&mut client, &reconnects, &done).await?;
            }
            drop(abandoned);
            anyhow::Ok((seen, duplicates))
        }));
    }

    // The producer: one POST every 1/per_sec s, each on its own task; each
    // job's events numbered 1, 2, … in the order they are sent.
    let total = per_sec * secs;
    let restart_after = total / 3;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut next_k = vec![0u64; job_count];
    let acked = Arc::new(Mutex::new(vec![Vec::new(); job_count]));
    let failed = Arc::new(AtomicU64::new(0));
    let mut posts = Vec::with_capacity(total as usize);
    for i in 0..total {
        if restart && i == restart_after {
            server.restart().await?;
        }
        tick.tick().await;
        let j = (i % job_count as u64) as usize;
        next_k[j] += 1;
        let k = next_k[j];
        let request = server
            .http
            .post(server.post_url(jobs[j]))
            .bearer_auth(server.tokens.service())
            .json(&server.body(k, base.elapsed().as_nanos() as u64));
        let (acked, failed) = (acked.clone(), failed.clone());
        posts.push(tokio::spawn(async move {
            let ok = request.send().await.is_ok_and(|r| r.status().is_success());
            if ok {
                acked.lock().unwrap_or_else(|p| p.into_inner())[j].push(k);
            } else {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for p in posts {
        p.await?;
    }
    dropping.store(false, Ordering::Relaxed);
    let acked = std::mem::take(&mut *acked.lock().unwrap_or_else(|p| p.into_inner()));
    // Each acknowledged event is due to every watcher of its job.
    let acked_total: u64 = acked.iter().map(|a| a.len() as u64).sum::<u64>() * watchers as u64;
    let deadline = Instant::now() + settle;
    while delivered.load(Ordering::Relaxed) < acked_total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = done_tx.send(true);
    let mut report = Report {
        acked: acked_total,
        failed_posts: failed.load(Ordering::Relaxed),
        delivered: 0,
        duplicates: 0,
        reconnects: reconnects.load(Ordering::Relaxed),
        latencies: std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner())),
    };
    for (client, j) in clients.into_iter().zip(client_jobs) {
        let (seen, duplicates) = client.await??;
        report.delivered += acked[j].iter().filter(|k| seen.contains(k)).count() as u64;
        report.duplicates += duplicates;
    }
    Ok(report)
}

/// Reconnects with full-jitter backoff (base 0.5 s, cap 5 s) until it works
/// or the run ends.
async fn reconnect(
    client: &mut Client,
    reconnects: &AtomicU64,
    done: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Ws> {
    let mut attempt = 0;
    loop {
        match client.connect().await {
            Ok(ws) => {
                reconnects.fetch_add(1, Ordering::Relaxed);
                return Ok(ws);
            }
            Err(e) if *done.borrow() => return Err(e),
            Err(_) => {
                tokio::time::sleep(full_jitter(attempt, 500, 5_000)).await;
                attempt += 1;
            }
        }
    }
}

/// Server memory per idle, authenticated socket, in KiB.
async fn idle(server: &mut Server, n: usize) -> anyhow::Result<f64> {
    let mut jobs = Vec::with_capacity(n + 1);
    for _ in 0..=n {
        jobs.push(server.new_job().await?);
    }
    // One socket first, so the figure leaves out what the first one costs.
    let mut held = vec![hold(server.client(jobs[n])).await?];
    let before = rss_kib(server.pid())?;
    for job in &jobs[..n] {
        held.push(hold(server.client(*job)).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(server.pid())?;
    held.iter().for_each(|h| h.abort());
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

/// Connects `client` and keeps its socket open (answering pings) until the
/// task is aborted.
async fn hold(mut client: Client) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut ws = client.connect().await?;
    Ok(tokio::spawn(async move {
        while client.next_event(&mut ws).await.is_some() {}
    }))
}
