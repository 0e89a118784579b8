//! A run over a Bulk Data export, as a library call: export (or resume the export a killed run
//! started), read the files into a file run ([`super::files`]), then delete the job and move the
//! checkpoint on to the export's transaction time, on the server's clock.
//!
//! A full export's files are streamed into the fold as they download or, with a work directory,
//! downloaded there first (resumably, and kept) and read like any NDJSON input. With a
//! checkpoint that has a `since`, the export holds only what changed: the clients it touches are
//! read again, whole, by search on the same server, and assessed with the population thresholds
//! of the last full run. This module prints nothing; what it did is its [`Outcome`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fhir::FhirClient;
use crate::model::Plan;
use crate::model::plan::kinds_read;
use crate::run::files::{self, FileRun, Output};
use crate::run::pipeline::{BulkInput, Input, PipelineError, ServerInput};
use crate::run::shard::Thresholds;
use crate::run::state::{State, StateError};
use crate::run::summary::ModelSummary;
use crate::source::Batch;
use crate::source::bulk::{self, BulkError, BulkOptions, Exported, Level};
use crate::source::files::{Limits, SourceError};
use crate::source::search::SearchOptions;

/// How long one output file may take to download.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(3600);

/// What a Bulk Data run exports, how it reads it, and where it writes.
#[derive(Debug)]
pub struct BulkRun {
    /// The server as given: the checkpoint names it.
    pub server: url::Url,
    /// Its client, with its credentials.
    pub client: FhirClient,
    /// Which population to export.
    pub level: Level,
    /// Export only what changed since this instant; without it, the checkpoint's.
    pub since: Option<String>,
    /// The checkpoint file: read before, moved on after a completed run.
    pub state: Option<PathBuf>,
    /// Download the files here first, resumably, and keep them. Without it they are streamed,
    /// and the job file is kept in `{out}/.bulk` until the run succeeds.
    pub work_dir: Option<PathBuf>,
    /// Give up waiting for the export after this long (the job is kept for the next run).
    pub timeout: Duration,
    /// The longest wait between two status polls, whatever `Retry-After` asks.
    pub max_poll_interval: Duration,
    /// Paging of the search that reads an incremental export's clients again.
    pub search: SearchOptions,
    /// What one line and one file may cost.
    pub limits: Limits,
    /// The population thresholds of a full run that is not the population (a shard's); an
    /// incremental run takes the checkpoint's.
    pub thresholds: Option<Thresholds>,
    /// Where and how the results are written.
    pub output: Output,
}

/// What a Bulk Data run did.
#[derive(Debug)]
pub struct Outcome {
    /// The export, complete on the server.
    pub exported: Exported,
    /// The `_since` the export was asked with.
    pub since: Option<String>,
    /// For an incremental export, how many clients it touched.
    pub changed: Option<usize>,
    /// The file run, unless an incremental export touched no client.
    pub run: Option<files::Outcome>,
}

/// Why a Bulk Data run failed.
#[derive(Debug, thiserror::Error)]
pub enum BulkRunError {
    /// The export failed.
    #[error(transparent)]
    Export(#[from] BulkError),
    /// An export's downloaded files could not be read.
    #[error(transparent)]
    Read(#[from] SourceError),
    /// The run over the export failed.
    #[error(transparent)]
    Run(#[from] PipelineError),
    /// The checkpoint could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// An incremental export, and the checkpoint holds no thresholds for these models.
    #[error(
        "an incremental export needs the population thresholds of a full run for model(s) {}\nhint: run once without --since (and with --state) to make a full export",
        .0.join(", ")
    )]
    NoThresholds(Vec<String>),
    /// The HTTP runtime could not start, or the default work directory could not be removed.
    #[error("{what}: {source}\nhint: check the disk and the process's limits")]
    Io {
        /// What failed.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl BulkRunError {
    /// Whether the server refused the kick-off, a poll, a file or an incremental run's search
    /// for what it is (401, 403, 404, 405): no run does better until credentials, scopes or the
    /// base URL change.
    pub fn is_refusal(&self) -> bool {
        match self {
            Self::Export(e) => e.is_refusal(),
            Self::Run(e) => e.is_refusal(),
            _ => false,
        }
    }
}

/// Exports (or resumes the export of) `run.client`'s server, runs `plans` over it into
/// `run.output.out`, deletes the job and moves the checkpoint on.
pub fn run(run: BulkRun, plans: &[Plan]) -> Result<Outcome, BulkRunError> {
    let state = match &run.state {
        Some(path) => State::read(path)?.filter(|s| s.server == run.server.as_str()),
        None => None,
    };
    let since = (run.since.clone()).or_else(|| state.as_ref().and_then(|s| s.since.clone()));
    let work_dir = (run.work_dir.clone()).unwrap_or_else(|| run.output.out.join(".bulk"));
    let options = BulkOptions {
        level: run.level.clone(),
        types: kinds_read(plans)
            .into_iter()
            .map(|k| k.as_str().to_owned())
            .collect(),
        since: since.clone(),
        work_dir: work_dir.clone(),
        timeout: run.timeout,
        max_poll_interval: run.max_poll_interval.max(Duration::from_secs(1)),
        download_timeout: DOWNLOAD_TIMEOUT,
    };
    let export = export(&run, &options)?;
    let exported = export.exported;
    let changed = export.touched.as_ref().map(BTreeSet::len);
    let (input, thresholds) = match export.touched {
        None => {
            let input = match export.downloaded {
                Some(dir) => Input::Files(dir, run.limits),
                None => Input::Bulk(Box::new(BulkInput {
                    client: run.client.clone(),
                    exported: exported.clone(),
                    download_timeout: DOWNLOAD_TIMEOUT,
                    limits: run.limits,
                })),
            };
            (input, run.thresholds.clone())
        }
        Some(touched) if touched.is_empty() => {
            finish(&run, &exported, &work_dir, state, &[])?;
            return Ok(Outcome {
                exported,
                since,
                changed,
                run: None,
            });
        }
        Some(touched) => {
            let missing: Vec<String> = (plans.iter())
                .filter(|p| !p.percentiles.is_empty())
                .map(|p| p.mapping.id.to_string())
                .filter(|id| {
                    !state
                        .as_ref()
                        .is_some_and(|s| s.thresholds.contains_key(id))
                })
                .collect();
            if !missing.is_empty() {
                return Err(BulkRunError::NoThresholds(missing));
            }
            let input = Input::Server(Box::new(ServerInput {
                client: run.client.clone(),
                options: SearchOptions {
                    patients: touched.into_iter().collect(),
                    since: None,
                    ..run.search.clone()
                },
            }));
            (input, state.as_ref().map(|s| s.thresholds.clone()))
        }
    };
    let outcome = files::run(
        FileRun {
            input,
            thresholds,
            ignored_files: exported.ignored.clone(),
            output: run.output.clone(),
        },
        plans,
    )?;
    let full_run: &[ModelSummary] = match since {
        None => &outcome.summary.models,
        Some(_) => &[],
    };
    finish(&run, &exported, &work_dir, state, full_run)?;
    Ok(Outcome {
        exported,
        since,
        changed,
        run: Some(outcome),
    })
}

/// An export complete on the server, and what of it was read before the run.
struct Export {
    exported: Exported,
    /// Where its files were downloaded, with a work directory.
    downloaded: Option<PathBuf>,
    /// For an incremental export, the clients it touches.
    touched: Option<BTreeSet<String>>,
}

/// Runs the export, downloads its files into a work directory if there is one, and reads an
/// incremental export's clients.
///
/// The runtime is this function's alone and is dropped when it returns: the client's pooled
/// connections belong to the runtime that opened them, and one kept alive but no longer driven
/// would leave the run's next request on such a connection waiting for ever.
fn export(run: &BulkRun, options: &BulkOptions) -> Result<Export, BulkRunError> {
    let runtime = runtime()?;
    let exported = runtime.block_on(bulk::export(&run.client, options))?;
    let downloaded = match run.work_dir {
        Some(_) => Some(runtime.block_on(bulk::download(&run.client, &exported, options))?),
        None => None,
    };
    let touched = match &options.since {
        Some(_) => {
            let mut touched = BTreeSet::new();
            let mut collect =
                |batch: Batch| bulk::touched(&batch, &mut touched).map_err(|e| e.to_string());
            match &downloaded {
                _ if exported.files.is_empty() => {}
                Some(dir) => crate::source::files::read(dir, run.limits, collect)?,
                None => runtime.block_on(bulk::stream(
                    &run.client,
                    &exported,
                    DOWNLOAD_TIMEOUT,
                    run.limits,
                    &mut collect,
                ))?,
            }
            Some(touched)
        }
        None => None,
    };
    Ok(Export {
        exported,
        downloaded,
        touched,
    })
}

/// A runtime for one phase of the run's HTTP.
fn runtime() -> Result<tokio::runtime::Runtime, BulkRunError> {
    crate::fhir::runtime().map_err(|source| BulkRunError::Io {
        what: "cannot start the HTTP runtime".into(),
        source,
    })
}

/// After a completed run: deletes the job on the server, removes a default work directory, and
/// moves the checkpoint on to the export's time, with the thresholds of `full_run`'s models (none
/// for an incremental run, whose clients are no population).
fn finish(
    run: &BulkRun,
    exported: &Exported,
    work_dir: &Path,
    state: Option<State>,
    full_run: &[ModelSummary],
) -> Result<(), BulkRunError> {
    runtime()?.block_on(bulk::finish(&run.client, exported, work_dir));
    if run.work_dir.is_none() {
        std::fs::remove_dir_all(work_dir).map_err(|source| BulkRunError::Io {
            what: format!("cannot remove the work directory {}", work_dir.display()),
            source,
        })?;
    }
    if let Some(path) = &run.state {
        let mut next = state.unwrap_or_default();
        next.advance(run.server.as_str(), exported.next_since.clone(), full_run);
        next.write(path)?;
    }
    Ok(())
}
