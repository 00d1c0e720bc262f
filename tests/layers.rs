//! The layers point one way. Every module of `src/` may use only the modules
//! listed before it in [`LAYERS`]; so no module imports one that imports it
//! back. Read from the source itself: every `crate::…` path (in `use` lines,
//! grouped imports and inline paths) in each file, attributed to the
//! top-level module the file belongs to.
//!
//! Inside the modules made of several files, `domain`, `log`, `engine` and
//! `http`, the files are layered the same way ([`FILES`]): each file may use only the
//! files listed before it, and none uses its module's `mod.rs`, which only
//! declares the files and re-exports.
//!
//! `cargo test --test layers` checks it; a new module or file must be placed
//! in its list, which is the architecture's order (docs/ARCHITECTURE.md).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Lowest first: each may use those before it.
const LAYERS: &[&str] = &[
    "domain", "clock", "log", "metrics", "outbound", "auth", "webhook", "engine", "ws", "http",
    "config", "app", "cli",
];

/// Within a module, lowest first: each file may use those before it.
const FILES: &[(&str, &[&str])] = &[
    (
        "log",
        &[
            "job_index",
            "store",
            "chain",
            "retention",
            "pages",
            "read",
            "archive",
            "sqlite_scan",
            "sqlite",
            "postgres",
            "owner",
            "verify",
            "write_behind",
            "fault",
            "open",
        ],
    ),
    (
        "domain",
        &[
            "close", "event", "notify", "stream", "state", "chain", "decide", "reaction",
            "deadline", "plan", "history", "summary",
        ],
    ),
    (
        "http",
        &[
            "request",
            "rate",
            "error",
            "connections",
            "state",
            "extract",
            "client",
            "demo",
            "health",
            "history",
            "jobs",
            "events",
            "upgrade",
            "stream",
            "durable",
            "support",
            "openapi",
            "routes",
        ],
    ),
    (
        "http/durable",
        &["document", "protocol", "streams", "jobs", "routes"],
    ),
    (
        "engine",
        &[
            "settings",
            "lease",
            "hub",
            "queue",
            "jobs",
            "checkpoint",
            "recover",
            "index",
            "listing",
            "notify",
            "scheduler",
            "retention",
            "writer",
            "membership",
            "api",
            "start",
        ],
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules named by `crate::` paths in `source`.
fn crate_paths(source: &str) -> BTreeSet<String> {
    names_after(source, "crate::")
}

/// The first names of the paths that start with `prefix` in `source`'s code
/// (comments left out).
fn names_after(source: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let code: String = source
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut rest = code.as_str();
    while let Some(i) = rest.find(prefix) {
        rest = &rest[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d::{e, f}}`: the first name of each item.
            let mut depth = 0;
            let mut item_start = true;
            let mut name = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => name.push(c),
                    _ if item_start && !name.is_empty() => {
                        out.insert(std::mem::take(&mut name));
                        item_start = false;
                    }
                    _ => {}
                }
            }
            if !name.is_empty() {
                out.insert(name);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut wrong = Vec::new();
    let mut seen = BTreeSet::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap();
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let own = rank(&module)
            .unwrap_or_else(|| panic!("src/{module} is not in LAYERS: place it in the order"));
        seen.insert(module.clone());
        for used in crate_paths(&std::fs::read_to_string(file).unwrap()) {
            if used == module {
                continue;
            }
            match rank(&used) {
                Some(r) if r < own => {}
                Some(_) => wrong.push(format!(
                    "{} uses crate::{used}, a layer above or beside `{module}`",
                    relative.display()
                )),
                None => wrong.push(format!(
                    "{} uses crate::{used}, which is not in LAYERS",
                    relative.display()
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "layers point one way:\n{}",
        wrong.join("\n")
    );
    for layer in LAYERS {
        assert!(
            seen.contains(*layer),
            "LAYERS names `{layer}`, which src/ lacks"
        );
    }
}

#[test]
fn every_file_of_a_layered_module_uses_only_the_files_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for (module, order) in FILES {
        let dir = src.join(module);
        let mut files = Vec::new();
        rust_files(&dir, &mut files);
        let rank = |name: &str| order.iter().position(|f| *f == name);
        for file in &files {
            let relative = file.strip_prefix(&dir).unwrap();
            let source = std::fs::read_to_string(file).unwrap();
            // A file's own tests (at its end) may use anything.
            let code = source.split("#[cfg(test)]").next().unwrap();
            let mut used = names_after(code, &format!("crate::{}::", module.replace('/', "::")));
            let (name, inside) = match relative.parent().and_then(|p| p.to_str()) {
                // A folder of the module is one file of it here (its own
                // files are checked by its own entry, when it has one).
                Some(folder) if !folder.is_empty() => (folder.to_owned(), true),
                _ => (
                    file.file_stem().unwrap().to_string_lossy().into_owned(),
                    false,
                ),
            };
            if name == "mod" {
                // `mod.rs` sits above every file; its `super` is the crate.
                continue;
            }
            if !inside {
                used.extend(names_after(code, "super::"));
            }
            let own = rank(&name).unwrap_or_else(|| {
                panic!("src/{module}/{name} is not in FILES: place it in the order")
            });
            for u in used {
                match rank(&u) {
                    Some(r) if r < own => {}
                    Some(r) if r == own && inside => {}
                    Some(_) => wrong.push(format!(
                        "src/{module}/{} uses `{u}`, a file above or beside it",
                        relative.display()
                    )),
                    None => wrong.push(format!(
                        "src/{module}/{} uses `{u}` from {module}/mod.rs, which sits above it",
                        relative.display()
                    )),
                }
            }
        }
        for f in order.iter() {
            assert!(
                dir.join(format!("{f}.rs")).exists() || dir.join(f).is_dir(),
                "FILES names {module}/{f}, which src/ lacks"
            );
        }
    }
    assert!(
        wrong.is_empty(),
        "files point one way:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checker_sees_every_form_of_path() {
    let source = "use crate::domain::{a, b};\nuse crate::{log::X, engine::{Y, Z}, clock};\nfn f() { crate::metrics::m(); }\n// crate::app in a comment\n";
    let found: Vec<String> = crate_paths(source).into_iter().collect();
    assert_eq!(found, ["clock", "domain", "engine", "log", "metrics"]);
}
