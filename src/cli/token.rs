use std::process::ExitCode;

use crate::auth::{Authority, Role};
use crate::clock::{Clock, SystemClock};
use crate::config::TokenArgs;
use crate::log::sqlite::database_path;

pub async fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.role != Role::Client || args.job.is_some(),
        "--role client needs --job JOB_ID"
    );
    let secret_dir = database_path(&args.database.database_url)
        .map(|p| p.parent().map(|d| d.to_path_buf()).unwrap_or_default());
    let auth = Authority::from_args(&args.jwt, secret_dir.as_deref()).await?;
    let sub = args
        .sub
        .clone()
        .unwrap_or_else(|| format!("rejoin-cli:{}", args.role.as_str()));
    let minted = auth.mint(args.role, &sub, args.job, args.ttl, SystemClock.now())?;
    println!("{}", minted.token);
    Ok(ExitCode::SUCCESS)
}
