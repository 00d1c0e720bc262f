//! A drop at any byte loses nothing.
//!
//! One scripted job, run through a proxy that cuts the client's connection
//! after exactly k bytes from the server ([`CutProxy`]): a fresh connect, a
//! clean close, three events missed, then a resume through the proxy during
//! which two events are posted, one more when the client has those, and the
//! last progress and the terminal event after that (or after the cut, when
//! it came first). A client that knows only what it fully received (complete
//! WebSocket messages; complete Server-Sent Events and the `id`s they carried,
//! as EventSource keeps them) then resumes straight to the server. The run
//! passes when the client holds every job event after its first connect
//! exactly once, in order, ending with the job's final state, and the log
//! records the sessions and closes as they happened.
//!
//! A run without a cut learns the transcript's length and where its messages
//! end. Then every k from 0 to that length is tried when `REJOIN_CUTS=all`;
//! otherwise at least 200 evenly spread k plus every message boundary ± 1.
//! Each transport is cut by a reset (both sides learn at once) and by a
//! silent drop (the server learns only by its heartbeat; over SSE, which has
//! no client-to-server heartbeat, only when the client's resume takes the
//! session over).
//!
//! The analytics tail (`/v1/events/stream`, resumed with `Last-Event-ID`) is
//! cut the same way, and a server killed with SIGKILL during an append burst
//! must still give a resuming client every acknowledged event once.

use crate::common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{
    check_server_message, create_job_at, serve_binary, spawn_with, token_for, ws_connect, Cut,
    CutProxy, TestApp, PATIENCE,
};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// Short heartbeats, so a silent drop is noticed within about a second.
const HEARTBEAT: &[&str] = &[
    "--heartbeat-interval-secs",
    "0.2",
    "--heartbeat-timeout-secs",
    "1",
];

/// A server in this process with short heartbeats and no per-address
/// connect limit (every client here is on loopback).
async fn server() -> TestApp {
    let mut args = HEARTBEAT.to_vec();
    args.extend(["--connect-rate-per-ip", "0"]);
    spawn_with(&args).await
}

/// Cut points tried at once (each on a job of its own).
const AT_ONCE: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    WebSocket,
    Sse,
}

/// What the client knows: only what it fully received.
#[derive(Clone, Debug, Default)]
struct View {
    session_id: Option<String>,
    epoch: Option<String>,
    /// The last seq processed: `connected`'s `lastSeq`, then each job
    /// event's seq (what a WebSocket client resumes from).
    last_seq: Option<i64>,
    /// The `id` of the last complete event that carried one (what
    /// EventSource resumes from).
    last_event_id: Option<String>,
    /// `connected` and `reconnected` messages, in order.
    hellos: Vec<Value>,
    /// Job events, in the order received.
    events: Vec<Value>,
    status: Option<String>,
    progress: Option<f64>,
    /// A terminal event arrived: the client stops.
    finished: bool,
    /// Connections that ended.
    ended: u32,
    /// What broke the client's rules (an event twice, or out of order).
    errors: Vec<String>,
}

impl View {
    fn apply(&mut self, message: &Value) {
        if let Err(e) = check_server_message(message) {
            self.errors.push(e.to_string());
        }
        match message["type"].as_str() {
            Some(kind @ ("connected" | "reconnected")) => {
                self.session_id = message["sessionId"].as_str().map(str::to_owned);
                self.epoch = message["epoch"].as_str().map(str::to_owned);
                self.status = message["status"].as_str().map(str::to_owned);
                self.progress = message["progress"].as_f64();
                if kind == "connected" {
                    self.last_seq = self.last_seq.max(message["lastSeq"].as_i64());
                }
                self.hellos.push(message.clone());
            }
            Some("progress" | "message" | "completed" | "failed" | "cancelled" | "stalled") => {
                let seq = message["seq"].as_i64().unwrap_or(-1);
                if let Some(last) = self.last_seq.filter(|last| seq <= *last) {
                    self.errors.push(format!(
                        "seq {seq} arrived after {last}: twice or out of order"
                    ));
                    return;
                }
                self.last_seq = Some(seq);
                let kind = message["type"].as_str().unwrap_or_default();
                if kind == "progress" {
                    self.progress = message["progress"].as_f64();
                    self.status = Some("running".into());
                }
                if matches!(kind, "completed" | "failed" | "cancelled") {
                    self.status = Some(kind.into());
                    self.finished = true;
                }
                if kind == "completed" {
                    self.progress = Some(100.0);
                }
                self.events.push(message.clone());
            }
            _ => {}
        }
    }

    fn seqs(&self) -> Vec<i64> {
        self.events
            .iter()
            .filter_map(|e| e["seq"].as_i64())
            .collect()
    }
}

/// How a connection attempt went.
#[derive(Debug, PartialEq, Eq)]
enum Opened {
    /// The server took it (101, or 200 with a stream) and it has ended.
    Served,
    /// The server answered 204: a finished job with nothing missed.
    NothingMore,
    /// The handshake did not complete (cut, or refused), with why.
    Not(String),
}

/// One connection of the client's, to `addr` (the server, or a proxy), with
/// what it knows; every complete message goes into `view` until the
/// connection ends. `hello_only`: close cleanly after the first message.
async fn connection(
    transport: Transport,
    addr: SocketAddr,
    job: Uuid,
    view: &watch::Sender<View>,
    hello_only: bool,
) -> Opened {
    let opened = match transport {
        Transport::WebSocket => ws_connection(addr, job, view, hello_only).await,
        Transport::Sse => sse_connection(addr, job, view, hello_only).await,
    };
    view.send_modify(|v| v.ended += 1);
    opened
}

async fn ws_connection(
    addr: SocketAddr,
    job: Uuid,
    view: &watch::Sender<View>,
    hello_only: bool,
) -> Opened {
    let token = token_for("client", Some(job));
    let mut query = format!("jobId={job}&token={token}");
    {
        let v = view.borrow();
        if let Some(session) = &v.session_id {
            let last = v.last_seq.unwrap_or(0);
            let epoch = v.epoch.as_deref().unwrap_or_default();
            query.push_str(&format!(
                "&reconnect=true&sessionId={session}&lastSeq={last}&epoch={epoch}"
            ));
        }
    }
    let mut ws = match ws_connect(addr, &query).await {
        Ok(ws) => ws,
        Err(e) => return Opened::Not(e.to_string()),
    };
    loop {
        let Ok(Some(Ok(msg))) = tokio::time::timeout(PATIENCE, ws.next()).await else {
            return Opened::Served;
        };
        if let Message::Text(text) = msg {
            match serde_json::from_str::<Value>(text.as_str()) {
                Ok(m) => view.send_modify(|v| v.apply(&m)),
                Err(e) => view.send_modify(|v| v.errors.push(format!("not JSON: {e}"))),
            }
            if hello_only {
                let _ = ws.close(None).await;
                while let Ok(Some(Ok(_))) = tokio::time::timeout(PATIENCE, ws.next()).await {}
                return Opened::Served;
            }
            if view.borrow().finished {
                // A client stops at the terminal event; the close follows.
                while let Ok(Some(Ok(_))) = tokio::time::timeout(PATIENCE, ws.next()).await {}
                return Opened::Served;
            }
        }
    }
}

async fn sse_connection(
    addr: SocketAddr,
    job: Uuid,
    view: &watch::Sender<View>,
    hello_only: bool,
) -> Opened {
    let token = token_for("client", Some(job));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut req = http
        .get(format!("http://{addr}/v1/jobs/{job}/stream?token={token}"))
        .header("accept", "text/event-stream");
    // EventSource sends the id of the last event it dispatched.
    if let Some(id) = view.borrow().last_event_id.clone() {
        req = req.header("last-event-id", id);
    }
    let res = match req.send().await {
        Ok(res) => res,
        Err(e) => return Opened::Not(e.to_string()),
    };
    match res.status().as_u16() {
        200 => {}
        204 => return Opened::NothingMore,
        other => return Opened::Not(format!("status {other}")),
    }
    let mut body = res.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let Ok(Some(Ok(chunk))) = tokio::time::timeout(PATIENCE, body.next()).await else {
            // What is left in `buf` is an event cut short: never dispatched.
            return Opened::Served;
        };
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = buf.drain(..end + 2).collect();
            let block = String::from_utf8_lossy(&block).into_owned();
            let mut done = false;
            view.send_modify(|v| done = dispatch(v, &block));
            if done || (hello_only && !view.borrow().hellos.is_empty()) {
                return Opened::Served;
            }
        }
    }
}

/// One complete server-sent event, as EventSource handles it: its `id` (if
/// any) becomes the last event id, its data is the message. True when the
/// stream is over for the client (a terminal event, or `close`).
fn dispatch(view: &mut View, block: &str) -> bool {
    let (mut event, mut data, mut id) = (None, String::new(), None);
    for line in block.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = Some(value.to_owned()),
            "data" => data.push_str(value),
            "id" => id = Some(value.to_owned()),
            _ => {}
        }
    }
    if let Some(id) = id {
        view.last_event_id = Some(id);
    }
    if data.is_empty() {
        return false;
    }
    if event.as_deref() == Some("close") {
        return true;
    }
    match serde_json::from_str::<Value>(&data) {
        Ok(m) => view.apply(&m),
        Err(e) => view.errors.push(format!("not JSON: {e}")),
    }
    view.finished
}

/// A server and the HTTP client the script posts with.
struct Target {
    addr: SocketAddr,
    http: reqwest::Client,
}

impl Target {
    async fn post(&self, job: Uuid, body: Value) -> Result<i64, String> {
        let res = self
            .http
            .post(format!("http://{}/v1/jobs/{job}/events", self.addr))
            .bearer_auth(token_for("service", None))
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = res.status();
        let answer: Value = res.json().await.map_err(|e| e.to_string())?;
        if status != 201 {
            return Err(format!("append answered {status}: {answer}"));
        }
        answer["seq"]
            .as_i64()
            .ok_or_else(|| format!("no seq in {answer}"))
    }

    async fn get(&self, path: &str, role: &str) -> Result<Value, String> {
        let res = self
            .http
            .get(format!("http://{}{path}", self.addr))
            .bearer_auth(token_for(role, None))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if res.status() != 200 {
            return Err(format!("GET {path}: {}", res.status()));
        }
        res.json().await.map_err(|e| e.to_string())
    }

    /// Polls the job's connection history until `done` holds for it.
    async fn history_until(
        &self,
        job: Uuid,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let history = self
                .get(&format!("/v1/jobs/{job}/history"), "support")
                .await?;
            if done(&history) {
                return Ok(history);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("timed out waiting for {what}: {history}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The attaches (`connected`, `reconnected`) and closes (`disconnected`,
/// `replaced`) in a job's history, session by session.
fn socket_entries(history: &Value) -> Vec<Vec<Value>> {
    let sessions = history["sessions"].as_array().cloned().unwrap_or_default();
    sessions
        .iter()
        .map(|s| {
            s["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|e| {
                    matches!(
                        e["kind"].as_str(),
                        Some("connected" | "reconnected" | "disconnected" | "replaced")
                    )
                })
                .collect()
        })
        .collect()
}

fn is_attach(entry: &Value) -> bool {
    matches!(entry["kind"].as_str(), Some("connected" | "reconnected"))
}

fn attaches(history: &Value) -> usize {
    socket_entries(history)
        .iter()
        .flatten()
        .filter(|e| is_attach(e))
        .count()
}

fn anyone_connected(history: &Value) -> bool {
    history["sessions"]
        .as_array()
        .is_some_and(|s| s.iter().any(|s| s["state"] == "connected"))
}

/// The cut connection, as the script waits on it.
struct Cutting<'a> {
    target: &'a Target,
    job: Uuid,
    transport: Transport,
    how: Cut,
    seen: watch::Receiver<View>,
    over: watch::Receiver<common::cut::Progress>,
    /// The server has seen the cut (or can never see it).
    settled: bool,
}

/// Which close the log must show for the cut connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CloseExpected {
    /// Not cut: closed by the job's end.
    NotCut,
    /// Cut before the job ended: the close the cut makes.
    TheCuts,
    /// Cut after the terminal event was posted: the server may have sent it
    /// all before the cut reached it (closed by the job's end), or not.
    EitherOne,
}

impl Cutting<'_> {
    /// Waits until the client has seen what `seen` asks, or its connection
    /// is over; once it is cut, until the server has seen that too, so
    /// what is posted next comes after the cut as the server knows it.
    async fn until(&mut self, what: &str, seen: impl Fn(&View) -> bool) -> Result<(), String> {
        let ended_before = self.seen.borrow().ended;
        tokio::select! {
            r = self.seen.wait_for(|v| seen(v) || v.ended > ended_before) => r.map(|_| ()).map_err(|e| e.to_string())?,
            r = self.over.wait_for(|p| p.over) => r.map(|_| ()).map_err(|e| e.to_string())?,
            _ = tokio::time::sleep(PATIENCE) => return Err(format!("timed out waiting for {what}")),
        }
        if self.over.borrow().over {
            self.settle().await?;
        }
        Ok(())
    }

    /// Waits until the server has attached the cut connection (it wrote its
    /// answer's head before the proxy could cut, so it did, whatever the
    /// client saw) and closed it: at once after a reset, by the heartbeat
    /// after a silent drop. Over SSE nothing tells the server of a silent
    /// drop (the client sends nothing), so only the attach is awaited.
    async fn settle(&mut self) -> Result<(), String> {
        if self.settled {
            return Ok(());
        }
        let wait_close = !(self.transport == Transport::Sse && self.how == Cut::Silent);
        self.target
            .history_until(self.job, "the cut connection seen by the server", |h| {
                attaches(h) >= 2 && (!wait_close || !anyone_connected(h))
            })
            .await?;
        self.settled = true;
        Ok(())
    }

    fn close_expected(cut: bool, cut_before_end: bool) -> CloseExpected {
        match (cut, cut_before_end) {
            (false, _) => CloseExpected::NotCut,
            (true, true) => CloseExpected::TheCuts,
            (true, false) => CloseExpected::EitherOne,
        }
    }
}

/// What one run learned.
struct Run {
    transcript: Vec<u8>,
}

/// The script, cut after `k` bytes (`u64::MAX`: not cut).
async fn run_once(target: &Target, transport: Transport, how: Cut, k: u64) -> Result<Run, String> {
    let job = create_job_at(&target.http, target.addr).await;
    // Before anyone watches: part of the state the first connect shows.
    target
        .post(job, json!({"type": "progress", "progress": 10}))
        .await?;
    let view = watch::Sender::new(View::default());

    // A fresh connect, closed cleanly after its first message.
    let first = connection(transport, target.addr, job, &view, true).await;
    if first != Opened::Served || view.borrow().hellos.len() != 1 {
        return Err(format!("the fresh connect failed: {first:?}"));
    }
    target
        .history_until(job, "the first close recorded", |h| {
            socket_entries(h).concat().len() == 2
        })
        .await?;

    // Missed while away.
    let mut expected = Vec::new();
    for body in [
        json!({"type": "progress", "progress": 20, "message": "Processing book 4 of 20"}),
        json!({"type": "message", "name": "book_found", "data": {"title": "Dune"}}),
        json!({"type": "progress", "progress": 30}),
    ] {
        expected.push(target.post(job, body).await?);
    }
    let resumed_from = view.borrow().last_seq;

    // The resume through the proxy, cut after k bytes.
    let proxy = CutProxy::start(target.addr, k, how).await;
    let client = {
        let view = view.clone();
        let addr = proxy.addr();
        tokio::spawn(async move { connection(transport, addr, job, &view, false).await })
    };
    let mut cutting = Cutting {
        target,
        job,
        transport,
        how,
        seen: view.subscribe(),
        over: proxy.watch(),
        settled: false,
    };
    cutting
        .until("the resume's first message", |v| v.hellos.len() == 2)
        .await?;
    let mut during = Vec::new();
    for p in [40, 50] {
        during.push(
            target
                .post(job, json!({"type": "progress", "progress": p}))
                .await?,
        );
    }
    expected.extend(&during);
    let last = during[1];
    cutting
        .until("progress 50", |v| v.last_seq >= Some(last))
        .await?;
    let named = target
        .post(
            job,
            json!({"type": "message", "name": "book_found", "data": {"title": "Emma"}}),
        )
        .await?;
    expected.push(named);
    cutting
        .until("the second message", |v| v.last_seq >= Some(named))
        .await?;
    // Whether the server can have known of the cut before the job's end.
    let cut_before_end = cutting.settled;
    expected.push(
        target
            .post(job, json!({"type": "progress", "progress": 90}))
            .await?,
    );
    expected.push(
        target
            .post(job, json!({"type": "completed", "result": {"books": 20}}))
            .await?,
    );
    tokio::time::timeout(PATIENCE, client)
        .await
        .map_err(|_| "the cut connection did not end".to_owned())?
        .map_err(|e| e.to_string())?;
    let cut = proxy.progress().cut;

    // Resume as the client knows to, straight to the server, once the server
    // has seen the cut connection.
    let mut resumes = Vec::new();
    if !view.borrow().finished {
        cutting.settle().await?;
        let position = {
            let v = view.borrow();
            match transport {
                Transport::WebSocket => v.last_seq,
                Transport::Sse => v.last_event_id.as_deref().and_then(|id| id.parse().ok()),
            }
        };
        let again = connection(transport, target.addr, job, &view, false).await;
        resumes.push((again, position));
    }

    // The client's view: every event after its first connect, once, in order.
    let v = view.borrow().clone();
    if !v.errors.is_empty() {
        return Err(format!("the client saw: {}", v.errors.join("; ")));
    }
    if v.seqs() != expected {
        return Err(format!(
            "the client has seqs {:?}, the log {:?} (cut: {cut}, resumed from {resumed_from:?})",
            v.seqs(),
            expected
        ));
    }
    let state = target.get(&format!("/v1/jobs/{job}"), "service").await?;
    if !v.finished
        || v.status.as_deref() != state["status"].as_str()
        || v.progress != state["progress"].as_f64()
        || v.last_seq != state["lastSeq"].as_i64()
    {
        return Err(format!("the client ends at {v:?}, the job at {state}"));
    }

    // The log: the sessions and closes as they happened.
    let history = target
        .history_until(job, "every session ended", |h| !anyone_connected(h))
        .await?;
    let cut = Cutting::close_expected(cut, cut_before_end);
    check_log(&history, transport, how, cut, resumed_from, &resumes)?;
    Ok(Run {
        transcript: proxy.transcript(),
    })
}

/// The job's history against what the client did: one fresh connect; the
/// cut connection resumed the session from where the client was; its close
/// is the one its cut makes; a resume names the position the client had.
fn check_log(
    history: &Value,
    transport: Transport,
    how: Cut,
    cut: CloseExpected,
    resumed_from: Option<i64>,
    resumes: &[(Opened, Option<i64>)],
) -> Result<(), String> {
    let fail = |what: &str| Err(format!("{what}: {history}"));
    let sessions = socket_entries(history);
    for s in history["sessions"].as_array().into_iter().flatten() {
        if s["state"] != "ended" || s["endReason"] != "finished" {
            return fail("a session did not end with the job");
        }
    }
    // Attach, close, attach, close, ...: the last close is the job's end.
    for entries in &sessions {
        for (i, e) in entries.iter().enumerate() {
            if is_attach(e) != (i % 2 == 0) || entries.len() % 2 == 1 {
                return fail("attaches and closes do not alternate");
            }
        }
    }
    let all: Vec<&Value> = sessions.iter().flatten().collect();
    let attach_entries: Vec<&Value> = all.iter().copied().filter(|e| is_attach(e)).collect();
    let served_resumes = resumes.iter().filter(|(o, _)| *o == Opened::Served).count();
    if attach_entries.len() != 2 + served_resumes {
        return fail(&format!(
            "expected {} attaches (fresh, cut, {served_resumes} resumes)",
            2 + served_resumes
        ));
    }
    if attach_entries[0]["kind"] != "connected" {
        return fail("the first attach is not the fresh connect");
    }
    let cut_attach = attach_entries[1];
    if cut_attach["kind"] != "reconnected"
        || cut_attach["details"]["resumed"] != true
        || cut_attach["details"]["clientLastSeq"].as_i64() != resumed_from
    {
        return fail("the cut connection did not resume the session from the client's position");
    }
    // The close after the cut connection's attach, if the session went on.
    let after_cut = all
        .iter()
        .position(|e| std::ptr::eq(*e, cut_attach))
        .and_then(|i| all.get(i + 1))
        .filter(|e| !is_attach(e));
    if let Some(close) = after_cut {
        let (kind, code, reason) = (
            close["kind"].as_str().unwrap_or_default(),
            close["details"]["code"].as_i64(),
            close["details"]["reason"].as_str().unwrap_or_default(),
        );
        let finished = kind == "disconnected" && code == Some(1000) && reason == "job finished";
        let the_cuts = match (transport, how) {
            (_, Cut::Reset) => {
                kind == "disconnected" && code == Some(1006) && reason != "heartbeat timeout"
            }
            (Transport::WebSocket, Cut::Silent) => {
                kind == "disconnected" && code == Some(1006) && reason == "heartbeat timeout"
            }
            // Nothing tells the server: the resume takes the session over,
            // or the job's end is written into the dead connection.
            (Transport::Sse, Cut::Silent) => kind == "replaced" || finished,
        };
        let as_expected = match cut {
            CloseExpected::NotCut => finished,
            CloseExpected::TheCuts => the_cuts,
            CloseExpected::EitherOne => the_cuts || finished,
        };
        if !as_expected {
            return fail(&format!(
                "the cut connection ({cut:?}) closed as {kind} {code:?} {reason}"
            ));
        }
    } else {
        return fail("the cut connection was not closed");
    }
    for ((opened, position), attach) in resumes.iter().zip(attach_entries.iter().skip(2)) {
        if *opened == Opened::Served && attach["details"]["clientLastSeq"].as_i64() != *position {
            return fail(&format!(
                "a resume from {position:?} was recorded otherwise"
            ));
        }
    }
    Ok(())
}

/// Where the transcript's messages end: after the HTTP head, then after
/// each WebSocket frame, or each server-sent event.
fn boundaries(transport: Transport, transcript: &[u8]) -> Vec<u64> {
    let Some(head) = transcript.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Vec::new();
    };
    let mut ends = vec![head + 4];
    match transport {
        Transport::WebSocket => {
            let mut at = head + 4;
            while at + 2 <= transcript.len() {
                let short = usize::from(transcript[at + 1] & 0x7f);
                let (len, header) = match short {
                    126 if at + 4 <= transcript.len() => (
                        usize::from(u16::from_be_bytes([transcript[at + 2], transcript[at + 3]])),
                        4,
                    ),
                    127 => break, // no frame here is that large
                    126 => break,
                    n => (n, 2),
                };
                at += header + len;
                ends.push(at.min(transcript.len()));
            }
        }
        Transport::Sse => {
            ends.extend(
                transcript
                    .windows(2)
                    .enumerate()
                    .filter(|(_, w)| *w == b"\n\n")
                    .map(|(i, _)| i + 2),
            );
        }
    }
    ends.into_iter().map(|e| e as u64).collect()
}

/// The cut points: every byte with `REJOIN_CUTS=all`; else at least 200
/// spread evenly, plus each message boundary and the bytes either side.
fn cut_points(length: u64, ends: &[u64]) -> Vec<u64> {
    if std::env::var("REJOIN_CUTS").as_deref() == Ok("all") || length <= 200 {
        return (0..=length).collect();
    }
    let mut ks: BTreeSet<u64> = (0..=200).map(|i| i * length / 200).collect();
    for end in ends {
        for k in [end.saturating_sub(1), *end, end + 1] {
            ks.insert(k.min(length));
        }
    }
    ks.into_iter().collect()
}

/// Prints what a transport's cuts showed, and fails naming the first cut
/// points that lost, repeated or reordered anything.
fn report(
    what: &str,
    length: u64,
    messages: usize,
    tried: usize,
    mut failures: Vec<(u64, String)>,
) {
    eprintln!(
        "{what}: transcript {length} bytes, {messages} messages, {tried} cut points, {} lost something",
        failures.len()
    );
    failures.sort_by_key(|(k, _)| *k);
    assert!(
        failures.is_empty(),
        "{} of {tried} cut points failed; the first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
}

/// Learns the transcript, then cuts it at every chosen point; fails naming
/// each cut point that lost, repeated or reordered anything.
async fn cut_everywhere(transport: Transport, how: Cut) {
    let app = server().await;
    let target = Arc::new(Target {
        addr: app.addr,
        http: reqwest::Client::new(),
    });
    let learned = run_once(&target, transport, how, u64::MAX)
        .await
        .unwrap_or_else(|e| panic!("the uncut run: {e}"));
    let length = learned.transcript.len() as u64;
    let ends = boundaries(transport, &learned.transcript);
    let ks = cut_points(length, &ends);
    let tried = ks.len();
    let failures: Vec<(u64, String)> = futures_util::stream::iter(ks)
        .map(|k| {
            let target = target.clone();
            async move { (k, run_once(&target, transport, how, k).await) }
        })
        .buffer_unordered(AT_ONCE)
        .filter_map(|(k, r)| async move { r.err().map(|e| (k, e)) })
        .collect()
        .await;
    report(
        &format!("{transport:?} {how:?}"),
        length,
        ends.len(),
        tried,
        failures,
    );
    drop(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_reset_after_any_byte_loses_nothing() {
    cut_everywhere(Transport::WebSocket, Cut::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_dropped_silently_after_any_byte_loses_nothing() {
    cut_everywhere(Transport::WebSocket, Cut::Silent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_reset_after_any_byte_loses_nothing() {
    cut_everywhere(Transport::Sse, Cut::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_dropped_silently_after_any_byte_loses_nothing() {
    cut_everywhere(Transport::Sse, Cut::Silent).await;
}

/// What an analytics client of the live tail knows.
#[derive(Clone, Debug, Default)]
struct TailView {
    /// `Last-Event-ID` of the last complete event.
    last_event_id: Option<i64>,
    positions: Vec<i64>,
    ended: u32,
    errors: Vec<String>,
}

/// One connection to the live tail, resuming after `view.last_event_id`
/// (or `start`), read until it ends or the client has `until`.
async fn tail_connection(
    addr: SocketAddr,
    start: i64,
    view: &watch::Sender<TailView>,
    mut until: watch::Receiver<i64>,
) {
    let after = view.borrow().last_event_id.unwrap_or(start);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let res = http
        .get(format!("http://{addr}/v1/events/stream"))
        .bearer_auth(token_for("analytics", None))
        .header("last-event-id", after.to_string())
        .send()
        .await;
    if let Ok(res) = res.and_then(|r| r.error_for_status()) {
        let mut body = res.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        'read: loop {
            if view.borrow().last_event_id.unwrap_or(start) >= *until.borrow() {
                break;
            }
            // The end may be named after the client already has it.
            let chunk = tokio::select! {
                chunk = tokio::time::timeout(PATIENCE, body.next()) => chunk,
                changed = until.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
            };
            let Ok(Some(Ok(chunk))) = chunk else {
                break;
            };
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = buf.drain(..end + 2).collect();
                let block = String::from_utf8_lossy(&block).into_owned();
                view.send_modify(|v| tail_dispatch(v, &block));
                if view.borrow().last_event_id.unwrap_or(start) >= *until.borrow() {
                    break 'read;
                }
            }
        }
    }
    view.send_modify(|v| v.ended += 1);
}

fn tail_dispatch(view: &mut TailView, block: &str) {
    let (mut id, mut data) = (None, String::new());
    for line in block.lines().filter(|l| !l.starts_with(':')) {
        match line.split_once(':') {
            Some(("id", v)) => id = Some(v.trim().to_owned()),
            Some(("data", v)) => data.push_str(v.strip_prefix(' ').unwrap_or(v)),
            _ => {}
        }
    }
    if data.is_empty() {
        return;
    }
    let Ok(envelope) = serde_json::from_str::<Value>(&data) else {
        view.errors.push(format!("not JSON: {data}"));
        return;
    };
    let position = envelope["position"].as_i64().unwrap_or(-1);
    let id = id.and_then(|id| id.parse::<i64>().ok());
    if id != Some(position) {
        view.errors
            .push(format!("event at {position} carries id {id:?}"));
    }
    if view.positions.last().is_some_and(|last| position <= *last) {
        view.errors.push(format!(
            "position {position} after {:?}",
            view.positions.last()
        ));
    }
    view.positions.push(position);
    if let Some(id) = id {
        view.last_event_id = Some(id);
    }
}

/// Every position after `after`, from the paged API.
async fn positions_after(target: &Target, mut after: i64) -> Result<Vec<i64>, String> {
    let mut out = Vec::new();
    loop {
        let page = target
            .get(&format!("/v1/events?after={after}&limit=1000"), "analytics")
            .await?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            return Ok(out);
        }
        out.extend(events.iter().filter_map(|e| e["position"].as_i64()));
        after = page["nextAfter"].as_i64().ok_or("no nextAfter")?;
    }
}

/// The tail script, cut after `k` bytes: events before the client comes,
/// while it reads, and after the cut; the client resumes with the id of the
/// last event it fully received and must hold every position once, in order.
async fn tail_once(target: &Target, how: Cut, k: u64, start: i64) -> Result<(Run, i64), String> {
    let job = create_job_at(&target.http, target.addr).await;
    let start = positions_after(target, start)
        .await?
        .last()
        .copied()
        .unwrap_or(start);
    for p in [10, 20] {
        target
            .post(job, json!({"type": "progress", "progress": p}))
            .await?;
    }
    let view = watch::Sender::new(TailView::default());
    let (until_tx, until) = watch::channel(i64::MAX);
    let proxy = CutProxy::start(target.addr, k, how).await;
    let client = {
        let (view, until, addr) = (view.clone(), until.clone(), proxy.addr());
        tokio::spawn(async move { tail_connection(addr, start, &view, until).await })
    };
    let mut seen = view.subscribe();
    let mut over = proxy.watch();
    for (p, wanted) in [(30, 2), (40, 3)] {
        tokio::select! {
            _ = seen.wait_for(|v| v.positions.len() >= wanted || v.ended > 0) => {}
            _ = over.wait_for(|p| p.over) => {}
            _ = tokio::time::sleep(PATIENCE) => return Err("timed out reading the tail".into()),
        }
        target
            .post(job, json!({"type": "progress", "progress": p}))
            .await?;
    }
    target
        .post(job, json!({"type": "completed", "result": null}))
        .await?;
    let expected = positions_after(target, start).await?;
    let end = *expected.last().ok_or("nothing appended")?;
    until_tx.send_replace(end);
    tokio::time::timeout(PATIENCE, client)
        .await
        .map_err(|_| "the tail did not end")?
        .map_err(|e| e.to_string())?;
    if view.borrow().last_event_id.unwrap_or(start) < end {
        tail_connection(target.addr, start, &view, until).await;
    }
    let v = view.borrow().clone();
    if !v.errors.is_empty() {
        return Err(v.errors.join("; "));
    }
    if v.positions != expected {
        return Err(format!(
            "the client has {:?}, the log {expected:?}",
            v.positions
        ));
    }
    Ok((
        Run {
            transcript: proxy.transcript(),
        },
        end,
    ))
}

async fn cut_the_tail_everywhere(how: Cut) {
    let app = server().await;
    let target = Target {
        addr: app.addr,
        http: reqwest::Client::new(),
    };
    // One run at a time: the tail is the whole log's, so runs side by side
    // would change each other's transcripts.
    let (learned, mut start) = tail_once(&target, how, u64::MAX, 0)
        .await
        .unwrap_or_else(|e| panic!("the uncut run: {e}"));
    let length = learned.transcript.len() as u64;
    let ends = boundaries(Transport::Sse, &learned.transcript);
    let ks = cut_points(length, &ends);
    let mut failures = Vec::new();
    for &k in &ks {
        match tail_once(&target, how, k, start).await {
            Ok((_, end)) => start = end,
            Err(e) => failures.push((k, e)),
        }
    }
    report(
        &format!("tail {how:?}"),
        length,
        ends.len(),
        ks.len(),
        failures,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_analytics_tail_reset_after_any_byte_loses_nothing() {
    cut_the_tail_everywhere(Cut::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_analytics_tail_dropped_silently_after_any_byte_loses_nothing() {
    cut_the_tail_everywhere(Cut::Silent).await;
}

/// SIGKILL at a sample of points of an append burst (after 0, 1, 5, 17 and
/// 40 acknowledgements): the client, resumed on the restarted server, holds
/// every acknowledged event once; an event that was never acknowledged may
/// be there or not, but never twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_an_append_burst_owes_the_resuming_client_every_acknowledged_event_once(
) {
    const WRITERS: u64 = 4;
    const PER_WRITER: u64 = 25;
    let dir = tempfile::tempdir().unwrap();
    let db = common::fresh_database(dir.path()).await;
    let http = reqwest::Client::new();
    let (mut child, mut addr) = serve_binary(&db, HEARTBEAT).await;
    for kill_after in [0usize, 1, 5, 17, 40] {
        let job = create_job_at(&http, addr).await;
        let view = watch::Sender::new(View::default());
        // Watching live: a fresh connect that stays open.
        let watcher = {
            let view = view.clone();
            tokio::spawn(
                async move { connection(Transport::WebSocket, addr, job, &view, false).await },
            )
        };
        view.subscribe()
            .wait_for(|v| !v.hellos.is_empty())
            .await
            .unwrap();

        let (acked_tx, mut acked) = tokio::sync::mpsc::unbounded_channel();
        let target = Arc::new(Target {
            addr,
            http: http.clone(),
        });
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (target, acked_tx) = (target.clone(), acked_tx.clone());
                tokio::spawn(async move {
                    for n in 0..PER_WRITER {
                        let body =
                            json!({"type": "message", "name": "burst", "data": {"w": w, "n": n}});
                        match target.post(job, body).await {
                            Ok(seq) => {
                                let _ = acked_tx.send((w, n, seq));
                            }
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        drop(acked_tx);
        let mut acknowledged = Vec::new();
        while acknowledged.len() < kill_after {
            match acked.recv().await {
                Some(a) => acknowledged.push(a),
                None => break,
            }
        }
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        for w in writers {
            w.await.unwrap();
        }
        while let Ok(a) = acked.try_recv() {
            acknowledged.push(a);
        }
        tokio::time::timeout(PATIENCE, watcher)
            .await
            .expect("the watcher sees its server go")
            .unwrap();

        (child, addr) = serve_binary(&db, HEARTBEAT).await;
        let target = Target {
            addr,
            http: http.clone(),
        };
        // The job ends after the restart; the client resumes and reads to it.
        target
            .post(job, json!({"type": "completed", "result": null}))
            .await
            .unwrap();
        let resumed = connection(Transport::WebSocket, addr, job, &view, false).await;
        assert_eq!(resumed, Opened::Served);

        let v = view.borrow().clone();
        assert!(v.errors.is_empty(), "{:?}", v.errors);
        assert!(v.finished, "the client reached the end: {v:?}");
        let mut received: HashMap<(u64, u64), usize> = HashMap::new();
        for e in v.events.iter().filter(|e| e["name"] == "burst") {
            let key = (
                e["data"]["w"].as_u64().unwrap(),
                e["data"]["n"].as_u64().unwrap(),
            );
            *received.entry(key).or_default() += 1;
        }
        for (key, n) in &received {
            assert_eq!(*n, 1, "event {key:?} arrived {n} times");
        }
        for (w, n, seq) in &acknowledged {
            assert_eq!(
                received.get(&(*w, *n)),
                Some(&1),
                "acknowledged event {w}/{n} (seq {seq}) reached the client once (killed after {kill_after})"
            );
        }
        eprintln!(
            "killed after {kill_after} acknowledgements: {} acknowledged, {} delivered",
            acknowledged.len(),
            received.len()
        );
    }
    child.start_kill().unwrap();
}
