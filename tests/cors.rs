//! CORS on the HTTP API: the origins `--allowed-origins` lets open sockets
//! may also call the API from a browser with a bearer token. Real preflights
//! (OPTIONS with the headers a browser sends) and real requests.

use crate::common;

use common::{spawn_app, spawn_with};
use reqwest::Method;

async fn preflight(app: &common::TestApp, path: &str, origin: &str) -> reqwest::Response {
    app.http
        .request(Method::OPTIONS, app.url(path))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,idempotency-key",
        )
        .send()
        .await
        .unwrap()
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    res.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn an_allowed_origin_gets_its_preflight_answered_and_may_send_a_bearer_token() {
    let app = spawn_with(&[
        "--allowed-origins",
        "https://app.example,https://admin.example",
    ])
    .await;
    let job = app.create_job().await;
    let path = format!("/v1/jobs/{job}/token");
    let res = preflight(&app, &path, "https://app.example").await;
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(
        header(&res, "access-control-allow-origin"),
        Some("https://app.example")
    );
    let allowed = header(&res, "access-control-allow-headers")
        .unwrap()
        .to_lowercase();
    for h in ["authorization", "content-type", "idempotency-key"] {
        assert!(allowed.contains(h), "{allowed}");
    }
    assert!(header(&res, "access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert!(header(&res, "access-control-allow-credentials").is_none());

    // The request itself carries the header the browser checks.
    let client = app.token(rejoin::auth::Role::Client, Some(job));
    let res = app
        .http
        .get(app.url(&format!("/v1/jobs/{job}")))
        .header("origin", "https://admin.example")
        .bearer_auth(&client)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(&res, "access-control-allow-origin"),
        Some("https://admin.example")
    );
    // Errors too, so a page can read them.
    let res = app
        .http
        .get(app.url("/v1/jobs/not-a-job"))
        .header("origin", "https://app.example")
        .bearer_auth(&client)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        header(&res, "access-control-allow-origin"),
        Some("https://app.example")
    );
}

#[tokio::test]
async fn other_origins_get_no_cors_headers() {
    let app = spawn_with(&["--allowed-origins", "https://app.example"]).await;
    let job = app.create_job().await;
    let res = preflight(&app, &format!("/v1/jobs/{job}"), "https://evil.example").await;
    assert!(header(&res, "access-control-allow-origin").is_none());
    let res = app
        .http
        .get(app.url(&format!("/v1/jobs/{job}")))
        .header("origin", "https://evil.example")
        .bearer_auth(app.service())
        .send()
        .await
        .unwrap();
    assert!(header(&res, "access-control-allow-origin").is_none());

    // Without --allowed-origins the API is same-origin only.
    let plain = spawn_app().await;
    let res = preflight(&plain, "/v1/jobs", "https://app.example").await;
    assert!(header(&res, "access-control-allow-origin").is_none());
}

#[tokio::test]
async fn a_wildcard_allows_any_origin_without_credentials() {
    let app = spawn_with(&["--allowed-origins", "*"]).await;
    let res = preflight(&app, "/v1/jobs", "https://anywhere.example").await;
    assert!(res.status().is_success());
    assert_eq!(header(&res, "access-control-allow-origin"), Some("*"));
    assert!(header(&res, "access-control-allow-credentials").is_none());
}
