use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    large_buffers_from_the_system();
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

/// Buffers of a megabyte or more (a large stream append, read or written)
/// are mapped from the system and given back to it when freed. glibc's own
/// threshold starts at 128 KiB but climbs to whatever size was last freed
/// (up to 32 MiB), after which each such buffer is carved from a thread's
/// heap and held there: with Durable Streams' 8 MiB appends that kept
/// hundreds of MiB resident after the work was done (a read of 320 MiB of
/// them peaked at 176 MiB RSS, 64 MiB with this). `MALLOC_MMAP_THRESHOLD_`
/// in the environment overrides it.
fn large_buffers_from_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only sets an allocator parameter.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        }
    }
}
