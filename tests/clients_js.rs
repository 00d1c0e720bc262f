//! The JavaScript package's own suite (`clients/js`: `npm test`, which
//! type-checks the declarations with `tsc --noEmit` and runs Node's test
//! runner against real servers started from this build's `rejoin` binary).
//! Needs Node.js 20.10+ and the package's dev dependencies (`npm ci` in
//! clients/js; `.ci/run` does it): ignored by a plain `cargo test`, run by
//! `cargo test -- --ignored`.

use std::path::Path;

#[test]
#[ignore = "needs Node.js and `npm ci` in clients/js (.ci/run does it)"]
fn the_js_client_package_passes_its_tests_against_this_server() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js");
    assert!(
        dir.join("node_modules/.bin/tsc").exists(),
        "this test needs Node.js 20.10+ and `npm ci` in clients/js"
    );
    let out = std::process::Command::new("npm")
        .arg("test")
        .current_dir(&dir)
        .env("REJOIN_BIN", env!("CARGO_BIN_EXE_rejoin"))
        .output()
        .expect("npm runs");
    assert!(
        out.status.success(),
        "npm test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("# fail 0"), "{stdout}");
}
