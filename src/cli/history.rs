use std::fmt::Write as _;
use std::process::ExitCode;

use crate::config::HistoryArgs;
use crate::domain::history::{Entry, History};
use crate::domain::JobState;

pub async fn run(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_existing(&args.database.url()).await?;
    let found = crate::engine::history(store.events.as_ref(), args.job, chrono::Utc::now()).await?;
    store.events.close().await;
    let (state, history) =
        found.ok_or_else(|| anyhow::anyhow!("no job {} in this log", args.job))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&history)?);
    } else {
        print!("{}", render(&state, &history));
    }
    Ok(ExitCode::SUCCESS)
}

fn duration(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// One line per event, as a person reads it.
pub fn describe(e: &Entry) -> String {
    let d = &e.details;
    let s = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
    let n = |k: &str| d.get(k).map_or("-".to_owned(), |v| v.to_string());
    match e.kind {
        "connected" => format!("connected at lastSeq {}", n("lastSeq")),
        "reconnected" => {
            let how = if d["resumed"] == true {
                "resumed the session"
            } else {
                "came back after the session ended: new session"
            };
            let gap = d
                .get("gapMs")
                .and_then(|g| g.as_i64())
                .map(|g| format!(" after {}", duration(g)))
                .unwrap_or_default();
            format!(
                "{how}{gap}; client lastSeq {}, replayed {} missed events",
                n("clientLastSeq"),
                n("missed")
            )
        }
        "disconnected" => match d.get("graceUntil").and_then(|g| g.as_str()) {
            Some(until) => format!("closed {} {}; grace until {until}", n("code"), s("reason")),
            // A close after the job's end ends the session: no grace window.
            None => format!("closed {} {}; the session ended", n("code"), s("reason")),
        },
        "replaced" => format!(
            "socket closed {} {}: another connection took over",
            n("code"),
            s("reason")
        ),
        "ws_error" => format!("socket error: {}", s("message")),
        "grace_expired" => format!("grace expired at {}", s("graceUntil")),
        "connect_rejected" => format!(
            "refused {} {}{}",
            n("status"),
            s("code"),
            match d.get("suppressed").and_then(|v| v.as_u64()) {
                Some(k) if k > 0 => format!(" (+{k} more)"),
                _ => String::new(),
            }
        ),
        "notification_due" => format!(
            "{} notification due ({}); abandoned after {}",
            s("type"),
            s("reason"),
            s("expiresAt")
        ),
        "notification_attempt" => format!("attempt {} sent", n("attempt")),
        "notification_retry" => format!(
            "attempt {} failed: {}; next at {}",
            n("attempt"),
            s("error"),
            s("retryAt")
        ),
        "notification_delivered" => {
            format!("delivered: {} to attempt {}", n("status"), n("attempt"))
        }
        "notification_abandoned" => format!(
            "abandoned ({}) after {} attempt(s)",
            s("reason"),
            n("attempts")
        ),
        other => format!("{other} {d}"),
    }
}

/// One entry of the timeline, with its time and seq.
fn line(e: &Entry) -> String {
    format!(
        "  {}  #{:<6} {:<16} {}\n",
        e.at.format("%Y-%m-%d %H:%M:%S%.3f"),
        e.seq,
        e.kind,
        describe(e)
    )
}

pub fn render(job: &JobState, h: &History) -> String {
    let t = &h.totals;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "job {}: {}, {}%, last seq {}",
        job.job_id,
        job.status.as_str(),
        job.progress,
        job.last_seq
    );
    let _ = writeln!(
        out,
        "sessions {} | connects {} | reconnects {} ({} resumed) | disconnects {} ({} heartbeat timeouts) | replaced {} | errors {} | rejected {} | grace expiries {}",
        t.sessions, t.connects, t.reconnects, t.resumed, t.disconnects, t.heartbeat_timeouts, t.replaced, t.errors, t.rejected, t.grace_expiries
    );
    let _ = writeln!(
        out,
        "time connected {} | disconnected {} | events replayed {}",
        duration(t.connected_ms),
        duration(t.disconnected_ms),
        t.replayed
    );
    for (i, s) in h.sessions.iter().enumerate() {
        let state = serde_json::to_value(s.state).unwrap_or_default();
        let _ = writeln!(
            out,
            "\nsession {} {}: {}{}, {} socket(s), connected {}, disconnected {}, replayed {}",
            i + 1,
            s.session_id,
            state.as_str().unwrap_or(""),
            s.end_reason.map(|r| format!(" ({r})")).unwrap_or_default(),
            s.sockets,
            duration(s.connected_ms),
            duration(s.disconnected_ms),
            s.replayed
        );
        for e in &s.events {
            out.push_str(&line(e));
        }
    }
    for n in &h.notifications {
        let state = serde_json::to_value(n.state).unwrap_or_default();
        let when = match (n.notified_at, n.abandoned_at) {
            (Some(at), _) => format!(", notified at {}", at.format("%Y-%m-%d %H:%M:%S%.3f")),
            (None, Some(at)) => format!(", abandoned at {}", at.format("%Y-%m-%d %H:%M:%S%.3f")),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "\nnotification {} {}: {}{}, {} attempt(s)",
            n.kind,
            n.id,
            state.as_str().unwrap_or(""),
            when,
            n.attempts
        );
        for e in &n.events {
            out.push_str(&line(e));
        }
    }
    if !h.rejected.is_empty() {
        let _ = writeln!(out, "\nrefused attempts");
        for e in &h.rejected {
            out.push_str(&line(e));
        }
    }
    out
}
