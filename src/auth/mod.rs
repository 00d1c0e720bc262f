//! Tokens and roles: verifying bearer tokens and minting client tokens.
//!
//! The algorithm is pinned by configuration (HS256 with a shared secret, or
//! RS256/ES256/EdDSA with a public key) and never taken from a token's header.
//! `exp`, `sub` and `role` are required; `iss`/`aud` are checked when configured.

mod jwks;
mod secret;
mod settings;

use std::path::Path;

use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use jwks::Jwks;
pub use secret::{find_secret, load_or_create, load_or_create_secret, read_secret_file, Secret};
pub use settings::{JwtAlgorithm, JwtArgs};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A mobile or browser client watching one job.
    Client,
    /// A backend service that creates jobs and posts their events.
    Service,
    /// Support staff reading job state and connection history.
    Support,
    /// Analysts reading the global log.
    Analytics,
    /// Producers and readers of the Durable Streams at `/v1/stream/`.
    Stream,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Service => "service",
            Role::Support => "support",
            Role::Analytics => "analytics",
            Role::Stream => "stream",
        }
    }
}

/// The claims rejoin reads and writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// For client tokens: the one job they may watch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Checked by the validation when an audience is configured; a string or an
    /// array of strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
}

impl Claims {
    /// True when these claims may act on `job`: any non-client role, or the
    /// client token for that job.
    pub fn is_client_of(&self, job: Uuid) -> bool {
        self.role == Role::Client && self.job == Some(job)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a bearer token is required")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("this server verifies tokens but has no key to sign them")]
    CannotMint,
    #[error("{0}")]
    BadRequest(String),
}

/// A freshly signed token.
#[derive(Clone, Debug)]
pub struct Minted {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// A token signed with another algorithm than the configured one.
const WRONG_ALGORITHM: &str = "the token is not signed with the configured algorithm";

/// Where verification keys come from.
enum Verifying {
    /// The HS256 secret or the configured public key.
    Key(DecodingKey),
    /// An identity provider's key set, by `kid`.
    Jwks(std::sync::Arc<Jwks>),
}

/// Verifies and mints tokens with the configured key.
pub struct Authority {
    algorithm: Algorithm,
    encoding: Option<EncodingKey>,
    key_id: Option<String>,
    decoding: Verifying,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("algorithm", &self.algorithm)
            .field("can_mint", &self.encoding.is_some())
            .field(
                "jwks",
                &match &self.decoding {
                    Verifying::Jwks(j) => Some(j),
                    Verifying::Key(_) => None,
                },
            )
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// Where the generated HS256 secret is kept (beside the SQLite log), and
/// whether this command may create it: only `serve` does; every other
/// command uses the one it finds or says where it looked.
#[derive(Clone, Copy, Debug)]
pub enum SecretHome<'a> {
    Create(&'a Path),
    Find(&'a Path),
}

impl Authority {
    /// Builds the authority from configuration. With HS256 and no secret given,
    /// the secret kept beside the SQLite database is used (created on first use).
    /// With `--jwt-jwks-url`, the key set is fetched before this returns.
    pub async fn from_args(
        args: &JwtArgs,
        secret_home: Option<SecretHome<'_>>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let read = |path: &Path| {
            std::fs::read(path).with_context(|| format!("reading key file {}", path.display()))
        };
        let (algorithm, encoding, decoding) = match args.jwt_algorithm {
            JwtAlgorithm::Hs256 => {
                anyhow::ensure!(
                    args.jwt_public_key.is_none() && args.jwt_private_key.is_none(),
                    "--jwt-public-key/--jwt-private-key need --jwt-algorithm RS256, ES256 or EdDSA"
                );
                anyhow::ensure!(
                    args.jwt_jwks_url.is_none(),
                    "--jwt-jwks-url needs --jwt-algorithm RS256, ES256 or EdDSA"
                );
                let secret = match (&args.jwt_secret, &args.jwt_secret_file) {
                    (Some(s), _) => s.clone(),
                    (None, Some(file)) => read_secret_file(file, "--jwt-secret-file")?,
                    (None, None) => match secret_home.context(
                        "no --jwt-secret given and the database is not a SQLite file to keep a generated one beside",
                    )? {
                        SecretHome::Create(dir) => load_or_create_secret(dir)?,
                        SecretHome::Find(dir) => find_secret(dir)?,
                    },
                };
                anyhow::ensure!(
                    secret.expose().len() >= 16,
                    "--jwt-secret must be at least 16 bytes"
                );
                let bytes = secret.expose().as_bytes();
                (
                    Algorithm::HS256,
                    Some(EncodingKey::from_secret(bytes)),
                    Some(DecodingKey::from_secret(bytes)),
                )
            }
            alg => {
                anyhow::ensure!(
                    args.jwt_secret.is_none() && args.jwt_secret_file.is_none(),
                    "--jwt-secret is for HS256; {alg:?} verifies with --jwt-public-key or --jwt-jwks-url"
                );
                let pem = match (&args.jwt_public_key, &args.jwt_jwks_url) {
                    (Some(public), _) => Some(read(public)?),
                    (None, Some(_)) => None,
                    (None, None) => anyhow::bail!(
                        "--jwt-public-key or --jwt-jwks-url is required for this algorithm"
                    ),
                };
                let public = |parse: fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>| {
                    pem.as_deref()
                        .map(parse)
                        .transpose()
                        .with_context(|| format!("--jwt-public-key is not a valid {alg:?} PEM key"))
                };
                let private = args.jwt_private_key.as_deref().map(read).transpose()?;
                let bad = |what: &str| format!("{what} is not a valid {alg:?} PEM key");
                match alg {
                    JwtAlgorithm::Rs256 => (
                        Algorithm::RS256,
                        private
                            .map(|k| EncodingKey::from_rsa_pem(&k))
                            .transpose()
                            .with_context(|| bad("--jwt-private-key"))?,
                        public(DecodingKey::from_rsa_pem)?,
                    ),
                    JwtAlgorithm::Es256 => (
                        Algorithm::ES256,
                        private
                            .map(|k| EncodingKey::from_ec_pem(&k))
                            .transpose()
                            .with_context(|| bad("--jwt-private-key"))?,
                        public(DecodingKey::from_ec_pem)?,
                    ),
                    JwtAlgorithm::EdDsa => (
                        Algorithm::EdDSA,
                        private
                            .map(|k| EncodingKey::from_ed_pem(&k))
                            .transpose()
                            .with_context(|| bad("--jwt-private-key"))?,
                        public(DecodingKey::from_ed_pem)?,
                    ),
                    JwtAlgorithm::Hs256 => unreachable!("handled above"),
                }
            }
        };

        let decoding = match (decoding, &args.jwt_jwks_url) {
            (Some(key), _) => Verifying::Key(key),
            (None, Some(url)) => {
                anyhow::ensure!(
                    encoding.is_none() || args.jwt_key_id.is_some(),
                    "--jwt-private-key with --jwt-jwks-url needs --jwt-key-id, the `kid` the JWKS publishes its public key under"
                );
                let secs = |name: &str, v: u64| {
                    anyhow::ensure!(v > 0, "{name} must be at least 1");
                    Ok(std::time::Duration::from_secs(v))
                };
                Verifying::Jwks(
                    Jwks::fetch(
                        url,
                        algorithm,
                        secs("--jwt-jwks-refresh-secs", args.jwt_jwks_refresh_secs)?,
                        std::time::Duration::from_secs(args.jwt_jwks_cooldown_secs),
                    )
                    .await?,
                )
            }
            (None, None) => unreachable!("a key or a key set is required above"),
        };

        let mut validation = Validation::new(algorithm);
        validation.leeway = args.jwt_leeway_secs;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &args.jwt_issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &args.jwt_audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);

        Ok(Authority {
            algorithm,
            encoding,
            key_id: args.jwt_key_id.clone(),
            decoding,
            validation,
            issuer: args.jwt_issuer.clone(),
            audience: args.jwt_audience.clone(),
        })
    }

    /// Checks signature, algorithm, expiry and the required claims. With a
    /// JWKS, the key is the one the token's `kid` names (fetched anew, within
    /// the cool-down, when the set does not have it yet).
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let fetched;
        let key = match &self.decoding {
            Verifying::Key(key) => key,
            Verifying::Jwks(set) => {
                let header = jsonwebtoken::decode_header(token)
                    .map_err(|_| AuthError::Invalid("malformed token".into()))?;
                if header.alg != self.algorithm {
                    return Err(AuthError::Invalid(WRONG_ALGORITHM.into()));
                }
                fetched = set.key(header.kid.as_deref()).await.map_err(|m| {
                    AuthError::Invalid(
                        match m {
                            jwks::Missing::UnknownKid => "no key in the JWKS has the token's `kid`",
                            jwks::Missing::NoKid => {
                                "the token has no `kid` and the JWKS has several keys"
                            }
                        }
                        .into(),
                    )
                })?;
                &fetched
            }
        };
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::MissingRequiredClaim(c) => {
                        AuthError::Invalid(format!("the `{c}` claim is required"))
                    }
                    ErrorKind::InvalidAlgorithm => AuthError::Invalid(WRONG_ALGORITHM.into()),
                    ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                    ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer".into()),
                    ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience".into()),
                    ErrorKind::ImmatureSignature => {
                        AuthError::Invalid("the token is not valid yet".into())
                    }
                    ErrorKind::Json(e) => AuthError::Invalid(format!("bad claims: {e}")),
                    _ => AuthError::Invalid("malformed token".into()),
                }
            })?;
        let claims = data.claims;
        if claims.role == Role::Client && claims.job.is_none() {
            return Err(AuthError::Invalid(
                "client tokens must carry a `job` claim".into(),
            ));
        }
        Ok(claims)
    }

    /// Signs a token for `role`, valid for `ttl_secs` from `now`.
    pub fn mint(
        &self,
        role: Role,
        sub: &str,
        job: Option<Uuid>,
        ttl_secs: u64,
        now: DateTime<Utc>,
    ) -> Result<Minted, AuthError> {
        let key = self.encoding.as_ref().ok_or(AuthError::CannotMint)?;
        if role == Role::Client && job.is_none() {
            return Err(AuthError::BadRequest("a client token needs a job".into()));
        }
        let ttl = i64::try_from(ttl_secs)
            .ok()
            .filter(|t| *t > 0 && *t <= 10 * 365 * 86_400)
            .ok_or_else(|| {
                AuthError::BadRequest("ttl must be between 1 second and 10 years".into())
            })?;
        let expires_at = DateTime::from_timestamp(now.timestamp() + ttl, 0).unwrap_or(now);
        let claims = Claims {
            sub: sub.to_owned(),
            role,
            exp: expires_at.timestamp(),
            iat: Some(now.timestamp()),
            job,
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(serde_json::Value::String),
        };
        let mut header = Header::new(self.algorithm);
        header.kid.clone_from(&self.key_id);
        let token = jsonwebtoken::encode(&header, &claims, key)
            .map_err(|e| AuthError::Invalid(format!("signing failed: {e}")))?;
        Ok(Minted { token, expires_at })
    }
}
