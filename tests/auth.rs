//! Tokens and roles against a real server: who may do what, and which tokens
//! are refused.

use crate::common;

use common::{mint, spawn_app, spawn_with, SECRET};
use rejoin::auth::Role;
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    // base64url without padding, by hand, to build tokens no library would.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | *b as u32) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn status_of(app: &common::TestApp, token: Option<&str>) -> (u16, Value) {
    let job = uuid::Uuid::new_v4();
    let mut req = app
        .http
        .post(app.url("/v1/jobs"))
        .json(&json!({"jobId": job}));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn missing_malformed_expired_and_foreign_tokens_get_401() {
    let app = spawn_app().await;
    let sub_role = |extra: Value| {
        let mut claims = json!({"sub": "svc", "role": "service", "exp": now() + 600});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims
    };
    let header_none = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!(
        "{header_none}.{}.",
        b64(sub_role(json!({})).to_string().as_bytes())
    );
    let hs384 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
        &sub_role(json!({})),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let wrong_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &sub_role(json!({})),
        &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret-entirely"),
    )
    .unwrap();

    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "missing_token"),
        ("garbage", Some("not.a.token".into()), "invalid_token"),
        ("alg none", Some(unsigned), "invalid_token"),
        ("other algorithm", Some(hs384), "invalid_token"),
        ("wrong key", Some(wrong_key), "invalid_token"),
        (
            "expired beyond leeway",
            Some(mint(&sub_role(json!({"exp": now() - 120})))),
            "token_expired",
        ),
        (
            "no exp",
            Some(mint(&sub_role(json!({"exp": null})))),
            "invalid_token",
        ),
        (
            "no sub",
            Some(mint(&sub_role(json!({"sub": null})))),
            "invalid_token",
        ),
        (
            "no role",
            Some(mint(&sub_role(json!({"role": null})))),
            "invalid_token",
        ),
        (
            "unknown role",
            Some(mint(&sub_role(json!({"role": "admin"})))),
            "invalid_token",
        ),
        (
            "client without job",
            Some(mint(&sub_role(json!({"role": "client"})))),
            "invalid_token",
        ),
    ];
    for (name, token, code) in cases {
        let (status, body) = status_of(&app, token.as_deref()).await;
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(body["error"]["code"], code, "{name}");
    }
    // The challenge names its realm: Foundation on Linux crashes on a bare
    // `Bearer` (the Swift client's renewal sees this answer).
    let res = reqwest::Client::new()
        .post(app.url("/v1/jobs"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.headers()["www-authenticate"],
        r#"Bearer realm="rejoin""#
    );
    // Within the leeway is still accepted.
    let (status, _) = status_of(&app, Some(&mint(&sub_role(json!({"exp": now() - 2}))))).await;
    assert_eq!(status, 201);
    assert_eq!(
        app.count_events().await,
        1,
        "refused requests append nothing"
    );
}

#[tokio::test]
async fn each_role_may_do_only_its_part() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    let other = app.create_job().await;
    let before = app.count_events().await;
    for role in [Role::Support, Role::Analytics] {
        let (status, body) = status_of(&app, Some(&app.token(role, None))).await;
        assert_eq!(status, 403, "{role:?} creating a job: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
    }
    let client = app.token(Role::Client, Some(job));
    let (status, _) = status_of(&app, Some(&client)).await;
    assert_eq!(status, 403, "a client creating a job");
    for token in [client.clone(), app.token(Role::Support, None)] {
        let res = app
            .post_as(
                &format!("/v1/jobs/{job}/events"),
                &token,
                &json!({"type": "progress", "progress": 5}),
            )
            .await;
        assert_eq!(res.status(), 403);
    }
    assert_eq!(app.count_events().await, before);

    let read = |token: String, id| {
        app.http
            .get(app.url(&format!("/v1/jobs/{id}")))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(read(client.clone(), job).await.unwrap().status(), 200);
    assert_eq!(read(client.clone(), other).await.unwrap().status(), 403);
    assert_eq!(
        read(app.token(Role::Support, None), job)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        read(app.token(Role::Analytics, None), job)
            .await
            .unwrap()
            .status(),
        403
    );
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let app = spawn_with(&["--jwt-issuer", "auth.example", "--jwt-audience", "rejoin"]).await;
    let base = json!({"sub": "svc", "role": "service", "exp": now() + 600});
    let with = |iss: Option<&str>, aud: Option<&str>| {
        let mut c = base.clone();
        if let Some(i) = iss {
            c["iss"] = json!(i);
        }
        if let Some(a) = aud {
            c["aud"] = json!(a);
        }
        mint(&c)
    };
    assert_eq!(
        status_of(&app, Some(&with(Some("auth.example"), Some("rejoin"))))
            .await
            .0,
        201
    );
    assert_eq!(
        status_of(&app, Some(&with(Some("evil"), Some("rejoin"))))
            .await
            .0,
        401
    );
    assert_eq!(
        status_of(&app, Some(&with(Some("auth.example"), Some("other"))))
            .await
            .0,
        401
    );
    assert_eq!(
        status_of(&app, Some(&with(None, Some("rejoin")))).await.0,
        401
    );
    assert_eq!(
        status_of(&app, Some(&with(Some("auth.example"), None)))
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn an_eddsa_deployment_verifies_with_its_public_key_and_refuses_hs256() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let public = format!("{fixtures}/ed25519-public.pem");
    let private = format!("{fixtures}/ed25519-private.pem");
    // spawn_with passes --jwt-secret; an asymmetric server must refuse it.
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    let refused = rejoin::config::ServeArgs::from_args([
        "--database-url",
        &db,
        "--jwt-secret",
        SECRET,
        "--jwt-algorithm",
        "EdDSA",
        "--jwt-public-key",
        &public,
    ])
    .unwrap();
    let err = rejoin::app::Application::build(refused)
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("--jwt-secret is for HS256"),
        "{err}"
    );

    let mut server = common::KeyedServer::start(
        dir.path(),
        &[
            "--jwt-algorithm",
            "EdDSA",
            "--jwt-public-key",
            &public,
            "--jwt-private-key",
            &private,
        ],
    )
    .await;
    let addr = server.addr;
    let http = reqwest::Client::new();
    let key = jsonwebtoken::EncodingKey::from_ed_pem(&std::fs::read(&private).unwrap()).unwrap();
    let claims = json!({"sub": "svc", "role": "service", "exp": now() + 600});
    let good = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &claims,
        &key,
    )
    .unwrap();
    // The classic confusion: HS256 keyed with the public key's bytes.
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&std::fs::read(&public).unwrap()),
    )
    .unwrap();
    let create = |token: String| {
        let http = http.clone();
        async move { common::post_json_at(&http, addr, "/v1/jobs", &token, &json!({})).await }
    };
    let res = create(good).await;
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    // The client token the server minted is EdDSA and verifies.
    let client = body["clientToken"].as_str().unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(client).unwrap().alg,
        jsonwebtoken::Algorithm::EdDSA
    );
    let res = http
        .get(format!(
            "http://{addr}/v1/jobs/{}",
            body["jobId"].as_str().unwrap()
        ))
        .bearer_auth(client)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(create(confused).await.status(), 401);
    server.stop().await.unwrap();
}
