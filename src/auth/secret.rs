//! The generated HS256 secret, kept beside the SQLite database so tokens stay
//! valid across restarts without any configuration.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;

/// File name of the generated secret, inside the database's directory.
pub const SECRET_FILE: &str = "jwt-secret";

/// A secret string whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// Reads a secret from `path` (given by `flag`), without surrounding
/// whitespace; an empty or unreadable file is an error naming the flag.
pub fn read_secret_file(path: &Path, flag: &str) -> anyhow::Result<Secret> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{flag}: cannot read {}", path.display()))?;
    let text = text.trim();
    anyhow::ensure!(!text.is_empty(), "{flag}: {} is empty", path.display());
    Ok(Secret(text.to_owned()))
}

/// Reads the secret `rejoin serve` generated in `dir`; never creates one.
/// Missing, it is an error saying where it looked and how to point there.
pub fn find_secret(dir: &Path) -> anyhow::Result<Secret> {
    let path = dir.join(SECRET_FILE);
    if let Some(secret) = read_kept(&path)? {
        return Ok(secret);
    }
    let looked = std::path::absolute(&path).unwrap_or(path);
    anyhow::bail!(
        "no JWT secret at {}: `rejoin serve` generates it in its data directory on first start. \
         Point this command at the server's: --data-dir DIR (REJOIN_DATA_DIR) or --database-url, \
         as the server was started; or give the key with --jwt-secret-file (or REJOIN_JWT_SECRET)",
        looked.display()
    )
}

/// A kept secret at `path`, without surrounding whitespace; `None` when
/// there is no file; an empty one is an error.
fn read_kept(path: &Path) -> anyhow::Result<Option<Secret>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = text.trim();
            anyhow::ensure!(!text.is_empty(), "{} is empty", path.display());
            Ok(Some(Secret(text.to_owned())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Reads `dir/jwt-secret`, or creates it (mode 0600) with 32 random bytes.
pub fn load_or_create_secret(dir: &Path) -> anyhow::Result<Secret> {
    load_or_create(dir, SECRET_FILE, "a JWT secret", hex::encode::<[u8; 32]>)
}

/// Reads `dir/file`, or creates it (mode 0600) holding `encode` of 32
/// random bytes; `what` names it in the log.
pub fn load_or_create(
    dir: &Path,
    file: &str,
    what: &str,
    encode: fn([u8; 32]) -> String,
) -> anyhow::Result<Secret> {
    let path = dir.join(file);
    if let Some(secret) = read_kept(&path)? {
        return Ok(secret);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let secret = encode(bytes);
    // create_new: if two processes race, one wins and the other reads its file.
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut file) => {
            file.write_all(secret.as_bytes())?;
            file.sync_all()?;
            tracing::info!(path = %path.display(), "generated {what}");
            Ok(Secret(secret))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            load_or_create(dir, file, what, encode)
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}
