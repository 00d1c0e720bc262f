//! Keeps the job index (`log/job_index.rs`) folded up to the log: a task
//! that reads the events after the index's position, folds them into the
//! rows of their jobs and writes rows and position in one transaction.
//! Listings catch it up to the head first, so they see every job committed
//! before they were asked.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::log::job_index::{fold, folds};
use crate::log::{IndexRow, Log, StoreError};

/// Events folded per transaction.
const PAGE: u32 = 1000;

/// The least time between two rounds of the index task.
const SPACING: Duration = Duration::from_millis(250);

/// Folds the index forward until it covers position `through` (or the end
/// of the log).
pub async fn catch_up(store: &Log, through: i64) -> Result<(), StoreError> {
    let mut raced = 0;
    loop {
        let from = store.index.job_index_position().await?;
        if from >= through {
            return Ok(());
        }
        let rows = store.events.read_log(from, PAGE).await?;
        let Some(to) = rows.last().map(|r| r.position) else {
            return Ok(());
        };
        // Only the kinds the index folds are decoded. An event that cannot
        // be decoded (its job is set aside) is left out of the index; the
        // index moves past it.
        let events: Vec<_> = rows
            .iter()
            .filter(|r| folds(&r.kind))
            .filter_map(|r| {
                r.decode_stored()
                    .map_err(|e| tracing::warn!(error = %e, "the job index skips an event it cannot decode"))
                    .ok()
            })
            .collect();
        let mut ids: Vec<String> = events.iter().map(|e| e.job_id.to_string()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut held: HashMap<String, IndexRow> = store
            .index
            .job_index_rows(&ids)
            .await?
            .into_iter()
            .map(|r| (r.job_id.clone(), r))
            .collect();
        let changed = fold(&mut held, &events);
        let rows: Vec<IndexRow> = changed.iter().filter_map(|id| held.remove(id)).collect();
        // Another writer (a node on the same log) moved the index first:
        // read the position again and go on from there, a few times.
        if !store.index.write_job_index(&rows, from, to).await? {
            raced += 1;
            if raced > 3 {
                return Ok(());
            }
        }
    }
}

/// The index task: catches up whenever the head moves (at most every
/// [`SPACING`], and every second for what other nodes append), until
/// `shutdown`.
pub(super) async fn run(store: Log, mut head: watch::Receiver<i64>, shutdown: CancellationToken) {
    loop {
        let through = *head.borrow_and_update();
        if let Err(e) = catch_up(&store, through).await {
            tracing::warn!(error = %e, "cannot bring the job index up to date; retrying");
        }
        // At most a few index commits a second under load (each is a
        // durable transaction beside the appends'); a listing catches up by
        // itself anyway.
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(SPACING) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = head.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
