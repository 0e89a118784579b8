//! The `segmentti` binary: parse the command line, start logging on stderr, run the command,
//! turn its outcome into an exit code (the table is `cli/exit.rs`).

mod cli;

/// The fold and the builders allocate many small objects on two threads; mimalloc's per-thread
/// heaps cut the time glibc malloc took in profiles (a third of the run) to a fraction.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let default = match cli.verbose {
        // Progress lines are for operators of runs off a terminal; -v adds the rest.
        0 => "warn,segmentti::progress=info",
        1 => "info",
        _ => "debug",
    };
    let filter =
        EnvFilter::try_from_env("SEGMENTTI_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        cli::LogFormat::Text => builder.with_ansi(colour()).init(),
        cli::LogFormat::Json => builder.json().with_ansi(false).init(),
    }
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            cli::exit::Exit::Failed.into()
        }
    }
}

/// Whether text logs may carry ANSI colour: only on a terminal, and not when `NO_COLOR` is set
/// to anything but the empty string (no-color.org). A file or pipe gets plain text.
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
