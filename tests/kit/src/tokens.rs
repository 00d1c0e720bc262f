//! Tokens signed with a known HS256 secret: one type for every caller.

use serde_json::{json, Value};
use uuid::Uuid;

/// The secret the tests' servers are started with.
pub const SECRET: &str = "test-secret-0123456789abcdef-0123456789";

/// Mints HS256 tokens for a server whose secret the caller chose.
pub struct Tokens {
    key: jsonwebtoken::EncodingKey,
}

impl Tokens {
    pub fn new(secret: &str) -> Self {
        Tokens {
            key: jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        }
    }

    /// A token with exactly these claims (for tests of bad claims too).
    pub fn claims(&self, claims: &Value) -> String {
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &self.key)
            .expect("signing with an HMAC key cannot fail")
    }

    /// A token for `role` (and the `job` of a client token), valid a day.
    pub fn mint(&self, role: &str, job: Option<Uuid>) -> String {
        let exp = chrono::Utc::now().timestamp() + 86_400;
        self.claims(&json!({"sub": format!("test-{role}"), "role": role, "job": job, "exp": exp}))
    }

    pub fn service(&self) -> String {
        self.mint("service", None)
    }

    pub fn client(&self, job: Uuid) -> String {
        self.mint("client", Some(job))
    }
}

/// A token with these claims, signed with the tests' secret.
pub fn mint(claims: &Value) -> String {
    Tokens::new(SECRET).claims(claims)
}

/// A token for `role` (and `job`), signed with the tests' secret.
pub fn token_for(role: &str, job: Option<Uuid>) -> String {
    Tokens::new(SECRET).mint(role, job)
}
