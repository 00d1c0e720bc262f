use std::io::Write;
use std::process::ExitCode;

use super::logs;
use crate::app::{shutdown_signal, Application, ShutdownTimedOut};
use crate::config::{LogFormat, ServeArgs};

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let format = args.log_format;
    logs::init(format);
    match serve(args).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            logs::fatal(format, &e);
            // The tasks still running (a hung database) are not waited for.
            if e.is::<ShutdownTimedOut>() {
                std::process::exit(1)
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let format = args.log_format;
    let app = Application::build(args).await?;
    let stop = shutdown_signal();
    let addr = app.local_addr();
    tracing::info!(%addr, "rejoin listening");
    announce(format, addr)?;
    app.run(stop).await
}

/// The first line on stdout is the address, for scripts and tests that start
/// the server on port 0: `rejoin listening on http://ADDR`, or in JSON a log
/// line whose `url` is that address.
fn announce(format: LogFormat, addr: std::net::SocketAddr) -> std::io::Result<()> {
    let url = format!("http://{addr}");
    let message = format!("rejoin listening on {url}");
    let mut out = std::io::stdout().lock();
    match format {
        LogFormat::Text => writeln!(out, "{message}")?,
        LogFormat::Json => writeln!(out, "{}", logs::line("INFO", &message, "url", url))?,
    }
    out.flush()
}
