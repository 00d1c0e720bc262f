//! Several nodes on one shared log: the follower that reads what other
//! nodes append (for the writer to absorb), and the lease each node keeps,
//! by which the others find a node that died with sockets open.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{writer, Engine};
use crate::domain::{JobId, SessionId, SessionPhase};
use crate::log::{LogStore, Pages};

/// On a shared log, this process becomes a node: a fresh id whose lease is
/// taken before any socket can name it. `None` on a log of one.
pub(super) async fn join(
    store: &dyn LogStore,
    lease: Duration,
) -> Result<Option<String>, crate::log::StoreError> {
    if !store.shared() {
        return Ok(None);
    }
    let id = uuid::Uuid::new_v4().to_string();
    store.renew_lease(&id, lease).await?;
    tracing::info!(node = %id, "joined the shared log");
    Ok(Some(id))
}

/// How often a follower reads the log when no notification came.
const FOLLOW_POLL: Duration = Duration::from_secs(1);

/// Follows a shared log from `cursor`: reads what was appended after it
/// (woken by the store's notifications, and every [`FOLLOW_POLL`] in case one
/// was missed) and hands it to the writer, until `shutdown`.
pub(super) async fn follow(
    store: Arc<dyn LogStore>,
    mut cursor: i64,
    absorb: mpsc::Sender<writer::Absorbed>,
    shutdown: CancellationToken,
) {
    let mut listener = None;
    loop {
        if listener.is_none() {
            listener = match store.listen().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for other nodes' appends; polling");
                    None
                }
            };
        }
        loop {
            let mut page = Pages::log(store.as_ref(), cursor).page_size(1000);
            match page.next().await {
                Ok(None) => break,
                Ok(Some(rows)) => {
                    cursor = page.cursor();
                    // The one exception to the undecodable-row policy (see
                    // log/pages.rs): an event another node wrote that this
                    // build cannot decode is logged and skipped.
                    let events = rows
                        .iter()
                        .filter_map(|r| {
                            r.decode_stored()
                                .map_err(|e| tracing::error!(error = %e, "skipping an event another node wrote"))
                                .ok()
                        })
                        .collect();
                    if absorb.send((events, cursor)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the shared log");
                    break;
                }
            }
        }
        let woke = tokio::select! {
            _ = shutdown.cancelled() => return,
            woke = async {
                match listener.as_mut() {
                    Some(l) => tokio::time::timeout(FOLLOW_POLL, l.next()).await.unwrap_or(Ok(())),
                    None => {
                        tokio::time::sleep(FOLLOW_POLL).await;
                        Ok(())
                    }
                }
            } => woke,
        };
        if woke.is_err() {
            listener = None;
        }
    }
}

/// On a shared log: renews this node's lease four times per lease, and
/// records as disconnected (1012) the sessions held by nodes whose leases ran
/// out: a node that died with sockets open. Every node does this; each
/// session's record is decided against the log, so it is written once.
/// Gives the lease up at shutdown.
pub(super) async fn keep_lease(
    engine: Engine,
    node: String,
    lease: Duration,
    shutdown: CancellationToken,
) {
    let store = engine.store().clone();
    let mut tick = tokio::time::interval(lease / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = store.renew_lease(&node, lease).await {
            tracing::warn!(error = %e, "cannot renew this node's lease");
            continue;
        }
        let live = match store.live_nodes().await {
            Ok(live) => live,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the nodes' leases");
                continue;
            }
        };
        let orphaned: Vec<(JobId, SessionId, u32)> = {
            let table = engine.table();
            table
                .live()
                .flat_map(|job| job.watchers.iter().map(move |s| (job.job_id, s)))
                .filter_map(|(job_id, s)| {
                    let held_by = s.node.as_deref()?;
                    (s.phase == SessionPhase::Connected
                        && held_by != node
                        && !live.iter().any(|n| n == held_by))
                    .then_some((job_id, s.session_id, s.sockets))
                })
                .collect()
        };
        if !orphaned.is_empty() {
            tracing::warn!(
                sessions = orphaned.len(),
                "recording sessions of nodes whose leases ran out as disconnected (1012)"
            );
        }
        match engine.record_lost(orphaned).await {
            Ok(()) => engine.metrics().observe_lease_check(),
            Err(e) => tracing::warn!(error = %e, "cannot record a lost node's sessions"),
        }
    }
    if let Err(e) = store.end_lease(&node).await {
        tracing::warn!(error = %e, "cannot give up this node's lease");
    }
}
