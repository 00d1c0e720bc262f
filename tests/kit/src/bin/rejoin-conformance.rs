//! `rejoin-conformance`: the client conformance suite, run against one
//! client's watcher.
//!
//! ```text
//! rejoin-conformance [--rejoin BIN] [--scenarios FILE] [--only NAME] -- WATCHER [ARGS…]
//! ```
//!
//! WATCHER is the client's `rejoin-watch` (for example `clients/kotlin/run
//! watch`); each scenario starts it with `--url`, `--job`, `--token`, fast
//! timings and, to resume, `--session-id`, `--last-seq` and `--epoch`.
//! `--rejoin` is the server binary (default: `target/debug/rejoin` beside
//! this program). Prints one line per scenario; exits 1 when any failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use rejoin_testkit::conformance::{self, Client};

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut rejoin = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("rejoin")))
        .unwrap_or_else(|| PathBuf::from("rejoin"));
    let mut file = conformance::default_file();
    let mut only: Option<String> = None;
    let mut command = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rejoin" => rejoin = args.next().map(PathBuf::from).unwrap_or(rejoin),
            "--scenarios" => file = args.next().map(PathBuf::from).unwrap_or(file),
            "--only" => only = args.next(),
            "--" => {
                command = args.by_ref().collect();
            }
            other => {
                eprintln!("rejoin-conformance: unknown argument {other:?}\nusage: rejoin-conformance [--rejoin BIN] [--scenarios FILE] [--only NAME] -- WATCHER [ARGS…]");
                return ExitCode::from(2);
            }
        }
    }
    if command.is_empty() {
        eprintln!("rejoin-conformance: no watcher given (after --)");
        return ExitCode::from(2);
    }
    let scenarios = match conformance::load(&file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rejoin-conformance: {e:#}");
            return ExitCode::from(2);
        }
    };
    let client = Client { command };
    let mut failed = 0;
    let mut ran = 0;
    for scenario in scenarios
        .iter()
        .filter(|s| only.as_deref().is_none_or(|o| s.name == o))
    {
        ran += 1;
        let started = Instant::now();
        match conformance::run(&rejoin, &client, scenario).await {
            Ok(()) => println!(
                "ok   {} ({:.1} s): {}",
                scenario.name,
                started.elapsed().as_secs_f64(),
                scenario.proves
            ),
            Err(e) => {
                failed += 1;
                println!("FAIL {}: {e:#}", scenario.name);
            }
        }
    }
    println!(
        "{} scenarios, {} passed, {failed} failed",
        ran,
        ran - failed
    );
    if failed == 0 && ran > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
