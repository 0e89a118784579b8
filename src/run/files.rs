//! A run whose results go to files: read an input (files, the synthetic population, a Bulk Data
//! export), fold, assess every client of every model and write NDJSON, `rejected.ndjson` and
//! `summary.json` into one directory. This is `segmentti run` without a server to write to, as
//! a library call: the command line resolves its flags into a [`FileRun`] and prints the
//! [`Outcome`]; a Bulk Data run ([`super::bulk`]) wraps it with its export and checkpoint.
//!
//! Nothing is published before the end: the file sink renames its files into place only when
//! every model was written, so a run that fails leaves the directory as it was.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use crate::model::Plan;
use crate::run::pipeline::{self, Input, OnInvalid, PipelineError, RunOptions};
use crate::run::progress::{self, Reporter};
use crate::run::shard::{Shard, Thresholds};
use crate::run::summary::Summary;
use crate::run::telemetry::{self, Usage};
use crate::sink::Sink;
use crate::sink::files::FileSink;

/// What a file run reads, and where and how it writes.
#[derive(Debug)]
pub struct FileRun {
    /// Where resources come from.
    pub input: Input,
    /// Thresholds of a full population, per model, for a run that is not one (a shard, an
    /// incremental export); without them each model's are taken over the clients read.
    pub thresholds: Option<Thresholds>,
    /// Files of an export's manifest of types no model reads, per type: counted in the summary.
    pub ignored_files: BTreeMap<String, usize>,
    /// Where and how the results are written.
    pub output: Output,
}

/// Where and how a file run writes, whatever it reads.
#[derive(Debug, Clone)]
pub struct Output {
    /// The directory the results go to.
    pub out: PathBuf,
    /// What to do with a resource that cannot be used.
    pub on_invalid: OnInvalid,
    /// Only the clients of this shard.
    pub shard: Option<Shard>,
    /// How progress is shown.
    pub progress: progress::Display,
    /// Measure each stage's CPU time and peak memory ([`Outcome::stages`]).
    pub measure: bool,
}

/// What a file run did.
#[derive(Debug)]
pub struct Outcome {
    /// What was written to `summary.json`.
    pub summary: Summary,
    /// Wall time of the whole run, in seconds.
    pub seconds: f64,
    /// The stages' figures, when [`Output::measure`] asked for them.
    pub stages: Option<Stages>,
}

/// CPU time and peak memory of a run's two stages.
#[derive(Debug, Clone, Copy)]
pub struct Stages {
    /// Wall time of reading and folding, in seconds.
    pub fold_seconds: f64,
    /// The process at the end of the fold.
    pub after_fold: Usage,
    /// The process at the end of the run.
    pub at_end: Usage,
    /// Whether `at_end.peak_rss` is the peak of the evaluate-and-write stage alone (the peak was
    /// reset after the fold) rather than of the whole run.
    pub write_peak_known: bool,
}

/// Runs `plans` over `run.input` into `run.out`.
pub fn run(run: FileRun, plans: &[Plan]) -> Result<Outcome, PipelineError> {
    let started = Instant::now();
    let output = &run.output;
    let reporter = Reporter::start(output.progress);
    let mut sink = FileSink::create(&output.out)?;
    let options = RunOptions {
        on_invalid: output.on_invalid,
        shard: output.shard,
        ..RunOptions::default()
    };
    let folded = pipeline::fold(&run.input, plans, &options, &mut |r| sink.rejected(r))?;
    let fold_seconds = started.elapsed().as_secs_f64();
    let after_fold = Usage::now();
    let write_peak_known = output.measure && telemetry::reset_peak_rss();
    let mut models = Vec::new();
    for (plan, clients) in plans.iter().zip(&folded.clients) {
        let fixed = run
            .thresholds
            .as_ref()
            .and_then(|t| t.get(plan.mapping.id.as_str()))
            .map(Vec::as_slice);
        models.push(pipeline::evaluate(plan, clients, &mut sink, fixed)?);
    }
    let summary = Summary {
        input: run.input.to_string(),
        resources: folded
            .stats
            .resources
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        after_as_of: folded.stats.after_as_of,
        rejected: folded.rejected,
        ignored: folded.ignored,
        unpriced_bills: folded.stats.unpriced_bills.clone(),
        ignored_files: run.ignored_files,
        models,
        out: output.out.display().to_string(),
    };
    sink.finish(&summary)?;
    reporter.finish();
    let stages = output.measure.then(|| Stages {
        fold_seconds,
        after_fold,
        at_end: Usage::now(),
        write_peak_known,
    });
    Ok(Outcome {
        summary,
        seconds: started.elapsed().as_secs_f64(),
        stages,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::source::files::Limits;

    #[test]
    fn a_file_run_publishes_its_files_and_returns_what_summary_json_says() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let as_of = "2026-01-01".parse().expect("a day");
        let plan = crate::model::plan_file(&root.join("mappings/paijat-sote.yaml"), as_of)
            .expect("the shipped model");
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let outcome = run(
            FileRun {
                input: Input::Files(root.join("tests/fixtures/offline/basic"), Limits::default()),
                thresholds: None,
                ignored_files: BTreeMap::new(),
                output: Output {
                    out: out.clone(),
                    on_invalid: OnInvalid::Skip,
                    shard: None,
                    progress: progress::Display::Off,
                    measure: true,
                },
            },
            std::slice::from_ref(&plan),
        )
        .expect("the run");
        let written: Summary = serde_json::from_str(
            &std::fs::read_to_string(out.join("summary.json")).expect("summary.json"),
        )
        .expect("summary.json reads back as the one schema");
        assert_eq!(
            serde_json::to_value(&written).expect("json"),
            serde_json::to_value(&outcome.summary).expect("json")
        );
        let model = &outcome.summary.models[0];
        assert_eq!(model.model, "paijat-sote");
        assert!(model.clients > 0);
        assert_eq!(
            model.segments.iter().map(|s| s.count).sum::<u64>(),
            model.clients
        );
        for file in ["Observation.ndjson", "Flag.ndjson", "rejected.ndjson"] {
            assert!(out.join(file).is_file(), "{file}");
        }
        let stages = outcome.stages.expect("measured");
        assert!(stages.fold_seconds <= outcome.seconds);
    }
}
