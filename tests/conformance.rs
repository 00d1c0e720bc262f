//! The client conformance suite (clients/conformance/scenarios.json) against
//! `rejoin watch`, the watcher in the server's own binary: the same
//! scenarios, runner and relay the JavaScript, Swift and Kotlin clients pass
//! (`clients/*/run test`).

use std::path::Path;

use rejoin_testkit::conformance::{self, Client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoin_watch_passes_every_conformance_scenario() {
    let scenarios = conformance::load(&conformance::default_file()).expect("the scenario file");
    assert!(scenarios.len() >= 15, "{} scenarios", scenarios.len());
    let bin = Path::new(env!("CARGO_BIN_EXE_rejoin"));
    let client = Client {
        command: vec![bin.display().to_string(), "watch".into()],
    };
    let mut failures = Vec::new();
    for scenario in &scenarios {
        if let Err(e) = conformance::run(bin, &client, scenario).await {
            failures.push(format!("{}: {e:#}", scenario.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
