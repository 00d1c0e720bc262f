//! One process owns a SQLite log. `rejoin serve` holds an exclusive lock on
//! a file beside the database (`rejoin.db-lock` beside `rejoin.db`) for as
//! long as it runs; a second `serve` on the same database finds it held and
//! refuses to start, naming the process that holds it. The kernel releases
//! the lock when its process ends, however it ends, so a SIGKILL never leaves
//! a stale one behind. The read-only commands take no lock.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The lock, held until dropped.
#[derive(Debug)]
pub struct Owner {
    _file: File,
}

/// The lock file of the database at `db`.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push("-lock");
    db.with_file_name(name)
}

/// Takes the lock of the database at `db`, or says who holds it.
pub fn take(db: &Path) -> anyhow::Result<Owner> {
    let path = lock_path(db);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns; no memory is shared.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::WouldBlock {
            return Err(err).with_context(|| format!("cannot lock {}", path.display()));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = match holder.trim() {
            "" => "another process".to_owned(),
            h => format!("another rejoin serve ({h})"),
        };
        anyhow::bail!(
            "the log {} is in use by {holder}, which holds {}: one process owns a SQLite log; stop that one, or give this one another --database-url (the read-only commands work beside it)",
            db.display(),
            path.display()
        );
    }
    // The holder's name, for the next one that tries.
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "pid {}", std::process::id())?;
    file.flush()?;
    Ok(Owner { _file: file })
}
