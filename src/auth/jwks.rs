//! Verification keys from an identity provider's JWKS (`--jwt-jwks-url`):
//! fetched at start (a set that cannot be fetched, or holds no key for the
//! configured algorithm, stops the start), refreshed every
//! `--jwt-jwks-refresh-secs`, and refreshed when a token names a `kid` the
//! set does not have, at most once per `--jwt-jwks-cooldown-secs`. A failed
//! refresh keeps the last good keys and is logged. The algorithm stays the
//! configured one: keys of another type or `alg` are left out, and the token's
//! header chooses only which of the remaining keys to try.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// The largest key set read.
const MAX_BYTES: usize = 1024 * 1024;

/// The keys of one fetch: by `kid`, and those without one.
#[derive(Default)]
struct Keys {
    by_id: HashMap<String, DecodingKey>,
    unnamed: Vec<DecodingKey>,
}

impl Keys {
    fn len(&self) -> usize {
        self.by_id.len() + self.unnamed.len()
    }
}

/// Why a token's key was not found.
#[derive(Debug, PartialEq, Eq)]
pub enum Missing {
    /// No key has the token's `kid`, even after a refresh (or within the
    /// refresh cool-down).
    UnknownKid,
    /// The token has no `kid` and the set has more than one key.
    NoKid,
}

pub struct Jwks {
    url: reqwest::Url,
    algorithm: Algorithm,
    http: reqwest::Client,
    keys: RwLock<Arc<Keys>>,
    cooldown: Duration,
    /// Held while fetching, so that a burst of tokens with a new `kid` makes
    /// one request; holds when the last refresh for an unknown `kid` or on
    /// schedule started (the start's fetch does not count).
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("url", &self.url.as_str())
            .field("keys", &self.read().len())
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// Fetches the set once; an error names the URL and the cause.
    pub async fn fetch(
        url: &str,
        algorithm: Algorithm,
        refresh: Duration,
        cooldown: Duration,
    ) -> anyhow::Result<Arc<Jwks>> {
        let parsed = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .with_context(|| format!("--jwt-jwks-url `{url}` is not an http(s) URL"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("rejoin/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the JWKS client")?;
        let jwks = Jwks {
            url: parsed,
            algorithm,
            http,
            keys: RwLock::default(),
            cooldown,
            fetching: tokio::sync::Mutex::new(None),
        };
        let keys = jwks
            .load()
            .await
            .with_context(|| format!("cannot load the JWKS at {url}"))?;
        tracing::info!(url, keys = keys.len(), "JWKS loaded");
        *jwks.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        let jwks = Arc::new(jwks);
        tokio::spawn(refresh_every(Arc::downgrade(&jwks), refresh));
        Ok(jwks)
    }

    fn read(&self) -> Arc<Keys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The key for a token whose header names `kid` (or none), refreshing
    /// the set once if the `kid` is new and the cool-down allows.
    pub async fn key(&self, kid: Option<&str>) -> Result<DecodingKey, Missing> {
        match self.pick(kid) {
            Err(Missing::UnknownKid) => {}
            found => return found,
        }
        let mut last = self.fetching.lock().await;
        // Another request may have fetched it meanwhile.
        if let Ok(key) = self.pick(kid) {
            return Ok(key);
        }
        if last.is_some_and(|at| at.elapsed() < self.cooldown) {
            return Err(Missing::UnknownKid);
        }
        *last = Some(Instant::now());
        self.refresh("a token names an unknown kid").await;
        self.pick(kid)
    }

    fn pick(&self, kid: Option<&str>) -> Result<DecodingKey, Missing> {
        let keys = self.read();
        match kid {
            Some(kid) => keys.by_id.get(kid).cloned().ok_or(Missing::UnknownKid),
            None if keys.len() == 1 => Ok(keys
                .by_id
                .values()
                .chain(&keys.unnamed)
                .next()
                .expect("one key")
                .clone()),
            None => Err(Missing::NoKid),
        }
    }

    /// Fetches the set and swaps it in; on failure keeps the keys it has.
    async fn refresh(&self, why: &'static str) {
        match self.load().await {
            Ok(keys) => {
                let before = self.read();
                let (old, new) = (before.len(), keys.len());
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
                tracing::debug!(url = %self.url, why, old, new, "JWKS refreshed");
            }
            Err(e) => tracing::warn!(
                url = %self.url,
                why,
                error = format!("{e:#}"),
                "cannot refresh the JWKS; keeping the last good keys"
            ),
        }
    }

    async fn load(&self) -> anyhow::Result<Keys> {
        let mut res = self
            .http
            .get(self.url.clone())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", crate::outbound::describe(e)))?;
        anyhow::ensure!(
            res.status().is_success(),
            "the JWKS answered {}",
            res.status()
        );
        let mut body = Vec::new();
        while let Some(chunk) = res
            .chunk()
            .await
            .map_err(|e| anyhow::anyhow!("{}", crate::outbound::describe(e)))?
        {
            body.extend_from_slice(&chunk);
            anyhow::ensure!(body.len() <= MAX_BYTES, "the JWKS is larger than 1 MiB");
        }
        let keys = parse(&body, self.algorithm)?;
        anyhow::ensure!(
            keys.len() > 0,
            "the JWKS has no usable {:?} signing key",
            self.algorithm
        );
        Ok(keys)
    }
}

async fn refresh_every(jwks: Weak<Jwks>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        // The server that owned the set is gone.
        let Some(jwks) = jwks.upgrade() else { return };
        *jwks.fetching.lock().await = Some(Instant::now());
        jwks.refresh("scheduled").await;
    }
}

/// The set's keys that verify `algorithm`; others (encryption keys, other
/// types or curves, another `alg`, unreadable entries) are left out.
fn parse(body: &[u8], algorithm: Algorithm) -> anyhow::Result<Keys> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).context("the JWKS is not a JSON key set")?;
    let mut keys = Keys::default();
    for entry in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(entry) else {
            continue;
        };
        if !fits(&jwk, algorithm) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        match jwk.common.key_id {
            Some(kid) => {
                keys.by_id.insert(kid, key);
            }
            None => keys.unnamed.push(key),
        }
    }
    Ok(keys)
}

fn fits(jwk: &Jwk, algorithm: Algorithm) -> bool {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return false;
    }
    let alg_ok = matches!(
        (jwk.common.key_algorithm, algorithm),
        (None, _)
            | (Some(KeyAlgorithm::RS256), Algorithm::RS256)
            | (Some(KeyAlgorithm::ES256), Algorithm::ES256)
            | (Some(KeyAlgorithm::EdDSA), Algorithm::EdDSA)
    );
    let kind_ok = match (&jwk.algorithm, algorithm) {
        (AlgorithmParameters::RSA(_), Algorithm::RS256) => true,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => {
            p.curve == EllipticCurve::Ed25519
        }
        _ => false,
    };
    alg_ok && kind_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    #[test]
    fn only_keys_for_the_pinned_algorithm_are_kept() {
        let set = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": ED_X, "kid": "ed-1"},
            {"kty": "OKP", "crv": "Ed25519", "x": ED_X, "kid": "ed-enc", "use": "enc"},
            {"kty": "OKP", "crv": "Ed25519", "x": ED_X, "kid": "ed-rs", "alg": "RS256"},
            {"kty": "EC", "crv": "P-256", "kid": "ec-1",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "weird", "kid": "?"},
            "not even an object"
        ]});
        let body = serde_json::to_vec(&set).unwrap();
        let ed = parse(&body, Algorithm::EdDSA).unwrap();
        assert_eq!(ed.by_id.keys().collect::<Vec<_>>(), ["ed-1"]);
        let ec = parse(&body, Algorithm::ES256).unwrap();
        assert_eq!(ec.by_id.keys().collect::<Vec<_>>(), ["ec-1"]);
        assert_eq!(parse(&body, Algorithm::RS256).unwrap().len(), 0);
        assert!(parse(b"[]", Algorithm::EdDSA).is_err());
    }
}
