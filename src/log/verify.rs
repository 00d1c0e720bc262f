//! `rejoin verify`: walks every job's hash chain in log order and names the first
//! event that does not match.

use std::collections::HashMap;

use super::chain::event_hash;
use super::pages::Pages;
use super::store::{EventLog, EventRow, StoreError};

/// The first event that breaks its job's chain, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    pub position: i64,
    pub job_id: String,
    pub seq: i64,
    pub problem: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub events: u64,
    pub jobs: u64,
    pub first_broken: Option<Broken>,
}

/// Checks, for every job: seqs run 1, 2, 3, ... and each event's hash is the
/// hash of its content chained to the previous event's hash. Stops at the first
/// event that fails.
pub async fn verify(store: &dyn EventLog) -> Result<Report, StoreError> {
    // job -> (last seq, last hash)
    let mut heads: HashMap<String, (i64, String)> = HashMap::new();
    let mut report = Report::default();
    let mut pages = Pages::log(store, 0);
    while let Some(rows) = pages.next().await? {
        for row in rows {
            report.events += 1;
            let (prev_seq, prev_hash) = heads
                .get(&row.job_id)
                .map(|(s, h)| (*s, h.as_str()))
                .unwrap_or((0, ""));
            if let Some(problem) = check(&row, prev_seq, prev_hash) {
                report.jobs = heads.len() as u64;
                report.first_broken = Some(Broken {
                    position: row.position,
                    job_id: row.job_id,
                    seq: row.seq,
                    problem,
                });
                return Ok(report);
            }
            heads.insert(row.job_id, (row.seq, row.hash));
        }
    }
    report.jobs = heads.len() as u64;
    Ok(report)
}

fn check(row: &EventRow, prev_seq: i64, prev_hash: &str) -> Option<String> {
    if row.seq != prev_seq + 1 {
        return Some(format!(
            "seq {} follows seq {prev_seq} (expected {})",
            row.seq,
            prev_seq + 1
        ));
    }
    let expected = event_hash(prev_hash, row);
    if expected != row.hash {
        return Some(format!(
            "hash {} does not match its content and predecessor (expected {expected})",
            row.hash
        ));
    }
    if let Err(e) = row.decode() {
        return Some(format!("payload does not decode: {e}"));
    }
    None
}
