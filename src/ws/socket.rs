//! One socket's life: attach, first message, replay from the log, then live
//! events and client messages until it closes, and the close recorded.
//!
//! The loop is generic over the socket's sink and stream so it does not depend
//! on how the socket was made.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::protocol::{self, close, parse_client_message, ClientMessage, Hello};
use crate::domain::decide::Attach;
use crate::domain::event::WsErrored;
use crate::domain::{Event, EventBody, JobId, SessionId};
use crate::engine::hub::{CloseReason, Registration, SocketControl};
use crate::engine::Engine;

/// How one socket is to be served.
#[derive(Clone, Debug)]
pub struct SocketParams {
    pub job_id: JobId,
    pub attach: Attach,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub send_queue: usize,
    /// Cancelled when the server stops.
    pub shutdown: CancellationToken,
    /// The id of the request that opened it, for its log lines.
    pub request_id: Option<String>,
}

/// How the socket ended: what to send (if anything) and what to record.
struct Ending {
    /// A close frame to send; `None` drops the connection without one.
    send: Option<(u16, &'static str)>,
    /// The `disconnected` to record; `None` when `replaced` already was.
    record: Option<(u16, String)>,
}

impl Ending {
    fn closed_by_server(code: u16, reason: &'static str) -> Self {
        Ending {
            send: Some((code, reason)),
            record: Some((code, reason.to_owned())),
        }
    }

    fn dropped(code: u16, reason: impl Into<String>) -> Self {
        Ending {
            send: None,
            record: Some((code, reason.into())),
        }
    }
}

/// Why a send did not complete.
enum SendError {
    Interrupted(CloseReason),
    Failed(String),
}

struct Conn<Tx> {
    tx: Tx,
    control: Arc<SocketControl>,
    /// Nothing is sent once this node no longer holds its lease.
    engine: Engine,
    /// Highest seq sent on this socket: later duplicates are skipped.
    sent_through: i64,
}

impl<Tx> Conn<Tx>
where
    Tx: Sink<Message, Error = axum::Error> + Unpin,
{
    /// Sends one message, unless the server closes the socket meanwhile (a send
    /// to a client that does not read blocks until then).
    async fn send(&mut self, msg: Message) -> Result<(), SendError> {
        if !self.engine.serving() {
            // The lease ran out here (a stall, a partition) before the lease
            // keeper noticed: fence now, before anything more goes out.
            self.engine.fence("its lease ran out before a send");
            return Err(SendError::Interrupted(CloseReason::Fenced));
        }
        tokio::select! {
            biased;
            reason = self.control.closed() => Err(SendError::Interrupted(reason)),
            r = self.tx.send(msg) => r.map_err(|e| SendError::Failed(e.to_string())),
        }
    }

    /// Sends a job event once; returns true when it was terminal.
    async fn send_event(&mut self, event: &Event) -> Result<bool, SendError> {
        if event.seq <= self.sent_through {
            return Ok(false);
        }
        if let Some(text) = protocol::job_message(event) {
            self.send(Message::Text(text.into())).await?;
        }
        self.sent_through = event.seq;
        Ok(event.body.is_terminal())
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        // A client that does not read may never take the frame.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tx.send(frame)).await;
    }
}

fn interrupted(reason: CloseReason) -> Ending {
    match reason {
        CloseReason::Replaced => Ending {
            send: Some((crate::domain::decide::REPLACED_CODE, close::REPLACED)),
            record: None,
        },
        CloseReason::SlowConsumer => {
            Ending::closed_by_server(close::TRY_AGAIN_LATER, close::SEND_QUEUE_FULL)
        }
        CloseReason::Shutdown => Ending::closed_by_server(close::GOING_AWAY, close::SHUTTING_DOWN),
        CloseReason::Dropped => Ending::dropped(close::ABNORMAL, close::DROPPED),
        CloseReason::Fenced => Ending::closed_by_server(close::SERVICE_RESTART, close::FENCED),
    }
}

fn send_failed(reason: SendError) -> Ending {
    match reason {
        SendError::Interrupted(r) => interrupted(r),
        SendError::Failed(e) => Ending::dropped(close::ABNORMAL, format!("send failed: {e}")),
    }
}

/// Serves one upgraded socket to its end, its log lines in a `socket` span
/// naming the upgrade's request id, the job and (once attached) the session.
pub async fn serve<Tx, Rx>(tx: Tx, rx: Rx, engine: Engine, params: SocketParams)
where
    Tx: Sink<Message, Error = axum::Error> + Unpin,
    Rx: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    use tracing::Instrument;
    let span = tracing::info_span!(
        "socket",
        request_id = params.request_id.as_deref().unwrap_or_default(),
        job = %params.job_id,
        session = tracing::field::Empty,
    );
    serve_in_span(tx, rx, engine, params).instrument(span).await
}

async fn serve_in_span<Tx, Rx>(tx: Tx, mut rx: Rx, engine: Engine, params: SocketParams)
where
    Tx: Sink<Message, Error = axum::Error> + Unpin,
    Rx: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let SocketParams {
        job_id,
        attach,
        heartbeat_interval,
        heartbeat_timeout,
        send_queue,
        shutdown,
        request_id: _,
    } = params;
    let control = SocketControl::new(&shutdown);
    let mut conn = Conn {
        tx,
        control: control.clone(),
        engine: engine.clone(),
        sent_through: 0,
    };
    if shutdown.is_cancelled() {
        conn.close(close::GOING_AWAY, close::SHUTTING_DOWN).await;
        return;
    }
    let (queue_tx, mut queue) = mpsc::channel::<Arc<Event>>(send_queue.max(1));
    let registration = Registration {
        tx: queue_tx,
        control,
    };
    // The one-off steps are boxed so the long-lived task keeps only the live
    // loop's state inline: idle sockets stay small.
    let attached = match Box::pin(engine.attach(job_id, attach, registration)).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(job = %job_id, error = %e, "socket not attached");
            conn.close(close::INTERNAL_ERROR, close::LOG_UNAVAILABLE)
                .await;
            return;
        }
    };
    let session_id = attached.plan.session_id;
    tracing::Span::current().record("session", tracing::field::display(session_id));
    let socket = attached.socket;
    tracing::debug!(job = %job_id, session = %session_id, socket, resumed = attached.plan.resumed, "socket attached");

    let mut acked: Option<i64> = None;
    // `greet` consumes the snapshot: an idle socket keeps none of it.
    let ending = match Box::pin(greet(&mut conn, &engine, attached)).await {
        Err(ending) => ending,
        Ok(()) => {
            let heartbeat = Heartbeat {
                interval: heartbeat_interval,
                timeout: heartbeat_timeout,
            };
            live(
                &mut conn,
                &mut rx,
                &mut queue,
                &engine,
                (job_id, session_id),
                heartbeat,
                &mut acked,
            )
            .await
        }
    };

    if let Some((code, reason)) = ending.send {
        Box::pin(conn.close(code, reason)).await;
    }
    if let Some((code, reason)) = ending.record {
        if let Err(e) =
            Box::pin(engine.detach(job_id, session_id, socket, code, &reason, acked)).await
        {
            tracing::warn!(job = %job_id, error = %e, "could not record the disconnect");
        }
    }
}

#[derive(Clone, Copy)]
struct Heartbeat {
    interval: Duration,
    timeout: Duration,
}

/// The first message, then the replay of what the client missed, from the log,
/// up to the snapshot. `Err` when the socket is to end (a finished job, a
/// failed send).
async fn greet<Tx>(
    conn: &mut Conn<Tx>,
    engine: &Engine,
    attached: crate::engine::Attached,
) -> Result<(), Ending>
where
    Tx: Sink<Message, Error = axum::Error> + Unpin,
{
    let job_id = attached.snapshot.job_id;
    let hello = match serde_json::to_string(&Hello::new(&attached, engine.epoch())) {
        Ok(h) => h,
        Err(e) => {
            return Err(Ending::closed_by_server(
                close::INTERNAL_ERROR,
                logged_internal_error(e),
            ))
        }
    };
    conn.send(Message::Text(hello.into()))
        .await
        .map_err(send_failed)?;

    let head = attached.snapshot.head_seq;
    if let Some(after) = attached.plan.replay_after {
        let id = job_id.to_string();
        let mut pages = engine.replay(&id, after, head).page_size(1000);
        loop {
            let events = match pages.next_events().await {
                Ok(Some(events)) => events,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(job = %job_id, error = %e, "replay failed");
                    return Err(Ending::closed_by_server(
                        close::INTERNAL_ERROR,
                        close::LOG_UNAVAILABLE,
                    ));
                }
            };
            for event in &events {
                if conn.send_event(event).await.map_err(send_failed)? {
                    return Err(Ending::closed_by_server(close::NORMAL, close::JOB_FINISHED));
                }
            }
        }
    }
    conn.sent_through = conn.sent_through.max(head);
    if attached.snapshot.status.is_terminal() {
        return Err(Ending::closed_by_server(close::NORMAL, close::JOB_FINISHED));
    }
    Ok(())
}

/// Live events and client messages until the socket ends.
async fn live<Tx, Rx>(
    conn: &mut Conn<Tx>,
    rx: &mut Rx,
    queue: &mut mpsc::Receiver<Arc<Event>>,
    engine: &Engine,
    (job_id, session_id): (JobId, SessionId),
    heartbeat: Heartbeat,
    acked: &mut Option<i64>,
) -> Ending
where
    Tx: Sink<Message, Error = axum::Error> + Unpin,
    Rx: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let mut ticks =
        tokio::time::interval_at(Instant::now() + heartbeat.interval, heartbeat.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();

    loop {
        tokio::select! {
            biased;
            reason = conn.control.closed() => return interrupted(reason),
            event = queue.recv() => match event {
                Some(event) => match conn.send_event(&event).await {
                    Ok(true) => return Ending::closed_by_server(close::NORMAL, close::JOB_FINISHED),
                    Ok(false) => {}
                    Err(e) => return send_failed(e),
                },
                // The hub let go of this socket without a reason: treat as slow.
                None => return interrupted(CloseReason::SlowConsumer),
            },
            msg = rx.next() => {
                last_seen = Instant::now();
                match msg {
                    Some(Ok(Message::Text(text))) => {
                        let reply = match parse_client_message(text.as_str()) {
                            Ok(ClientMessage::Ping) => Some(protocol::PONG.to_owned()),
                            Ok(ClientMessage::Ack { seq }) => {
                                *acked = Some(acked.map_or(seq, |a| a.max(seq)));
                                None
                            }
                            Err(bad) => Some(bad.to_json()),
                        };
                        if let Some(reply) = reply {
                            if let Err(e) = conn.send(Message::Text(reply.into())).await {
                                return send_failed(e);
                            }
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        return Ending::closed_by_server(close::UNSUPPORTED_DATA, close::BINARY)
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame
                            .map(|f| (f.code, f.reason.to_string()))
                            .unwrap_or((close::NO_STATUS, String::new()));
                        // Complete the closing handshake: the library has
                        // queued the echo of the client's close frame.
                        let _ = tokio::time::timeout(Duration::from_secs(1), conn.tx.flush()).await;
                        return Ending::dropped(code, reason);
                    }
                    Some(Err(e)) => return Box::pin(read_error(engine, job_id, session_id, e)).await,
                    None => return Ending::dropped(close::ABNORMAL, close::CONNECTION_LOST),
                }
            }
            _ = ticks.tick() => {
                if last_seen.elapsed() >= heartbeat.timeout {
                    // A half-open connection: no close frame can reach it.
                    return Ending::dropped(close::ABNORMAL, close::HEARTBEAT_TIMEOUT);
                }
                if let Err(e) = conn.send(Message::Ping(Default::default())).await {
                    return send_failed(e);
                }
            }
        }
    }
}

/// A read failed. A connection that simply went away (reset, no closing
/// handshake) is the ordinary abrupt drop; frames over the limit close with
/// 1009; anything else is a socket error, recorded as `ws_error`.
async fn read_error(
    engine: &Engine,
    job_id: JobId,
    session_id: SessionId,
    e: axum::Error,
) -> Ending {
    use tungstenite::error::ProtocolError;
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => {
            return Ending::closed_by_server(close::TOO_BIG, close::TOO_BIG_REASON)
        }
        Some(
            tungstenite::Error::ConnectionClosed
            | tungstenite::Error::AlreadyClosed
            | tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake),
        ) => return Ending::dropped(close::ABNORMAL, close::CONNECTION_LOST),
        Some(tungstenite::Error::Io(io))
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            return Ending::dropped(close::ABNORMAL, close::CONNECTION_LOST)
        }
        _ => {}
    }
    let message = inner.to_string();
    let kind = match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Protocol(_)) => "protocol",
        Some(tungstenite::Error::Utf8(_)) => "utf8",
        Some(tungstenite::Error::Io(_)) => "io",
        _ => "other",
    };
    engine.metrics().observe_socket_error(kind);
    tracing::warn!(job = %job_id, session = %session_id, kind, error = %message, "socket error");
    let body = EventBody::WsErrored(WsErrored {
        message: message.clone(),
    });
    if let Err(e) = engine.record(job_id, Some(session_id), body).await {
        tracing::warn!(job = %job_id, error = %e, "could not record the socket error");
    }
    Ending::dropped(close::ABNORMAL, format!("socket error: {message}"))
}

/// Logs why the first message could not be encoded, and gives the generic
/// close reason the client gets instead (the cause stays in the server's log).
fn logged_internal_error(e: serde_json::Error) -> &'static str {
    tracing::error!(error = %e, "could not encode the first message");
    "internal error"
}
