//! The recipes in `deploy/`, checked as far as a machine without a container
//! engine or a running systemd allows:
//!
//! - every `REJOIN_*` variable they set is a real setting;
//! - the image's environment, user, volume and HEALTHCHECK: the binary run
//!   with the Dockerfile's `ENV`, as its unprivileged `USER`, with only the
//!   volume writable, passes the HEALTHCHECK's own command and stops cleanly;
//! - the systemd unit passes `systemd-analyze verify` without a warning, and
//!   its `ExecStart` with its `Environment=` (the credential directory and the
//!   state directory remapped) serves and stops within `TimeoutStopSec`;
//! - the compose file's node environment: two nodes on one PostgreSQL log
//!   (in `.ci/run`'s PostgreSQL pass).

use crate::common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use clap::CommandFactory;
use common::{spawn_announcing, PATIENCE, SECRET};
use rejoin_testkit::tokens::Tokens;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

/// The uid:gid the image runs as (and the tests run the binary as).
const UNPRIVILEGED: u32 = 10001;

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{DEPLOY}/{name}")).unwrap()
}

/// Dockerfile instructions of the final stage, continuation lines joined.
fn final_stage(dockerfile: &str) -> Vec<(String, String)> {
    let joined = dockerfile.replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    lines[last_from..]
        .iter()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap_or((l, ""));
            (
                k.to_owned(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

fn instruction<'a>(stage: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The `KEY=VALUE` pairs of the stage's `ENV` instructions.
fn env_of(stage: &[(String, String)]) -> BTreeMap<String, String> {
    instruction(stage, "ENV")
        .iter()
        .flat_map(|v| v.split(' '))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A directory owned by the unprivileged user, mode 0700, as a volume or a
/// state directory is.
fn private_dir(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
    if is_root() {
        std::os::unix::fs::chown(path, Some(UNPRIVILEGED), Some(UNPRIVILEGED)).unwrap();
    }
}

fn is_root() -> bool {
    // SAFETY: reads this process's effective uid.
    unsafe { libc::geteuid() == 0 }
}

/// The secret in a file the unprivileged user alone may read.
fn secret_file(dir: &Path) -> PathBuf {
    private_dir(dir);
    let path = dir.join("jwt-secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    if is_root() {
        std::os::unix::fs::chown(&path, Some(UNPRIVILEGED), Some(UNPRIVILEGED)).unwrap();
    }
    path
}

/// `rejoin` with exactly `env` (and PATH), as the unprivileged user when
/// this test runs as root (as CI does), in `cwd`. That user runs a copy of
/// the binary beside `cwd`: the checkout's own may sit where it cannot reach.
fn command(args: &[&str], env: &BTreeMap<String, String>, cwd: &Path) -> tokio::process::Command {
    let mut cmd = if is_root() {
        let bin = cwd.parent().unwrap().join("rejoin-bin");
        if !bin.exists() {
            std::fs::copy(common::BIN, &bin).unwrap();
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut c = tokio::process::Command::new("setpriv");
        let id = UNPRIVILEGED.to_string();
        c.args(["--reuid", &id, "--regid", &id, "--clear-groups", "--"]);
        c.arg(bin);
        c
    } else {
        tokio::process::Command::new(common::BIN)
    };
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .envs(env)
        .current_dir(cwd)
        .stderr(Stdio::null());
    cmd
}

#[test]
fn every_rejoin_variable_in_deploy_is_a_setting() {
    let mut known = std::collections::BTreeSet::new();
    let cli = rejoin::config::Cli::command();
    for sub in cli.get_subcommands() {
        for arg in sub.get_arguments() {
            if let Some(env) = arg.get_env() {
                known.insert(env.to_string_lossy().into_owned());
            }
        }
    }
    assert!(known.contains("REJOIN_TRUSTED_PROXIES"));
    for file in ["Dockerfile", "rejoin.service", "docker-compose.yml"] {
        let text = read(file);
        let mut rest = text.as_str();
        while let Some(at) = rest.find("REJOIN_") {
            rest = &rest[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..end];
            // The compose file's own variable for the database password.
            // `REJOIN_*` in a comment names them all.
            if name != "REJOIN_DB_PASSWORD" && !name.ends_with('_') {
                assert!(
                    known.contains(name),
                    "{file} sets {name}, which is no setting"
                );
            }
            rest = &rest[end..];
        }
    }
}

#[tokio::test]
async fn the_image_runs_as_its_user_with_its_environment_and_passes_its_healthcheck() {
    let stage = final_stage(&read("Dockerfile"));
    let user = instruction(&stage, "USER");
    assert_eq!(
        user,
        [format!("{UNPRIVILEGED}:{UNPRIVILEGED}")],
        "a fixed non-root user"
    );
    let env = env_of(&stage);
    let volume: Vec<String> = serde_json::from_str(instruction(&stage, "VOLUME")[0]).unwrap();
    assert_eq!(volume, ["/var/lib/rejoin"]);
    let db = &env["REJOIN_DATABASE_URL"];
    assert!(
        db.starts_with("sqlite:///var/lib/rejoin/"),
        "the log is in the volume: {db}"
    );
    assert_eq!(instruction(&stage, "WORKDIR"), ["/var/lib/rejoin"]);
    let port = env["REJOIN_LISTEN"].rsplit(':').next().unwrap().to_owned();
    let health = instruction(&stage, "HEALTHCHECK")[0];
    let cmd_json = health.split_once("CMD ").unwrap().1;
    let probe: Vec<String> = serde_json::from_str(cmd_json).unwrap();
    assert_eq!(
        probe.last().unwrap(),
        &format!("http://127.0.0.1:{port}/readyz")
    );
    assert!(instruction(&stage, "STOPSIGNAL") == ["SIGTERM"]);
    assert_eq!(
        instruction(&stage, "ENTRYPOINT"),
        [r#"["/usr/local/bin/rejoin"]"#]
    );
    assert_eq!(instruction(&stage, "CMD"), [r#"["serve"]"#]);

    // Run it: the volume is a private directory, the secret a mounted file.
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let volume = root.path().join("var-lib-rejoin");
    private_dir(&volume);
    let secret = secret_file(&root.path().join("run-secrets"));
    let mut env = env.clone();
    let path = db.replace("/var/lib/rejoin", &volume.display().to_string());
    env.insert("REJOIN_DATABASE_URL".into(), path);
    env.insert("REJOIN_LISTEN".into(), "127.0.0.1:0".into());
    env.insert(
        "REJOIN_JWT_SECRET_FILE".into(),
        secret.display().to_string(),
    );
    let cmd = command(&["serve"], &env, &volume);
    let (mut child, addr) = tokio::time::timeout(PATIENCE, spawn_announcing(cmd))
        .await
        .unwrap()
        .unwrap();
    // The HEALTHCHECK's command, pointed at the port this run got.
    let mut probe = probe.clone();
    *probe.last_mut().unwrap() = format!("http://{addr}/readyz");
    let status = tokio::process::Command::new(&probe[0])
        .args(&probe[1..])
        .status()
        .await
        .expect("curl is installed (.ci/run installs it)");
    assert!(status.success(), "the HEALTHCHECK fails: {status}");
    let res = reqwest::Client::new()
        .get(format!("http://{addr}/v1/jobs"))
        .bearer_auth(Tokens::new(SECRET).service())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "tokens verify with the mounted secret");
    let log = volume.join(db.rsplit('/').next().unwrap());
    assert!(log.exists(), "the log is in the volume");
    if is_root() {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&log).unwrap().uid(), UNPRIVILEGED);
    }
    common::terminate(&mut child).await;
}

/// `Key=Value` lines of a unit section, in order.
fn unit_entries(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test]
async fn the_systemd_unit_verifies_and_its_service_serves_and_stops_in_time() {
    let unit = read("rejoin.service");
    let entries = unit_entries(&unit);
    let get = |key: &str| -> Vec<&str> {
        entries
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let exec = get("ExecStart")[0];
    assert!(exec.starts_with("/usr/local/bin/rejoin serve"), "{exec}");
    for hardening in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("StateDirectory", "rejoin"),
    ] {
        assert_eq!(get(hardening.0), [hardening.1], "{}", hardening.0);
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    match which("systemd-analyze") {
        Some(analyze) => {
            // verify needs the ExecStart binary to exist: point it at ours.
            let copy = dir.path().join("rejoin.service");
            std::fs::write(&copy, unit.replace("/usr/local/bin/rejoin", common::BIN)).unwrap();
            let out = std::process::Command::new(analyze)
                .args(["verify", "--man=no"])
                .arg(&copy)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stderr.trim().is_empty(),
                "systemd-analyze verify: {stderr}"
            );
        }
        None => assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing on CI"
        ),
    }

    // Its environment, with the state directory and the credential
    // directory (%d) remapped.
    let state = dir.path().join("state");
    private_dir(&state);
    let creds = dir.path().join("credentials");
    secret_file(&creds);
    let mut env = BTreeMap::new();
    for e in get("Environment") {
        let (k, v) = e.split_once('=').unwrap();
        let v = v
            .replace("%d", &creds.display().to_string())
            .replace("/var/lib/rejoin", &state.display().to_string());
        env.insert(k.to_owned(), v);
    }
    assert_eq!(
        env["REJOIN_JWT_SECRET_FILE"],
        format!("{}/jwt-secret", creds.display()),
        "the secret comes from the credential named in LoadCredential"
    );
    assert_eq!(get("LoadCredential"), ["jwt-secret:/etc/rejoin/jwt-secret"]);
    let stop_secs: f64 = get("TimeoutStopSec")[0].parse().unwrap();
    let deadline: f64 = env["REJOIN_SHUTDOWN_TIMEOUT_SECS"].parse().unwrap();
    assert!(
        deadline < stop_secs,
        "systemd would kill before the shutdown deadline"
    );
    env.insert("REJOIN_LISTEN".into(), "127.0.0.1:0".into());
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    let cmd = command(&args, &env, &state);
    let (mut child, addr) = tokio::time::timeout(PATIENCE, spawn_announcing(cmd))
        .await
        .unwrap()
        .unwrap();
    let http = reqwest::Client::new();
    let ready = rejoin_testkit::get_json_at(&http, addr.parse().unwrap(), "/readyz", None).await;
    assert_eq!(ready["status"], "ready");
    assert!(
        state.join("rejoin.db").exists(),
        "the log is in the state directory"
    );
    let started = std::time::Instant::now();
    common::terminate(&mut child).await;
    assert!(started.elapsed().as_secs_f64() < stop_secs);
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

/// The compose file's `environment: &node-env` block, as `KEY: value`.
fn compose_node_env(compose: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut lines = compose
        .lines()
        .skip_while(|l| !l.contains("environment: &node-env"));
    let header = lines.next().expect("an anchored node environment");
    let indent = header.len() - header.trim_start().len();
    for line in lines {
        if line.len() - line.trim_start().len() <= indent {
            break;
        }
        let (k, v) = line.trim().split_once(": ").unwrap();
        env.insert(k.to_owned(), v.trim_matches('"').to_owned());
    }
    env
}

#[tokio::test]
#[ignore = "needs PostgreSQL: REJOIN_TEST_POSTGRES_URL (.ci/run sets it)"]
async fn the_compose_nodes_share_one_log_with_the_compose_environment_on_postgres() {
    let server = std::env::var("REJOIN_TEST_POSTGRES_URL")
        .expect("this test needs PostgreSQL: set REJOIN_TEST_POSTGRES_URL");
    let compose = read("docker-compose.yml");
    let env = compose_node_env(&compose);
    assert!(env["REJOIN_DATABASE_URL"].starts_with("postgres://"));
    assert_eq!(env["REJOIN_JWT_SECRET_FILE"], "/run/secrets/jwt_secret");
    assert!(
        compose.contains("rejoin-b:\n    <<: *node"),
        "two nodes from one definition"
    );
    assert!(compose.contains("condition: service_healthy"));

    let db = rejoin::log::postgres::fresh_schema(&server, "compose")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = secret_file(&dir.path().join("secrets"));
    let cwd = dir.path().join("cwd");
    private_dir(&cwd);
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let mut env = env.clone();
        env.insert("REJOIN_DATABASE_URL".into(), db.clone());
        env.insert(
            "REJOIN_JWT_SECRET_FILE".into(),
            secret.display().to_string(),
        );
        env.insert("REJOIN_LISTEN".into(), "127.0.0.1:0".into());
        let cmd = command(&["serve"], &env, &cwd);
        nodes.push(
            tokio::time::timeout(PATIENCE, spawn_announcing(cmd))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for (_, addr) in &nodes {
        let ready =
            rejoin_testkit::get_json_at(&http, addr.parse().unwrap(), "/readyz", None).await;
        assert_eq!(ready["backend"], "postgres");
        ids.push(ready["node"].as_str().unwrap().to_owned());
    }
    assert_ne!(ids[0], ids[1], "two nodes, two leases");
    let service = Tokens::new(SECRET).service();
    let job = rejoin_testkit::create_job_with(&http, &nodes[0].1, &service)
        .await
        .unwrap();
    let res = http
        .get(format!("http://{}/v1/jobs/{job}", nodes[1].1))
        .bearer_auth(&service)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        200,
        "a job created on one node is read on the other"
    );
    for (child, _) in &mut nodes {
        common::terminate(child).await;
    }
}
