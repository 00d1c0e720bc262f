//! HTTP helpers for a server known by its address.

use std::net::SocketAddr;

use serde_json::{json, Value};
use uuid::Uuid;

use crate::tokens::token_for;

/// Creates a job on the server at `base` (`host:port`) with `service`'s
/// token and returns its id.
pub async fn create_job_with(
    http: &reqwest::Client,
    base: &str,
    service: &str,
) -> anyhow::Result<Uuid> {
    let body: Value = http
        .post(format!("http://{base}/v1/jobs"))
        .bearer_auth(service)
        .json(&json!({}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(body["jobId"].as_str().unwrap_or_default().parse()?)
}

/// Creates a job on a server signed with the tests' secret.
pub async fn create_job_at(http: &reqwest::Client, addr: SocketAddr) -> Uuid {
    create_job_from(http, addr, &json!({})).await
}

/// Creates a job from `body` (metadata, windows, …) on a server signed with
/// the tests' secret; 201 and its id.
pub async fn create_job_from(http: &reqwest::Client, addr: SocketAddr, body: &Value) -> Uuid {
    let res = http
        .post(format!("http://{addr}/v1/jobs"))
        .bearer_auth(token_for("service", None))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{body}");
    let created: Value = res.json().await.unwrap();
    created["jobId"].as_str().unwrap().parse().unwrap()
}

/// Appends progress `p` to `job` on the server at `addr`; its seq.
pub async fn progress_at(http: &reqwest::Client, addr: SocketAddr, job: Uuid, p: f64) -> i64 {
    let res = http
        .post(format!("http://{addr}/v1/jobs/{job}/events"))
        .bearer_auth(token_for("service", None))
        .json(&json!({"type": "progress", "progress": p}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    res.json::<Value>().await.unwrap()["seq"].as_i64().unwrap()
}

/// The value of the `/metrics` line that starts with `line_start` (a name
/// with its labels and the space after them) on the server at `addr`.
pub async fn metric_at(http: &reqwest::Client, addr: SocketAddr, line_start: &str) -> f64 {
    let text = metrics_at(http, addr).await;
    metric_in(&text, line_start).unwrap_or_else(|| panic!("no `{line_start}` in /metrics:\n{text}"))
}

/// The value of the line of a `/metrics` text that starts with
/// `line_start`; `None` when there is none (a label never observed).
pub fn metric_in(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
}

/// GETs `path` from the server at `addr` (with `token`, if any) and returns
/// its JSON, whatever the status.
pub async fn get_json_at(
    http: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Value {
    let mut req = http.get(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().json().await.unwrap()
}

/// POSTs `body` to `path` on the server at `addr` with `token`.
pub async fn post_json_at(
    http: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
    token: &str,
    body: &Value,
) -> reqwest::Response {
    http.post(format!("http://{addr}{path}"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The `/metrics` text of the server at `addr`.
pub async fn metrics_at(http: &reqwest::Client, addr: SocketAddr) -> String {
    http.get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
