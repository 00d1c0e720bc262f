//! The operator's webhook endpoint: its settings, Standard Webhooks
//! signing, and one attempt's POST. What is sent and when is the engine's
//! business; this module only speaks HTTP.

mod settings;

use std::time::Duration;

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::{load_or_create, Secret};
use crate::domain::notify::{AttemptResult, Backoff};
pub use settings::WebhookArgs;

/// File name of the generated signing secret, inside the database's directory.
pub const SECRET_FILE: &str = "webhook-secret";

/// The prefix of a Standard Webhooks secret.
const SECRET_PREFIX: &str = "whsec_";

/// Bounds on the key inside a secret, as Standard Webhooks gives them.
const MIN_KEY_BYTES: usize = 24;
const MAX_KEY_BYTES: usize = 64;

/// How much of an answer's body is read (for the error it reports).
const BODY_LIMIT: usize = 1024;

/// How much of that body an error quotes.
const QUOTE_LIMIT: usize = 200;

/// The endpoint every notification goes to, and how.
pub struct Endpoint {
    url: reqwest::Url,
    key: Vec<u8>,
    client: reqwest::Client,
    /// How long one attempt may take, connect to last byte.
    pub timeout: Duration,
    pub backoff: Backoff,
    /// After this long a notification is abandoned.
    pub max_age: Duration,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.display_url())
            .field("key", &"[redacted]")
            .field("timeout", &self.timeout)
            .field("backoff", &self.backoff)
            .field("max_age", &self.max_age)
            .finish()
    }
}

fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        value.is_finite() && value > 0.0 && value < 1e9,
        "{name} must be a positive number of seconds"
    );
    Ok(Duration::from_secs_f64(value))
}

/// The key inside a `whsec_` + base64 secret.
pub fn parse_secret(secret: &str) -> anyhow::Result<Vec<u8>> {
    let encoded = secret.trim().strip_prefix(SECRET_PREFIX).context(
        "--webhook-secret must be `whsec_` followed by the base64 of the key (Standard Webhooks)",
    )?;
    let key = BASE64.decode(encoded).map_err(|e| {
        anyhow::anyhow!("--webhook-secret: the part after `whsec_` is not base64 ({e})")
    })?;
    anyhow::ensure!(
        key.len() >= MIN_KEY_BYTES,
        "--webhook-secret is too short: its key is {} bytes, and must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES}",
        key.len()
    );
    anyhow::ensure!(
        key.len() <= MAX_KEY_BYTES,
        "--webhook-secret is too long: its key is {} bytes, and must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES}",
        key.len()
    );
    Ok(key)
}

impl Endpoint {
    /// The endpoint the arguments configure, or none without `--webhook-url`.
    /// Without `--webhook-secret`, the secret kept beside the SQLite database
    /// is used (generated on first use); a PostgreSQL log needs one given,
    /// since every node must sign alike.
    pub fn from_args(
        args: &WebhookArgs,
        secret_dir: Option<&std::path::Path>,
    ) -> anyhow::Result<Option<Endpoint>> {
        let Some(raw) = &args.webhook_url else {
            return Ok(None);
        };
        let url = reqwest::Url::parse(raw)
            .map_err(|e| anyhow::anyhow!("--webhook-url `{raw}` is not a URL: {e}"))?;
        anyhow::ensure!(
            matches!(url.scheme(), "http" | "https") && url.host().is_some(),
            "--webhook-url `{raw}` must be an http:// or https:// URL with a host"
        );
        let secret = match (&args.webhook_secret, &args.webhook_secret_file) {
            (Some(s), _) => s.clone(),
            (None, Some(file)) => crate::auth::read_secret_file(file, "--webhook-secret-file")?,
            (None, None) => {
                let dir = secret_dir.context(
                    "--webhook-url needs --webhook-secret here: the database is not a SQLite file to keep a generated one beside, and every node must sign with the same key",
                )?;
                load_or_create(dir, SECRET_FILE, "a webhook signing secret", |bytes| {
                    format!("{SECRET_PREFIX}{}", BASE64.encode(bytes))
                })?
            }
        };
        let key = parse_secret(secret.expose())?;
        let timeout = seconds("--webhook-timeout-secs", args.webhook_timeout_secs)?;
        let backoff = Backoff {
            base: seconds("--webhook-retry-base-secs", args.webhook_retry_base_secs)?,
            cap: seconds("--webhook-retry-cap-secs", args.webhook_retry_cap_secs)?,
        };
        anyhow::ensure!(
            backoff.cap >= backoff.base,
            "--webhook-retry-cap-secs must not be less than --webhook-retry-base-secs"
        );
        let max_age = seconds("--webhook-max-age-secs", args.webhook_max_age_secs)?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("rejoin/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the webhook client")?;
        Ok(Some(Endpoint {
            url,
            key,
            client,
            timeout,
            backoff,
            max_age,
        }))
    }

    /// The URL as logs show it: scheme, host, port and path, without any
    /// credentials or query.
    pub fn display_url(&self) -> String {
        let mut shown = format!(
            "{}://{}",
            self.url.scheme(),
            self.url.host_str().unwrap_or("")
        );
        if let Some(port) = self.url.port() {
            shown.push_str(&format!(":{port}"));
        }
        shown.push_str(self.url.path());
        shown
    }

    /// The `webhook-signature` of one request: `v1,` + base64 of the
    /// HMAC-SHA256 of `id.timestamp.body`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        sign(&self.key, id, timestamp, body)
    }

    /// One attempt: POSTs `body` signed for `timestamp` (Unix seconds).
    pub async fn send(&self, id: &str, timestamp: i64, body: Vec<u8>) -> AttemptResult {
        let signature = self.sign(id, timestamp, &body);
        let sent = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => {
                return AttemptResult::Failed {
                    status: None,
                    error: self.describe(e),
                }
            }
        };
        let status = response.status();
        if status.is_success() {
            return AttemptResult::Delivered {
                status: status.as_u16(),
            };
        }
        if status == reqwest::StatusCode::GONE {
            return AttemptResult::Gone;
        }
        let mut head = Vec::new();
        while head.len() < BODY_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => head.extend_from_slice(&chunk),
                _ => break,
            }
        }
        head.truncate(BODY_LIMIT);
        let mut error = format!("HTTP {}", status.as_u16());
        if status.is_redirection() {
            error.push_str(" (redirects are not followed)");
        }
        let text = String::from_utf8_lossy(&head);
        let text: String = text.trim().chars().take(QUOTE_LIMIT).collect();
        if !text.is_empty() {
            error.push_str(": ");
            error.push_str(&text);
        }
        AttemptResult::Failed {
            status: Some(status.as_u16()),
            error,
        }
    }

    /// A transport error in a line, without the URL (it may carry
    /// credentials); a timeout names this endpoint's limit.
    fn describe(&self, e: reqwest::Error) -> String {
        if e.is_timeout() {
            return format!("timed out after {} s", self.timeout.as_secs_f64());
        }
        crate::outbound::describe(e)
    }
}

/// Standard Webhooks' signature over `id.timestamp.body` with `key`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// A secret in the Standard Webhooks form, as `--webhook-secret` takes it.
pub fn format_secret(key: &[u8]) -> Secret {
    Secret::new(format!("{SECRET_PREFIX}{}", BASE64.encode(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_must_be_whsec_base64_of_24_to_64_bytes() {
        assert!(parse_secret(format_secret(&[7; 32]).expose()).is_ok());
        let short = parse_secret(format_secret(&[7; 8]).expose()).unwrap_err();
        assert!(short.to_string().contains("too short"), "{short}");
        let long = parse_secret(format_secret(&[7; 65]).expose()).unwrap_err();
        assert!(long.to_string().contains("too long"), "{long}");
        assert!(parse_secret("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0").is_err());
        assert!(parse_secret("whsec_%%%").is_err());
    }

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification's reference
        // libraries (svix): this secret, id, timestamp and body.
        let key = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
