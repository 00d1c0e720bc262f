//! The archive: where retention writes the events of the units it removes,
//! before it removes them, in a form analytics tools open without rejoin.
//!
//! Layout: `DIR/YYYY-MM-DD/units-<id>.ndjson.gz` (the day the batch's units
//! finished), one gzip-compressed NDJSON line per event in position order,
//! each line the same object as `GET /v1/events` and `rejoin replay`
//! print (`position`, `jobId`, `seq`, `sessionId`, `kind`,
//! `schemaVersion`, `at`, `data`, `idempotencyKey`, `hash`); beside it
//! `units-<id>.heads.json`, the units' chain heads (the same list the
//! `units_removed` record in the log holds), which `rejoin verify
//! --archive` proves the file against.
//!
//! Crash safety: a batch first writes a marker (`DIR/.pending`) naming its
//! files and units, then the files (each to a temporary name, synced, then
//! renamed and the directory synced), then the log commits the removal,
//! then the marker goes. A start that finds a marker asks the log whether
//! that removal committed: if it did the files stay, if not they are
//! deleted (the units are still in the log and will be archived again).
//! So an event is in the archive once, or still in the log, never both
//! once the marker is resolved, and never neither.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::{Deserialize, Serialize};

use super::store::{EventEnvelope, EventRow, StoreError};
use crate::domain::event::RemovedUnit;

const MARKER: &str = ".pending";
const DATA: &str = ".ndjson.gz";
const HEADS: &str = ".heads.json";

/// An archive directory.
#[derive(Clone, Debug)]
pub struct Archive {
    dir: PathBuf,
}

/// A batch whose removal had begun when the process stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    /// The data file, relative to the archive directory.
    pub file: String,
    pub units: Vec<RemovedUnit>,
}

/// The heads file beside a data file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heads {
    pub units: Vec<RemovedUnit>,
}

/// A line of a data file as read back.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Line {
    position: i64,
    job_id: String,
    seq: i64,
    session_id: Option<String>,
    kind: String,
    schema_version: i32,
    at: String,
    data: Box<serde_json::value::RawValue>,
    #[serde(default)]
    idempotency_key: Option<String>,
    hash: String,
}

impl Archive {
    /// The archive at `dir`, created if missing.
    pub fn open(dir: &Path) -> io::Result<Archive> {
        fs::create_dir_all(dir)?;
        Ok(Archive {
            dir: dir.to_path_buf(),
        })
    }

    /// An archive that must already exist (for the commands that read one).
    pub fn open_existing(dir: &Path) -> Result<Archive, StoreError> {
        if !dir.is_dir() {
            return Err(StoreError::Open(format!(
                "no archive directory at {}",
                dir.display()
            )));
        }
        Ok(Archive {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data file name for a batch of units that finished on `day`.
    pub fn file_name(day: chrono::NaiveDate, batch: uuid::Uuid) -> String {
        format!("{}/units-{}{DATA}", day.format("%Y-%m-%d"), batch.simple())
    }

    /// The batch a crash left half-done, if any.
    pub fn pending(&self) -> io::Result<Option<Pending>> {
        match fs::read(self.dir.join(MARKER)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Step 1 of a batch: the marker, durable.
    pub fn begin(&self, pending: &Pending) -> io::Result<()> {
        let body = serde_json::to_vec(pending).map_err(io::Error::other)?;
        write_durably(&self.dir, MARKER, |w| w.write_all(&body)).map(drop)
    }

    /// Step 2: the batch's events (`rows`, in position order) and its heads,
    /// durable; returns the bytes written.
    pub fn write(&self, file: &str, rows: &[EventRow], units: &[RemovedUnit]) -> io::Result<u64> {
        let path = self.dir.join(file);
        let day = path.parent().unwrap_or(&self.dir).to_path_buf();
        fs::create_dir_all(&day)?;
        sync_dir(&self.dir)?;
        let name = file_name_of(&path);
        let data = write_durably(&day, &name, |w| {
            let mut gz = GzEncoder::new(w, Compression::default());
            for row in rows {
                let line = EventEnvelope::try_from(row.clone()).map_err(io::Error::other)?;
                serde_json::to_writer(&mut gz, &line).map_err(io::Error::other)?;
                gz.write_all(b"\n")?;
            }
            gz.finish()?;
            Ok(())
        })?;
        let heads = serde_json::to_vec_pretty(&Heads {
            units: units.to_vec(),
        })
        .map_err(io::Error::other)?;
        let heads_len = write_durably(&day, &heads_name(&name), |w| w.write_all(&heads))?;
        Ok(data + heads_len)
    }

    /// Deletes a batch's files (its removal did not commit).
    pub fn discard(&self, file: &str) -> io::Result<()> {
        let path = self.dir.join(file);
        let name = file_name_of(&path);
        let day = path.parent().unwrap_or(&self.dir).to_path_buf();
        if !day.is_dir() {
            // The batch stopped before its day's directory was made.
            return Ok(());
        }
        let heads = heads_name(&name);
        for name in [format!("{name}.tmp"), format!("{heads}.tmp"), name, heads] {
            match fs::remove_file(day.join(&name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        sync_dir(&day)
    }

    /// The last step: the batch is settled, the marker goes.
    pub fn end(&self) -> io::Result<()> {
        match fs::remove_file(self.dir.join(MARKER)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        sync_dir(&self.dir)
    }

    /// Every data file, oldest day first (relative paths).
    pub fn files(&self) -> io::Result<Vec<String>> {
        let mut files = Vec::new();
        let mut days: Vec<_> = fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        days.sort();
        for day in days {
            let mut names: Vec<_> = fs::read_dir(self.dir.join(&day))?
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(DATA))
                .collect();
            names.sort();
            files.extend(names.into_iter().map(|n| format!("{day}/{n}")));
        }
        Ok(files)
    }

    /// A data file's heads.
    pub fn heads(&self, file: &str) -> Result<Heads, StoreError> {
        let path = self.dir.join(file);
        let heads = path.with_file_name(heads_name(&file_name_of(&path)));
        let bytes = fs::read(&heads).map_err(|e| open_err(&heads, e))?;
        serde_json::from_slice(&bytes).map_err(|e| open_err(&heads, io::Error::other(e)))
    }

    /// A data file's rows, in the order written (position order).
    pub fn rows(&self, file: &str) -> Result<Rows, StoreError> {
        let path = self.dir.join(file);
        let f = File::open(&path).map_err(|e| open_err(&path, e))?;
        Ok(Rows {
            lines: BufReader::new(GzDecoder::new(f)).lines(),
            path,
        })
    }
}

/// A data file's rows, read one line at a time.
pub struct Rows {
    lines: io::Lines<BufReader<GzDecoder<File>>>,
    path: PathBuf,
}

impl Iterator for Rows {
    type Item = Result<EventRow, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let line = match self.lines.next()? {
            Ok(line) => line,
            Err(e) => return Some(Err(open_err(&self.path, e))),
        };
        Some(
            serde_json::from_str::<Line>(&line)
                .map(|l| EventRow {
                    position: l.position,
                    job_id: l.job_id,
                    seq: l.seq,
                    session_id: l.session_id,
                    kind: l.kind,
                    schema_version: l.schema_version,
                    payload: l.data.get().to_owned(),
                    idempotency_key: l.idempotency_key,
                    at: l.at,
                    hash: l.hash,
                })
                .map_err(|e| open_err(&self.path, io::Error::other(e))),
        )
    }
}

fn open_err(path: &Path, e: io::Error) -> StoreError {
    StoreError::Open(format!("archive file {}: {e}", path.display()))
}

fn file_name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn heads_name(data_name: &str) -> String {
    format!("{}{HEADS}", data_name.trim_end_matches(DATA))
}

/// Writes `name` in `dir` through a temporary file: written, synced,
/// renamed over, the directory synced. Returns the bytes written.
fn write_durably(
    dir: &Path,
    name: &str,
    body: impl FnOnce(&mut BufWriter<&File>) -> io::Result<()>,
) -> io::Result<u64> {
    let tmp = dir.join(format!("{name}.tmp"));
    let file = File::create(&tmp)?;
    {
        let mut w = BufWriter::new(&file);
        body(&mut w)?;
        w.flush()?;
    }
    file.sync_all()?;
    let len = file.metadata()?.len();
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)?;
    Ok(len)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Every archive file's rows in one position order (each file is in
/// position order; batches interleave), read a line at a time per file.
pub struct Merged {
    sources: Vec<std::iter::Peekable<Rows>>,
    heads: std::collections::BinaryHeap<std::cmp::Reverse<(i64, usize)>>,
}

impl Merged {
    pub fn open(archive: &Archive) -> Result<Merged, StoreError> {
        let files = archive.files().map_err(|e| open_err(archive.dir(), e))?;
        let mut merged = Merged {
            sources: Vec::with_capacity(files.len()),
            heads: std::collections::BinaryHeap::new(),
        };
        for file in files {
            merged.sources.push(archive.rows(&file)?.peekable());
            merged.push_head(merged.sources.len() - 1);
        }
        Ok(merged)
    }

    fn push_head(&mut self, i: usize) {
        let position = match self.sources[i].peek() {
            Some(Ok(row)) => row.position,
            Some(Err(_)) => i64::MIN,
            None => return,
        };
        self.heads.push(std::cmp::Reverse((position, i)));
    }

    /// The next archived row if its position is below `before`.
    pub fn next_before(&mut self, before: i64) -> Option<Result<EventRow, StoreError>> {
        let std::cmp::Reverse((position, i)) = *self.heads.peek()?;
        if position >= before {
            return None;
        }
        self.heads.pop();
        let row = self.sources[i].next()?;
        self.push_head(i);
        Some(row)
    }
}
