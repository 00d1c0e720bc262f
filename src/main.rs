use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = rejoin::config::Cli::parse();
    match rejoin::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rejoin: {e:#}");
            ExitCode::FAILURE
        }
    }
}
