//! Log output on standard error: text for people, or one flat JSON object
//! per line for collectors. In JSON every line the process writes is one:
//! the address announced on stdout, a fatal error, a panic, a refused
//! command line. A JSON line holds `timestamp`, `level`, `target`,
//! `message`, the event's own fields, and the fields of every span it was
//! written in (`request_id` from the `http` span, `job` and `session` from a
//! socket's), innermost winning. Nothing in a log line comes from a raw URI
//! or header, so tokens and secrets never reach it.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the subscriber. `REJOIN_LOG` (or `RUST_LOG`) sets the filter,
/// default `info` (PostgreSQL notices such as "relation already exists,
/// skipping" only from `warn`).
pub fn init(format: LogFormat) {
    let filter = std::env::var("REJOIN_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info,sqlx::postgres::notice=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => {
            std::panic::set_hook(Box::new(|info| {
                let panic = info.to_string();
                eprintln!("{}", line("ERROR", "the process panicked", "panic", panic));
            }));
            builder
                .fmt_fields(JsonFields::new())
                .event_format(FlatJson)
                .try_init()
        }
    };
}

/// One line in the form of the JSON log, for what is written outside the
/// subscriber: `timestamp`, `level`, `target` `rejoin`, `message`, and the
/// one field that says the rest (`key`: `value`).
pub fn line(level: &str, message: &str, key: &str, value: impl Into<Value>) -> String {
    let mut line = Map::new();
    line.insert("timestamp".into(), now().into());
    line.insert("level".into(), level.into());
    line.insert("target".into(), "rejoin".into());
    line.insert("message".into(), message.into());
    line.insert(key.into(), value.into());
    Value::Object(line).to_string()
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Writes why the process stops to stderr: `rejoin: …` in text, an `ERROR`
/// line in JSON.
pub fn fatal(format: LogFormat, error: &anyhow::Error) {
    match format {
        LogFormat::Text => eprintln!("rejoin: {error:#}"),
        LogFormat::Json => {
            let error = format!("{error:#}");
            eprintln!("{}", line("ERROR", "rejoin stopped", "error", error));
        }
    }
}

/// The log format the command line or the environment asks for, read before
/// the command line is parsed (to report a refused one in that format).
pub fn requested_format() -> LogFormat {
    let args: Vec<String> = std::env::args().collect();
    let flag = args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix("--log-format=")
            .map(str::to_owned)
            .or_else(|| (a == "--log-format").then(|| args.get(i + 1).cloned().unwrap_or_default()))
    });
    let asked = flag.or_else(|| std::env::var("REJOIN_LOG_FORMAT").ok());
    if asked.as_deref() == Some("json") {
        LogFormat::Json
    } else {
        LogFormat::Text
    }
}

/// The JSON line format.
struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("timestamp".into(), now().into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                    line.extend(fields);
                }
            }
        }
        event.record(&mut Fields(&mut line));
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// Collects an event's fields into the line.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), value.to_string().into());
    }
}
