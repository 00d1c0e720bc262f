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
