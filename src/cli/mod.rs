//! The command-line subcommands. Each is a thin shell over the library.

mod checkpoint;
mod config;
pub mod history;
mod jobs;
pub mod logs;
mod replay;
mod serve;
mod token;
mod verify;
mod watch;

use std::process::ExitCode;

use crate::config::{Cli, CliCommand};

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        CliCommand::Serve(args) => serve::run(*args).await,
        CliCommand::Config(args) => config::run(*args),
        CliCommand::Token(args) => token::run(args).await,
        CliCommand::Verify(args) => verify::run(args).await,
        CliCommand::History(args) => history::run(args).await,
        CliCommand::Jobs(args) => jobs::run(args).await,
        CliCommand::Replay(args) => replay::run(args).await,
        CliCommand::Checkpoint(args) => checkpoint::run(args).await,
        CliCommand::Watch(args) => watch::run(args).await,
    }
}

/// Opens a log that must already exist (the read-only commands never create
/// one by accident).
pub async fn open_existing(url: &str) -> anyhow::Result<crate::log::Log> {
    if let Some(path) = crate::log::sqlite::database_path(url) {
        anyhow::ensure!(path.exists(), "no database at {}", path.display());
    }
    Ok(crate::log::open(url).await?)
}
