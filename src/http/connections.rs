//! Every accepted TCP connection, from `accept` until its socket closes:
//! counted, capped per peer address, given deadlines until it is useful, and
//! the first to go when the server is full and it has nothing in progress.
//!
//! - **Counted before it is a socket.** Each accepted connection holds a
//!   [`Slot`] until its socket closes; an upgrade hands the socket (and the
//!   slot with it) to the WebSocket task. At `max_open` a new connection sheds
//!   the oldest connection with no request in progress (one that never
//!   finished its headers, or sits idle between requests) or, when every
//!   connection is busy or upgraded, is reset at once. The socket limit
//!   (`--max-connections`) sits below `max_open`, so health checks and API
//!   requests keep room when sockets are at their limit.
//! - **Capped per address.** At most `per_address` connections from one peer
//!   address (a peer in `--trusted-proxies` carries everyone and is exempt);
//!   one more is reset at once.
//! - **Deadlines until useful.** A connection must send a complete request
//!   head within the header timeout of its start, and again within it of
//!   each response (so an idle kept-alive connection closes too); a
//!   trusted proxy's connections, which a balancer keeps for reuse, get the
//!   longer proxy idle timeout. A request's body must arrive whole within
//!   the body timeout ([`body_deadline`]). An upgraded socket or an SSE
//!   stream is the heartbeat's from then on.
//!
//! Refusals, sheds and timeouts are counted in `/metrics` and logged at most
//! once every ten seconds.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use super::error::ApiError;
use super::rate::LogEvery;
use super::request::TrustedProxies;
use crate::engine::Engine;
use crate::metrics::ConnectionEnd;

/// The limits and deadlines every connection gets.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most TCP connections open at once, upgraded sockets included.
    pub max_open: usize,
    /// Most connections from one peer address (trusted proxies exempt).
    pub per_address: usize,
    /// Time to send a complete request head, from the connection's start or
    /// the end of its previous response.
    pub header_timeout: Duration,
    /// The same for connections from trusted proxies, which balancers keep
    /// open between requests.
    pub proxy_idle_timeout: Duration,
    /// Time for a request's whole body to arrive.
    pub body_timeout: Duration,
    /// Largest request body the handlers accept (`--max-body-bytes`).
    pub max_body_bytes: usize,
    /// The largest body of a Durable Streams request (`/v1/stream/`).
    pub max_stream_body_bytes: usize,
}

/// The connections open now, and which of them may be shed.
pub struct Connections {
    limits: Limits,
    proxies: Arc<TrustedProxies>,
    engine: Engine,
    inner: Mutex<Inner>,
    warned: LogEvery,
}

#[derive(Default)]
struct Inner {
    open: usize,
    per_address: HashMap<IpAddr, usize>,
    /// Connections with no request in progress and not upgraded, by accept
    /// order: the oldest is shed first.
    idle: BTreeMap<u64, CancellationToken>,
    next: u64,
}

impl Connections {
    pub fn new(limits: Limits, proxies: Arc<TrustedProxies>, engine: Engine) -> Arc<Self> {
        Arc::new(Connections {
            limits,
            proxies,
            engine,
            inner: Mutex::new(Inner::default()),
            warned: LogEvery::new(Duration::from_secs(10)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a connection from `ip`, shedding the oldest idle one at
    /// the limit; or why there is none (`PerAddress` or `AtCapacity`).
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Arc<Slot>, ConnectionEnd> {
        let counted = !self.proxies.contains(ip);
        let ip = super::rate::peer(ip);
        let shed = CancellationToken::new();
        let mut inner = self.lock();
        if counted && inner.per_address.get(&ip).copied().unwrap_or(0) >= self.limits.per_address {
            return Err(ConnectionEnd::PerAddress);
        }
        if inner.open >= self.limits.max_open {
            let (_, oldest) = inner.idle.pop_first().ok_or(ConnectionEnd::AtCapacity)?;
            oldest.cancel();
            self.engine
                .metrics()
                .observe_connection_end(ConnectionEnd::Shed);
        }
        inner.open += 1;
        if counted {
            *inner.per_address.entry(ip).or_default() += 1;
        }
        let id = inner.next;
        inner.next += 1;
        inner.idle.insert(id, shed.clone());
        self.engine.metrics().set_tcp_connections(inner.open);
        drop(inner);
        Ok(Arc::new(Slot {
            id,
            address: counted.then_some(ip),
            shed,
            busy: AtomicU32::new(0),
            upgraded: AtomicBool::new(false),
            owner: self.clone(),
        }))
    }

    fn refused(&self, end: ConnectionEnd, ip: IpAddr) {
        let what = if end == ConnectionEnd::PerAddress {
            "too many connections from one address"
        } else {
            "at the connection limit with every connection busy"
        };
        let total = self.engine.metrics().observe_connection_end(end);
        if self.warned.now() {
            tracing::warn!(address = %ip, refused_so_far = total, "{what}: resetting new connections");
        }
    }
}

/// One accepted connection's place in the count, released when the socket
/// closes (an upgrade hands the socket on, and the slot goes with it).
pub struct Slot {
    id: u64,
    /// The peer address it counts against; `None` for a trusted proxy.
    address: Option<IpAddr>,
    /// Cancelled to shed the connection.
    shed: CancellationToken,
    /// Requests in progress.
    busy: AtomicU32,
    /// Handed to a WebSocket: never idle again.
    upgraded: AtomicBool,
    owner: Arc<Connections>,
}

impl Slot {
    fn request_started(&self) {
        if self.busy.fetch_add(1, Ordering::AcqRel) == 0 {
            self.owner.lock().idle.remove(&self.id);
        }
    }

    fn request_ended(&self, upgraded: bool) {
        if upgraded {
            self.upgraded.store(true, Ordering::Release);
        }
        if self.busy.fetch_sub(1, Ordering::AcqRel) == 1 && !self.upgraded.load(Ordering::Acquire) {
            let mut inner = self.owner.lock();
            if !self.shed.is_cancelled() {
                inner.idle.insert(self.id, self.shed.clone());
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.owner.lock();
        inner.open -= 1;
        inner.idle.remove(&self.id);
        if let Some(ip) = self.address {
            if let Some(n) = inner.per_address.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    inner.per_address.remove(&ip);
                }
            }
        }
        self.owner.engine.metrics().set_tcp_connections(inner.open);
    }
}

/// Accepts and serves connections until `shutdown` resolves, then stops
/// accepting, lets each connection finish its request in progress (idle ones
/// close at once) and waits for them all.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    connections: Arc<Connections>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let stopping = CancellationToken::new();
    let tracker = TaskTracker::new();
    let accept_errors = LogEvery::new(Duration::from_secs(10));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or memory: let what is open finish.
                    if accept_errors.now() {
                        tracing::warn!(error = %e, "cannot accept connections");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let ip = peer.ip().to_canonical();
        let slot = match connections.admit(ip) {
            Ok(slot) => slot,
            Err(why) => {
                connections.refused(why, ip);
                reset(tcp);
                continue;
            }
        };
        // No Nagle: progress messages are small and must leave at once (with
        // Nagle, a replay of many small frames stalls on delayed ACKs).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let timeout = if slot.address.is_none() {
            connections.limits.proxy_idle_timeout
        } else {
            connections.limits.header_timeout
        };
        tracker.spawn(serve_one(
            tcp,
            peer,
            app.clone(),
            slot,
            timeout,
            stopping.clone(),
        ));
    }
    drop(listener);
    stopping.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Closes a connection with a reset: nothing lingers on either side.
fn reset(tcp: TcpStream) {
    #[allow(deprecated)] // a zero linger never blocks the closing thread
    let _ = tcp.set_linger(Some(Duration::ZERO));
}

async fn serve_one(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    slot: Arc<Slot>,
    header_timeout: Duration,
    stopping: CancellationToken,
) {
    let shed = slot.shed.clone();
    let metrics_engine = slot.owner.engine.clone();
    let io = TokioIo::new(Held {
        tcp,
        _slot: slot.clone(),
    });
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let busy = Busy::new(slot.clone());
        let mut app = app.clone();
        async move {
            let Ok(res) = app.call(req.map(Body::new)).await;
            let upgraded = res.status() == StatusCode::SWITCHING_PROTOCOLS;
            Ok::<_, Infallible>(res.map(|body| {
                Body::new(Guarded {
                    body,
                    _busy: busy.upgraded(upgraded),
                })
            }))
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let conn = http.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    if e.is_timeout() {
                        metrics_engine.metrics().observe_connection_end(ConnectionEnd::HeaderTimeout);
                    }
                }
                return;
            }
            () = stopping.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            // Dropping the connection closes its socket.
            () = shed.cancelled() => return,
        }
    }
}

/// The socket with its slot: the slot is released when the socket closes,
/// wherever an upgrade took it.
struct Held {
    tcp: TcpStream,
    _slot: Arc<Slot>,
}

impl AsyncRead for Held {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Held {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// A request in progress on its connection, until its response has been
/// sent (or dropped).
struct Busy {
    slot: Arc<Slot>,
    upgraded: bool,
}

impl Busy {
    fn new(slot: Arc<Slot>) -> Self {
        slot.request_started();
        Busy {
            slot,
            upgraded: false,
        }
    }

    fn upgraded(mut self, upgraded: bool) -> Self {
        self.upgraded = upgraded;
        self
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.slot.request_ended(self.upgraded);
    }
}

/// A response body that keeps its request busy until it is sent.
struct Guarded {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Bounds a request's body in time and size without reading it first: the
/// handler reads it when it needs it (after the token is checked, so a
/// request without a valid token is answered at once, its body unread).
/// A body that trickles in past the body timeout cannot hold a connection:
/// 408 `request_timeout`, and the connection closes; one over the size
/// limit gets 413 and the connection closes too.
pub async fn body_deadline(
    State(connections): State<Arc<Connections>>,
    req: Request,
    next: Next,
) -> Response {
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if !has_body {
        return next.run(req).await;
    }
    let limit = connections.limits.body_timeout;
    let (parts, body) = req.into_parts();
    let most = if parts.uri.path().starts_with("/v1/stream/") {
        connections.limits.max_stream_body_bytes
    } else {
        connections.limits.max_body_bytes
    };
    let ended = Arc::new(Mutex::new(None));
    let body = Body::new(Bounded {
        body,
        deadline: Box::pin(tokio::time::sleep(limit)),
        left: most,
        ended: ended.clone(),
    });
    let res = next.run(Request::from_parts(parts, body)).await;
    let end = *ended.lock().unwrap_or_else(|p| p.into_inner());
    let mut res = match end {
        None => return res,
        Some(BodyEnd::TooLarge) => ApiError::PayloadTooLarge(most).into_response(),
        Some(BodyEnd::TimedOut) => {
            connections
                .engine
                .metrics()
                .observe_connection_end(ConnectionEnd::BodyTimeout);
            ApiError::RequestTimeout(limit.as_secs_f64()).into_response()
        }
    };
    close_after(&mut res);
    res
}

/// Why a request body was cut short.
#[derive(Clone, Copy, Debug)]
enum BodyEnd {
    TooLarge,
    TimedOut,
}

/// A request body read within a deadline and a size; past either it ends
/// in an error, and says which.
struct Bounded {
    body: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    left: usize,
    ended: Arc<Mutex<Option<BodyEnd>>>,
}

impl Bounded {
    fn end(&self, why: BodyEnd) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        *self.ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        let text = match why {
            BodyEnd::TooLarge => "the body is over the size limit",
            BodyEnd::TimedOut => "the body did not arrive in time",
        };
        Poll::Ready(Some(Err(axum::Error::new(text))))
    }
}

impl http_body::Body for Bounded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let size = frame.data_ref().map_or(0, Bytes::len);
                if size > self.left {
                    return self.end(BodyEnd::TooLarge);
                }
                self.left -= size;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => self.end(BodyEnd::TimedOut),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn close_after(res: &mut Response) {
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}
