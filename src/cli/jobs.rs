//! `rejoin jobs`: the listing of `GET /v1/jobs` from the command line.

use std::process::ExitCode;

use crate::config::JobsArgs;
use crate::domain::event::format_time;
use crate::engine::listing::page;
use crate::log::JobFilter;

pub async fn run(args: JobsArgs) -> anyhow::Result<ExitCode> {
    let filter = JobFilter {
        status: args.status,
        stalled: args.stalled,
        since: args.since.as_ref().map(format_time),
        until: args.until.as_ref().map(format_time),
        meta: args.meta,
        before: args.after,
        limit: args.limit,
    }
    .checked()?;
    let store = super::open_existing(&args.database.url()).await?;
    // Watchers live in a server's memory, not in the log: left out here.
    let found = page(&store, &filter, i64::MAX, |_| None).await;
    store.events.close().await;
    let list = found?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    for j in &list.jobs {
        let stalled = if j.stalled { " stalled" } else { "" };
        println!(
            "{}  {:<9} {:>5.1}%{stalled}  created {}  updated {}  {}",
            j.job_id,
            j.status.as_str(),
            j.progress,
            format_time(&j.created_at),
            format_time(&j.last_update),
            j.metadata
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default()
        );
    }
    match &list.next_after {
        Some(cursor) => println!("more: --after {cursor}"),
        None => println!("(end of the list)"),
    }
    Ok(ExitCode::SUCCESS)
}
