//! `run --bulk`: the command line of a Bulk Data export run. A full export's files are
//! streamed into the fold as they download, or, with `--work-dir`, downloaded there first
//! (resumably, and kept) and read like any NDJSON input. With a checkpoint (`--state`), the
//! next run exports only what changed since the last export's transaction time (`_since`) and
//! reads the clients it touches again, whole, by search on the same server, with the population
//! thresholds of the last full run. Results go to `--out` either way. A server that refuses the
//! kick-off, a status poll or a file for what it is (401, 403, 404, 405) stops the run with exit
//! code 8 ([`exit_on_refusal`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

use segmentti::fhir::FhirClient;
use segmentti::model::Plan;
use segmentti::run::pipeline::{BulkInput, Input, PipelineError, ServerInput};
use segmentti::run::shard::Thresholds;
use segmentti::run::state::State;
use segmentti::run::summary::ModelSummary;
use segmentti::source::Batch;
use segmentti::source::bulk::{self, BulkError, BulkOptions, Exported, Level};
use segmentti::source::search::SearchOptions;

use super::RunArgs;
use super::exit::Exit;

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

/// An export done, and how the run reads it.
#[derive(Debug)]
pub struct BulkRun {
    exported: Exported,
    client: FhirClient,
    work_dir: PathBuf,
    /// The checkpoint read, when `--state` was given.
    state: Option<State>,
    /// Whether this run read only what changed.
    incremental: bool,
    /// What the run reads.
    pub input: Input,
    /// The thresholds of the last full run, for an incremental one.
    pub thresholds: Option<Thresholds>,
}

/// Runs (or resumes) the export; `None` when an incremental export found nothing changed (the
/// checkpoint then moves on, and there is nothing to segment).
pub fn prepare(args: &RunArgs, base: &url::Url, plans: &[Plan]) -> Result<Option<BulkRun>> {
    let state = match &args.state {
        Some(path) => State::read(path)?.filter(|s| s.server == base.as_str()),
        None => None,
    };
    let since = args
        .models
        .server
        .since
        .clone()
        .or_else(|| state.as_ref().and_then(|s| s.since.clone()));
    let client = args.models.server.client(base)?;
    let work_dir = args
        .bulk
        .work_dir
        .clone()
        .unwrap_or_else(|| args.out.join(".bulk"));
    let options = BulkOptions {
        level: match (&args.bulk.group, args.bulk.bulk_level) {
            (Some(id), _) => Level::Group(id.clone()),
            (None, BulkLevelArg::System) => Level::System,
            (None, BulkLevelArg::Patient) => Level::Patient,
        },
        types: segmentti::model::plan::kinds_read(plans)
            .into_iter()
            .map(|k| k.as_str().to_owned())
            .collect(),
        since: since.clone(),
        work_dir: work_dir.clone(),
        timeout: std::time::Duration::from_secs(args.bulk.bulk_timeout),
        max_poll_interval: std::time::Duration::from_secs(args.bulk.bulk_poll_max.max(1)),
        download_timeout: std::time::Duration::from_secs(3600),
    };
    let runtime = segmentti::fhir::runtime()?;
    let exported = runtime.block_on(bulk::export(&client, &options))?;
    print!("{}", render(&exported, since.as_deref()));
    let downloaded = match args.bulk.work_dir {
        Some(_) => Some(runtime.block_on(bulk::download(&client, &exported, &options))?),
        None => None,
    };
    let mut run = BulkRun {
        input: match &downloaded {
            Some(dir) => Input::Files(dir.clone(), args.models.limits()),
            None => Input::Bulk(Box::new(BulkInput {
                client: client.clone(),
                exported: exported.clone(),
                download_timeout: options.download_timeout,
                limits: args.models.limits(),
            })),
        },
        exported,
        client,
        work_dir,
        state,
        incremental: since.is_some(),
        thresholds: None,
    };
    if !run.incremental {
        return Ok(Some(run));
    }
    let mut touched = BTreeSet::new();
    if !run.exported.files.is_empty() {
        let mut collect =
            |batch: Batch| bulk::touched(&batch, &mut touched).map_err(|e| e.to_string());
        match &downloaded {
            Some(dir) => segmentti::source::files::read(dir, args.models.limits(), collect)?,
            None => runtime.block_on(bulk::stream(
                &run.client,
                &run.exported,
                options.download_timeout,
                args.models.limits(),
                &mut collect,
            ))?,
        }
    }
    println!("Changed clients: {}", touched.len());
    if touched.is_empty() {
        run.finish(args, &[])?;
        return Ok(None);
    }
    let missing: Vec<&str> = plans
        .iter()
        .filter(|p| !p.percentiles.is_empty())
        .map(|p| p.mapping.id.as_str())
        .filter(|id| {
            !run.state
                .as_ref()
                .is_some_and(|s| s.thresholds.contains_key(*id))
        })
        .collect();
    if !missing.is_empty() {
        bail!(
            "an incremental export needs the population thresholds of a full run for model(s) {}\nhint: run once without --since (and with --state) to make a full export",
            missing.join(", ")
        );
    }
    run.thresholds = run.state.as_ref().map(|s| s.thresholds.clone());
    run.input = Input::Server(Box::new(ServerInput {
        client: run.client.clone(),
        options: SearchOptions {
            page_size: args.models.server.page_size,
            concurrency: args.models.server.concurrency,
            patients: touched.into_iter().collect(),
            since: None,
        },
    }));
    Ok(Some(run))
}

impl BulkRun {
    /// Files of types not asked for, per type: neither downloaded nor read.
    pub fn ignored_files(&self) -> &BTreeMap<String, usize> {
        &self.exported.ignored
    }

    /// After the run: deletes the job, removes a default work directory, and moves the
    /// checkpoint to the export's transaction time on the server's clock (keeping a full run's
    /// thresholds); an export of unknown time leaves it where it was.
    pub fn finish(self, args: &RunArgs, models: &[ModelSummary]) -> Result<()> {
        segmentti::fhir::runtime()?.block_on(bulk::finish(
            &self.client,
            &self.exported,
            &self.work_dir,
        ));
        if args.bulk.work_dir.is_none() {
            std::fs::remove_dir_all(&self.work_dir)?;
        }
        if let (Some(path), Some(base)) = (&args.state, &args.bulk.bulk) {
            let mut next = self.state.unwrap_or_default();
            next.advance(
                base.as_str(),
                self.exported.next_since.clone(),
                models.iter().filter(|_| !self.incremental),
            );
            next.write(path)?;
        }
        Ok(())
    }
}

/// A run that failed because the server refused a request for what it is (the export's
/// kick-off, poll or a file: [`BulkError::is_refusal`]; or an incremental run's search of the
/// clients it touched: [`PipelineError::is_refusal`]) ends with its message and exit code 8,
/// like a server run; any other error is handed back as it is.
pub fn exit_on_refusal(e: anyhow::Error) -> Result<ExitCode> {
    let refused = e.chain().any(|c| match c.downcast_ref::<PipelineError>() {
        Some(p) => p.is_refusal(),
        None => c
            .downcast_ref::<BulkError>()
            .is_some_and(BulkError::is_refusal),
    });
    if !refused {
        return Err(e);
    }
    eprintln!("error: {e:#}");
    Ok(Exit::NotAllowed.into())
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
