use std::process::ExitCode;

use crate::config::VerifyArgs;
use crate::log;
use crate::log::archive::Archive;

pub async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_existing(&args.database.url()).await?;
    let report = log::verify::verify(store.events.as_ref()).await?;
    let backend = store.events.backend();
    store.events.close().await;
    if let Some(b) = &report.first_broken {
        println!(
            "BROKEN: event at position {} (job {}, seq {}): {}",
            b.position, b.job_id, b.seq, b.problem
        );
        println!(
            "{} events were checked before it; events after it were not checked",
            report.events - 1
        );
        return Ok(ExitCode::from(1));
    }
    println!(
        "ok: {} events in {} jobs, every hash chain intact",
        report.events, report.jobs
    );
    if report.removed_units > 0 || report.gaps > 0 {
        println!(
            "retention removed {} units ({} events); {} positions are missing below the last",
            report.removed_units, report.removed_events, report.gaps
        );
    }
    // SQLite never skips a position; PostgreSQL's sequence may (an append
    // rolled back), so there gaps can only be at least what was removed.
    let unaccounted = report.gaps.saturating_sub(report.removed_events);
    if backend == "sqlite" && unaccounted > 0 {
        println!(
            "BROKEN: {unaccounted} missing positions are not accounted for by retention's records"
        );
        return Ok(ExitCode::from(1));
    }
    if let Some(dir) = &args.archive {
        let archive = Archive::open_existing(dir)?;
        let checked = log::verify::verify_archive(&archive, Some(&report))?;
        if let Some(problem) = checked.problem {
            println!("BROKEN archive: {problem}");
            return Ok(ExitCode::from(1));
        }
        println!(
            "ok: archive {}: {} files, {} units, {} events, every chain intact and matching the log's records",
            dir.display(),
            checked.files,
            checked.units,
            checked.events
        );
    }
    Ok(ExitCode::SUCCESS)
}
