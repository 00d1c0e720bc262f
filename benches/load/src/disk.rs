//! The disk beside a run: 4 KiB appended and `fdatasync`ed every 50 ms on
//! the same filesystem as the run's database, for as long as the run lasts.
//! Every commit waits on the same device, so a figure read beside these says
//! what the disk cost in that window (its typical sync and its longest
//! stall) and what rejoin added on top.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Latencies;

/// How often the probe syncs: rare enough not to load the disk itself.
const EVERY: Duration = Duration::from_millis(50);

/// A probe running on a thread of its own.
pub struct DiskProbe {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<std::io::Result<Latencies>>,
}

impl DiskProbe {
    /// Starts probing the filesystem of `dir` (a file of its own there).
    pub fn start(dir: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let path = dir.join("disk-probe");
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            let block = [0u8; 4096];
            let mut syncs = Latencies::default();
            while !stopping.load(Ordering::Relaxed) {
                let started = Instant::now();
                file.write_all(&block)?;
                file.sync_data()?;
                syncs.push(started.elapsed());
                std::thread::sleep(EVERY);
            }
            drop(file);
            std::fs::remove_file(&path)?;
            Ok(syncs)
        });
        DiskProbe { stop, thread }
    }

    /// Stops the probe and prints what it saw, as a line of its own.
    pub fn finish(self) -> anyhow::Result<Latencies> {
        self.stop.store(true, Ordering::Relaxed);
        let mut syncs = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the disk probe panicked"))??;
        println!(
            "  disk, same window (4 KiB append + fdatasync every {} ms)  {}",
            EVERY.as_millis(),
            syncs.summary()
        );
        Ok(syncs)
    }
}
