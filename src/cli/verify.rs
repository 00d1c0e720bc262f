use std::process::ExitCode;

use crate::config::VerifyArgs;
use crate::log;

pub async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_existing(&args.database.url()).await?;
    let report = log::verify::verify(store.events.as_ref()).await?;
    store.events.close().await;
    match report.first_broken {
        None => {
            println!(
                "ok: {} events in {} jobs, every hash chain intact",
                report.events, report.jobs
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(b) => {
            println!(
                "BROKEN: event at position {} (job {}, seq {}): {}",
                b.position, b.job_id, b.seq, b.problem
            );
            println!(
                "{} events were checked before it; events after it were not checked",
                report.events - 1
            );
            Ok(ExitCode::from(1))
        }
    }
}
