use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match rejoin::config::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => refused(e),
    };
    match rejoin::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rejoin: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A command line clap refused (or `--help`): reported as clap does, or as a
/// JSON log line when JSON logs were asked for.
fn refused(e: clap::Error) -> ! {
    use rejoin::cli::logs;
    if e.use_stderr() && logs::requested_format() == rejoin::config::LogFormat::Json {
        let error = e.to_string().trim().to_owned();
        eprintln!(
            "{}",
            logs::line("ERROR", &e.kind().to_string(), "error", error)
        );
        std::process::exit(e.exit_code());
    }
    e.exit()
}
