//! Connections that never finish cannot take the server down.
//!
//! A real server, started with a lowered open-file limit, is flooded from
//! loopback addresses other than 127.0.0.1 with connections that send half a
//! request head, connections kept alive idle after a request, and request
//! bodies that trickle in a byte a second: more of them than the server has
//! descriptors. Meanwhile a client on 127.0.0.1 gets `/healthz` answered
//! within a second, creates a job, watches it over a WebSocket that receives
//! an event, and resumes after a drop. Every flooding connection is closed
//! within its deadline (the header timeout, or the body timeout), and
//! `/metrics` counts what was refused and why.
//!
//! `cargo test` runs it with 512 descriptors; the full size
//! (`REJOIN_FLOOD_FDS=20000 REJOIN_FLOOD_CONNECTIONS=19900 cargo test --release
//! --test flood -- --nocapture`) prints the same figures.

use crate::common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{create_job_at, next_json, progress_at, token_for, ws_connect, PATIENCE, SECRET};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// Deadlines short enough for a test.
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
const BODY_TIMEOUT: Duration = Duration::from_secs(2);
/// Scheduling slack a deadline may take on a loaded machine.
const SLACK: Duration = Duration::from_secs(2);

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Raises this process's open-file limit to its hard limit (the flood is
/// ours to hold).
fn raise_own_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit read and write only the struct passed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur as usize
}

/// `rejoin serve` with at most `fds` open files and short deadlines.
async fn server(db: &str, fds: u64) -> (tokio::process::Child, SocketAddr) {
    let mut cmd = tokio::process::Command::new(common::BIN);
    cmd.args(common::serve_args(
        "127.0.0.1:0",
        db,
        SECRET,
        &[
            "--header-timeout-secs",
            &HEADER_TIMEOUT.as_secs_f64().to_string(),
            "--body-timeout-secs",
            &BODY_TIMEOUT.as_secs_f64().to_string(),
        ],
    ));
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: fds,
                rlim_max: fds,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    common::start_binary(cmd).await
}

/// What a flooding connection does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Half a request head, then nothing.
    HalfHead,
    /// A whole request, its answer read, then nothing.
    IdleKeepAlive,
    /// A request head announcing a body that then comes a byte a second.
    Trickle,
}

/// How long a flooding connection was held after its last useful byte, or
/// `None` if it was never accepted (reset at once).
struct Held {
    kind: Kind,
    held: Option<Duration>,
}

/// The head of a job's creation with a service token and a body of `len`
/// bytes to come.
fn trickle_head(len: usize) -> String {
    let token = common::token_for("service", None);
    format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    )
}

/// Opens one flooding connection from `from` and holds it until the server
/// closes it (or `PATIENCE` runs out).
async fn flood_one(from: IpAddr, server: SocketAddr, kind: Kind) -> Held {
    let Ok(socket) = TcpSocket::new_v4() else {
        return Held { kind, held: None };
    };
    if socket.bind(SocketAddr::new(from, 0)).is_err() {
        return Held { kind, held: None };
    }
    let Ok(Ok(mut tcp)) = tokio::time::timeout(PATIENCE, socket.connect(server)).await else {
        return Held { kind, held: None };
    };
    // A trickler holds a valid token: without one it is answered 401 at
    // once, its body never read.
    let head = match kind {
        Kind::HalfHead => "GET /healthz HTTP/1.1\r\nHost: x\r\n".to_owned(),
        Kind::IdleKeepAlive => "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
        Kind::Trickle => trickle_head(1000),
    };
    if tcp.write_all(head.as_bytes()).await.is_err() {
        return Held { kind, held: None };
    }
    let mut since = Instant::now();
    if kind == Kind::IdleKeepAlive {
        match read_response(&mut tcp).await {
            Some(()) => since = Instant::now(),
            None => return Held { kind, held: None },
        }
    }
    let mut buf = [0u8; 1024];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let end = Instant::now() + PATIENCE;
    loop {
        tokio::select! {
            read = tcp.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Held { kind, held: Some(since.elapsed()) },
                Ok(_) => {} // the 408 before the close
            },
            _ = tick.tick(), if kind == Kind::Trickle => {
                if tcp.write_all(b" ").await.is_err() {
                    return Held { kind, held: Some(since.elapsed()) };
                }
            }
            _ = tokio::time::sleep_until(end.into()) => return Held { kind, held: Some(since.elapsed()) },
        }
    }
}

/// Reads one HTTP response with a Content-Length; `None` if the connection
/// ended first.
async fn read_response(tcp: &mut TcpStream) -> Option<()> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(PATIENCE, tcp.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return Some(());
            }
        }
    }
}

/// Sends `request` on a connection of its own and reads until the server
/// closes it (at most [`PATIENCE`], else panics saying `what`); returns
/// what the server answered.
async fn answered_until_closed(server: SocketAddr, request: &[u8], what: &str) -> String {
    let mut tcp = TcpStream::connect(server).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer))
        .await
        .expect(what)
        .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Starts `count` flooding connections spread over `addresses`, a third of
/// each kind, and returns once they have all been attempted.
async fn flood(server: SocketAddr, addresses: &[IpAddr], count: usize) -> JoinSet<Held> {
    let mut set = JoinSet::new();
    let kinds = [Kind::HalfHead, Kind::IdleKeepAlive, Kind::Trickle];
    for i in 0..count {
        let from = addresses[i % addresses.len()];
        set.spawn(flood_one(from, server, kinds[i % kinds.len()]));
        if i % 64 == 63 {
            tokio::task::yield_now().await;
        }
    }
    // Let the connects and the heads go out before the client's turn.
    tokio::time::sleep(Duration::from_millis(300)).await;
    set
}

/// What a client on 127.0.0.1 does during the flood; panics if the server
/// does not serve it. Returns how long `/healthz` took.
async fn serve_a_client(server: SocketAddr) -> Duration {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let started = Instant::now();
    let res = tokio::time::timeout(
        Duration::from_secs(1),
        http.get(format!("http://{server}/healthz")).send(),
    )
    .await
    .expect("/healthz answers within a second during the flood")
    .unwrap();
    let health = started.elapsed();
    assert_eq!(res.status(), 200);

    let job = create_job_at(&http, server).await;
    let token = token_for("client", Some(job));
    let mut ws = ws_connect(server, &format!("jobId={job}&token={token}"))
        .await
        .expect("a WebSocket opens during the flood");
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "connected");
    let seq = progress_at(&http, server, job, 10.0).await;
    assert_eq!(next_json(&mut ws).await["seq"], seq);
    drop(ws);
    let missed = progress_at(&http, server, job, 20.0).await;
    let query = format!(
        "jobId={job}&token={token}&reconnect=true&sessionId={}&lastSeq={seq}&epoch={}",
        hello["sessionId"].as_str().unwrap(),
        hello["epoch"].as_str().unwrap()
    );
    let mut ws = ws_connect(server, &query)
        .await
        .expect("a resume opens during the flood");
    let back = next_json(&mut ws).await;
    assert_eq!(back["type"], "reconnected");
    assert_eq!(back["missed"], 1);
    assert_eq!(next_json(&mut ws).await["seq"], missed);
    health
}

/// Waits for every flooding connection to be closed and checks each was
/// held no longer than its deadline allows; returns the longest hold.
async fn all_closed_in_time(mut set: JoinSet<Held>) -> Duration {
    let mut longest = Duration::ZERO;
    while let Some(h) = set.join_next().await {
        let h = h.unwrap();
        let Some(for_how_long) = h.held else {
            continue; // reset before it could send anything
        };
        let deadline = match h.kind {
            Kind::HalfHead | Kind::IdleKeepAlive => HEADER_TIMEOUT,
            Kind::Trickle => BODY_TIMEOUT,
        };
        assert!(
            for_how_long <= deadline + SLACK,
            "a {:?} connection was held {for_how_long:?} (deadline {deadline:?})",
            h.kind
        );
        longest = longest.max(for_how_long);
    }
    longest
}

/// The counts of connections ended early, by reason.
async fn ends(http: &reqwest::Client, server: SocketAddr) -> Vec<(&'static str, f64)> {
    let mut out = Vec::new();
    for reason in [
        "per_address",
        "at_capacity",
        "shed",
        "header_timeout",
        "body_timeout",
    ] {
        out.push((reason, ended_early(http, server, reason).await));
    }
    out
}

async fn ended_early(http: &reqwest::Client, server: SocketAddr, reason: &str) -> f64 {
    let text = common::metrics_at(http, server).await;
    let line = format!("rejoin_connections_ended_early_total{{reason=\"{reason}\"}}");
    // A reason never seen has no line yet.
    common::metric_in(&text, &line).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_unfinished_connections_than_descriptors_leave_other_clients_served() {
    let own = raise_own_limit();
    let fds = env_number("REJOIN_FLOOD_FDS", 512);
    let count = env_number("REJOIN_FLOOD_CONNECTIONS", fds + 300).min(own.saturating_sub(200));
    let dir = tempfile::tempdir().unwrap();
    let db = common::fresh_database(dir.path()).await;
    let (mut child, server) = server(&db, fds as u64).await;
    let http = reqwest::Client::new();

    // From one address: more connections than the server has descriptors.
    let one = [IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))];
    let set = flood(server, &one, count).await;
    let health = serve_a_client(server).await;
    let longest = all_closed_in_time(set).await;
    let ended = ends(&http, server).await;
    eprintln!(
        "one address, {count} connections against {fds} descriptors: /healthz in {health:?}; the longest held {longest:?}; ended early: {ended:?}"
    );
    assert!(ended_early(&http, server, "per_address").await > 0.0);
    assert!(ended_early(&http, server, "header_timeout").await > 0.0);
    assert!(ended_early(&http, server, "body_timeout").await > 0.0);

    // From many addresses at once, up to the descriptor limit and past it.
    let many: Vec<IpAddr> = (2..34)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 1, i)))
        .collect();
    let set = flood(server, &many, count).await;
    let health = serve_a_client(server).await;
    let longest = all_closed_in_time(set).await;
    let ended = ends(&http, server).await;
    eprintln!(
        "{} addresses, {count} connections against {fds} descriptors: /healthz in {health:?}; the longest held {longest:?}; ended early (both floods): {ended:?}",
        many.len()
    );
    // Past the connection limit (descriptors less 64), room was made.
    if count > fds - 64 {
        let made_room = ended_early(&http, server, "shed").await
            + ended_early(&http, server, "at_capacity").await;
        assert!(made_room > 0.0, "the connection limit was reached");
    }
    // Nothing is left open: the server is idle again.
    let open = common::metric_at(&http, server, "rejoin_tcp_connections").await;
    assert!(open <= 2.0, "{open} connections still open");
    common::terminate(&mut child).await;
}

/// Idle kept-alive connections from `from`: how long each was held after its
/// answer (`None`: reset before answering).
async fn idle_connections(from: [u8; 4], server: SocketAddr, n: usize) -> Vec<Option<Duration>> {
    let from = IpAddr::V4(Ipv4Addr::from(from));
    let mut set = JoinSet::new();
    for _ in 0..n {
        set.spawn(flood_one(from, server, Kind::IdleKeepAlive));
    }
    set.join_all().await.into_iter().map(|h| h.held).collect()
}

#[tokio::test]
async fn the_per_address_cap_spares_trusted_proxies_which_get_their_own_idle_timeout() {
    let app = common::spawn_with(&[
        "--trusted-proxies",
        "127.0.0.3",
        "--max-connections-per-address",
        "2",
        "--header-timeout-secs",
        "1",
        "--proxy-idle-timeout-secs",
        "3",
        "--body-timeout-secs",
        "1",
    ])
    .await;
    // A body that does not arrive in time: 408, and the connection closes.
    let answer = answered_until_closed(
        app.addr,
        format!("{}{{", trickle_head(10)).as_bytes(),
        "closed after the body timeout",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");

    let client = idle_connections([127, 0, 0, 2], app.addr, 5).await;
    let answered: Vec<Duration> = client.iter().flatten().copied().collect();
    assert_eq!(
        answered.len(),
        2,
        "two connections from one address: {client:?}"
    );
    for held in answered {
        assert!(
            held >= Duration::from_millis(900) && held <= Duration::from_secs(1) + SLACK,
            "{held:?}"
        );
    }
    let proxy = idle_connections([127, 0, 0, 3], app.addr, 5).await;
    assert!(
        proxy.iter().all(Option::is_some),
        "a trusted proxy is not capped: {proxy:?}"
    );
    for held in proxy.into_iter().flatten() {
        assert!(
            held >= Duration::from_millis(2900) && held <= Duration::from_secs(3) + SLACK,
            "{held:?}"
        );
    }
}

/// The deadlines are for connections on their way to being useful: an SSE
/// stream and a WebSocket, once open, outlive them by far.
#[tokio::test]
async fn an_open_stream_and_socket_outlive_the_header_and_body_timeouts() {
    let app = common::spawn_with(&[
        "--header-timeout-secs",
        "0.5",
        "--body-timeout-secs",
        "0.5",
        "--heartbeat-interval-secs",
        "0.2",
    ])
    .await;
    let job = app.create_job().await;
    let token = app.token(rejoin::auth::Role::Client, Some(job));
    let mut stream = reqwest::get(app.url(&format!("/v1/jobs/{job}/stream?token={token}")))
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut ws = app.ws_client(job).await;
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    // Two requests whose heads never end, one after the other, opened after
    // the stream and the socket: once the server has closed both at their
    // deadline, the stream's and the socket's deadlines (0.5 s each, were
    // they still counting) have passed twice over.
    for _ in 0..2 {
        answered_until_closed(
            app.addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
            "the server closes a request whose head never ends",
        )
        .await;
    }
    let seq = app.progress(job, 50.0).await;
    assert_eq!(next_json(&mut ws).await["seq"], seq, "the socket is open");
    let mut got = String::new();
    while !got.contains(&format!("id: {seq}")) {
        let chunk = tokio::time::timeout(PATIENCE, stream.chunk())
            .await
            .expect("the stream is open")
            .unwrap()
            .expect("the stream has not ended");
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
}
