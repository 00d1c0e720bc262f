//! `rejoin verify`: walks every job's hash chain in log order and names the
//! first event that does not match; accounts for what retention removed
//! (each `units_removed` record, on the log's own chain, names the units
//! that left and their heads); and, given an archive, proves each archive
//! file's chains against its heads and against the records that removed
//! them.

use std::collections::{HashMap, HashSet};

use super::archive::Archive;
use super::chain::event_hash;
use super::pages::Pages;
use super::store::{EventLog, EventRow, StoreError};
use crate::domain::event::{RemovedUnit, UnitsRemoved};
use crate::domain::EventBody;

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
    /// Positions below the last that hold no event.
    pub gaps: u64,
    /// Units and events retention removed, by its records.
    pub removed_units: u64,
    pub removed_events: u64,
    /// Each record's archive file and the units it removed into it.
    pub archived: Vec<(String, Vec<RemovedUnit>)>,
    pub first_broken: Option<Broken>,
}

/// Checks, for every job: seqs run 1, 2, 3, ... and each event's hash is the
/// hash of its content chained to the previous event's hash; no event of a
/// unit a `units_removed` record names is left at or before its last
/// position. Stops at the first event that fails.
pub async fn verify(store: &dyn EventLog) -> Result<Report, StoreError> {
    // job -> (last seq, last hash)
    let mut heads: HashMap<String, (i64, String)> = HashMap::new();
    let mut report = Report::default();
    let mut last_position = 0;
    let mut pages = Pages::log(store, 0);
    while let Some(rows) = pages.next().await? {
        for row in rows {
            report.events += 1;
            report.gaps += (row.position - last_position - 1).max(0) as u64;
            last_position = row.position;
            let (prev_seq, prev_hash) = heads
                .get(&row.job_id)
                .map(|(s, h)| (*s, h.as_str()))
                .unwrap_or((0, ""));
            let problem = check(&row, prev_seq, prev_hash).or_else(|| {
                let EventBody::UnitsRemoved(removed) = row.decode().ok()?.body else {
                    return None;
                };
                account(&mut report, &mut heads, &row, removed)
            });
            if let Some(problem) = problem {
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

/// Counts a record's units as removed; a problem if any of them still has
/// events in the log (seen before the record, so held in `heads`).
fn account(
    report: &mut Report,
    heads: &mut HashMap<String, (i64, String)>,
    row: &EventRow,
    removed: UnitsRemoved,
) -> Option<String> {
    for unit in &removed.units {
        let id = unit.id.to_string();
        if heads.remove(&id).is_some() {
            return Some(format!(
                "it records {} {id} as removed, but the log still holds events of it",
                unit.kind.as_str()
            ));
        }
        if unit.last_position >= row.position {
            return Some(format!(
                "it records {} {id} as removed through position {}, after the record itself",
                unit.kind.as_str(),
                unit.last_position
            ));
        }
        report.removed_units += 1;
        report.removed_events += unit.events.max(0) as u64;
    }
    if let Some(file) = removed.archive {
        report.archived.push((file, removed.units));
    }
    None
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

/// What `verify --archive` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveReport {
    pub files: u64,
    pub units: u64,
    pub events: u64,
    /// The first problem, naming its file.
    pub problem: Option<String>,
}

/// Proves every archive file: each unit's events run seq 1, 2, 3, ... with
/// intact hashes to the head its heads file gives (count, last position,
/// last hash); no unit is archived twice; and, given the log's report, each
/// record's archive file exists and holds exactly the units it names.
pub fn verify_archive(
    archive: &Archive,
    log: Option<&Report>,
) -> Result<ArchiveReport, StoreError> {
    let mut report = ArchiveReport::default();
    let mut seen: HashSet<(String, i64)> = HashSet::new();
    let files = archive
        .files()
        .map_err(|e| StoreError::Open(format!("archive {}: {e}", archive.dir().display())))?;
    let mut heads_of: HashMap<String, Vec<RemovedUnit>> = HashMap::new();
    for file in &files {
        report.files += 1;
        let heads = archive.heads(file)?;
        if let Some(problem) = verify_file(archive, file, &heads.units, &mut seen, &mut report)? {
            report.problem = Some(format!("{file}: {problem}"));
            return Ok(report);
        }
        heads_of.insert(file.clone(), heads.units);
    }
    for (file, units) in log.map(|l| l.archived.as_slice()).unwrap_or_default() {
        let problem = match heads_of.get(file) {
            None => Some("the log's record names it, but it is not in the archive".to_owned()),
            Some(heads) if heads != units => {
                Some("its heads differ from the units the log's record names".to_owned())
            }
            Some(_) => None,
        };
        if let Some(problem) = problem {
            report.problem = Some(format!("{file}: {problem}"));
            return Ok(report);
        }
    }
    Ok(report)
}

/// One data file against its heads.
fn verify_file(
    archive: &Archive,
    file: &str,
    units: &[RemovedUnit],
    seen: &mut HashSet<(String, i64)>,
    report: &mut ArchiveReport,
) -> Result<Option<String>, StoreError> {
    // unit -> (last seq, last hash, last position)
    let mut chains: HashMap<String, (i64, String, i64)> = HashMap::new();
    let mut last_position = 0;
    for row in archive.rows(file)? {
        let row = row?;
        report.events += 1;
        if row.position <= last_position {
            return Ok(Some(format!("position {} is out of order", row.position)));
        }
        last_position = row.position;
        let (prev_seq, prev_hash, _) =
            chains
                .get(&row.job_id)
                .cloned()
                .unwrap_or((0, String::new(), 0));
        if let Some(problem) = check(&row, prev_seq, &prev_hash) {
            return Ok(Some(format!(
                "event at position {} (unit {}, seq {}): {problem}",
                row.position, row.job_id, row.seq
            )));
        }
        chains.insert(row.job_id, (row.seq, row.hash, row.position));
    }
    if chains.len() != units.len() {
        return Ok(Some(format!(
            "it holds {} units, its heads name {}",
            chains.len(),
            units.len()
        )));
    }
    for unit in units {
        let id = unit.id.to_string();
        let Some((seq, hash, position)) = chains.get(&id) else {
            return Ok(Some(format!(
                "unit {id} is named by its heads but has no events"
            )));
        };
        if *seq != unit.events || *hash != unit.last_hash || *position != unit.last_position {
            return Ok(Some(format!(
                "unit {id} ends at seq {seq} (position {position}, hash {hash}); its head says seq {} (position {}, hash {})",
                unit.events, unit.last_position, unit.last_hash
            )));
        }
        if !seen.insert((id.clone(), unit.last_position)) {
            return Ok(Some(format!("unit {id} is archived twice")));
        }
        report.units += 1;
    }
    Ok(None)
}
