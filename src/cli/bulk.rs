//! `run --bulk`: the flags of a Bulk Data export run, turned into a [`BulkRun`] for
//! [`segmentti::run::bulk`], and what it did printed. A server that refuses the kick-off, a
//! status poll, a file or an incremental run's search for what it is (401, 403, 404, 405) stops
//! the run with exit code 8.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use segmentti::model::Plan;
use segmentti::run::bulk::{self, BulkRun};
use segmentti::run::files::Output;
use segmentti::source::bulk::{Exported, Level};

use super::exit::Exit;
use super::{ModelArgs, fixed_thresholds, print_file_run};

/// `run --bulk`: read by a Bulk Data `$export` instead of paged search.
#[derive(Debug, Args)]
pub struct BulkArgs {
    /// A FHIR server to export from (Bulk Data 2.0); results go to --out. Uses --auth,
    /// --token-file and --timeout like --server; with --state, later runs export only changes.
    #[arg(long, conflicts_with_all = ["input", "server"])]
    pub bulk: Option<url::Url>,
    /// Export the members of this Group (`Group/{id}/$export`).
    #[arg(long, requires = "bulk")]
    group: Option<String>,
    /// Without --group: `system` (`$export`) or `patient` (`Patient/$export`).
    #[arg(long, value_enum, default_value_t = BulkLevelArg::System, requires = "bulk")]
    bulk_level: BulkLevelArg,
    /// Download the export's files here first, resumably, and keep them, with the job file;
    /// a run killed while downloading keeps the files it finished. Without it each file is
    /// streamed into the run as it downloads, and only the job file is kept, in OUT/.bulk
    /// until the run succeeds: a run killed mid-export (the same command with the same
    /// --out) resumes the same job without a new export, and reads its files again.
    #[arg(long, requires = "bulk")]
    pub work_dir: Option<PathBuf>,
    /// Give up waiting for the export after this many seconds (the job is kept for the next run).
    #[arg(long, default_value_t = 3600, requires = "bulk")]
    bulk_timeout: u64,
    /// The longest wait between two status polls in seconds, whatever the server's
    /// Retry-After asks (a server asking for a minute is waited on for this long at most).
    #[arg(long, default_value_t = 60, requires = "bulk")]
    bulk_poll_max: u64,
}

/// `--bulk-level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BulkLevelArg {
    /// `[base]/$export`.
    System,
    /// `[base]/Patient/$export`.
    Patient,
}

/// `run --bulk`: export `base`, segment what it holds into `output.out`, move the checkpoint.
pub fn run(
    models: &ModelArgs,
    base: &url::Url,
    args: &BulkArgs,
    state: Option<PathBuf>,
    output: Output,
    thresholds: Option<&Path>,
    plans: &[Plan],
) -> Result<ExitCode> {
    let run = BulkRun {
        server: base.clone(),
        client: models.server.client(base)?,
        level: match (&args.group, args.bulk_level) {
            (Some(id), _) => Level::Group(id.clone()),
            (None, BulkLevelArg::System) => Level::System,
            (None, BulkLevelArg::Patient) => Level::Patient,
        },
        since: models.server.since.clone(),
        state,
        work_dir: args.work_dir.clone(),
        timeout: Duration::from_secs(args.bulk_timeout),
        max_poll_interval: Duration::from_secs(args.bulk_poll_max),
        search: models.server.search(None),
        limits: models.limits(),
        thresholds: fixed_thresholds(thresholds, output.shard, plans)?,
        output,
    };
    let outcome = match bulk::run(run, plans) {
        Ok(outcome) => outcome,
        Err(e) if e.is_refusal() => {
            eprintln!("error: {e}");
            return Ok(Exit::NotAllowed.into());
        }
        Err(e) => return Err(e.into()),
    };
    print!("{}", render(&outcome.exported, outcome.since.as_deref()));
    if let Some(changed) = outcome.changed {
        println!("Changed clients: {changed}");
    }
    match &outcome.run {
        Some(run) => print_file_run(run),
        None => Ok(ExitCode::SUCCESS),
    }
}

fn render(e: &Exported, since: Option<&str>) -> String {
    let mut out = format!(
        "Export: {} file(s) as of {}{}{}\n",
        e.files.len(),
        e.transaction_time.as_deref().unwrap_or("an unknown time"),
        since
            .map(|s| format!(", changes since {s}"))
            .unwrap_or_default(),
        if e.resumed { " (resumed)" } else { "" }
    );
    for (t, n) in &e.ignored {
        out.push_str(&format!(
            "  ignored: {n} file(s) of type {t}, not asked for\n"
        ));
    }
    if !e.errors.is_empty() {
        out.push_str(&format!("  export errors: {}\n", e.errors));
    }
    out
}
