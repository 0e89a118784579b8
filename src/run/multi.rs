//! One run over several sources (servers and files): every source is read and folded on its
//! own, the folds are joined into whole clients ([`crate::record::join`]), each client is
//! assessed once on everything known of them, and the results go back to the servers that
//! hold the client ([`WriteTo::Each`]) or to one server ([`WriteTo::One`]), each write with
//! that server's own Patient id and citing only that server's resources.
//!
//! Every source is read before anything is written, all of them at once (a thread each, so a
//! run waits for its slowest source rather than for their sum): a source that cannot be read
//! stops the run, once the others are read, with nothing written, unless it may be missing
//! (`--allow-partial`); then the run goes on without it and says so. A source that refuses the
//! read for what it is (401, 403, 404, 405: [`MultiError::is_refusal`]) is not down but closed
//! to segmentti, so it stops the run with nothing written even when it may be missing. A target
//! that fails while writing fails alone (`FanOut`), and so does one that refuses: nothing
//! more is sent to it, the others are written, and the report says which refused
//! ([`MultiReport::refusing_targets`]). Like [`crate::run::job`], it prints nothing and returns a
//! [`MultiReport`]; incremental runs (checkpoints) are not supported here yet.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use rustc_hash::FxHashMap;
use serde::Serialize;
use tracing::{info, warn};

use crate::assess::thresholds::Threshold;
use crate::fhir::FhirClient;
use crate::model::Plan;
use crate::record::ClientRecord;
use crate::record::Rejected;
use crate::record::join::{self, Holder, JoinReport, JoinSpec, SourceFold};
use crate::run::pipeline::{self, Input, OnInvalid, RunOptions};
use crate::run::shard::Shard;
use crate::run::summary::ModelSummary;
use crate::sink::Sink;
use crate::sink::fanout::{FanOut, TargetOutcome};
use crate::sink::fhir::{FhirSink, FhirSinkError};
use crate::writeback::Elsewhere;
use crate::writeback::{View, Views};

/// One source of a joined run.
#[derive(Debug, Clone)]
pub struct Source {
    /// What to read.
    pub input: Input,
    /// How reports name it (a server's URL without credentials, a path).
    pub name: String,
    /// The server to write back to, when the source is one.
    pub server: Option<FhirClient>,
    /// Whether the run goes on without it when it cannot be read.
    pub may_be_missing: bool,
}

/// Where results go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteTo {
    /// Every server source that holds the client.
    Each,
    /// This source (a server), for the clients it holds.
    One(usize),
}

/// What a joined run reads and writes.
#[derive(Debug, Clone)]
pub struct MultiOptions {
    /// The sources, the most trusted first (its birth date wins where they disagree).
    pub sources: Vec<Source>,
    /// Where results go.
    pub write_to: WriteTo,
    /// Clients per write transaction.
    pub batch: usize,
    /// Read and decide, write nothing.
    pub dry_run: bool,
    /// What to do with invalid resources.
    pub on_invalid: OnInvalid,
    /// How clients are joined.
    pub join: Arc<JoinSpec>,
    /// Only the clients of this shard are assessed and written, by a hash of their client id
    /// (the join key, so the join key must be the same in every shard). Every shard reads and
    /// joins every source, so their population thresholds agree without a first pass; what
    /// shards divide is the writing, which is what takes a joined run its time.
    pub shard: Option<Shard>,
}

/// What was read from one source.
#[derive(Debug, Clone, Serialize)]
pub struct SourceRead {
    /// The source.
    pub source: String,
    /// Resources read.
    pub resources: u64,
    /// Resources rejected.
    pub rejected: u64,
    /// Seconds spent reading and folding it.
    pub seconds: f64,
    /// Why it was not read, when it was allowed to be missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}

/// One model's results and writes.
#[derive(Debug, Clone, Serialize)]
pub struct ModelWrites {
    /// Segments of the joined population.
    pub summary: ModelSummary,
    /// Per target, what was written.
    pub targets: Vec<TargetWrites>,
}

/// What one target got.
#[derive(Debug, Clone, Serialize)]
pub struct TargetWrites {
    /// The target.
    pub target: String,
    /// Seconds spent writing to it (searches for its Flags included).
    pub seconds: f64,
    /// Written, or why not.
    pub outcome: TargetOutcome,
}

/// Clients that no write target holds: assessed and counted, written nowhere.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Unwritten {
    /// How many.
    pub clients: u64,
    /// Some of their client ids (join keys), for finding them.
    pub sample: Vec<String>,
}

/// What a joined run did.
#[derive(Debug, Clone, Serialize)]
pub struct MultiReport {
    /// Per source, what was read.
    pub sources: Vec<SourceRead>,
    /// What the join did.
    pub join: JoinReport,
    /// Clients held by no write target.
    pub unwritten: Unwritten,
    /// Per model.
    pub models: Vec<ModelWrites>,
    /// Resources not used, and why.
    pub rejected: Vec<Rejected>,
    /// This process's resident memory right after the join (Linux; `None` elsewhere): the
    /// joined clients and where they are held, before anything is assessed or written.
    pub rss_after_join_bytes: Option<u64>,
}

impl MultiReport {
    /// Targets whose writes failed (down after retries), with what they said (each once, over
    /// all models).
    pub fn failed_targets(&self) -> Vec<(&str, &str)> {
        self.targets_with(|o| match o {
            TargetOutcome::Failed(message) => Some(message),
            _ => None,
        })
    }

    /// Targets that refused a write for what it is (401, 403, 404, 405), with what they said
    /// (each once, over all models).
    pub fn refusing_targets(&self) -> Vec<(&str, &str)> {
        self.targets_with(|o| match o {
            TargetOutcome::NotAllowed(message) => Some(message),
            _ => None,
        })
    }

    /// The targets whose outcome has a `message`, with it, each once.
    fn targets_with(&self, message: fn(&TargetOutcome) -> Option<&str>) -> Vec<(&str, &str)> {
        let mut found: Vec<(&str, &str)> = Vec::new();
        for t in self.models.iter().flat_map(|m| &m.targets) {
            if let Some(message) = message(&t.outcome)
                && !found.iter().any(|(name, _)| *name == t.target)
            {
                found.push((&t.target, message));
            }
        }
        found
    }

    /// Clients whose results a target refused, over all models and targets.
    pub fn refused(&self) -> usize {
        self.models
            .iter()
            .flat_map(|m| &m.targets)
            .map(|t| match &t.outcome {
                TargetOutcome::Written(r) => r.refused.len(),
                TargetOutcome::Failed(_) | TargetOutcome::NotAllowed(_) => 0,
            })
            .sum()
    }

    /// Resources rejected, over all sources.
    pub fn rejected_count(&self) -> u64 {
        self.sources.iter().map(|s| s.rejected).sum()
    }
}

/// Why a joined run failed.
#[derive(Debug, thiserror::Error)]
pub enum MultiError {
    /// A source that must be there could not be read; nothing was written.
    #[error(
        "cannot read {name}, so nothing was written: {cause}\nhint: run again when it answers, or give --allow-partial {name} to run without it"
    )]
    Read {
        /// The source.
        name: String,
        /// Why (in the message, not as a source: it would be printed twice).
        cause: pipeline::PipelineError,
    },
    /// A source refused the read for what it is (401, 403, 404, 405); nothing was written.
    #[error("{name} refused segmentti's read, so nothing was written: {cause}")]
    Refused {
        /// The source.
        name: String,
        /// The server's answer, with what to fix (in the message, not as a source).
        cause: pipeline::PipelineError,
    },
    /// No source could be read.
    #[error("no source could be read, so nothing was written\nhint: check the sources named above")]
    NothingRead,
    /// Folding or evaluating failed.
    #[error(transparent)]
    Pipeline(#[from] pipeline::PipelineError),
    /// A target's sink could not start.
    #[error(transparent)]
    Sink(#[from] FhirSinkError),
}

impl MultiError {
    /// Whether a server refused a read for what it is (see
    /// `crate::fhir::FhirError::is_refusal`): no run does better until its credentials,
    /// scopes or base URL change.
    pub fn is_refusal(&self) -> bool {
        match self {
            Self::Refused { .. } => true,
            Self::Pipeline(e) => e.is_refusal(),
            Self::Sink(e) => e.is_refusal(),
            Self::Read { .. } | Self::NothingRead => false,
        }
    }
}

/// The sources read and joined, before anything is assessed.
#[derive(Debug)]
pub struct ReadJoined {
    /// Per source, what was read.
    pub reads: Vec<SourceRead>,
    /// Resources not used, and why.
    pub rejected: Vec<Rejected>,
    /// The whole clients.
    pub joined: join::Joined,
}

/// Reads every source (at once, a thread each) and joins them into whole clients: what a
/// joined run assesses, and what `explain` looks a joined client up in.
pub fn read_joined(
    sources: &[Source],
    join: &Arc<JoinSpec>,
    on_invalid: OnInvalid,
    plans: &[Plan],
) -> Result<ReadJoined, MultiError> {
    let run_options = RunOptions {
        on_invalid,
        join: Some(join.clone()),
        ..RunOptions::default()
    };
    // Sources are read at once, each on its own thread: a run waits for its slowest source,
    // not for the sum of them (servers answer at their own pace, mostly waiting on their
    // databases). Results are taken in source order, so reports do not depend on timing.
    let read: Vec<(
        Result<pipeline::Folded, pipeline::PipelineError>,
        Vec<Rejected>,
        f64,
    )> = std::thread::scope(|scope| {
        let readers: Vec<_> = sources
            .iter()
            .map(|source| scope.spawn(|| read_source(source, plans, &run_options)))
            .collect();
        readers
            .into_iter()
            .map(|r| {
                r.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut folds = Vec::with_capacity(sources.len());
    let mut reads = Vec::with_capacity(sources.len());
    let mut rejected = Vec::new();
    for (source, (folded, theirs, seconds)) in sources.iter().zip(read) {
        match folded {
            Ok(folded) => {
                let resources: u64 = folded.stats.resources.values().sum();
                info!(source = %source.name, resources, seconds, "source read");
                reads.push(SourceRead {
                    source: source.name.clone(),
                    resources,
                    rejected: folded.rejected,
                    seconds,
                    missing: None,
                });
                rejected.extend(theirs);
                folds.push(SourceFold {
                    clients: folded.clients,
                    people: folded.people,
                    base: source.server.as_ref().map(|c| c.base().to_string()),
                });
            }
            Err(cause) if cause.is_refusal() => {
                return Err(MultiError::Refused {
                    name: source.name.clone(),
                    cause,
                });
            }
            Err(cause) if source.may_be_missing => {
                warn!(source = %source.name, error = %cause, "source missing; the run goes on without it (--allow-partial)");
                reads.push(SourceRead {
                    source: source.name.clone(),
                    resources: 0,
                    rejected: 0,
                    seconds,
                    missing: Some(cause.to_string()),
                });
                folds.push(SourceFold {
                    clients: vec![FxHashMap::default(); plans.len()],
                    ..SourceFold::default()
                });
            }
            Err(cause) => {
                return Err(MultiError::Read {
                    name: source.name.clone(),
                    cause,
                });
            }
        }
    }
    if reads.iter().all(|r| r.missing.is_some()) {
        return Err(MultiError::NothingRead);
    }
    let joined = join::join(folds, plans);
    info!(
        clients = joined.report.clients,
        in_several = joined.report.in_several,
        "sources joined"
    );
    Ok(ReadJoined {
        reads,
        rejected,
        joined,
    })
}

/// Runs once. Blocking, like [`crate::run::job::run`].
pub fn run(options: &MultiOptions, plans: &[Plan]) -> Result<MultiReport, MultiError> {
    let ReadJoined {
        reads,
        rejected,
        mut joined,
    } = read_joined(&options.sources, &options.join, options.on_invalid, plans)?;
    let rss_after_join_bytes = crate::run::telemetry::rss_bytes();
    // With a shard, the thresholds are the whole population's, taken before the other shards'
    // clients are dropped.
    let mut fixed: Vec<Option<Vec<Threshold>>> = vec![None; plans.len()];
    if let Some(shard) = options.shard {
        for (p, plan) in plans.iter().enumerate() {
            let values = crate::assess::thresholds::population_thresholds(plan, &joined.clients[p]);
            fixed[p] = Some(crate::assess::thresholds::threshold_list(plan, &values));
            joined.clients[p].retain(|client, _| shard.holds(client));
        }
        joined.holders.retain(|client, _| shard.holds(client));
        info!(%shard, clients = joined.holders.len(), "the shard's clients");
    }
    // Source number → target number, for the servers written to.
    let mut target_of = vec![None; options.sources.len()];
    let mut targets = Vec::new();
    for (s, source) in options.sources.iter().enumerate() {
        let wanted = match options.write_to {
            WriteTo::Each => true,
            WriteTo::One(t) => t == s,
        };
        if let (true, None, Some(client)) = (wanted, &reads[s].missing, &source.server) {
            target_of[s] = Some(targets.len());
            targets.push((source.name.clone(), client.clone()));
        }
    }
    let unwritten = unwritten(&joined.holders, &target_of);
    let mut models = Vec::new();
    for (p, plan) in plans.iter().enumerate() {
        let sinks = targets
            .iter()
            .map(|(name, client)| {
                let sink = FhirSink::new(client.clone(), options.batch, options.dry_run)?;
                Ok((name.clone(), sink))
            })
            .collect::<Result<_, FhirSinkError>>()?;
        let views = JoinedViews {
            plan: p,
            holders: &joined.holders,
            target_of: &target_of,
            names: options.sources.iter().map(|s| s.name.as_str()).collect(),
        };
        let (summary, written) = std::thread::scope(|scope| {
            let mut fan = FanOut::start(scope, plan, sinks);
            let summary = pipeline::evaluate_views(
                plan,
                &joined.clients[p],
                &views,
                &mut fan,
                fixed[p].as_deref(),
            );
            (
                summary,
                fan.finish(()).map_err(pipeline::PipelineError::Sink),
            )
        });
        let summary = summary?;
        let targets = written?
            .into_iter()
            .map(|(target, seconds, outcome)| TargetWrites {
                target,
                seconds,
                outcome,
            })
            .collect();
        models.push(ModelWrites { summary, targets });
    }
    Ok(MultiReport {
        sources: reads,
        join: joined.report,
        unwritten,
        models,
        rejected,
        rss_after_join_bytes,
    })
}

/// Reads and folds one source: the fold or why not, its rejected resources, and the seconds
/// it took.
fn read_source(
    source: &Source,
    plans: &[Plan],
    options: &RunOptions,
) -> (
    Result<pipeline::Folded, pipeline::PipelineError>,
    Vec<Rejected>,
    f64,
) {
    let started = Instant::now();
    let mut theirs = Vec::new();
    // The fold logs its rejections (a summary at WARN) inside this span, which names the source.
    let _span = tracing::info_span!("source", name = %source.name).entered();
    let folded = pipeline::fold(&source.input, plans, options, &mut |r| {
        theirs.push(r.clone());
        Ok(())
    });
    (folded, theirs, started.elapsed().as_secs_f64())
}

/// The clients no target holds.
fn unwritten(
    holders: &FxHashMap<compact_str::CompactString, Vec<Holder>>,
    target_of: &[Option<usize>],
) -> Unwritten {
    let mut ids: Vec<&str> = holders
        .iter()
        .filter(|(_, hs)| hs.iter().all(|h| target_of[h.source].is_none()))
        .map(|(id, _)| id.as_str())
        .collect();
    ids.sort_unstable();
    Unwritten {
        clients: ids.len() as u64,
        sample: ids.iter().take(10).map(|s| (*s).to_owned()).collect(),
    }
}

/// The writes of joined clients: one per target holding the client, with that target's
/// Patient id and only that source's evidence, the other sources' counted in `elsewhere`.
struct JoinedViews<'a> {
    plan: usize,
    holders: &'a FxHashMap<compact_str::CompactString, Vec<Holder>>,
    target_of: &'a [Option<usize>],
    names: Vec<&'a str>,
}

impl Views for JoinedViews<'_> {
    fn views<'a>(&'a self, id: &'a str, record: &'a ClientRecord) -> Vec<View<'a>> {
        let Some(holders) = self.holders.get(id) else {
            return Vec::new();
        };
        let counted = |h: &Holder| h.evidence.get(self.plan).copied().unwrap_or(0);
        holders
            .iter()
            .filter_map(|h| {
                let target = self.target_of[h.source]?;
                let mut mine = record.clone();
                mine.evidence.retain(|e| usize::from(e.source) == h.source);
                mine.evidence_total = counted(h);
                let elsewhere = holders
                    .iter()
                    .filter(|o| o.source != h.source && counted(o) > 0)
                    .map(|o| Elsewhere {
                        source: self.names[o.source].to_owned(),
                        count: counted(o),
                    })
                    .collect();
                Some(View {
                    target,
                    patient: h.patient.as_str(),
                    record: Cow::Owned(mine),
                    elsewhere,
                })
            })
            .collect()
    }
}
