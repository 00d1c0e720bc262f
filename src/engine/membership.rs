//! Several nodes on one shared log: the follower that reads what other
//! nodes append (for the writer to absorb), and the lease each node keeps:
//! by it the others find a node that died or stalled with sockets open, and
//! a node that lost it stops speaking for its sessions (see `lease.rs`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::hub::{CloseReason, Hub};
use super::jobs::JobTable;
use super::lease::Lease;
use super::queue::{Closes, SocketRef};
use super::writer;
use crate::clock::Corrected;
use crate::domain::SessionPhase;
use crate::log::{EventLog, Membership, Pages};
use crate::metrics::Metrics;

/// What keeping a lease needs of the engine: the lease itself, the state
/// to find lost sessions in, the sockets to close when fenced, and the way
/// to record closes.
pub(super) struct Member {
    pub members: Arc<dyn Membership>,
    pub lease: Arc<Lease>,
    pub jobs: Arc<Mutex<JobTable>>,
    pub hub: Arc<Hub>,
    pub closes: Closes,
    pub metrics: Arc<Metrics>,
}

impl Member {
    fn fence(&self, why: &str) {
        fence(&self.lease, &self.hub, &self.metrics, why);
    }
}

/// Stops speaking for this node's sessions: retires its lease and closes
/// every socket it holds (1012, reconnect), so that no other node acts on
/// them while this one still does. The first call does it.
pub(super) fn fence(lease: &Lease, hub: &Hub, metrics: &Metrics, why: &str) {
    if lease.fence() {
        let sockets = hub.close_every(CloseReason::Fenced);
        metrics.observe_fenced();
        tracing::error!(
            sockets,
            "fenced: {why}; closing every socket and taking a new lease"
        );
    }
}

/// Takes a new lease under a fresh node id, and sets the node's clock to
/// the database's (measured around the request). Returns the id.
pub(super) async fn take(
    members: &dyn Membership,
    lease: &Lease,
    clock: &Corrected,
    ttl: Duration,
) -> Result<Arc<str>, crate::log::StoreError> {
    let id: Arc<str> = uuid::Uuid::new_v4().to_string().into();
    let sent = Instant::now();
    let before = clock.local();
    let db_now = members.take_lease(&id, ttl).await?;
    clock.observe(before, db_now, clock.local());
    lease.granted(id.clone(), sent, ttl);
    Ok(id)
}

/// How often a follower reads the log when no notification came.
const FOLLOW_POLL: Duration = Duration::from_secs(1);

/// Events a follower reads at a time.
const FOLLOW_PAGE: u32 = 1000;

/// Follows a shared log from `cursor`: reads what was appended after it
/// (woken by the store's notifications, and every [`FOLLOW_POLL`] in case one
/// was missed) and hands the writer what other nodes appended, skipping what
/// this node's writer recorded as its own, until `shutdown`.
pub(super) async fn follow(
    events: Arc<dyn EventLog>,
    members: Arc<dyn Membership>,
    mut cursor: i64,
    (absorb, own): (mpsc::Sender<writer::Absorbed>, Arc<writer::OwnAppends>),
    shutdown: CancellationToken,
) {
    let mut listener = None;
    loop {
        if listener.is_none() {
            listener = match members.listen().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for other nodes' appends; polling");
                    None
                }
            };
        }
        loop {
            // The positions first: when every one is this node's own, the
            // follower moves past them without reading the events back.
            let mut mine = match members.positions_after(cursor, FOLLOW_PAGE).await {
                Ok(positions) => match positions.last() {
                    None => break,
                    Some(&last) => {
                        let mine = own.take_through(last);
                        if positions.iter().all(|p| mine.contains(p)) {
                            cursor = last;
                            if absorb.send((Vec::new(), cursor)).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        mine
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the shared log");
                    break;
                }
            };
            let mut page = Pages::log(events.as_ref(), cursor).page_size(FOLLOW_PAGE);
            match page.next().await {
                Ok(None) => break,
                Ok(Some(rows)) => {
                    cursor = page.cursor();
                    mine.append(&mut own.take_through(cursor));
                    // The one exception to the undecodable-row policy (see
                    // log/pages.rs): an event another node wrote that this
                    // build cannot decode is logged and skipped.
                    let events = rows
                        .iter()
                        .filter(|r| !mine.contains(&r.position))
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

/// On a shared log: keeps this node's lease and acts on what it shows.
///
/// - Renews the lease four times per lease period, measuring the database's
///   clock each time. A renewal the database refuses (the lease ran out), or
///   no renewal before the lease's deadline on the monotonic clock, fences
///   the node: it closes every socket it holds (1012) and retires its id.
///   It then takes a new lease, under a new id, as soon as the database
///   answers.
/// - While it holds its lease, records as disconnected (1012) the sessions
///   held by nodes whose leases ran out (a node that died, stalled or was cut
///   off with sockets open), and the sessions of its own that the log shows
///   connected with no socket here for two rounds running (their close could
///   not be recorded while the log was unavailable). Each is decided against
///   the log, so it is written once whichever node gets there.
///
/// Gives the lease up at shutdown.
pub(super) async fn keep_lease(
    engine: Member,
    clock: Arc<Corrected>,
    ttl: Duration,
    shutdown: CancellationToken,
) {
    let members = engine.members.clone();
    let lease = engine.lease.clone();
    let mut tick = tokio::time::interval(ttl / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut suspects = HashSet::new();
    loop {
        let deadline = lease.deadline();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = async { tokio::time::sleep_until(deadline?.into()).await; Some(()) }, if deadline.is_some() => {
                engine.fence("its lease was not renewed before it ran out");
                continue;
            }
            _ = tick.tick() => {}
        }
        let Some(id) = lease.held_id().filter(|_| lease.holds()) else {
            match take(members.as_ref(), &lease, &clock, ttl).await {
                Ok(id) => tracing::info!(node = %id, "took a new lease on the shared log"),
                Err(e) => tracing::warn!(error = %e, "cannot take a lease on the shared log"),
            }
            continue;
        };
        let sent = Instant::now();
        let before = clock.local();
        match members.renew_lease(&id, ttl).await {
            Ok(Some(db_now)) => {
                clock.observe(before, db_now, clock.local());
                lease.renewed(sent, ttl);
            }
            Ok(None) => {
                engine.fence("the database says its lease ran out");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew this node's lease");
                continue;
            }
        }
        let live = match members.live_nodes().await {
            Ok(live) => live,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the nodes' leases");
                continue;
            }
        };
        if !lease.holds() {
            continue;
        }
        let (lost, unrecorded) = lost_sessions(&engine, &id, &live, &mut suspects);
        if !lost.is_empty() {
            tracing::warn!(
                sessions = lost.len(),
                "recording sessions of nodes whose leases ran out as disconnected (1012)"
            );
        }
        if !unrecorded.is_empty() {
            tracing::warn!(
                sessions = unrecorded.len(),
                "recording closes that could not be recorded when they happened"
            );
        }
        let recorded = engine
            .closes
            .record_lost(lost)
            .await
            .and(engine.closes.record_unrecorded(unrecorded).await);
        match recorded {
            Ok(()) => engine.metrics.observe_lease_check(),
            Err(e) => tracing::warn!(error = %e, "cannot record a lost node's sessions"),
        }
    }
    if let Some(id) = lease.node() {
        if let Err(e) = members.end_lease(&id).await {
            tracing::warn!(error = %e, "cannot give up this node's lease");
        }
    }
}

/// The sessions the log shows connected on nodes whose leases ran out; and
/// those it shows connected on this node (`id`) without a socket here, both
/// now and at the last round (`suspects`, updated): a socket attaching or
/// closing right now is never taken for one.
fn lost_sessions(
    engine: &Member,
    id: &str,
    live: &[String],
    suspects: &mut HashSet<SocketRef>,
) -> (Vec<SocketRef>, Vec<SocketRef>) {
    let mut lost = Vec::new();
    let mut orphans = HashSet::new();
    {
        let table = engine.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let connected = table
            .live()
            .flat_map(|job| job.watchers.iter().map(move |s| (job.job_id, s)))
            .filter(|(_, s)| s.phase == SessionPhase::Connected);
        for (job_id, s) in connected {
            let Some(held_by) = s.node.as_deref() else {
                continue;
            };
            let session = (job_id, s.session_id, s.sockets);
            if held_by == id {
                orphans.insert(session);
            } else if !live.iter().any(|n| n == held_by) {
                lost.push(session);
            }
        }
    }
    orphans.retain(|(job, session, _)| !engine.hub.holds(*job, *session));
    let unrecorded = orphans.intersection(suspects).copied().collect();
    *suspects = orphans;
    (lost, unrecorded)
}
