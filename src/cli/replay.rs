use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::{ReplayArgs, ReplayFormat};
use crate::domain::summary::{Summary, SummaryBuilder};
use crate::log::{EventEnvelope, Pages};

/// Prints `replayed N events` to a terminal's stderr about once a second.
struct Progress {
    enabled: bool,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new() -> Self {
        let now = Instant::now();
        Progress {
            enabled: std::io::stderr().is_terminal(),
            started: now,
            last: now,
        }
    }

    fn tick(&mut self, events: u64) {
        if self.enabled && self.last.elapsed() >= Duration::from_secs(1) {
            self.last = Instant::now();
            let rate = events as f64 / self.started.elapsed().as_secs_f64();
            eprint!("\rreplayed {events} events ({rate:.0}/s)");
        }
    }

    fn done(&self, events: u64) {
        if self.enabled && self.started.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "\rreplayed {events} events in {:.1} s",
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_existing(&args.database.url()).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut summary = SummaryBuilder::default();
    let mut progress = Progress::new();
    let mut count = 0u64;
    let mut pages = match args.job {
        Some(job) => Pages::job(store.events.as_ref(), &job.to_string(), args.from, i64::MAX),
        None => Pages::log(store.events.as_ref(), args.from),
    };
    while let Some(rows) = pages.next().await? {
        for row in rows {
            count += 1;
            match args.format {
                ReplayFormat::Ndjson => {
                    serde_json::to_writer(&mut out, &EventEnvelope::try_from(row)?)?;
                    out.write_all(b"\n")?;
                }
                ReplayFormat::Summary | ReplayFormat::Json => {
                    summary.apply(&row.decode_stored()?);
                }
            }
        }
        progress.tick(count);
    }
    store.events.close().await;
    progress.done(count);
    match args.format {
        ReplayFormat::Ndjson => {}
        ReplayFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &summary.finish())?;
            out.write_all(b"\n")?;
        }
        ReplayFormat::Summary => out.write_all(render(&summary.finish()).as_bytes())?,
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn render(s: &Summary) -> String {
    let opt = |v: Option<i64>| v.map_or("-".to_owned(), |v| format!("{v} ms"));
    let mut out = format!(
        "events            {}\njobs              {}\nsessions          {}\nconnects          {}\nreconnects        {} ({} resumed, {} not resumed)\n\
         events replayed   {}\ndisconnects       {}\nreplaced sockets  {}\nrejected attempts {}\nsocket errors     {}\n\
         grace expiries    {} ({:.1}% of sessions)\nabandoned         {} (expired while the job ran)\nreconnect gap     p50 {}, p90 {}, p99 {}, max {} (over {} reconnects)\nclose codes\n",
        s.events, s.jobs, s.sessions, s.connects, s.reconnects, s.resumed, s.not_resumed, s.replayed, s.disconnects,
        s.replaced, s.rejected, s.errors, s.grace_expiries, s.grace_expiry_rate * 100.0, s.abandoned,
        opt(s.gap_ms.p50), opt(s.gap_ms.p90), opt(s.gap_ms.p99), opt(s.gap_ms.max), s.gap_ms.count,
    );
    for c in &s.close_codes {
        out.push_str(&format!("  {:>5}  {}\n", c.code, c.count));
    }
    out
}
