//! Hostile input that the other suites do not already try: key confusion on an
//! RS256 deployment, job ids carrying SQL and control characters, tokens in the
//! wrong place, a reconnect storm from one address, and raw WebSocket frames
//! that break the protocol (fragmentation, control frames, close handling,
//! invalid UTF-8). Each gets the contract's answer, appends nothing it should
//! not, and the server keeps serving.
//!
//! Covered elsewhere: `alg: none`, other algorithms, missing `exp`/`sub`/`role`,
//! expiry beyond the leeway (tests/auth.rs); wrong `iss`/`aud` (tests/auth.rs);
//! malformed and oversized JSON (tests/jobs_api.rs); oversized and binary
//! frames, a foreign Origin, a client token for another job, a client that
//! never reads (tests/ws.rs).

use crate::common;

use common::{next_json, refused_status, spawn_app, spawn_with, TestApp};
use rejoin::auth::Role;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

async fn healthy(app: &TestApp) {
    let res = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200, "the server still serves");
}

#[tokio::test]
async fn an_rs256_deployment_refuses_hs256_signed_with_its_public_key() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let public = format!("{fixtures}/rsa-public.pem");
    let private = format!("{fixtures}/rsa-private.pem");
    let dir = tempfile::tempdir().unwrap();
    let mut server = common::KeyedServer::start(
        dir.path(),
        &[
            "--jwt-algorithm",
            "RS256",
            "--jwt-public-key",
            &public,
            "--jwt-private-key",
            &private,
        ],
    )
    .await;
    let addr = server.addr;
    let claims =
        json!({"sub": "svc", "role": "service", "exp": chrono::Utc::now().timestamp() + 600});
    let sign = |alg, key: &jsonwebtoken::EncodingKey| {
        jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, key).unwrap()
    };
    let good = sign(
        jsonwebtoken::Algorithm::RS256,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap(),
    );
    let confused = sign(
        jsonwebtoken::Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(&std::fs::read(&public).unwrap()),
    );
    let http = reqwest::Client::new();
    let create = |token: String| {
        let http = http.clone();
        async move { common::post_json_at(&http, addr, "/v1/jobs", &token, &json!({})).await }
    };
    let res = create(confused).await;
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_token");
    assert_eq!(create(good).await.status(), 201);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn job_ids_with_sql_and_control_characters_are_400_everywhere() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    let before = app.count_events().await;
    let service = app.service();
    let hostile = [
        "1'%3B%20DROP%20TABLE%20events%3B--",
        "x%22%20OR%201%3D1",
        "%00",
        "abc%0A%0D",
        "%1B%5B31m",
        "..%2F..%2Fetc%2Fpasswd",
        &format!("{job}%00"),
        &format!("{job}'--"),
    ];
    for id in hostile {
        for path in [
            format!("/v1/jobs/{id}"),
            format!("/v1/jobs/{id}/events"),
            format!("/v1/jobs/{id}/history"),
        ] {
            let res = app.get_as(&path, &service).await;
            assert_eq!(res.status(), 400, "GET {path}");
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["error"]["code"], "invalid_job_id", "GET {path}");
        }
        let res = app
            .post_as(
                &format!("/v1/jobs/{id}/events"),
                &service,
                &json!({"type": "progress", "progress": 1.0}),
            )
            .await;
        assert_eq!(res.status(), 400, "POST {id}");
        let token = app.token(Role::Client, Some(job));
        let refused = app.ws(&format!("jobId={id}&token={token}")).await;
        assert_eq!(refused_status(refused), 400, "ws jobId={id}");
    }
    assert_eq!(app.count_events().await, before, "nothing was appended");
    // The log is intact: the job is still there, and a normal append works.
    assert_eq!(app.get_job(job).await["status"], "pending");
    assert!(app.progress(job, 5.0).await > 1);
    healthy(&app).await;
}

#[tokio::test]
async fn tokens_in_the_wrong_place_get_403_and_append_nothing() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    let other = app.create_job().await;
    let before = app.count_events().await;
    let client = app.token(Role::Client, Some(job));
    let progress = json!({"type": "progress", "progress": 50.0});
    // The role is checked before the body: even a malformed one gets 403.
    for body in [json!({}), json!({"type": "progress"}), json!([1])] {
        let res = app.post_as("/v1/jobs", &client, &body).await;
        assert_eq!(res.status(), 403, "a client creating a job with {body}");
        let res = app
            .post_as(&format!("/v1/jobs/{job}/events"), &client, &body)
            .await;
        assert_eq!(res.status(), 403, "a client appending {body}");
    }
    for (path, token) in [
        (format!("/v1/jobs/{job}/events"), client.clone()),
        (format!("/v1/jobs/{other}/events"), client.clone()),
        (
            format!("/v1/jobs/{job}/events"),
            app.token(Role::Support, None),
        ),
        (
            format!("/v1/jobs/{job}/events"),
            app.token(Role::Analytics, None),
        ),
    ] {
        let res = app.post_as(&path, &token, &progress).await;
        assert_eq!(res.status(), 403, "POST {path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden");
    }
    // A client reads its own job, not another's, and not the global log.
    assert_eq!(
        app.get_as(&format!("/v1/jobs/{job}"), &client)
            .await
            .status(),
        200
    );
    for path in [
        format!("/v1/jobs/{other}"),
        format!("/v1/jobs/{job}/history"),
        "/v1/events".to_owned(),
    ] {
        assert_eq!(app.get_as(&path, &client).await.status(), 403, "GET {path}");
    }
    assert_eq!(app.count_events().await, before);
}

#[tokio::test]
async fn a_reconnect_storm_from_one_address_gets_429_with_retry_after() {
    let app = spawn_with(&["--connect-rate-per-ip", "1", "--connect-burst-per-ip", "5"]).await;
    let job = app.create_job().await;
    let token = app.token(Role::Client, Some(job));
    let query = format!("jobId={job}&token={token}");
    let mut opened = Vec::new();
    for _ in 0..5 {
        let mut ws = app.ws(&query).await.unwrap();
        next_json(&mut ws).await;
        opened.push(ws);
    }
    let url = format!("ws://{}/ws/progress?{query}", app.addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), 429);
            let retry: u64 = res.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=2).contains(&retry), "Retry-After {retry}");
            let body: Value = serde_json::from_slice(res.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "rate_limited");
        }
        other => panic!("expected 429, got {other:?}"),
    }
    assert!(app
        .metrics()
        .await
        .contains("rejoin_connect_rate_limited_total 1"));
    // HTTP is not limited by it.
    healthy(&app).await;
    assert_eq!(
        app.get_job(job).await["counts"]["connects"],
        5,
        "the refused attempt opened nothing"
    );
}

/// A raw WebSocket connection: the upgrade by hand, then frames as bytes.
struct Raw {
    tcp: TcpStream,
}

impl Raw {
    async fn open(app: &TestApp, job: Uuid) -> Raw {
        let token = app.token(Role::Client, Some(job));
        let mut tcp = TcpStream::connect(app.addr).await.unwrap();
        let request = format!(
            "GET /ws/progress?jobId={job}&token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            app.addr
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            tcp.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let mut raw = Raw { tcp };
        let (op, payload) = raw.frame().await;
        assert_eq!(op, 1);
        assert_eq!(
            serde_json::from_slice::<Value>(&payload).unwrap()["type"],
            "connected"
        );
        raw
    }

    /// Sends one masked frame.
    async fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
        let mask = [0x12, 0x34, 0x56, 0x78];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65_536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&frame).await.unwrap();
    }

    /// Reads one frame from the server: (opcode, payload).
    async fn frame(&mut self) -> (u8, Vec<u8>) {
        let read = async {
            let mut head = [0u8; 2];
            self.tcp.read_exact(&mut head).await?;
            let mut len = u64::from(head[1] & 0x7f);
            if len == 126 {
                let mut b = [0u8; 2];
                self.tcp.read_exact(&mut b).await?;
                len = u64::from(u16::from_be_bytes(b));
            } else if len == 127 {
                let mut b = [0u8; 8];
                self.tcp.read_exact(&mut b).await?;
                len = u64::from_be_bytes(b);
            }
            let mut payload = vec![0u8; len as usize];
            self.tcp.read_exact(&mut payload).await?;
            std::io::Result::Ok((head[0] & 0x0f, payload))
        };
        tokio::time::timeout(common::PATIENCE, read)
            .await
            .expect("a frame in time")
            .expect("a frame")
    }

    /// The next frame that is not a ping.
    async fn reply(&mut self) -> (u8, Vec<u8>) {
        loop {
            let (op, payload) = self.frame().await;
            if op != 9 {
                return (op, payload);
            }
        }
    }

    /// Expects a close frame with `code`.
    async fn closed_with(&mut self, code: u16) {
        let (op, payload) = self.reply().await;
        assert_eq!(op, 8, "a close frame");
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code);
    }

    /// Expects the server to fail the connection: it ends with no frame
    /// other than pings (RFC 6455 §7.1.7), within the patience.
    async fn failed(&mut self) {
        let mut rest = Vec::new();
        tokio::time::timeout(common::PATIENCE, self.tcp.read_to_end(&mut rest))
            .await
            .expect("the connection ends in time")
            .ok();
        assert!(
            rest.is_empty() || rest[0] & 0x0f == 9,
            "no frame after the violation: {rest:?}"
        );
    }
}

#[tokio::test]
async fn frames_that_break_the_protocol_close_with_their_codes() {
    let app = spawn_app().await;
    let job = app.create_job().await;

    // A fragmented text message is reassembled; a ping between its fragments
    // is answered with its payload.
    let mut raw = Raw::open(&app, job).await;
    raw.send(false, 1, br#"{"type":"#).await;
    raw.send(true, 9, b"hello").await;
    assert_eq!(raw.reply().await, (10, b"hello".to_vec()));
    raw.send(false, 0, br#""pi"#).await;
    raw.send(true, 0, br#"ng"}"#).await;
    let (op, payload) = raw.reply().await;
    assert_eq!(op, 1);
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).unwrap()["type"],
        "pong"
    );

    // Each violation fails the connection (no close frame can be trusted to
    // a peer that breaks framing) and is recorded as a socket error: invalid
    // UTF-8 in a text frame, a control frame over 125 bytes, a fragmented
    // control frame, a continuation with nothing to continue, an unknown
    // opcode.
    let violations: [(bool, u8, &[u8]); 5] = [
        (true, 1, &[0x7b, 0xff, 0xfe, 0x7d]),
        (true, 9, &[b'x'; 126]),
        (false, 9, b"x"),
        (true, 0, b"x"),
        (true, 3, b"x"),
    ];
    for (fin, opcode, payload) in violations {
        raw.send(fin, opcode, payload).await;
        raw.failed().await;
        raw = Raw::open(&app, job).await;
    }
    let errors = app.events_of(job, "ws_error").await;
    assert_eq!(errors.len(), violations.len(), "{errors:?}");

    // A client close is echoed with its code.
    let mut close = 4321u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    raw.send(true, 8, &close).await;
    raw.closed_with(4321).await;

    // Each socket's end is recorded; the log holds nothing else from them.
    app.wait_for_job(job, "the client's close recorded", |s| {
        s["session"]["state"] == "grace"
    })
    .await;
    let codes: Vec<i64> = app
        .events_of(job, "disconnected")
        .await
        .iter()
        .map(|e| e.payload["code"].as_i64().unwrap())
        .collect();
    assert!(codes.contains(&4321), "{codes:?}");
    assert_eq!(app.events_of(job, "progress").await.len(), 0);
    healthy(&app).await;
}
