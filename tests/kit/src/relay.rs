//! A relay between a client under test and a server, controlled the way a
//! network misbehaves: every connection through it can be reset at once or
//! go silent (nothing passes either way, nothing closes); new connections
//! can be refused for a while with an HTTP status the relay answers itself
//! (429 with `Retry-After`, 409, 503); and the server behind it can change
//! (a server restarted on another port). It records every connection it
//! accepted and whether it passed it on.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cut::reset_on_close;

/// What happens to the connections open at a cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// A TCP reset on both sides.
    Reset,
    /// Nothing passes any more and nothing closes, until the relay goes.
    Silent,
}

/// One accepted connection.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub at: Instant,
    /// The status the relay answered with, or `None` when it was passed on.
    pub refused: Option<u16>,
    /// The request line the client sent first (`GET /ws/progress?… HTTP/1.1`).
    pub request: Option<String>,
}

/// A refusal in force: new connections get this answer until `until`.
#[derive(Clone, Debug)]
struct Refusal {
    status: u16,
    retry_after: Option<u64>,
    until: Instant,
}

#[derive(Default)]
struct Shared {
    upstream: Option<SocketAddr>,
    refusal: Option<Refusal>,
    accepted: Vec<Accepted>,
    /// Whether every other answer is lost (see [`Relay::lose_every_other_answer`]).
    losing: bool,
    answers: u64,
    lost: Vec<String>,
}

impl Shared {
    /// Whether the answer that begins now, to `request`, is lost.
    fn loses(&mut self, request: &str) -> bool {
        if !self.losing {
            return false;
        }
        self.answers += 1;
        let lose = self.answers % 2 == 1;
        if lose {
            self.lost.push(request.to_owned());
        }
        lose
    }
}

pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    cuts: broadcast::Sender<Drop>,
    task: JoinHandle<()>,
}

impl Relay {
    /// A relay on a loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = listener.local_addr().expect("an address");
        let shared = Arc::new(Mutex::new(Shared {
            upstream: Some(upstream),
            ..Shared::default()
        }));
        let (cuts, _) = broadcast::channel(16);
        let task = {
            let shared = shared.clone();
            let cuts = cuts.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let (refusal, upstream) = {
                        let mut s = shared.lock().unwrap();
                        let now = Instant::now();
                        let refusal = s.refusal.clone().filter(|r| r.until > now);
                        s.accepted.push(Accepted {
                            at: now,
                            refused: refusal.as_ref().map(|r| r.status),
                            request: None,
                        });
                        (refusal, s.upstream)
                    };
                    let seen = RequestLine {
                        shared: shared.clone(),
                        index: shared.lock().unwrap().accepted.len() - 1,
                    };
                    match (refusal, upstream) {
                        (Some(r), _) => {
                            tokio::spawn(refuse(client, r, seen));
                        }
                        (None, Some(upstream)) => {
                            tokio::spawn(relay(client, upstream, cuts.subscribe(), seen));
                        }
                        (None, None) => reset(client),
                    }
                }
            })
        };
        Relay {
            addr,
            shared,
            cuts,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts every connection open now.
    pub fn cut(&self, how: Drop) {
        let _ = self.cuts.send(how);
    }

    /// New connections go to `upstream` from now on (`None`: they are reset).
    pub fn retarget(&self, upstream: Option<SocketAddr>) {
        self.shared.lock().unwrap().upstream = upstream;
    }

    /// Answers every new connection with `status` (and `Retry-After`) for
    /// `period`.
    pub fn refuse(&self, status: u16, retry_after: Option<u64>, period: Duration) {
        self.shared.lock().unwrap().refusal = Some(Refusal {
            status,
            retry_after,
            until: Instant::now() + period,
        });
    }

    /// Every connection accepted so far.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.shared.lock().unwrap().accepted.clone()
    }

    /// From now on the first, third, fifth... answer to pass the relay is
    /// lost: the request reached the server whole and the server answered,
    /// but the connection is reset as the answer's first bytes arrive, and
    /// none of them reach the client. A client that tries each request
    /// again at once has every request's first answer lost.
    pub fn lose_every_other_answer(&self) {
        self.shared.lock().unwrap().losing = true;
    }

    /// The request lines (`POST /v1/jobs/… HTTP/1.1`) whose answers were lost.
    pub fn lost(&self) -> Vec<String> {
        self.shared.lock().unwrap().lost.clone()
    }
}

impl std::ops::Drop for Relay {
    fn drop(&mut self) {
        let _ = self.cuts.send(Drop::Reset);
        self.task.abort();
    }
}

/// Where a connection's first request line is kept.
struct RequestLine {
    shared: Arc<Mutex<Shared>>,
    index: usize,
}

/// The first line of `bytes`.
fn first_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.split("\r\n").next().unwrap_or_default().to_owned()
}

impl RequestLine {
    /// Keeps the first line of `bytes`, the start of what the client sent.
    fn keep(&self, bytes: &[u8]) {
        let line = first_line(bytes);
        let mut s = self.shared.lock().unwrap();
        let accepted = &mut s.accepted[self.index];
        if accepted.request.is_none() {
            accepted.request = Some(line);
        }
    }
}

/// Reads the request's head, then answers it with the refusal.
async fn refuse(mut client: TcpStream, r: Refusal, seen: RequestLine) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    seen.keep(&head);
    let code = match r.status {
        429 => "rate_limited",
        409 => "too_many_watchers",
        503 => "unavailable",
        _ => "refused",
    };
    let body = format!(r#"{{"error":{{"code":"{code}","message":"refused by the test relay"}}}}"#);
    let retry = r
        .retry_after
        .map(|s| format!("Retry-After: {s}\r\n"))
        .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 {} Refused\r\nContent-Type: application/json\r\n{retry}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        r.status,
        body.len()
    );
    let _ = client.write_all(answer.as_bytes()).await;
    let _ = client.shutdown().await;
}

async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    mut cuts: broadcast::Receiver<Drop>,
    seen: RequestLine,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return reset(client);
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    // The request whose answer has not begun yet: requests and answers on
    // one connection take turns (HTTP/1.1 without pipelining).
    let mut asking: Option<String> = None;
    let how = loop {
        tokio::select! {
            cut = cuts.recv() => break cut.unwrap_or(Drop::Reset),
            n = cr.read(&mut up) => match n {
                Ok(n) if n > 0 => {
                    seen.keep(&up[..n]);
                    if asking.is_none() {
                        asking = Some(first_line(&up[..n]));
                    }
                    if sw.write_all(&up[..n]).await.is_err() { break Drop::Reset }
                }
                _ => break Drop::Reset,
            },
            n = sr.read(&mut down) => match n {
                Ok(n) if n > 0 => {
                    if let Some(request) = asking.take() {
                        if seen.shared.lock().unwrap().loses(&request) {
                            break Drop::Reset;
                        }
                    }
                    if cw.write_all(&down[..n]).await.is_err() { break Drop::Reset }
                }
                _ => break Drop::Reset,
            },
        }
    };
    let (client, server) = (
        cr.reunite(cw).expect("one stream"),
        sr.reunite(sw).expect("one stream"),
    );
    if how == Drop::Silent {
        // Held open and unread until the relay goes (or another cut).
        let _ = cuts.recv().await;
    }
    reset(client);
    reset(server);
}

/// Closes with a TCP reset, as a dropped network does.
fn reset(socket: TcpStream) {
    reset_on_close(&socket);
}
