//! `rejoin jobs`: the listing of `GET /v1/jobs` from the command line.

use std::process::ExitCode;

use crate::config::JobsArgs;
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
    let store = super::open_existing(&args.database.database_url).await?;
    let found = page(store.as_ref(), &filter, i64::MAX).await;
    store.close().await;
    let (rows, next) = found?;
    if args.json {
        let jobs: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "jobId": r.job_id,
                    "status": r.status,
                    "progress": r.progress,
                    "stalled": r.stalled != 0,
                    "createdAt": r.created_at,
                    "lastUpdate": r.last_update,
                    "metadata": r.metadata.as_deref().and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok()),
                })
            })
            .collect();
        let out = serde_json::json!({"jobs": jobs, "nextAfter": next});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for r in &rows {
            let stalled = if r.stalled != 0 { " stalled" } else { "" };
            println!(
                "{}  {:<9} {:>5.1}%{stalled}  created {}  updated {}  {}",
                r.job_id,
                r.status,
                r.progress,
                r.created_at,
                r.last_update,
                r.metadata.as_deref().unwrap_or("")
            );
        }
        match next {
            Some(cursor) => println!("more: --after {cursor}"),
            None => println!("(end of the list)"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
