//! The webhook settings: part of `rejoin serve`'s command line (flattened
//! into it by `config.rs`), owned here so the module depends on nothing above.

use clap::Args;

use crate::auth::Secret;

#[derive(Clone, Debug, Args)]
pub struct WebhookArgs {
    /// Where notifications of jobs that end while nobody watches are POSTed
    /// (http:// or https://). Without it, no notification is due.
    #[arg(long, env = "REJOIN_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// The Standard Webhooks signing secret: `whsec_` followed by the base64
    /// of a 24 to 64 byte key. Without it, one is generated once and kept in
    /// `webhook-secret` beside the SQLite database.
    #[arg(
        long,
        env = "REJOIN_WEBHOOK_SECRET",
        hide_env_values = true,
        conflicts_with = "webhook_secret_file"
    )]
    pub webhook_secret: Option<Secret>,
    /// A file holding the webhook signing secret (surrounding whitespace is
    /// ignored), such as a mounted container or systemd credential.
    #[arg(long, env = "REJOIN_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<std::path::PathBuf>,
    /// Seconds one attempt may take, from connecting to the answer.
    #[arg(long, env = "REJOIN_WEBHOOK_TIMEOUT_SECS", default_value_t = 10.0)]
    pub webhook_timeout_secs: f64,
    /// The first retry comes within this many seconds; each later one within
    /// twice the one before (full jitter), up to --webhook-retry-cap-secs.
    #[arg(long, env = "REJOIN_WEBHOOK_RETRY_BASE_SECS", default_value_t = 1.0)]
    pub webhook_retry_base_secs: f64,
    /// The longest wait between two attempts, in seconds.
    #[arg(long, env = "REJOIN_WEBHOOK_RETRY_CAP_SECS", default_value_t = 300.0)]
    pub webhook_retry_cap_secs: f64,
    /// A notification not delivered this many seconds after it became due is
    /// abandoned (recorded as `notification_abandoned`, `expired`).
    #[arg(long, env = "REJOIN_WEBHOOK_MAX_AGE_SECS", default_value_t = 86_400.0)]
    pub webhook_max_age_secs: f64,
}
