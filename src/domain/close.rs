//! WebSocket close codes and reasons: those the server sends and those it
//! records in `disconnected` and `replaced` events. The log, the history and
//! the protocol all name them from here.

pub const NORMAL: u16 = 1000;
pub const GOING_AWAY: u16 = 1001;
pub const UNSUPPORTED_DATA: u16 = 1003;
pub const NO_STATUS: u16 = 1005;
pub const ABNORMAL: u16 = 1006;
pub const TOO_BIG: u16 = 1009;
pub const INTERNAL_ERROR: u16 = 1011;
pub const SERVICE_RESTART: u16 = 1012;
pub const TRY_AGAIN_LATER: u16 = 1013;

pub const JOB_FINISHED: &str = "job finished";
pub const SHUTTING_DOWN: &str = "server shutting down";
pub const SEND_QUEUE_FULL: &str = "send queue full";
pub const HEARTBEAT_TIMEOUT: &str = "heartbeat timeout";
pub const CONNECTION_LOST: &str = "connection lost";
pub const BINARY: &str = "binary frames are not supported";
pub const TOO_BIG_REASON: &str = "message too big";
pub const LOG_UNAVAILABLE: &str = "event log unavailable";
pub const DROPPED: &str = "dropped by the server (demo)";
pub const SERVER_RESTART: &str = "server restart";
pub const REPLACED: &str = "Client reconnecting";
/// The node lost its lease on the shared log (or the log shows the session
/// lost): the client reconnects, to any node, and resumes from the log.
pub const FENCED: &str = "server lost its lease; reconnect";
/// A close that could not be recorded when it happened (the log was
/// unavailable), recorded once it was back.
pub const UNRECORDED: &str = "closed while the log was unavailable";

/// Every close frame the server sends, as (code, reason).
pub const SENT: &[(u16, &str)] = &[
    (NORMAL, JOB_FINISHED),
    (NORMAL, REPLACED),
    (GOING_AWAY, SHUTTING_DOWN),
    (UNSUPPORTED_DATA, BINARY),
    (TOO_BIG, TOO_BIG_REASON),
    (INTERNAL_ERROR, LOG_UNAVAILABLE),
    (TRY_AGAIN_LATER, SEND_QUEUE_FULL),
    (SERVICE_RESTART, FENCED),
];

/// Closes the server records but cannot send: the connection is gone.
pub const RECORDED_ONLY: &[(u16, &str)] = &[
    (ABNORMAL, CONNECTION_LOST),
    (ABNORMAL, HEARTBEAT_TIMEOUT),
    (ABNORMAL, DROPPED),
    (SERVICE_RESTART, SERVER_RESTART),
    (ABNORMAL, UNRECORDED),
];
