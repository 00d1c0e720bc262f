//! `rejoin config`: the settings `rejoin serve` would run with, read the same
//! way (flags, then `REJOIN_*` variables, then defaults), each with where it
//! came from. Secrets print as `[redacted]`; derived defaults (the
//! connection limit) as the value they come to on this machine.

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::CommandFactory;
use serde_json::{json, Map, Value};

use crate::config::{Cli, ConfigArgs};

/// Settings whose values are never printed.
const SECRETS: [&str; 2] = ["jwt_secret", "webhook_secret"];

pub fn run(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    // The parsed arguments do not say where a value came from: read the
    // command line again for that.
    let command = Cli::command();
    let matches = command.clone().get_matches();
    let (_, sub) = matches
        .subcommand()
        .ok_or_else(|| anyhow::anyhow!("`rejoin config` expected"))?;
    let config = command
        .find_subcommand("config")
        .expect("the config subcommand exists");
    let mut settings = Map::new();
    // Derived defaults, shown as the values they come to here.
    let defaults = crate::app::ConnectionLimits::from_flags(None, None, None).ok();
    let data_dir = sub
        .get_one::<std::path::PathBuf>("data_dir")
        .cloned()
        .unwrap_or_default();
    for arg in config.get_arguments() {
        let id = arg.get_id().as_str();
        if arg.is_hide_set() || id == "json" || id == "help" {
            continue;
        }
        let source = match sub.value_source(id) {
            Some(ValueSource::CommandLine) => "command line".to_owned(),
            Some(ValueSource::EnvVariable) => format!(
                "environment {}",
                arg.get_env()
                    .map(|e| e.to_string_lossy())
                    .unwrap_or_default()
            ),
            Some(ValueSource::DefaultValue) => "default".to_owned(),
            _ => "unset".to_owned(),
        };
        let raw: Vec<String> = sub
            .get_raw(id)
            .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let value = if raw.is_empty() {
            Value::Null
        } else if SECRETS.contains(&id) {
            "[redacted]".into()
        } else if arg.get_num_args().is_some_and(|n| n.max_values() > 1)
            || matches!(arg.get_action(), clap::ArgAction::Append)
        {
            raw.into()
        } else {
            raw.join(",").into()
        };
        let value = match (id, value) {
            ("database_url", Value::Null) => {
                json!(crate::config::default_database_url(&data_dir))
            }
            ("max_connections", Value::Null) => json!(defaults.map(|l| l.sockets)),
            ("max_tcp_connections", Value::Null) => json!(defaults.map(|l| l.tcp)),
            ("max_connections_per_address", Value::Null) => {
                json!(defaults.map(|l| l.per_address))
            }
            ("database_url" | "webhook_url" | "jwt_jwks_url", Value::String(url)) => {
                without_password(&url).into()
            }
            (_, value) => value,
        };
        let source = match (id, source.as_str()) {
            ("database_url", "unset") => "default (rejoin.db in --data-dir)".to_owned(),
            ("max_connections", "unset") => "default (TCP connections less 192)".to_owned(),
            ("max_tcp_connections", "unset") => "default (open-file limit less 64)".to_owned(),
            ("max_connections_per_address", "unset") => {
                "default (an eighth of the TCP connections)".to_owned()
            }
            _ => source,
        };
        settings.insert(
            format!("--{}", arg.get_long().unwrap_or(id)),
            json!({"value": value, "source": source}),
        );
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&Value::Object(settings))?
        );
    } else {
        let width = settings.keys().map(String::len).max().unwrap_or(0);
        for (name, setting) in &settings {
            let value = match &setting["value"] {
                Value::Null => "(none)".to_owned(),
                Value::String(s) => s.clone(),
                Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            println!(
                "{name:width$}  {value}  ({})",
                setting["source"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A URL with any password (`user:PASSWORD@`, `?password=`) redacted.
fn without_password(raw: &str) -> String {
    let Ok(mut url) = reqwest::Url::parse(raw) else {
        return raw.to_owned();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("[redacted]"));
    }
    let secret = |k: &str| {
        let k = k.to_ascii_lowercase();
        k.contains("password") || k.contains("secret") || k.contains("token") || k == "sig"
    };
    if url.query_pairs().any(|(k, _)| secret(&k)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret(&k) {
                    "[redacted]".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            without_password("postgres://rejoin:hunter2@db:5432/rejoin"),
            "postgres://rejoin:%5Bredacted%5D@db:5432/rejoin"
        );
        assert_eq!(
            without_password("postgres://db/rejoin?user=r&password=hunter2"),
            "postgres://db/rejoin?user=r&password=%5Bredacted%5D"
        );
        assert_eq!(
            without_password("sqlite://sqlite/rejoin.db"),
            "sqlite://sqlite/rejoin.db"
        );
        assert_eq!(without_password("sqlite/rejoin.db"), "sqlite/rejoin.db");
    }
}
