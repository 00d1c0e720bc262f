//! `rejoin jobs`: the listing of `GET /v1/jobs` from the command line.

use std::process::ExitCode;

use crate::config::JobsArgs;
use crate::domain::event::format_time;
use crate::http::search::{page, parse_filter};

pub async fn run(args: JobsArgs) -> anyhow::Result<ExitCode> {
    let mut params: Vec<(String, String)> = [
        ("status", args.status),
        ("stalled", args.stalled),
        ("since", args.since),
        ("until", args.until),
        ("after", args.after),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_owned(), v?)))
    .collect();
    params.push(("limit".into(), args.limit.to_string()));
    for m in &args.meta {
        let (k, v) = m
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--meta takes KEY=VALUE, not `{m}`"))?;
        params.push((format!("meta.{k}"), v.to_owned()));
    }
    let filter = parse_filter(&params).map_err(|e| anyhow::anyhow!("{e}"))?;
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
