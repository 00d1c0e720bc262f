//! `rejoin serve` as its own process: for what must be its own (memory, a
//! SIGKILL, several nodes on one log).

use std::net::SocketAddr;
use std::path::Path;

use crate::socket::PATIENCE;

/// The command line of `rejoin serve` on `listen`, the log at `db`, tokens
/// signed with `secret`, no per-address limit (every client is on loopback),
/// then `extra`.
pub fn serve_args(listen: &str, db: &str, secret: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "serve",
        "--listen",
        listen,
        "--database-url",
        db,
        "--jwt-secret",
        secret,
        "--connect-rate-per-ip",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Starts a server process that announces `http://ADDR` on its first line, and
/// returns it with that address, however long its start takes (a server
/// folding a large log prints it only once it is ready).
pub async fn spawn_announcing(
    mut command: tokio::process::Command,
) -> anyhow::Result<(tokio::process::Child, String)> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let line = lines
        .next_line()
        .await?
        .ok_or_else(|| anyhow::anyhow!("the process printed no address"))?;
    Ok((child, announced_address(&line)))
}

/// The `host:port` in the server's first line: `rejoin listening on
/// http://ADDR`, or with JSON logs a line whose `url` is `http://ADDR`.
pub fn announced_address(line: &str) -> String {
    let url = match serde_json::from_str::<serde_json::Value>(line) {
        Ok(json) => json["url"].as_str().unwrap_or_default().to_owned(),
        Err(_) => line.to_owned(),
    };
    url.rsplit("http://").next().unwrap_or_default().to_owned()
}

/// Starts `cmd` (a `rejoin serve --listen 127.0.0.1:0 …`), its logs
/// discarded, and waits (at most [`PATIENCE`]) for the address it prints
/// first.
pub async fn start_binary(mut cmd: tokio::process::Command) -> (tokio::process::Child, SocketAddr) {
    cmd.stderr(std::process::Stdio::null());
    let (child, addr) = tokio::time::timeout(PATIENCE, spawn_announcing(cmd))
        .await
        .expect("the server starts in time")
        .expect("the server starts");
    (child, addr.parse().expect("an address"))
}

/// Starts the `rejoin` binary at `bin` serving `database_url` on port 0,
/// with `secret` and `extra` flags.
pub async fn serve_binary_at(
    bin: &Path,
    database_url: &str,
    secret: &str,
    extra: &[&str],
) -> (tokio::process::Child, SocketAddr) {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(serve_args("127.0.0.1:0", database_url, secret, extra));
    start_binary(cmd).await
}

/// Stops a server process with SIGTERM (a graceful stop) and waits for its
/// exit, which must be 0.
pub async fn terminate(child: &mut tokio::process::Child) {
    let pid = child.id().expect("the server is running");
    // SAFETY: sends a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("the server exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS")
}

/// A line of `/proc/PID/status` given in kB (`VmRSS`, `VmHWM`, `RssAnon`…).
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {field} for {pid}"))
}

/// A free loopback port, for a server that must come back on the same one.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
