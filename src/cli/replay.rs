use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::{ReplayArgs, ReplayFormat};
use crate::domain::summary::{Summary, SummaryBuilder};
use crate::log::archive::{Archive, Merged};
use crate::log::{EventEnvelope, EventRow, Pages};

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
    let mut archived = match &args.archive {
        Some(dir) => Some(Merged::open(&Archive::open_existing(dir)?)?),
        None => None,
    };
    let job = args.job.map(|j| j.to_string());
    // An archived row belongs in this replay if it is of the job asked for
    // (after its seq `from`), or after position `from`.
    let wanted = |row: &EventRow| match &job {
        Some(job) => row.job_id == *job && row.seq > args.from,
        None => row.position > args.from,
    };
    let mut emit = |row: EventRow, out: &mut dyn Write| -> anyhow::Result<()> {
        count += 1;
        progress.tick(count);
        match args.format {
            ReplayFormat::Ndjson => {
                serde_json::to_writer(&mut *out, &EventEnvelope::try_from(row)?)?;
                out.write_all(b"\n")?;
            }
            ReplayFormat::Summary | ReplayFormat::Json => {
                summary.apply(&row.decode_stored()?);
            }
        }
        Ok(())
    };
    // Archived rows go before each log row with a higher position, and
    // after the last.
    let mut archived_before = |before: i64| -> Vec<anyhow::Result<EventRow>> {
        let mut rows = Vec::new();
        while let Some(row) = archived.as_mut().and_then(|a| a.next_before(before)) {
            match row {
                Ok(row) if !wanted(&row) => {}
                other => rows.push(other.map_err(Into::into)),
            }
        }
        rows
    };
    while let Some(rows) = pages.next().await? {
        for row in rows {
            for earlier in archived_before(row.position) {
                emit(earlier?, &mut out)?;
            }
            emit(row, &mut out)?;
        }
    }
    for later in archived_before(i64::MAX) {
        emit(later?, &mut out)?;
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
