//! Tokens verified against an identity provider's JWKS served on loopback:
//! selection by `kid`, a key rotation, the refresh cool-down, a JWKS that
//! fails later (the last good keys stay) and one that fails at start.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use base64::Engine as _;
use common::{first_message, InProcess};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// An Ed25519 key pair from the fixtures.
struct Key {
    private: EncodingKey,
    /// The public key as a JWK `x`.
    x: String,
}

impl Key {
    fn load(name: &str) -> Key {
        let read = |part: &str| std::fs::read(format!("{FIXTURES}/{name}-{part}.pem")).unwrap();
        let public = String::from_utf8(read("public")).unwrap();
        let der: String = public.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(der)
            .unwrap();
        // An Ed25519 SubjectPublicKeyInfo ends with the 32-byte key.
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der[der.len() - 32..]);
        Key {
            private: EncodingKey::from_ed_pem(&read("private")).unwrap(),
            x,
        }
    }

    fn jwk(&self, kid: &str) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "x": self.x, "kid": kid, "alg": "EdDSA", "use": "sig"})
    }

    /// A token for `role`, its header naming `kid` (or none).
    fn token(&self, kid: Option<&str>, role: &str, job: Option<&str>) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = kid.map(str::to_owned);
        let exp = chrono::Utc::now().timestamp() + 3600;
        let claims = json!({"sub": format!("idp-{role}"), "role": role, "job": job, "exp": exp});
        jsonwebtoken::encode(&header, &claims, &self.private).unwrap()
    }
}

/// A JWKS endpoint whose answer the test changes, counting requests.
#[derive(Clone)]
struct Idp {
    answer: Arc<Mutex<(u16, Value)>>,
    fetches: Arc<AtomicUsize>,
    url: String,
}

async fn serve_jwks(State(idp): State<Idp>) -> impl IntoResponse {
    idp.fetches.fetch_add(1, Ordering::SeqCst);
    let (status, body) = idp.answer.lock().unwrap().clone();
    (StatusCode::from_u16(status).unwrap(), axum::Json(body))
}

impl Idp {
    async fn start(keys: Vec<Value>) -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idp = Idp {
            answer: Arc::new(Mutex::new((200, json!({"keys": keys})))),
            fetches: Arc::default(),
            url: format!("http://{}/jwks.json", listener.local_addr().unwrap()),
        };
        let app = axum::Router::new()
            .route("/jwks.json", get(serve_jwks))
            .with_state(idp.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        idp
    }

    fn publish(&self, keys: Vec<Value>) {
        *self.answer.lock().unwrap() = (200, json!({"keys": keys}));
    }

    fn fail(&self, status: u16) {
        self.answer.lock().unwrap().0 = status;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

async fn start(idp: &Idp, dir: &std::path::Path, extra: &[&str]) -> InProcess {
    let db = format!("sqlite://{}", dir.join("jwks.db").display());
    let mut args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &db,
        "--jwt-algorithm",
        "EdDSA",
        "--jwt-jwks-url",
        &idp.url,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    InProcess::start(&args).await.expect("the server starts")
}

/// The status of `GET /v1/jobs` with `token`, and the error message.
async fn list_jobs(server: &InProcess, token: &str) -> (u16, String) {
    let res = reqwest::Client::new()
        .get(format!("http://{}/v1/jobs", server.addr))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    (
        status,
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// `POST /v1/jobs` with `service`: 201 and its body.
async fn create_job(server: &InProcess, service: &str) -> Value {
    let res = reqwest::Client::new()
        .post(format!("http://{}/v1/jobs", server.addr))
        .bearer_auth(service)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    res.json().await.unwrap()
}

#[tokio::test]
async fn tokens_verify_by_kid_through_a_key_rotation() {
    let (a, b) = (Key::load("ed25519"), Key::load("ed25519-rotated"));
    let idp = Idp::start(vec![a.jwk("a")]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&idp, dir.path(), &["--jwt-jwks-cooldown-secs", "0"]).await;
    assert_eq!(idp.fetches(), 1, "fetched once at start");

    let service_a = a.token(Some("a"), "service", None);
    assert_eq!(list_jobs(&server, &service_a).await.0, 200);
    assert_eq!(idp.fetches(), 1, "a known kid needs no fetch");
    let (status, message) = list_jobs(&server, &b.token(Some("b"), "service", None)).await;
    assert_eq!(
        (status, message.as_str()),
        (
            401,
            "invalid token: no key in the JWKS has the token's `kid`"
        )
    );
    assert_eq!(idp.fetches(), 2, "an unknown kid fetched the set again");

    // The provider publishes the new key beside the old one, then retires
    // the old one.
    idp.publish(vec![a.jwk("a"), b.jwk("b")]);
    let service_b = b.token(Some("b"), "service", None);
    assert_eq!(
        list_jobs(&server, &service_b).await.0,
        200,
        "the new key, fetched on its first token"
    );
    assert_eq!(list_jobs(&server, &service_a).await.0, 200);
    idp.publish(vec![b.jwk("b")]);
    assert_eq!(
        list_jobs(&server, &service_a).await.0,
        200,
        "until the set is fetched again"
    );
    // A token with another new kid (or the scheduled refresh) fetches it.
    assert_eq!(
        list_jobs(&server, &b.token(Some("c"), "service", None))
            .await
            .0,
        401
    );
    assert_eq!(
        list_jobs(&server, &service_a).await.0,
        401,
        "a retired kid is refused once the set is fetched"
    );
    assert_eq!(list_jobs(&server, &service_b).await.0, 200);
    // With one key in the set, a token without a kid uses it.
    assert_eq!(
        list_jobs(&server, &b.token(None, "service", None)).await.0,
        200
    );

    // A kid names the key; the signature must still be that key's.
    let forged = a.token(Some("b"), "service", None);
    assert_eq!(
        list_jobs(&server, &forged).await,
        (401, "invalid token: bad signature".into())
    );
    // The algorithm is the configured one, whatever the header says.
    let hs = jsonwebtoken::encode(
        &Header {
            kid: Some("b".into()),
            ..Header::new(Algorithm::HS256)
        },
        &json!({"sub": "x", "role": "service", "exp": chrono::Utc::now().timestamp() + 60}),
        &EncodingKey::from_secret(b.x.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        list_jobs(&server, &hs).await,
        (
            401,
            "invalid token: the token is not signed with the configured algorithm".into()
        )
    );

    // A client token from the provider opens its job's socket.
    let created = create_job(&server, &service_b).await;
    assert!(
        created.get("clientToken").is_none(),
        "a verifying-only server mints none: {created}"
    );
    let job = created["jobId"].as_str().unwrap();
    let client = b.token(Some("b"), "client", Some(job));
    let mut ws = common::ws_connect(server.addr, &format!("jobId={job}&token={client}"))
        .await
        .unwrap();
    assert_eq!(first_message(&mut ws).await.unwrap()["type"], "connected");
}

#[tokio::test]
async fn unknown_kids_fetch_the_set_at_most_once_per_cool_down() {
    let a = Key::load("ed25519");
    let idp = Idp::start(vec![a.jwk("a")]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&idp, dir.path(), &["--jwt-jwks-cooldown-secs", "3600"]).await;
    let tokens: Vec<String> = (0..20)
        .map(|n| a.token(Some(&format!("made-up-{n}")), "service", None))
        .collect();
    let answers =
        futures_util::future::join_all(tokens.iter().map(|t| list_jobs(&server, t))).await;
    assert!(answers.iter().all(|(s, _)| *s == 401), "{answers:?}");
    assert_eq!(idp.fetches(), 2, "one refresh for twenty unknown kids");
    // Known kids keep verifying meanwhile.
    assert_eq!(
        list_jobs(&server, &a.token(Some("a"), "service", None))
            .await
            .0,
        200
    );
    assert_eq!(idp.fetches(), 2);
}

#[tokio::test]
async fn a_jwks_that_fails_later_leaves_the_last_good_keys_and_is_logged() {
    let a = Key::load("ed25519");
    let idp = Idp::start(vec![a.jwk("a")]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("later.db").display());
    let log = dir.path().join("stderr.log");
    let mut cmd = tokio::process::Command::new(common::BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--database-url", &db])
        .args(["--jwt-algorithm", "EdDSA", "--jwt-jwks-url", &idp.url])
        .args(["--jwt-jwks-refresh-secs", "1"])
        .stderr(std::fs::File::create(&log).unwrap());
    let (mut child, addr) = common::spawn_announcing(cmd).await.unwrap();
    idp.fail(503);
    // Two scheduled refreshes answered 503.
    common::eventually("two scheduled refreshes", || async {
        (idp.fetches() >= 3).then_some(())
    })
    .await;
    let res = reqwest::Client::new()
        .get(format!("http://{addr}/v1/jobs"))
        .bearer_auth(a.token(Some("a"), "service", None))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the last good key still verifies");
    common::terminate(&mut child).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("cannot refresh the JWKS; keeping the last good keys")
            && text.contains("the JWKS answered 503"),
        "{text}"
    );
}

#[tokio::test]
async fn a_jwks_that_cannot_be_loaded_stops_the_start() {
    let a = Key::load("ed25519");
    let idp = Idp::start(vec![a.jwk("a")]).await;
    let unreachable = format!(
        "http://127.0.0.1:{}/jwks.json",
        common::free_port().unwrap()
    );
    /// A URL, what to make the provider answer, the error expected.
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str);
    let cases: Vec<Case> = vec![
        (unreachable.as_str(), Box::new(|| {}), "cannot connect"),
        (
            &idp.url,
            Box::new(|| idp.fail(404)),
            "the JWKS answered 404 Not Found",
        ),
        (
            &idp.url,
            Box::new(|| idp.publish(vec![json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"})])),
            "the JWKS has no usable EdDSA signing key",
        ),
        (
            "ftp://idp.example/jwks",
            Box::new(|| {}),
            "is not an http(s) URL",
        ),
    ];
    for (url, prepare, expected) in cases {
        prepare();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("never.db");
        let out = tokio::process::Command::new(common::BIN)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(["--database-url", &format!("sqlite://{}", db.display())])
            .args(["--jwt-algorithm", "EdDSA", "--jwt-jwks-url", url])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}");
        assert!(stderr.contains(expected), "{url}: {stderr}");
        assert!(!db.exists(), "no log is opened");
    }
}

#[tokio::test]
async fn a_server_minting_beside_a_jwks_names_its_kid() {
    let a = Key::load("ed25519");
    let idp = Idp::start(vec![a.jwk("a")]).await;
    let dir = tempfile::tempdir().unwrap();
    let private = format!("{FIXTURES}/ed25519-private.pem");
    let db = format!("sqlite://{}", dir.path().join("x.db").display());
    let args = |extra: &[&str]| {
        let mut v: Vec<String> = ["--listen", "127.0.0.1:0", "--database-url", &db]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(
            [
                "--jwt-algorithm",
                "EdDSA",
                "--jwt-jwks-url",
                &idp.url,
                "--jwt-private-key",
                &private,
            ]
            .iter()
            .chain(extra)
            .map(|s| s.to_string()),
        );
        v
    };
    let Err(err) = InProcess::start(&args(&[])).await else {
        panic!("a minting key without a kid must not start");
    };
    assert!(err.to_string().contains("needs --jwt-key-id"), "{err}");

    let server = InProcess::start(&args(&["--jwt-key-id", "a"]))
        .await
        .unwrap();
    let created = create_job(&server, &a.token(Some("a"), "service", None)).await;
    let token = created["clientToken"].as_str().unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(token).unwrap().kid.as_deref(),
        Some("a")
    );
    let job = created["jobId"].as_str().unwrap();
    let mut ws = common::ws_connect(server.addr, &format!("jobId={job}&token={token}"))
        .await
        .unwrap();
    assert_eq!(first_message(&mut ws).await.unwrap()["type"], "connected");
}
