//! One run against a FHIR server, as `run --server` and `serve`'s schedule both do it: read the
//! clients changed since the checkpoint by paged search (or every client, on a full pass), fold,
//! evaluate with the checkpoint's population thresholds when the run is incremental, write back
//! through `FhirSink` and save the checkpoint when every write was accepted. A full run
//! (the first, or one asked for with [`JobOptions::full`]) re-assesses every client, so
//! segments whose evidence has left a window move on with no new data, and saves new
//! thresholds. It returns a [`JobReport`] and prints nothing:
//! rendering belongs to the command line, counting to the service's metrics.

use std::path::PathBuf;

use crate::fhir::FhirClient;
use crate::model::Plan;
use crate::record::Rejected;
use crate::run::pipeline::{self, Input, OnInvalid, RunOptions, ServerInput};
use crate::run::state::{State, StateError};
use crate::run::summary::ModelSummary;
use crate::sink::Sink;
use crate::sink::fhir::{FhirSink, FhirSinkError, WriteReport};
use crate::source::search::SearchOptions;

/// What one run reads, writes and remembers.
#[derive(Debug, Clone)]
pub struct JobOptions {
    /// The server, with its credentials and the run's correlation id.
    pub client: FhirClient,
    /// The server as configured: the checkpoint belongs to it.
    pub server: url::Url,
    /// What to read; `since: None` means from the checkpoint (a full run when there is none).
    pub search: SearchOptions,
    /// Read every client whatever the checkpoint and `search.since` say: a full pass.
    pub full: bool,
    /// Clients per write transaction.
    pub batch: usize,
    /// Read and decide, write nothing.
    pub dry_run: bool,
    /// The checkpoint file.
    pub state: Option<PathBuf>,
    /// What to do with invalid resources.
    pub on_invalid: OnInvalid,
}

/// What one run did.
#[derive(Debug)]
pub struct JobReport {
    /// The input, as shown to people (credentials redacted).
    pub input: String,
    /// The instant changes were read from; `None` for a full run.
    pub since: Option<String>,
    /// Resources read.
    pub read: u64,
    /// Resources not used, and why.
    pub rejected: Vec<Rejected>,
    /// How many resources were rejected (the fold's count, which includes clients without a
    /// Patient).
    pub rejected_count: u64,
    /// Per model, its summary and what was written.
    pub models: Vec<(ModelSummary, WriteReport)>,
    /// Whether the checkpoint was saved.
    pub checkpoint_saved: bool,
    /// Seconds spent reading and folding.
    pub read_seconds: f64,
    /// Seconds spent assessing and writing back (the Flag searches before writing included).
    pub write_seconds: f64,
}

impl JobReport {
    /// Clients whose results the server refused, over all models.
    pub fn refused(&self) -> usize {
        self.models.iter().map(|(_, r)| r.refused.len()).sum()
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Reading, folding or evaluating failed.
    #[error(transparent)]
    Pipeline(#[from] pipeline::PipelineError),
    /// Writing back failed.
    #[error(transparent)]
    Sink(#[from] FhirSinkError),
    /// The checkpoint could not be read or saved.
    #[error(transparent)]
    State(#[from] StateError),
    /// The run's start could not be written into the checkpoint.
    #[error("cannot write the checkpoint's instant: {0}")]
    Clock(#[from] time::error::Format),
}

impl JobError {
    /// Whether the server refused a read or a write for what it is, not what it carries (401,
    /// 403, 404, 405; see `crate::fhir::FhirError::is_refusal`): the run stopped there, and
    /// no run will do better until credentials, scopes or the base URL change.
    pub fn is_refusal(&self) -> bool {
        match self {
            Self::Sink(e) => e.is_refusal(),
            Self::Pipeline(e) => e.is_refusal(),
            _ => false,
        }
    }
}

/// Runs once. Blocking: it starts its own HTTP runtimes, so call it off an async worker
/// (`tokio::task::spawn_blocking`).
pub fn run(options: &JobOptions, plans: &[Plan]) -> Result<JobReport, JobError> {
    let started = time::OffsetDateTime::now_utc();
    let clock = std::time::Instant::now();
    let base = options.server.as_str();
    let state = match &options.state {
        Some(path) => State::read(path)?,
        None => None,
    };
    let state = state.filter(|s| s.server == base);
    let since = options
        .search
        .since
        .clone()
        .or_else(|| state.as_ref().and_then(|s| s.since.clone()))
        .filter(|_| !options.full);
    let input = Input::Server(Box::new(ServerInput {
        client: options.client.clone(),
        options: SearchOptions {
            since: since.clone(),
            ..options.search.clone()
        },
    }));
    let mut rejected = Vec::new();
    let run_options = RunOptions {
        on_invalid: options.on_invalid,
        ..RunOptions::default()
    };
    let folded = pipeline::fold(&input, plans, &run_options, &mut |r| {
        rejected.push(r.clone());
        Ok(())
    })
    .or_else(|e| match e {
        // An incremental run with nothing changed is a success with nothing to do.
        pipeline::PipelineError::Empty(_) if since.is_some() => Ok(pipeline::Folded {
            clients: vec![Default::default(); plans.len()],
            ..Default::default()
        }),
        e => Err(e),
    })?;
    let read_seconds = clock.elapsed().as_secs_f64();
    let mut models = Vec::new();
    for (plan, clients) in plans.iter().zip(&folded.clients) {
        let fixed = since
            .as_ref()
            .and(state.as_ref())
            .and_then(|s| s.thresholds.get(plan.mapping.id.as_str()))
            .map(Vec::as_slice);
        let mut sink = FhirSink::new(options.client.clone(), options.batch, options.dry_run)?;
        let summary = pipeline::evaluate(plan, clients, &mut sink, fixed)?;
        let report = sink.finish(plan).map_err(pipeline::PipelineError::Sink)?;
        models.push((summary, report));
    }
    let mut report = JobReport {
        input: input.to_string(),
        since: since.clone(),
        read: folded.stats.resources.values().sum(),
        rejected,
        rejected_count: folded.rejected,
        models,
        checkpoint_saved: false,
        read_seconds,
        write_seconds: clock.elapsed().as_secs_f64() - read_seconds,
    };
    if !options.dry_run
        && report.refused() == 0
        && let Some(path) = &options.state
    {
        let mut next = state.unwrap_or_default();
        // Start of this run, less a margin for clocks that disagree: re-reading a client is
        // harmless (its write is skipped when nothing changed), missing one is not.
        let mark = started - time::Duration::minutes(5);
        let full_run = report
            .models
            .iter()
            .map(|(s, _)| s)
            .filter(|_| since.is_none());
        next.advance(
            base,
            Some(mark.format(&time::format_description::well_known::Rfc3339)?),
            full_run,
        );
        next.write(path)?;
        report.checkpoint_saved = true;
    }
    Ok(report)
}
