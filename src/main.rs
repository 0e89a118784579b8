//! The `segmentti` binary: parse the command line, start logging on stderr, run the command,
//! turn its outcome into an exit code (the table is `cli/exit.rs`).

mod cli;

/// The fold and the builders allocate many small objects on two threads; mimalloc's per-thread
/// heaps cut the time glibc malloc took in profiles (a third of the run) to a fraction.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;
use segmentti::run::telemetry::{LogFormat, init_logging};

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let format = match cli.log_format {
        cli::LogFormat::Text => LogFormat::Text,
        cli::LogFormat::Json => LogFormat::Json,
    };
    init_logging(cli.verbose, format);
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            cli::exit::Exit::Failed.into()
        }
    }
}
