//! The token settings: part of `rejoin serve`'s command line (flattened into
//! it by `config.rs`), owned here so auth depends on nothing above it.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::Secret;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum JwtAlgorithm {
    #[value(name = "HS256")]
    Hs256,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "ES256")]
    Es256,
    #[value(name = "EdDSA")]
    EdDsa,
}

#[derive(Clone, Debug, Args)]
pub struct JwtArgs {
    /// The algorithm every token must use; never taken from the token.
    #[arg(
        long,
        env = "REJOIN_JWT_ALGORITHM",
        value_enum,
        default_value = "HS256"
    )]
    pub jwt_algorithm: JwtAlgorithm,
    /// HS256 shared secret (at least 16 bytes). Without it, a random secret is
    /// generated once and kept in `jwt-secret` beside the SQLite database.
    /// Prefer `--jwt-secret-file` or the environment variable: a command
    /// line is visible to every local user (`ps`).
    #[arg(
        long,
        env = "REJOIN_JWT_SECRET",
        hide_env_values = true,
        conflicts_with = "jwt_secret_file"
    )]
    pub jwt_secret: Option<Secret>,
    /// A file holding the HS256 secret (surrounding whitespace is ignored),
    /// such as a mounted container or systemd credential.
    #[arg(long, env = "REJOIN_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM public key that verifies RS256/ES256/EdDSA tokens minted elsewhere.
    #[arg(long, env = "REJOIN_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// PEM private key, to mint client tokens with RS256/ES256/EdDSA. Without
    /// it such a server verifies tokens but mints none. Prefer EdDSA or
    /// ES256 for minting (docs/SECURITY.md).
    #[arg(long, env = "REJOIN_JWT_PRIVATE_KEY")]
    pub jwt_private_key: Option<PathBuf>,
    /// An identity provider's JWKS URL (`https://idp.example.com/.well-known/jwks.json`)
    /// to verify RS256/ES256/EdDSA tokens with, instead of --jwt-public-key:
    /// fetched at start (a failure stops the start), refreshed periodically
    /// and when a token names an unknown `kid`. Keys are chosen by `kid`;
    /// the algorithm stays --jwt-algorithm's.
    #[arg(long, env = "REJOIN_JWT_JWKS_URL", conflicts_with = "jwt_public_key")]
    pub jwt_jwks_url: Option<String>,
    /// Seconds between scheduled JWKS refreshes.
    #[arg(long, env = "REJOIN_JWT_JWKS_REFRESH_SECS", default_value_t = 300)]
    pub jwt_jwks_refresh_secs: u64,
    /// Least seconds between refreshes caused by unknown `kid`s, so tokens
    /// with made-up key ids cannot make the server hammer the JWKS.
    #[arg(long, env = "REJOIN_JWT_JWKS_COOLDOWN_SECS", default_value_t = 10)]
    pub jwt_jwks_cooldown_secs: u64,
    /// The `kid` header of tokens this server mints with --jwt-private-key
    /// (needed with --jwt-jwks-url: the JWKS must publish its public key).
    #[arg(long, env = "REJOIN_JWT_KEY_ID")]
    pub jwt_key_id: Option<String>,
    /// Required `iss` claim, when set.
    #[arg(long, env = "REJOIN_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    #[arg(long, env = "REJOIN_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Clock leeway, in seconds, when checking `exp` and `nbf`.
    #[arg(long, env = "REJOIN_JWT_LEEWAY_SECS", default_value_t = 5)]
    pub jwt_leeway_secs: u64,
}
