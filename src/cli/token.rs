use std::process::ExitCode;

use crate::auth::{Authority, Role, SecretHome};
use crate::clock::{Clock, SystemClock};
use crate::config::TokenArgs;

pub async fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.role != Role::Client || args.job.is_some(),
        "--role client needs --job JOB_ID"
    );
    // The key `serve` uses: never a new one.
    let secret_dir = args.database.secret_dir();
    let auth = Authority::from_args(&args.jwt, secret_dir.as_deref().map(SecretHome::Find)).await?;
    let sub = args
        .sub
        .clone()
        .unwrap_or_else(|| format!("rejoin-cli:{}", args.role.as_str()));
    let minted = auth.mint(args.role, &sub, args.job, args.ttl, SystemClock.now())?;
    println!("{}", minted.token);
    Ok(ExitCode::SUCCESS)
}
