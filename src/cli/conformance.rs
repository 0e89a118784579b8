//! `segmentti conformance --server URL [--auth …] [--json FILE] [--junit FILE]`: runs
//! [`segmentti::conformance`] against a server, prints the table on stdout and writes the
//! reports asked for. The connection flags are those of every server command
//! ([`super::server::ServerArgs`]); the search-tuning ones among them do not apply here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use segmentti::conformance::{self, report};
use segmentti::fhir::day::Day;

use super::exit::Exit;
use super::server::ServerArgs;

/// `conformance`.
#[derive(Debug, Args)]
pub struct ConformanceArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the report as JUnit XML to this file, for CI pipelines.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// The model whose Observation and Flags are written for the test client; default: the
    /// built-in model.
    #[arg(long)]
    model: Option<PathBuf>,
}

/// Runs the kit; exit code 6 when a required check failed.
pub fn run(args: &ConformanceArgs) -> Result<ExitCode> {
    let url = match args.server.server.as_slice() {
        [url] => url,
        [] => bail!(
            "conformance needs --server\nhint: give the FHIR service base, such as --server https://fhir.example.org/fhir"
        ),
        _ => bail!("conformance checks one server at a time\nhint: run it once per --server"),
    };
    let mapping = match &args.model {
        Some(path) => segmentti::model::load_file(path)?,
        None => super::default_mapping()?,
    };
    let client = args.server.client(url)?;
    let today = Day::from_date(time::OffsetDateTime::now_utc().date());
    let report =
        segmentti::fhir::runtime()?.block_on(conformance::run(&client, &mapping, today))?;
    print!("{}", report::table(&report));
    if let Some(path) = &args.json {
        write(path, &serde_json::to_string_pretty(&report)?)?;
    }
    if let Some(path) = &args.junit {
        write(path, &report::junit(&report)?)?;
    }
    Ok(if report.required_failures().next().is_some() {
        Exit::Nonconformant.into()
    } else {
        ExitCode::SUCCESS
    })
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
