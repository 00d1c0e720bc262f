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
    #[arg(long, env = "REJOIN_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    /// PEM public key that verifies RS256/ES256/EdDSA tokens minted elsewhere.
    #[arg(long, env = "REJOIN_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// PEM private key, to mint client tokens with RS256/ES256/EdDSA. Without
    /// it such a server verifies tokens but mints none.
    #[arg(long, env = "REJOIN_JWT_PRIVATE_KEY")]
    pub jwt_private_key: Option<PathBuf>,
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
