//! Prometheus metrics, counted from the committed events themselves (so
//! `/metrics`, the history and `replay` agree) and from the writer's batches.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::domain::{Event, EventBody};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectOutcome {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Code {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HeldAs {
    held: &'static str,
}

pub struct Metrics {
    registry: Registry,
    connections: Gauge,
    connects: Family<ConnectOutcome, Counter>,
    rejected: Family<Reason, Counter>,
    disconnects: Family<Code, Counter>,
    replayed: Counter,
    grace_expiries: Counter,
    events: Family<Kind, Counter>,
    batch_size: Histogram,
    commit_seconds: Histogram,
    failed_commits: Counter,
    refused_at_capacity: Counter,
    rate_limited: Counter,
    jobs_in_memory: Family<HeldAs, Gauge>,
    cache_hits: Counter,
    cache_misses: Counter,
    checkpoint_position: Gauge,
    checkpoint_age: Gauge<f64, AtomicU64>,
    /// When the last checkpoint was made, in Unix milliseconds (0: none).
    checkpoint_at_ms: AtomicI64,
    startup_folded: Gauge,
    lease_checks: Counter,
    fenced: Counter,
    socket_errors: Family<Kind, Counter>,
    lease_held: Gauge,
    clock_offset: Gauge<f64, AtomicU64>,
    sessions: Family<SessionStateLabel, Gauge>,
    most_watchers: Gauge,
    webhook_attempts: Counter,
    webhook_failed_attempts: Counter,
    webhook_outcomes: Family<WebhookOutcome, Counter>,
    webhook_pending: Gauge,
    webhook_oldest: Gauge<f64, AtomicU64>,
    tcp_connections: Gauge,
    connection_ends: Family<ConnectionEndLabel, Counter>,
    removed_units: Family<Kind, Counter>,
    removed_events: Counter,
    archived_bytes: Counter,
    horizon: Gauge,
    log_bytes: Gauge,
    log_free_bytes: Gauge,
    log_growth: Gauge<f64, AtomicU64>,
}

/// Why the server ended a TCP connection before it was useful, or refused
/// it as soon as it was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// Reset at accept: its address had as many connections as it may.
    PerAddress,
    /// Reset at accept: at the connection limit with every connection busy.
    AtCapacity,
    /// Closed to make room: the oldest with no request in progress.
    Shed,
    /// Closed: no complete request head within the header timeout.
    HeaderTimeout,
    /// Answered 408 and closed: the body did not arrive in time.
    BodyTimeout,
}

impl ConnectionEnd {
    fn label(self) -> &'static str {
        match self {
            ConnectionEnd::PerAddress => "per_address",
            ConnectionEnd::AtCapacity => "at_capacity",
            ConnectionEnd::Shed => "shed",
            ConnectionEnd::HeaderTimeout => "header_timeout",
            ConnectionEnd::BodyTimeout => "body_timeout",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionEndLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookOutcome {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionStateLabel {
    state: &'static str,
}

/// What `/metrics` reads off the engine at the moment it is rendered.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    pub connections: usize,
    /// Jobs in memory: (live, cached).
    pub jobs: (usize, usize),
    /// Watchers: (connected, in grace, the most one job has).
    pub watchers: (usize, usize, usize),
    /// Whether this node may serve sockets (holds its lease).
    pub serving: bool,
    /// On a shared log: the database's clock less this node's.
    pub clock_offset: Option<chrono::Duration>,
    /// Webhook notifications pending, and when the oldest became due.
    pub notifications: (usize, Option<chrono::DateTime<chrono::Utc>>),
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Bounds of `rejoin_commit_seconds`, from a fast fsync to a stalled disk.
const COMMIT_BUCKETS: [f64; 15] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0,
];

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            connections: Gauge::default(),
            connects: Family::default(),
            rejected: Family::default(),
            disconnects: Family::default(),
            replayed: Counter::default(),
            grace_expiries: Counter::default(),
            events: Family::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            // 25 ms is a bound of its own: the benchmarks count commits over it.
            commit_seconds: Histogram::new(COMMIT_BUCKETS),
            failed_commits: Counter::default(),
            refused_at_capacity: Counter::default(),
            rate_limited: Counter::default(),
            jobs_in_memory: Family::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            checkpoint_position: Gauge::default(),
            checkpoint_age: Gauge::default(),
            checkpoint_at_ms: AtomicI64::new(0),
            startup_folded: Gauge::default(),
            lease_checks: Counter::default(),
            fenced: Counter::default(),
            socket_errors: Family::default(),
            lease_held: Gauge::default(),
            clock_offset: Gauge::default(),
            sessions: Family::default(),
            most_watchers: Gauge::default(),
            webhook_attempts: Counter::default(),
            webhook_failed_attempts: Counter::default(),
            webhook_outcomes: Family::default(),
            webhook_pending: Gauge::default(),
            webhook_oldest: Gauge::default(),
            tcp_connections: Gauge::default(),
            connection_ends: Family::default(),
            removed_units: Family::default(),
            removed_events: Counter::default(),
            archived_bytes: Counter::default(),
            horizon: Gauge::default(),
            log_bytes: Gauge::default(),
            log_free_bytes: Gauge::default(),
            log_growth: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "rejoin_connections",
            "Open WebSocket connections",
            m.connections.clone(),
        );
        registry.register(
            "rejoin_connects",
            "Socket attach attempts by outcome: fresh, resumed, not_resumed, rejected",
            m.connects.clone(),
        );
        registry.register(
            "rejoin_connect_rejected",
            "Refused upgrade attempts by reason",
            m.rejected.clone(),
        );
        registry.register(
            "rejoin_disconnects",
            "Recorded socket closes by close code",
            m.disconnects.clone(),
        );
        registry.register(
            "rejoin_replayed_events",
            "Job events replayed to reconnecting clients",
            m.replayed.clone(),
        );
        registry.register(
            "rejoin_grace_expiries",
            "Sessions ended by an expired grace window",
            m.grace_expiries.clone(),
        );
        registry.register(
            "rejoin_events_appended",
            "Events appended to the log by kind",
            m.events.clone(),
        );
        registry.register(
            "rejoin_append_batch_size",
            "Events per commit (group commit)",
            m.batch_size.clone(),
        );
        registry.register(
            "rejoin_commit_seconds",
            "Latency of one log commit",
            m.commit_seconds.clone(),
        );
        registry.register(
            "rejoin_failed_commits",
            "Commits that failed (their requests got 503)",
            m.failed_commits.clone(),
        );
        registry.register(
            "rejoin_tcp_connections",
            "TCP connections open, upgraded sockets and streams included",
            m.tcp_connections.clone(),
        );
        registry.register(
            "rejoin_connections_ended_early",
            "TCP connections reset at accept (per_address, at_capacity) or closed before they were useful (shed, header_timeout, body_timeout)",
            m.connection_ends.clone(),
        );
        registry.register(
            "rejoin_refused_at_capacity",
            "Socket upgrades refused with 503 at the connection limit",
            m.refused_at_capacity.clone(),
        );
        registry.register(
            "rejoin_connect_rate_limited",
            "Socket upgrades refused with 429: too many attempts from one address",
            m.rate_limited.clone(),
        );
        registry.register(
            "rejoin_jobs_in_memory",
            "Jobs held in memory: live (not finished, or a session connected or in grace) and cached (recently used finished jobs)",
            m.jobs_in_memory.clone(),
        );
        registry.register(
            "rejoin_job_cache_hits",
            "Finished jobs found in the cache",
            m.cache_hits.clone(),
        );
        registry.register(
            "rejoin_job_cache_misses",
            "Jobs not held in memory, read back from the log by index",
            m.cache_misses.clone(),
        );
        registry.register(
            "rejoin_checkpoint_position",
            "Log position of the newest checkpoint this server wrote or started from (0: none)",
            m.checkpoint_position.clone(),
        );
        registry.register(
            "rejoin_checkpoint_age_seconds",
            "Seconds since that checkpoint was made (0: none)",
            m.checkpoint_age.clone(),
        );
        registry.register(
            "rejoin_startup_events_folded",
            "Events folded at start-up after the checkpoint (the whole log without one)",
            m.startup_folded.clone(),
        );
        registry.register(
            "rejoin_lease_checks",
            "On a shared log: rounds in which this node renewed its lease and looked for nodes whose leases ran out",
            m.lease_checks.clone(),
        );
        registry.register(
            "rejoin_socket_errors",
            "Socket errors (recorded as ws_error) by kind: protocol, utf8, io, other",
            m.socket_errors.clone(),
        );
        registry.register(
            "rejoin_fenced",
            "On a shared log: times this node lost its lease and closed every socket it held",
            m.fenced.clone(),
        );
        registry.register(
            "rejoin_lease_held",
            "1 while this node may serve sockets: always on a log of one; on a shared log, while it holds its lease",
            m.lease_held.clone(),
        );
        registry.register(
            "rejoin_clock_offset_seconds",
            "On a shared log: the database's clock less this node's, as last measured (deadlines are on the database's)",
            m.clock_offset.clone(),
        );
        registry.register(
            "rejoin_sessions",
            "Sessions that have not ended (watchers), by state: connected or grace",
            m.sessions.clone(),
        );
        registry.register(
            "rejoin_watchers_max",
            "The most watchers any one job has now",
            m.most_watchers.clone(),
        );
        registry.register(
            "rejoin_webhook_attempts",
            "Webhook attempts this node claimed and made",
            m.webhook_attempts.clone(),
        );
        registry.register(
            "rejoin_webhook_failed_attempts",
            "Webhook attempts that failed (an answer other than 2xx or 410, a timeout, a refused connection)",
            m.webhook_failed_attempts.clone(),
        );
        registry.register(
            "rejoin_webhook_deliveries",
            "Webhook notifications settled by this node, by outcome: delivered, gone (410) or expired (max age)",
            m.webhook_outcomes.clone(),
        );
        registry.register(
            "rejoin_webhook_pending",
            "Webhook notifications not yet delivered or abandoned",
            m.webhook_pending.clone(),
        );
        registry.register(
            "rejoin_webhook_oldest_pending_seconds",
            "Seconds since the oldest pending webhook notification became due (0: none)",
            m.webhook_oldest.clone(),
        );
        registry.register(
            "rejoin_retention_removed_units",
            "Units retention removed from the log, by kind: job or stream",
            m.removed_units.clone(),
        );
        registry.register(
            "rejoin_retention_removed_events",
            "Events retention removed from the log (with their units)",
            m.removed_events.clone(),
        );
        registry.register(
            "rejoin_archive_written_bytes",
            "Bytes retention wrote to the archive (data and heads files)",
            m.archived_bytes.clone(),
        );
        registry.register(
            "rejoin_retention_horizon_position",
            "The last position retention removed: every event after it is in the log (0: nothing removed)",
            m.horizon.clone(),
        );
        registry.register(
            "rejoin_log_bytes",
            "The log's size on disk (SQLite: the database file; PostgreSQL: the events table and its indexes)",
            m.log_bytes.clone(),
        );
        registry.register(
            "rejoin_log_free_bytes",
            "Of the log's size, bytes freed by retention and reused by new events (SQLite)",
            m.log_free_bytes.clone(),
        );
        registry.register(
            "rejoin_log_growth_bytes_per_hour",
            "How fast the log's used bytes grew over the last hour with retention on (negative: shrinking)",
            m.log_growth.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts one committed event.
    pub fn observe(&self, event: &Event) {
        let kind = event.body.kind();
        self.events
            .get_or_create(&Kind {
                kind: kind.to_owned(),
            })
            .inc();
        let outcome = |o: &str| {
            self.connects
                .get_or_create(&ConnectOutcome {
                    outcome: o.to_owned(),
                })
                .inc();
        };
        match &event.body {
            EventBody::Connected(_) => outcome("fresh"),
            EventBody::Reconnected(r) => {
                outcome(if r.resumed { "resumed" } else { "not_resumed" });
                self.replayed.inc_by(r.missed);
            }
            EventBody::ConnectRejected(r) => {
                outcome("rejected");
                self.rejected
                    .get_or_create(&Reason {
                        reason: r.code.clone(),
                    })
                    .inc_by(1 + r.suppressed);
            }
            EventBody::Disconnected(d) => {
                self.disconnects
                    .get_or_create(&Code {
                        code: d.code.to_string(),
                    })
                    .inc();
            }
            EventBody::GraceExpired(_) => {
                self.grace_expiries.inc();
            }
            EventBody::NotificationAttempt(_) => {
                self.webhook_attempts.inc();
            }
            EventBody::NotificationRetry(_) => {
                self.webhook_failed_attempts.inc();
            }
            EventBody::NotificationDelivered(_) => self.webhook_outcome("delivered"),
            EventBody::NotificationAbandoned(a) => {
                // An expiry after a failed attempt settles that attempt too.
                if a.error.is_some() && a.reason == "expired" && a.attempts > 0 {
                    self.webhook_failed_attempts.inc();
                }
                self.webhook_outcome(&a.reason);
            }
            _ => {}
        }
    }

    /// Counts what one retention batch removed.
    pub fn observe_removed(&self, jobs: u64, streams: u64, events: u64) {
        for (kind, n) in [("job", jobs), ("stream", streams)] {
            self.removed_units
                .get_or_create(&Kind {
                    kind: kind.to_owned(),
                })
                .inc_by(n);
        }
        self.removed_events.inc_by(events);
    }

    pub fn observe_horizon(&self, position: i64) {
        self.horizon.set(position);
    }

    pub fn observe_archived(&self, bytes: u64) {
        self.archived_bytes.inc_by(bytes);
    }

    pub fn observe_log_size(&self, bytes: u64, free_bytes: u64) {
        self.log_bytes.set(bytes.min(i64::MAX as u64) as i64);
        self.log_free_bytes
            .set(free_bytes.min(i64::MAX as u64) as i64);
    }

    pub fn observe_log_growth(&self, bytes_per_hour: f64) {
        self.log_growth.set(bytes_per_hour);
    }

    pub fn observe_commit(&self, events: usize, seconds: f64) {
        self.batch_size.observe(events as f64);
        self.commit_seconds.observe(seconds);
    }

    /// Counts a refusal at the connection limit; returns the total so far.
    /// Counts one upgrade refused by the per-address rate limit.
    pub fn observe_rate_limited(&self) {
        self.rate_limited.inc();
    }

    /// Counts a connection ended early; returns the total for its reason.
    pub fn observe_connection_end(&self, end: ConnectionEnd) -> u64 {
        self.connection_ends
            .get_or_create(&ConnectionEndLabel {
                reason: end.label(),
            })
            .inc()
            + 1
    }

    pub fn set_tcp_connections(&self, open: usize) {
        self.tcp_connections.set(open as i64);
    }

    pub fn observe_refused_at_capacity(&self) -> u64 {
        self.refused_at_capacity.inc() + 1
    }

    pub fn observe_failed_commit(&self) {
        self.failed_commits.inc();
    }

    /// A finished job found in the cache (live jobs are always held, and
    /// not counted).
    pub fn observe_cache_hit(&self) {
        self.cache_hits.inc();
    }

    /// A job read back from the log.
    pub fn observe_job_loaded(&self) {
        self.cache_misses.inc();
    }

    pub fn observe_checkpoint(&self, header: &crate::log::CheckpointHeader) {
        self.checkpoint_position.set(header.position);
        if let Ok(at) = crate::domain::event::parse_time(&header.created_at) {
            self.checkpoint_at_ms
                .store(at.timestamp_millis(), Ordering::Relaxed);
        }
    }

    /// A round of the lease keeper completed (lease renewed, dead nodes'
    /// sessions recorded).
    pub fn observe_lease_check(&self) {
        self.lease_checks.inc();
    }

    /// A socket error of `kind` was observed.
    pub fn observe_socket_error(&self, kind: &str) {
        self.socket_errors
            .get_or_create(&Kind {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// This node fenced itself.
    pub fn observe_fenced(&self) {
        self.fenced.inc();
    }

    fn webhook_outcome(&self, outcome: &str) {
        self.webhook_outcomes
            .get_or_create(&WebhookOutcome {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn observe_startup(&self, folded: u64) {
        self.startup_folded.set(folded as i64);
    }

    /// The text exposition, with the live connection count and the jobs in
    /// memory as of `now`.
    pub fn render(&self, now_state: Snapshot, now: chrono::DateTime<chrono::Utc>) -> String {
        let Snapshot {
            connections,
            jobs: (live, cached),
            watchers: (connected, grace, most),
            serving,
            clock_offset,
            notifications: (pending, oldest),
        } = now_state;
        self.webhook_pending.set(pending as i64);
        self.webhook_oldest.set(oldest.map_or(0.0, |at| {
            (now - at).num_milliseconds().max(0) as f64 / 1000.0
        }));
        self.lease_held.set(i64::from(serving));
        if let Some(offset) = clock_offset {
            self.clock_offset
                .set(offset.num_microseconds().unwrap_or(0) as f64 / 1e6);
        }
        self.connections.set(connections as i64);
        for (state, n) in [("connected", connected), ("grace", grace)] {
            self.sessions
                .get_or_create(&SessionStateLabel { state })
                .set(n as i64);
        }
        self.most_watchers.set(most as i64);
        for (held, n) in [("live", live), ("cached", cached)] {
            self.jobs_in_memory
                .get_or_create(&HeldAs { held })
                .set(n as i64);
        }
        let at = self.checkpoint_at_ms.load(Ordering::Relaxed);
        if at > 0 {
            let age = (now.timestamp_millis() - at).max(0) as f64 / 1000.0;
            self.checkpoint_age.set(age);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
