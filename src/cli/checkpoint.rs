//! `rejoin checkpoint`: write a checkpoint of the log's live state now, list
//! the checkpoints, or delete them. Safe beside a running server: the state
//! is folded from the log itself, and checkpoints are derived.

use crate::clock::SystemClock;
use crate::config::CheckpointArgs;
use crate::engine::recover::recover;
use std::process::ExitCode;

pub async fn run(args: CheckpointArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_existing(&args.database.url()).await?;
    if args.list {
        let headers = store.checkpoints.checkpoints().await?;
        if headers.is_empty() {
            println!("no checkpoints");
        }
        for h in headers {
            println!(
                "{}  position {}  {} jobs in {} parts  fold version {}  made {}",
                h.id, h.position, h.jobs, h.parts, h.fold_version, h.created_at
            );
        }
    } else if args.delete {
        store.checkpoints.delete_checkpoints_except(&[]).await?;
        println!("deleted every checkpoint; the next start folds the whole log");
    } else {
        let epoch = store.events.epoch().await?;
        let recovered = recover(&store, &epoch, 0).await?;
        let snapshot = crate::engine::Snapshot {
            position: recovered.position,
            jobs: recovered.table.live().cloned().collect(),
        };
        let header = crate::engine::write_checkpoint(
            &store,
            &epoch,
            snapshot,
            crate::clock::Clock::now(&SystemClock),
        )
        .await?;
        println!(
            "checkpoint {} at position {}: {} live jobs ({} events folded to make it)",
            header.id, header.position, header.jobs, recovered.folded
        );
    }
    store.events.close().await;
    Ok(ExitCode::SUCCESS)
}
