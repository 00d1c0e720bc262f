//! `rejoin watch`: a job followed from a terminal, with the behaviour every
//! rejoin client has (docs/FRONTEND_HANDOFF.md): it keeps `lastSeq`,
//! `sessionId` and `epoch`, resumes after any drop with full-jitter backoff,
//! honours `Retry-After`, renews its token before it expires (and once on a
//! 401), stops on 400/403/404, on the job's end and on a session taken over,
//! reconnects after a random 0–1 s on 1012 (so a node's thousands of
//! clients do not all come back at one instant), and drops any seq it
//! already printed. Every HTTP call and handshake has a timeout.
//!
//! Each update is one JSON line on stdout:
//! `{"type":"connection","state":"connecting|live|reconnecting|finished|replaced|failed"}`,
//! `{"type":"state",…}` (the job as `connected`/`reconnected` showed it),
//! `{"type":"event","event":"progress","seq":N,…}` (each job event once, in
//! seq order) and `{"type":"finished","status":"completed"}`. The exit status
//! is 0 when the job completed, 1 otherwise.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::config::WatchArgs;
use crate::domain::close;
use crate::domain::notify::Backoff;
use crate::engine::jitter;

/// Renew a token this many seconds before it expires.
const RENEW_BEFORE_SECS: i64 = 30;

/// The longest an HTTP call (a token renewal) or a WebSocket handshake may
/// take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest `Retry-After` honoured: a larger one waits this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

pub async fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let positive = |name: &str, v: f64| {
        anyhow::ensure!(
            v.is_finite() && v > 0.0,
            "{name} must be a positive number of seconds"
        );
        Ok(Duration::from_secs_f64(v))
    };
    let ping = positive("--ping-secs", args.ping_secs)?;
    let backoff = Backoff {
        base: positive("--retry-base-secs", args.retry_base_secs)?,
        cap: positive("--retry-cap-secs", args.retry_cap_secs)?,
    };
    let http_base = http_base(&args.url)?;
    let mut watcher = Watcher {
        http: reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(CALL_TIMEOUT)
            .build()?,
        http_base,
        resuming: args.last_seq.is_some() || args.session_id.is_some(),
        last_seq: args.last_seq,
        session_id: args.session_id.map(|s| s.to_string()),
        epoch: args.epoch.clone(),
        status: None,
        attempt: 0,
        renewed: false,
        ping,
        backoff,
        args,
    };
    Ok(watcher.run().await)
}

/// `http(s)://HOST:PORT` of a `ws(s)://HOST:PORT/…` URL.
fn http_base(url: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        !url.starts_with("wss://"),
        "rejoin watch speaks plain ws:// only: watch from inside the network, or through a local TLS tunnel"
    );
    let Some(rest) = url.strip_prefix("ws://") else {
        anyhow::bail!("--url must be ws://HOST:PORT/ws/progress, not {url}");
    };
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    anyhow::ensure!(!host.is_empty(), "--url has no host: {url}");
    Ok(format!("http://{host}"))
}

struct Watcher {
    args: WatchArgs,
    http: reqwest::Client,
    http_base: String,
    /// The next connection resumes (`reconnect=true`).
    resuming: bool,
    last_seq: Option<i64>,
    session_id: Option<String>,
    epoch: Option<String>,
    /// The job's status as last shown.
    status: Option<String>,
    /// Retries since the last connection went live.
    attempt: u32,
    /// A 401 was answered by a renewal already.
    renewed: bool,
    ping: Duration,
    backoff: Backoff,
}

/// What to do after a connection attempt.
enum Next {
    /// Try again after the backoff, and no sooner than this.
    Retry(Duration),
    /// Try again after a random 0–1 s, not counted as a failure (the node
    /// restarted or lost its lease; another takes over).
    Soon,
    /// Stop with this exit status.
    End(ExitCode),
}

fn say(line: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", ordered(line));
    let _ = out.flush();
}

/// A line as printed: `type` first, then the other keys in alphabetical
/// order (the order the README shows).
fn ordered(line: Value) -> String {
    let Value::Object(mut fields) = line else {
        return line.to_string();
    };
    let mut text = String::from("{");
    if let Some(kind) = fields.remove("type") {
        text.push_str(&format!("\"type\":{kind}"));
    }
    for (key, value) in fields {
        if text.len() > 1 {
            text.push(',');
        }
        text.push_str(&format!("{}:{value}", Value::String(key)));
    }
    text.push('}');
    text
}

fn connection(state: &str) -> Value {
    json!({"type": "connection", "state": state})
}

impl Watcher {
    async fn run(&mut self) -> ExitCode {
        say(connection(self.trying()));
        loop {
            match self.attempt_once().await {
                Next::End(code) => return code,
                Next::Soon => {
                    tokio::time::sleep(Duration::from_secs_f64(jitter())).await;
                }
                Next::Retry(at_least) => {
                    self.attempt += 1;
                    let delay = self.backoff.delay(self.attempt, jitter()).max(at_least);
                    let mut line = connection(self.trying());
                    line["retryInMs"] = json!(delay.as_millis() as u64);
                    say(line);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// The state while trying to get a connection.
    fn trying(&self) -> &'static str {
        if self.resuming {
            "reconnecting"
        } else {
            "connecting"
        }
    }

    fn ended(&self, state: &str, detail: Option<Value>) -> Next {
        let mut line = connection(state);
        if let Some(Value::Object(extra)) = detail {
            line.as_object_mut().expect("an object").extend(extra);
        }
        say(line);
        let completed = state == "finished" && self.status.as_deref() == Some("completed");
        Next::End(if completed {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }

    fn url(&self) -> String {
        let mut url = format!(
            "{}{}jobId={}&token={}",
            self.args.url,
            if self.args.url.contains('?') {
                "&"
            } else {
                "?"
            },
            self.args.job,
            self.args.token
        );
        if self.resuming {
            url.push_str("&reconnect=true");
            if let Some(s) = &self.session_id {
                url.push_str(&format!("&sessionId={s}"));
            }
            if let Some(n) = self.last_seq {
                url.push_str(&format!("&lastSeq={n}"));
            }
            if let Some(e) = &self.epoch {
                url.push_str(&format!("&epoch={e}"));
            }
        }
        url
    }

    async fn attempt_once(&mut self) -> Next {
        if seconds_left(&self.args.token).is_some_and(|left| left < RENEW_BEFORE_SECS) {
            if let Some(end) = self.renew().await {
                return end;
            }
        }
        let handshake =
            tokio::time::timeout(CALL_TIMEOUT, tokio_tungstenite::connect_async(self.url()));
        let Ok(connected) = handshake.await else {
            return Next::Retry(Duration::ZERO);
        };
        match connected {
            Ok((ws, _)) => self.follow(ws).await,
            Err(tungstenite::Error::Http(res)) => {
                let retry_after = res
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(retry_after);
                let code = res
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                    .and_then(|b| b["error"]["code"].as_str().map(str::to_owned));
                self.refused(res.status().as_u16(), retry_after, code).await
            }
            // Unreachable, reset, a handshake cut short: back off.
            Err(_) => Next::Retry(Duration::ZERO),
        }
    }

    /// A refused handshake: stop, renew, or wait as it says.
    async fn refused(
        &mut self,
        status: u16,
        retry_after: Option<Duration>,
        code: Option<String>,
    ) -> Next {
        match status {
            401 if !self.renewed => {
                self.renewed = true;
                match self.renew().await {
                    Some(end) => end,
                    None => Next::Retry(Duration::ZERO),
                }
            }
            400 | 401 | 403 | 404 => self.ended(
                "failed",
                Some(json!({"code": status, "reason": code.unwrap_or_default()})),
            ),
            429 | 503 => Next::Retry(retry_after.unwrap_or_default()),
            _ => Next::Retry(Duration::ZERO),
        }
    }

    /// A fresh token from `POST /v1/jobs/{id}/token` with the current one.
    /// `Some` ends the watch: the server will not renew it.
    async fn renew(&mut self) -> Option<Next> {
        let res = self
            .http
            .post(format!(
                "{}/v1/jobs/{}/token",
                self.http_base, self.args.job
            ))
            .bearer_auth(&self.args.token)
            .send()
            .await;
        match res {
            Ok(res) if res.status().is_success() => {
                let body: Value = res
                    .bytes()
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                if let Some(token) = body["clientToken"].as_str() {
                    self.args.token = token.to_owned();
                }
                None
            }
            Ok(res) if matches!(res.status().as_u16(), 401 | 403 | 404) => Some(self.ended(
                "failed",
                Some(
                    json!({"code": res.status().as_u16(), "reason": "the token cannot be renewed"}),
                ),
            )),
            // Offline or a passing failure: try with the token there is.
            _ => None,
        }
    }

    async fn follow(
        &mut self,
        ws: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> Next {
        let (mut tx, mut rx) = ws.split();
        let mut pings = tokio::time::interval_at(Instant::now() + self.ping, self.ping);
        let mut heard = Instant::now();
        loop {
            tokio::select! {
                msg = rx.next() => {
                    heard = Instant::now();
                    match msg {
                        Some(Ok(Message::Text(text))) => {
                            if let Some(next) = self.message(text.as_str()) {
                                return next;
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            let (code, reason) = frame
                                .map(|f| (u16::from(f.code), f.reason.to_string()))
                                .unwrap_or((close::NO_STATUS, String::new()));
                            return self.closed(code, &reason);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return Next::Retry(Duration::ZERO),
                    }
                }
                _ = pings.tick() => {
                    // Two intervals of silence: the connection is gone.
                    if heard.elapsed() >= self.ping * 2 {
                        return Next::Retry(Duration::ZERO);
                    }
                    if tx.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() {
                        return Next::Retry(Duration::ZERO);
                    }
                }
            }
        }
    }

    /// One server message; `Some` when the watch is over.
    fn message(&mut self, text: &str) -> Option<Next> {
        let Ok(Value::Object(mut msg)) = serde_json::from_str::<Value>(text) else {
            return None;
        };
        let kind = msg
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match kind.as_str() {
            "connected" | "reconnected" => {
                let epoch = msg.get("epoch").and_then(Value::as_str).map(str::to_owned);
                // Another log: our lastSeq means nothing there.
                if self.epoch.is_some() && epoch != self.epoch {
                    self.last_seq = None;
                }
                self.epoch = epoch;
                self.session_id = msg
                    .get("sessionId")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                self.status = msg.get("status").and_then(Value::as_str).map(str::to_owned);
                if kind == "connected" {
                    let at = msg.get("lastSeq").and_then(Value::as_i64);
                    self.last_seq = self.last_seq.max(at);
                }
                self.resuming = true;
                self.attempt = 0;
                self.renewed = false;
                msg.insert("hello".into(), Value::String(kind));
                msg.insert("type".into(), "state".into());
                say(Value::Object(msg));
                say(connection("live"));
                None
            }
            "progress" | "message" | "stalled" | "completed" | "failed" | "cancelled" => {
                let seq = msg.get("seq").and_then(Value::as_i64)?;
                if self.last_seq.is_some_and(|last| seq <= last) {
                    return None; // seen before
                }
                self.last_seq = Some(seq);
                let terminal = matches!(kind.as_str(), "completed" | "failed" | "cancelled");
                if terminal || kind == "progress" {
                    self.status = Some(if terminal {
                        kind.clone()
                    } else {
                        "running".into()
                    });
                }
                let mut line = Map::new();
                line.insert("type".into(), "event".into());
                line.insert("event".into(), Value::String(kind.clone()));
                msg.remove("type");
                line.extend(msg);
                say(Value::Object(line));
                if terminal {
                    say(json!({"type": "finished", "status": kind}));
                    return Some(self.ended("finished", None));
                }
                None
            }
            "error" => {
                eprintln!("rejoin watch: the server did not understand a message: {text}");
                None
            }
            _ => None,
        }
    }

    /// The server closed the socket.
    fn closed(&mut self, code: u16, reason: &str) -> Next {
        match (code, reason) {
            (close::NORMAL, close::JOB_FINISHED) => {
                let status = self.status.clone().unwrap_or_default();
                say(json!({"type": "finished", "status": status}));
                self.ended("finished", None)
            }
            (close::NORMAL, close::REPLACED) => self.ended("replaced", None),
            (close::UNSUPPORTED_DATA | close::TOO_BIG, _) => {
                self.ended("failed", Some(json!({"code": code, "reason": reason})))
            }
            (close::SERVICE_RESTART, _) => Next::Soon,
            _ => Next::Retry(Duration::ZERO),
        }
    }
}

/// A `Retry-After` of seconds (whole or not), clamped to
/// [`MAX_RETRY_AFTER`]; `None` for anything else (a date, garbage, a
/// negative, infinite or NaN number).
fn retry_after(text: &str) -> Option<Duration> {
    let secs = text.trim().parse::<f64>().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(
        secs.min(MAX_RETRY_AFTER.as_secs_f64()),
    ))
}

/// Seconds until a JWT's `exp`, if it has one that can be read.
fn seconds_left(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    Some(claims["exp"].as_i64()? - chrono::Utc::now().timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_retry_after_becomes_a_delay_from_zero_to_an_hour_or_none() {
        let secs = |t: &str| retry_after(t).map(|d| d.as_secs_f64());
        assert_eq!(secs("2"), Some(2.0));
        assert_eq!(secs(" 1.5 "), Some(1.5));
        assert_eq!(secs("1e20"), Some(3600.0));
        assert_eq!(secs("18446744073709551615"), Some(3600.0));
        for junk in ["inf", "-inf", "NaN", "-5", "soon", ""] {
            assert_eq!(secs(junk), None, "{junk}");
        }
    }

    #[test]
    fn lines_print_their_type_first() {
        let line = json!({"state": "live", "type": "connection", "a": [1, {"b": null}]});
        assert_eq!(
            ordered(line.clone()),
            r#"{"type":"connection","a":[1,{"b":null}],"state":"live"}"#
        );
        assert_eq!(
            serde_json::from_str::<Value>(&ordered(line.clone())).unwrap(),
            line
        );
        assert_eq!(ordered(json!({"k": "v"})), r#"{"k":"v"}"#);
    }

    #[test]
    fn a_1012_brings_the_watcher_back_soon_not_after_a_backoff() {
        let args = WatchArgs {
            url: "ws://127.0.0.1:9/ws/progress".into(),
            job: uuid::Uuid::new_v4(),
            token: "t".into(),
            last_seq: None,
            session_id: None,
            epoch: None,
            ping_secs: 15.0,
            retry_base_secs: 0.5,
            retry_cap_secs: 20.0,
        };
        let mut watcher = Watcher {
            args,
            http: reqwest::Client::new(),
            http_base: "http://127.0.0.1:9".into(),
            resuming: true,
            last_seq: Some(3),
            session_id: None,
            epoch: None,
            status: None,
            attempt: 0,
            renewed: false,
            ping: Duration::from_secs(15),
            backoff: Backoff {
                base: Duration::from_millis(500),
                cap: Duration::from_secs(20),
            },
        };
        assert!(matches!(
            watcher.closed(close::SERVICE_RESTART, "server restart"),
            Next::Soon
        ));
        assert!(matches!(
            watcher.closed(close::GOING_AWAY, "server shutting down"),
            Next::Retry(_)
        ));
    }
}
