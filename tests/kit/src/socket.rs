//! WebSocket clients of `/ws/progress` and reading what they receive.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::{self, Message};

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Longest any test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// Opens `ws://addr/ws/progress?{query}`.
pub async fn ws_connect(addr: SocketAddr, query: &str) -> Result<Ws, tungstenite::Error> {
    let url = format!("ws://{addr}/ws/progress?{query}");
    tokio_tungstenite::connect_async(url)
        .await
        .map(|(ws, _)| ws)
}

/// The HTTP status of a refused upgrade.
pub fn refused_status(result: Result<Ws, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, the socket opened"),
    }
}

/// The protocol's schema (docs/protocol.schema.json), the part a server may
/// send: every message a test reads is checked against it.
fn server_messages() -> &'static jsonschema::Validator {
    static VALIDATOR: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let mut schema: Value =
            serde_json::from_str(include_str!("../../../docs/protocol.schema.json"))
                .expect("the protocol schema is JSON");
        schema["oneOf"] = serde_json::json!([{"$ref": "#/$defs/serverMessage"}]);
        jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("the protocol schema compiles")
    })
}

/// Checks a message the server sent against the protocol's schema.
pub fn check_server_message(message: &Value) -> anyhow::Result<()> {
    let errors: Vec<String> = server_messages()
        .iter_errors(message)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    anyhow::ensure!(
        errors.is_empty(),
        "a server message breaks docs/protocol.schema.json: {message}: {}",
        errors.join("; ")
    );
    Ok(())
}

/// The next text message, as JSON (pings and pongs skipped), or why there
/// is none. Every message is checked against the protocol's schema.
pub async fn first_message(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match tokio::time::timeout(PATIENCE, ws.next()).await {
            Err(_) => anyhow::bail!("no message in time"),
            Ok(Some(Ok(Message::Text(t)))) => {
                let message: Value = serde_json::from_str(t.as_str())?;
                check_server_message(&message)?;
                return Ok(message);
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => anyhow::bail!("expected a text message, got {other:?}"),
        }
    }
}

/// The next text message, as JSON (pings and pongs skipped).
pub async fn next_json(ws: &mut Ws) -> Value {
    first_message(ws).await.expect("a text message in time")
}

/// Reads until the close frame and returns its code and reason.
pub async fn next_close(ws: &mut Ws) -> (u16, String) {
    loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a close in time");
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string())
            }
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(Message::Text(t))) => panic!("expected a close, got {t}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("expected a close frame, got error {e}"),
            None => panic!("the connection ended without a close frame"),
        }
    }
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.unwrap();
}
