use std::io::Write;
use std::process::ExitCode;

use crate::app::{shutdown_signal, Application, ShutdownTimedOut};
use crate::config::ServeArgs;

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    super::logs::init(args.log_format);
    let app = Application::build(args).await?;
    let stop = shutdown_signal();
    let addr = app.local_addr();
    tracing::info!(%addr, "rejoin listening");
    // The first line on stdout is the address, for scripts and tests that
    // start the server on port 0.
    let mut out = std::io::stdout().lock();
    writeln!(out, "rejoin listening on http://{addr}")?;
    out.flush()?;
    drop(out);
    match app.run(stop).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // The tasks still running (a hung database) are not waited for.
        Err(e) if e.is::<ShutdownTimedOut>() => {
            eprintln!("rejoin: {e:#}");
            std::process::exit(1)
        }
        Err(e) => Err(e),
    }
}
