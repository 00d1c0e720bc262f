//! The client docs name exactly what the server does: every query parameter,
//! message type, error code and close (code and reason) in FRONTEND_HANDOFF.md
//! and PROTOCOL.md is checked against the constants the server uses, and
//! rejoin.js's stop reasons against the server's.

use std::collections::BTreeSet;

use rejoin::ws::protocol::param;
use rejoin::ws::protocol::{close, error_code, CLIENT_MESSAGES, SERVER_MESSAGES};

fn doc(name: &str) -> String {
    std::fs::read_to_string(format!("{}/docs/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The rows of the Markdown table whose header line is `header`.
fn table(doc: &str, header: &str) -> Vec<Vec<String>> {
    let mut lines = doc.lines().skip_while(|l| l.trim() != header);
    assert!(lines.next().is_some(), "no table headed {header:?}");
    lines
        .skip(1) // the | --- | line
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

/// The first `code span` in a cell.
fn ticked(cell: &str) -> Option<String> {
    let start = cell.find('`')? + 1;
    let end = start + cell[start..].find('`')?;
    Some(cell[start..end].to_owned())
}

fn first_column(doc: &str, header: &str) -> BTreeSet<String> {
    table(doc, header)
        .iter()
        .map(|row| ticked(&row[0]).unwrap_or_else(|| panic!("no `name` in {row:?}")))
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn closes(pairs: &[(u16, &str)]) -> BTreeSet<(u16, String)> {
    pairs.iter().map(|(c, r)| (*c, r.to_string())).collect()
}

#[test]
fn the_handoff_names_every_parameter_message_and_error_code() {
    let d = doc("FRONTEND_HANDOFF.md");
    assert_eq!(first_column(&d, "| parameter | value |"), set(param::ALL));
    assert_eq!(
        first_column(&d, "| type | when | what to do |"),
        set(SERVER_MESSAGES)
    );
    assert_eq!(first_column(&d, "| type | why |"), set(CLIENT_MESSAGES));
    assert_eq!(first_column(&d, "| code | meaning |"), set(error_code::ALL));
}

#[test]
fn the_handoffs_close_codes_are_the_ones_the_server_sends() {
    let d = doc("FRONTEND_HANDOFF.md");
    let documented: BTreeSet<(u16, String)> = table(&d, "| code | reason | reconnect? |")
        .iter()
        .map(|row| (row[0].parse().unwrap(), ticked(&row[1]).unwrap()))
        .collect();
    assert_eq!(documented, closes(close::SENT));
}

#[test]
fn the_protocols_close_table_matches_the_server() {
    let d = doc("PROTOCOL.md");
    let rows = table(
        &d,
        "| code | reason | sent by | what the client should do |",
    );
    let documented: BTreeSet<(u16, String)> = rows
        .iter()
        .filter_map(|row| Some((row[0].parse().unwrap(), ticked(&row[1])?)))
        .collect();
    let known: BTreeSet<(u16, String)> = closes(close::SENT)
        .union(&closes(close::RECORDED_ONLY))
        .cloned()
        .collect();
    assert!(
        documented.is_subset(&known),
        "unknown closes documented: {:?}",
        documented.difference(&known)
    );
    assert!(
        closes(close::SENT).is_subset(&documented),
        "sent closes missing: {:?}",
        closes(close::SENT).difference(&documented)
    );
    for (code, reason) in close::RECORDED_ONLY {
        assert!(
            d.contains(&format!("{code} `{reason}`")),
            "PROTOCOL.md does not mention {code} `{reason}`"
        );
    }
}

#[test]
fn rejoin_js_stops_on_the_servers_own_reasons() {
    let js = rejoin::http::client::REJOIN_JS;
    for (name, value) in [
        ("JOB_FINISHED", close::JOB_FINISHED),
        ("REPLACED", close::REPLACED),
    ] {
        assert!(
            js.contains(&format!(r#"export const {name} = "{value}";"#)),
            "rejoin.js's {name} is not {value:?}"
        );
    }
    for param in param::ALL {
        assert!(
            js.contains(&format!("\"{param}\"")) || js.contains(&format!("{param}:")),
            "rejoin.js never sends {param}"
        );
    }
}

/// The code block of `lang` under the heading that starts with `heading`.
fn sample(doc: &str, heading: &str, lang: &str) -> String {
    let at = doc.find(heading).unwrap_or_else(|| panic!("no {heading}"));
    let rest = &doc[at..];
    let open = format!("```{lang}\n");
    let start = rest.find(&open).unwrap() + open.len();
    let end = start + rest[start..].find("\n```").unwrap();
    rest[start..end].to_owned()
}

/// Neither the Swift nor the Kotlin sample can be compiled here (no
/// toolchain in the registries this machine reaches): their reconnect rules
/// are checked against the protocol's constants instead.
#[test]
fn the_native_samples_follow_the_reconnect_rules() {
    let d = doc("FRONTEND_HANDOFF.md");
    let swift = sample(&d, "## Swift (iOS)", "swift");
    let kotlin = sample(&d, "## Kotlin (Android)", "kotlin");
    for (name, code) in [("Swift", &swift), ("Kotlin", &kotlin)] {
        // Stops on the server's own reasons.
        for reason in [close::JOB_FINISHED, close::REPLACED] {
            assert!(
                code.contains(&format!("\"{reason}\"")),
                "{name} never stops on {reason:?}"
            );
        }
        // Sends every resume parameter (the token travels in a header).
        for p in param::ALL.iter().filter(|p| **p != param::TOKEN) {
            assert!(code.contains(&format!("\"{p}\"")), "{name} never sends {p}");
        }
        assert!(code.contains("\"Bearer $token\"") || code.contains("\"Bearer \\(token)\""));
        assert!(
            !code.contains("name: \"token\"") && !code.contains("\"token\", token"),
            "{name} puts the token in the URL"
        );
        // Stops on refusals that cannot pass, waits on those that say when.
        assert!(code.contains("400, 403, 404"), "{name}'s refusals");
        assert!(
            !code.contains("404, 409"),
            "{name} stops on 409, which the handoff retries"
        );
        assert!(
            code.contains("429, 503") && code.contains("\"Retry-After\""),
            "{name} ignores Retry-After"
        );
        // The backoff of the handoff's table: full jitter, 0.5 s base, 20 s cap.
        assert!(
            code.contains("0.5") || code.contains("500.0"),
            "{name}'s backoff base"
        );
        assert!(
            code.contains("20.0") || code.contains("20_000.0"),
            "{name}'s backoff cap"
        );
        // A token that cannot be renewed ends the client instead of a loop,
        // and one is renewed before it expires.
        assert!(
            code.contains("finish(.failed); done(false)")
                || code.contains("finish(State.FAILED); done(false)"),
            "{name} reconnects forever on a refused token"
        );
        assert!(
            code.contains("planRenewal()"),
            "{name} never renews before expiry"
        );
        // A live client that is woken pings at once instead of waiting.
        assert!(
            code.contains("== .live { ping(); return }")
                || code.contains("== State.LIVE) { ping(); return }"),
            "{name}'s wake does nothing while live"
        );
        // The resume position survives the app.
        assert!(
            code.contains("sessionId")
                && (code.contains("UserDefaults") || code.contains("SharedPreferences"))
        );
    }
    // Swift: the session is invalidated (a URLSession keeps its delegate),
    // and the receive loop goes on past frames it cannot read.
    assert!(swift.contains("invalidateAndCancel()"));
    assert!(swift.contains("case .success:\n                self.receive(on: task)"));
    // Kotlin: no client or thread pool of its own; callbacks on the main looper.
    assert!(!kotlin.contains("OkHttpClient.Builder()") && !kotlin.contains("Executors."));
    assert!(kotlin.contains("Handler(Looper.getMainLooper())"));
    assert!(d.contains("runs on the **main queue**") && d.contains("runs on the **main thread**"));
}
