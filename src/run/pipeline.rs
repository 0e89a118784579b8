//! The run: source → record → model → writeback → sink. A reader thread streams batches of
//! resources through a bounded channel (back-pressure keeps memory flat); both cores extract
//! facts from a batch in parallel, and one thread folds them in input order, so results do not
//! depend on thread timing. After the fold, the population thresholds are computed, then each
//! client (in id order, so output is reproducible) is assessed and written. Nothing here knows
//! file formats or HTTP: sources and sinks do.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;

use compact_str::CompactString;
use rayon::prelude::*;
use tracing::{debug, info, info_span};

use crate::assess::eval::{self, Assessment};
use crate::assess::thresholds::{
    self, Basis, CHUNK, Threshold, ratio, realised, threshold_list, top_share,
};
use crate::model::plan::Plan;
use crate::record::join::Identity;
use crate::record::{ClientRecord, Clients, Fault, Fold, FoldStats, Rejected, Rejection, extract};
use crate::run::progress::COUNTERS;
use crate::run::summary::{
    AGE_BANDS, AgeBand, AreaCounts, ModelSummary, Share, age_band, concentration,
};
use crate::sink::{Sink, SinkError};
use crate::source::files::SourceError;
use crate::source::synth::SynthOptions;
use crate::source::{Batch, Origins, Resource};
use crate::writeback::validate::Invalid;
use crate::writeback::{self, BuildError, Views, Whole, build_view};

/// Where resources come from.
#[derive(Debug, Clone)]
pub enum Input {
    /// A file or directory of NDJSON or Bundles, and what one file may cost.
    Files(PathBuf, crate::source::files::Limits),
    /// The built-in synthetic population.
    Synthetic(SynthOptions),
    /// A FHIR server, by paged search.
    Server(Box<ServerInput>),
    /// A Bulk Data export's files, streamed into the fold as they download.
    Bulk(Box<BulkInput>),
}

/// A server to read from.
#[derive(Debug, Clone)]
pub struct ServerInput {
    /// The client, with its retry policy and credentials.
    pub client: crate::fhir::FhirClient,
    /// What to read.
    pub options: crate::source::search::SearchOptions,
}

/// An export to stream.
#[derive(Debug, Clone)]
pub struct BulkInput {
    /// The client, with its retry policy and credentials.
    pub client: crate::fhir::FhirClient,
    /// The export, complete on the server.
    pub exported: crate::source::bulk::Exported,
    /// How long one file may take to arrive (and to be folded, which paces it).
    pub download_timeout: std::time::Duration,
    /// What one line and one file may cost.
    pub limits: crate::source::files::Limits,
}

impl std::fmt::Display for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Files(p, _) => write!(f, "{}", p.display()),
            Self::Synthetic(o) => write!(
                f,
                "synthetic population ({} clients, seed {})",
                o.clients, o.seed
            ),
            Self::Server(s) => write!(f, "{}", crate::fhir::redact(s.client.base())),
            Self::Bulk(b) => write!(f, "{} ($export)", crate::fhir::redact(b.client.base())),
        }
    }
}

/// What to do with a resource that cannot be used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OnInvalid {
    /// Record it in `rejected.ndjson`, count it, go on.
    #[default]
    Skip,
    /// Stop the run at the first one.
    Fail,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The input could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The server could not be read.
    #[error(transparent)]
    Search(#[from] crate::source::search::SearchError),
    /// The export could not be read.
    #[error(transparent)]
    Bulk(#[from] crate::source::bulk::BulkError),
    /// `--on-invalid=fail` and a resource was invalid.
    #[error("invalid input at {}{}: {}\nhint: fix the resource, or run with --on-invalid=skip to record it in rejected.ndjson and go on", .0.origin, .0.resource.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(), .0.reason)]
    Invalid(Box<Rejected>),
    /// The input held no resources at all.
    #[error(
        "the input {0} holds no resources\nhint: check that the export finished and the path is right"
    )]
    Empty(String),
    /// No Patient in the input.
    #[error(
        "the input {0} holds no Patient resources, so there is no client to segment\nhint: include Patient.ndjson in the input"
    )]
    NoClients(String),
    /// A resource could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A client matched no tree node.
    #[error(
        "Patient/{0} reaches no node of the question tree of model {1}\nhint: run check-mapping on the model; the tree needs a final node without `when`"
    )]
    Unplaced(String, String),
}

impl PipelineError {
    /// Whether a server refused a read or a write for what it is, not what it carries (401,
    /// 403, 404, 405): no run does better until credentials, scopes or the base URL change.
    pub fn is_refusal(&self) -> bool {
        match self {
            Self::Sink(SinkError::Server(e)) => e.is_refusal(),
            Self::Search(crate::source::search::SearchError::Fhir(e)) => e.is_refusal(),
            Self::Bulk(e) => e.is_refusal(),
            _ => false,
        }
    }
}

/// Options of a run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// What to do with invalid resources.
    pub on_invalid: OnInvalid,
    /// Only the clients of this shard; resources of other clients are read and dropped.
    pub shard: Option<crate::run::shard::Shard>,
    /// Keep the Patients' join keys, for a run that joins several sources.
    pub join: Option<std::sync::Arc<crate::record::join::JoinSpec>>,
    /// Keep what counted for nothing of this client, and why, for `explain`.
    pub watch: Option<CompactString>,
}

/// Every plan's fold after the read.
#[derive(Debug, Default)]
pub struct Folded {
    /// Per plan, the clients.
    pub clients: Vec<Clients>,
    /// What was read (from the first plan's fold; all folds see the same resources).
    pub stats: FoldStats,
    /// How many resources were rejected.
    pub rejected: u64,
    /// Resources of FHIR types that no model reads, per type: counted, never rejected. Any
    /// EHR's export holds Observations, Procedures, Organizations and the like, and that is no
    /// fault of the input; a `resourceType` that is no FHIR type is rejected.
    pub ignored: BTreeMap<String, u64>,
    /// The Patients' identities by id, with [`RunOptions::join`]; empty otherwise.
    pub people: rustc_hash::FxHashMap<CompactString, Identity>,
    /// Per plan, what counted for nothing of [`RunOptions::watch`]'s client.
    pub left_out: Vec<Vec<crate::record::LeftOut>>,
    /// Per plan, the concepts `distinct` features counted for [`RunOptions::watch`]'s client.
    pub counted: Vec<Vec<crate::record::Counted>>,
}

/// Reads `input` and folds it for every plan. Rejections go to `on_reject` in input order.
pub fn fold(
    input: &Input,
    plans: &[Plan],
    options: &RunOptions,
    on_reject: &mut dyn FnMut(&Rejected) -> Result<(), SinkError>,
) -> Result<Folded, PipelineError> {
    let _span = info_span!("fold", plans = plans.len()).entered();
    let shard = options.shard;
    // Three stages on their own threads, joined by bounded channels: the reader, the
    // extraction of facts (parallel within a batch), and the fold (in input order). The fold of
    // one batch overlaps the extraction of the next and the reading of the one after.
    let (raw_tx, raw_rx) = mpsc::sync_channel::<Batch>(2);
    let (fact_tx, fact_rx) = mpsc::sync_channel::<Extracted>(2);
    let reader_input = input.clone();
    let mut folds: Vec<Fold<'_>> = plans
        .iter()
        .map(|plan| Fold::watching(plan, options.watch.clone()))
        .collect();
    let mut rejected = 0u64;
    let mut log = RejectLog::new();
    let mut ignored: BTreeMap<String, u64> = BTreeMap::new();
    let mut items = 0u64;
    let mut failure: Option<PipelineError> = None;
    let mut people = rustc_hash::FxHashMap::default();
    let read = std::thread::scope(|scope| {
        let kinds = crate::model::plan::kinds_read(plans);
        let reader = scope.spawn(move || read_input(reader_input, &kinds, raw_tx));
        // The extraction loop runs on a rayon worker, so the thread that splits a batch also
        // takes part in extracting it instead of waiting for the other workers.
        scope.spawn(move || {
            rayon::scope(|_| {
                for batch in raw_rx {
                    let (origins, resources) = batch.resources();
                    // In runs of resources, each written once into its own list: a flat
                    // `collect` would gather the workers' lists and then copy every fact again.
                    let results = resources
                        .par_chunks(EXTRACT_CHUNK)
                        .map(|chunk| {
                            let mut facts = Vec::with_capacity(chunk.len() * plans.len());
                            facts.extend(chunk.iter().flat_map(|r| {
                                plans
                                    .iter()
                                    .map(move |plan| in_shard(extract_resource(plan, *r), shard))
                            }));
                            facts
                        })
                        .collect();
                    if fact_tx.send(Extracted { origins, results }).is_err() {
                        break;
                    }
                }
            })
        });
        'batches: for batch in fact_rx {
            items += batch.origins.len() as u64;
            COUNTERS.read.fetch_add(batch.origins.len() as u64, Relaxed);
            let mut results = batch.results.into_iter().flatten();
            for i in 0..batch.origins.len() {
                let (mut rejection, mut folded) = (None, false);
                for (p, fold) in folds.iter_mut().enumerate() {
                    let outcome = results.next().map(|fact| {
                        fact.and_then(|f| {
                            f.map_or(Ok(()), |mut f| {
                                // Every plan sees the same Patient; its identity is kept once.
                                if let (0, Some(spec), Some(person)) =
                                    (p, &options.join, f.person.take())
                                {
                                    people.insert(f.id.clone(), spec.identity(&person));
                                }
                                fold.apply(f)
                            })
                        })
                    });
                    match outcome {
                        Some(Err(r)) => rejection = Some(worse(rejection, r)),
                        Some(Ok(())) => folded = true,
                        None => {}
                    }
                }
                let Some(r) = rejection else { continue };
                if let Some(kind) = &r.other_type {
                    // An Observation that one model reads and another does not is no fault,
                    // and neither is a type that no model reads.
                    if !folded {
                        *ignored.entry(kind.to_string()).or_default() += 1;
                    }
                    continue;
                }
                rejected += 1;
                let r = Rejected {
                    origin: batch.origins.get(i).to_string(),
                    resource: r.resource,
                    fault: r.fault,
                    reason: r.reason,
                };
                log.add(&r);
                if options.on_invalid == OnInvalid::Fail {
                    failure = Some(PipelineError::Invalid(Box::new(r)));
                    break 'batches;
                }
                if let Err(e) = on_reject(&r) {
                    failure = Some(e.into());
                    break 'batches;
                }
            }
            log.report_if_due();
        }
        reader.join().unwrap_or_else(|_| {
            Err(SourceError::Stopped("the reader thread panicked".into()).into())
        })
    });
    // With --on-invalid=fail the one rejection is the run's error.
    if !matches!(failure, Some(PipelineError::Invalid(_))) {
        log.report();
    }
    if let Some(f) = failure {
        return Err(f);
    }
    read?;
    if items == 0 {
        return Err(PipelineError::Empty(input.to_string()));
    }
    let mut clients = Vec::new();
    let mut stats = FoldStats::default();
    let left_out = folds.iter().map(|f| f.left_out().to_vec()).collect();
    let counted = folds.iter().map(|f| f.counted().to_vec()).collect();
    for (i, fold) in folds.into_iter().enumerate() {
        let (mut map, s) = fold.into_clients();
        let absent: Vec<CompactString> = map
            .iter()
            .filter(|(_, r)| !r.has_patient)
            .map(|(id, _)| id.clone())
            .collect();
        let mut absent_sorted = absent;
        absent_sorted.sort();
        for id in absent_sorted {
            let record = map.remove(&id);
            if i > 0 {
                continue;
            }
            let count = record.map_or(0, |r| r.resources);
            let r = Rejected {
                origin: input.to_string(),
                resource: Some(format!("Patient/{id}")),
                fault: Fault::MissingPatient,
                reason: format!(
                    "{count} resource(s) refer to Patient/{id}, which is not in the input; include the Patient in the export"
                ),
            };
            rejected += 1;
            log.add(&r);
            if options.on_invalid == OnInvalid::Fail {
                return Err(PipelineError::Invalid(Box::new(r)));
            }
            on_reject(&r)?;
        }
        if i == 0 {
            stats = s;
        }
        clients.push(map);
    }
    log.report();
    if clients.first().is_some_and(|c| c.is_empty()) {
        return Err(PipelineError::NoClients(input.to_string()));
    }
    if !stats.unpriced_bills.is_empty() {
        tracing::warn!(currencies = ?stats.unpriced_bills, "bills in currencies the model has no rate for count for nothing; their clients are costed by the price table (give the price table `rates` to convert them)");
    }
    info!(
        resources = items,
        rejected,
        ignored = ignored.values().sum::<u64>(),
        clients = clients.first().map_or(0, |c| c.len()),
        "input folded"
    );
    Ok(Folded {
        clients,
        stats,
        rejected,
        ignored,
        people,
        left_out,
        counted,
    })
}

/// The rejections of a run, told to the operator: each one at debug, and per fault one WARN
/// line with its count and first location, at the end of the read and every
/// [`REJECT_REPORT_EVERY`] while a long one goes on. A run over a bad export rejects thousands
/// of resources for a handful of reasons; a line each buries everything else in the log, and
/// `rejected.ndjson` (or the server run's report) holds them all anyway.
struct RejectLog {
    faults: BTreeMap<Fault, Tally>,
    reported: std::time::Instant,
    every: std::time::Duration,
}

/// One fault's rejections: how many, how many were already reported, and the first.
struct Tally {
    count: u64,
    reported: u64,
    first: Rejected,
}

/// Time between two reports of the rejections of a long read.
const REJECT_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl RejectLog {
    fn new() -> Self {
        Self::every(REJECT_REPORT_EVERY)
    }

    fn every(every: std::time::Duration) -> Self {
        Self {
            faults: BTreeMap::new(),
            reported: std::time::Instant::now(),
            every,
        }
    }

    fn add(&mut self, r: &Rejected) {
        debug!(origin = %r.origin, resource = r.resource.as_deref().unwrap_or("-"), fault = %r.fault, reason = %r.reason, "resource rejected");
        self.faults
            .entry(r.fault)
            .or_insert_with(|| Tally {
                count: 0,
                reported: 0,
                first: r.clone(),
            })
            .count += 1;
    }

    /// [`RejectLog::report`] when it is time to; how many lines it wrote.
    fn report_if_due(&mut self) -> usize {
        if self.reported.elapsed() < self.every {
            return 0;
        }
        self.report()
    }

    /// One line per fault with rejections since the last report, `count` being the run's
    /// total; how many lines it wrote.
    fn report(&mut self) -> usize {
        self.reported = std::time::Instant::now();
        let mut lines = 0;
        for (fault, tally) in &mut self.faults {
            if tally.count == tally.reported {
                continue;
            }
            lines += 1;
            tally.reported = tally.count;
            let first = &tally.first;
            tracing::warn!(
                fault = %fault,
                count = tally.count,
                first = %first.origin,
                resource = first.resource.as_deref().unwrap_or("-"),
                reason = %first.reason,
                "resources rejected"
            );
        }
        lines
    }
}

/// Of two models' rejections of one resource, the one that names its own fault: "not read by
/// model a" says nothing when model b found a `Group/` subject.
fn worse(kept: Option<Rejection>, new: Rejection) -> Rejection {
    match kept {
        Some(kept) if kept.other_type.is_none() || new.other_type.is_some() => kept,
        _ => new,
    }
}

/// One batch's facts: for each resource, one result per plan, in order (`None`: another
/// shard's), in runs of [`EXTRACT_CHUNK`] resources.
struct Extracted {
    origins: Origins,
    results: Vec<Vec<Result<Option<crate::record::Fact>, Rejection>>>,
}

/// Resources a worker extracts in one go: small enough that both cores share a batch evenly.
const EXTRACT_CHUNK: usize = 256;

/// Keeps what belongs to `shard`: its clients' facts, and (in the first shard only) the
/// rejections that belong to no client, so that N shards report each of them once.
fn in_shard(
    fact: Result<crate::record::Fact, Rejection>,
    shard: Option<crate::run::shard::Shard>,
) -> Result<Option<crate::record::Fact>, Rejection> {
    let Some(shard) = shard else {
        return fact.map(Some);
    };
    match fact {
        Ok(f) => Ok(shard.holds(&f.patient).then_some(f)),
        Err(_) if !shard.is_first() => Ok(None),
        Err(r) => Err(r),
    }
}

/// The reader stage: the whole input, batch by batch, into `tx`; from a server, the resources
/// of `kinds` only (the types the models read).
fn read_input(
    input: Input,
    kinds: &[crate::fhir::types::ResourceKind],
    tx: mpsc::SyncSender<Batch>,
) -> Result<(), PipelineError> {
    let mut send = |batch: Batch| tx.send(batch).map_err(|_| "the run stopped".to_owned());
    match input {
        Input::Files(path, limits) => Ok(crate::source::files::read(&path, limits, send)?),
        Input::Synthetic(opts) => Ok(crate::source::synthetic::read(&opts, kinds, send)?),
        Input::Server(server) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| SourceError::Stopped(format!("cannot start the HTTP runtime: {e}")))?;
            Ok(runtime.block_on(crate::source::search::read(
                &server.client,
                &server.options,
                kinds,
                &mut send,
            ))?)
        }
        Input::Bulk(bulk) => {
            let runtime = crate::fhir::runtime()
                .map_err(|e| SourceError::Stopped(format!("cannot start the HTTP runtime: {e}")))?;
            Ok(runtime.block_on(crate::source::bulk::stream(
                &bulk.client,
                &bulk.exported,
                bulk.download_timeout,
                bulk.limits,
                &mut send,
            ))?)
        }
    }
}

fn extract_resource(plan: &Plan, resource: Resource<'_>) -> Result<crate::record::Fact, Rejection> {
    match resource {
        Resource::Text(text) => extract::extract_str(plan, text),
        Resource::Value(value) => extract::extract_value(plan, value),
        Resource::Unreadable(reason) => Err(Rejection {
            other_type: None,
            resource: None,
            fault: Fault::Unreadable,
            reason: reason.to_owned(),
        }),
    }
}

/// One client assessed, with, per write, how many Flags were built and the sink's encoding of
/// them, or the rule its resources broke (then nothing of it is written anywhere).
type Done<E> = (Assessment, Result<Vec<(usize, E)>, Invalid>);

/// Assesses every client of one plan and hands their resources to `sink`, in patient-id order.
///
/// `fixed` gives the `top_percent` thresholds of a previous full run: an incremental run sees
/// only the changed clients, who are no population to take percentiles of.
pub(crate) fn evaluate<S: Sink + Send>(
    plan: &Plan,
    clients: &Clients,
    sink: &mut S,
    fixed: Option<&[Threshold]>,
) -> Result<ModelSummary, PipelineError> {
    evaluate_views(plan, clients, &Whole, sink, fixed)
}

/// [`evaluate`] with the writes of each client given by `views`: a joined client is assessed
/// once, on its whole record, and written to each source that holds it.
pub(crate) fn evaluate_views<S: Sink + Send>(
    plan: &Plan,
    clients: &Clients,
    views: &dyn Views,
    sink: &mut S,
    fixed: Option<&[Threshold]>,
) -> Result<ModelSummary, PipelineError> {
    let _span = info_span!("evaluate", model = %plan.mapping.id).entered();
    // Clients who get no assessment: counted, and handed to the sink before the others.
    let mut ids: Vec<&CompactString> = Vec::with_capacity(clients.len());
    let mut gone = Vec::new();
    for (id, r) in clients {
        match r.unassessed {
            Some(why) => gone.push((id, r, why)),
            None => ids.push(id),
        }
    }
    let mut not_assessed: BTreeMap<String, u64> = BTreeMap::new();
    for (_, _, why) in &gone {
        *not_assessed.entry(why.as_str().to_owned()).or_default() += 1;
    }
    ids.par_sort_unstable();
    COUNTERS.clients.fetch_add(ids.len() as u64, Relaxed);
    let thresholds = thresholds::of(plan, fixed.map_or(Basis::Population(clients), Basis::Given));
    debug!(?thresholds, "population thresholds");
    let m = &plan.mapping;
    let mut per_segment = vec![(0u64, 0f64); m.segments.len()];
    let mut per_overlay = vec![(0u64, 0f64); m.overlays.len()];
    let mut costs = Vec::with_capacity(if plan.cost_feature.is_some() {
        ids.len()
    } else {
        0
    });
    let mut written: BTreeMap<String, u64> = BTreeMap::new();
    let mut invalid_clients: Vec<Invalid> = Vec::new();
    let age_feature = plan
        .features
        .iter()
        .position(|f| matches!(f.aggregate, crate::model::plan::Aggregate::Age));
    let mut bands = vec![vec![0u64; m.segments.len()]; AGE_BANDS.len() + 1];
    let mut areas = vec![vec![0u64; m.segments.len()]; plan.service_areas.len() + 1];
    let mut top_held = vec![0u64; plan.percentiles.len()];
    let concepts = writeback::Concepts::new(plan)?;
    if S::PARTS == writeback::Parts::Own {
        writeback::validate::shared(plan, &concepts)?;
    }
    let prepared = S::prepare(plan, &concepts)?;
    // Clients who get no assessment go first, in id order: a sink ends what each of its
    // targets held of them, under the client's Patient id there.
    gone.sort_unstable_by_key(|(id, _, _)| *id);
    for (id, record, why) in gone {
        for view in views.views(id, record) {
            sink.unassessed(plan, view.target, view.patient, why)?;
        }
    }
    // Clients are assessed, built and encoded in parallel a chunk at a time, then handed to the
    // sink in id order, so the output does not depend on thread timing. The sink takes one chunk
    // while the next is being built.
    let build_chunk = |chunk: &[&CompactString]| -> Vec<Result<Done<S::Encoded>, PipelineError>> {
        chunk
            .par_iter()
            .map(|id| {
                let record = &clients[*id];
                let a = assess(plan, id, record, &thresholds)?;
                let mut writes = Vec::new();
                for view in views.views(id, record) {
                    let resources = build_view(plan, &concepts, &view, &a, S::PARTS)?;
                    if let Err(invalid) = writeback::validate::check(plan, &resources) {
                        return Ok((a, Err(invalid)));
                    }
                    let built = crate::writeback::Built {
                        concepts: &concepts,
                        assessment: &a,
                    };
                    let flags = resources.flags.len();
                    writes.push((flags, S::encode(&prepared, built, resources)?));
                }
                Ok((a, Ok(writes)))
            })
            .collect()
    };
    let mut take =
        |done: Vec<Result<Done<S::Encoded>, PipelineError>>| -> Result<(), PipelineError> {
            for result in done {
                let (a, built) = result?;
                let writes = match built {
                    Ok(writes) => writes,
                    Err(invalid) => {
                        tracing::error!(resource = %invalid.resource, rule = %invalid.rule, "a built resource breaks a rule; nothing of this client is written");
                        invalid_clients.push(invalid);
                        continue;
                    }
                };
                let cost = plan.cost_feature.and_then(|f| a.features[f]).unwrap_or(0.0);
                if plan.cost_feature.is_some() {
                    costs.push(cost);
                }
                per_segment[a.segment].0 += 1;
                per_segment[a.segment].1 += cost;
                if let Some(f) = age_feature {
                    bands[age_band(a.features[f])][a.segment] += 1;
                }
                if !plan.service_areas.is_empty() {
                    let mut rows = plan
                        .service_areas
                        .iter()
                        .enumerate()
                        .filter(|&(_, &f)| a.features[f].is_some_and(|v| v > 0.0))
                        .map(|(row, _)| row)
                        .peekable();
                    if rows.peek().is_none() {
                        areas[plan.service_areas.len()][a.segment] += 1;
                    }
                    rows.for_each(|row| areas[row][a.segment] += 1);
                }
                for (held, (&(f, _), &t)) in top_held
                    .iter_mut()
                    .zip(plan.percentiles.iter().zip(&thresholds))
                {
                    *held += u64::from(crate::model::plan::in_top_share(a.features[f], t));
                }
                for (o, slot) in per_overlay.iter_mut().enumerate() {
                    if a.overlay_holds(o) {
                        slot.0 += 1;
                        slot.1 += cost;
                    }
                }
                for (flags, encoded) in writes {
                    *written.entry("Observation".into()).or_default() += 1;
                    *written.entry("Flag".into()).or_default() += flags as u64;
                    sink.client(plan, encoded)?;
                    COUNTERS.written.fetch_add(1 + flags as u64, Relaxed);
                }
                COUNTERS.segmented.fetch_add(1, Relaxed);
            }
            Ok(())
        };
    let mut pending: Option<Vec<Result<Done<S::Encoded>, PipelineError>>> = None;
    for chunk in ids.chunks(CHUNK) {
        let (built, taken) = rayon::join(
            || build_chunk(chunk),
            || pending.take().map_or(Ok(()), &mut take),
        );
        taken?;
        pending = Some(built);
    }
    if let Some(last) = pending {
        take(last)?;
    }
    let clients_n = per_segment.iter().map(|s| s.0).sum::<u64>();
    let total_cost: f64 = costs.iter().sum();
    let share = |count: u64, cost: f64| Share {
        code: String::new(),
        display: String::new(),
        count,
        share: ratio(count as f64, clients_n as f64),
        cost_share: plan.cost_feature.map(|_| ratio(cost, total_cost)),
    };
    let segments = m
        .segments
        .iter()
        .zip(&per_segment)
        .map(|(s, &(n, c))| Share {
            code: s.code.to_string(),
            display: s.display.en.clone(),
            ..share(n, c)
        })
        .collect();
    let overlays = m
        .overlays
        .iter()
        .zip(&per_overlay)
        .map(|(o, &(n, c))| Share {
            code: o.code.clone(),
            display: o.display.en.clone(),
            ..share(n, c)
        })
        .collect();
    let top_decile_cost_share = plan.cost_feature.map(|_| top_share(&mut costs, 0.10));
    let cost_concentration = plan.cost_feature.map(|_| concentration(&mut costs));
    let age_bands = match age_feature {
        None => Vec::new(),
        Some(_) => AGE_BANDS
            .iter()
            .map(|(_, label)| *label)
            .chain(["unknown"])
            .zip(bands)
            .filter(|(label, counts)| *label != "unknown" || counts.iter().any(|&n| n > 0))
            .map(|(label, counts)| AgeBand {
                band: label.to_owned(),
                counts,
            })
            .collect(),
    };
    let service_areas = if plan.service_areas.is_empty() {
        Vec::new()
    } else {
        m.service_areas
            .iter()
            .map(|area| (area.code.clone(), area.display.en.clone()))
            .chain([("none".to_owned(), "None of these areas".to_owned())])
            .zip(areas)
            .map(|((area, display), counts)| AreaCounts {
                area,
                display,
                counts,
            })
            .collect()
    };
    info!(model = %m.id, clients = clients_n, "model evaluated");
    Ok(ModelSummary {
        model: m.id.to_string(),
        version: m.version.clone(),
        as_of: plan.as_of.to_string(),
        clients: clients_n,
        not_assessed,
        segments,
        overlays,
        total_cost: plan.cost_feature.map(|_| total_cost),
        top_decile_cost_share,
        written,
        thresholds: threshold_list(plan, &thresholds),
        top_shares: realised(plan, &thresholds, &top_held, clients_n, fixed.is_some()),
        cost_concentration,
        age_bands,
        service_areas,
        invalid: invalid_clients,
    })
}

/// Assesses one client of the folded population.
pub fn assess(
    plan: &Plan,
    id: &str,
    record: &ClientRecord,
    thresholds: &[Option<f64>],
) -> Result<Assessment, PipelineError> {
    eval::assess(plan, record.values(plan), thresholds)
        .ok_or_else(|| PipelineError::Unplaced(id.to_owned(), plan.mapping.id.to_string()))
}

/// Folds one client's resources already in memory (a CDS Hooks prefetch) for `plan`: the
/// record of `patient` when its Patient is among them, and how many resources could not be
/// used (skipped, as a run with `--on-invalid=skip` does). Resources of other clients are
/// ignored.
pub fn fold_client(
    plan: &Plan,
    patient: &str,
    resources: &[&serde_json::Value],
) -> (Option<ClientRecord>, u64) {
    let mut fold = Fold::new(plan);
    let mut rejected = 0;
    for resource in resources {
        let fact = extract::extract_value(plan, resource);
        if fact.and_then(|f| fold.apply(f)).is_err() {
            rejected += 1;
        }
    }
    let (mut clients, _) = fold.into_clients();
    (clients.remove(patient).filter(|r| r.has_patient), rejected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_reported_once_per_fault_and_again_only_when_more_came() {
        let rejected = |fault, line: u32| Rejected {
            origin: format!("Encounter.ndjson:{line}"),
            resource: None,
            fault,
            reason: "r".into(),
        };
        let mut log = RejectLog::every(std::time::Duration::from_secs(3600));
        for line in 1..=300 {
            let fault =
                [Fault::BadDate, Fault::BadReference, Fault::UnknownType][line as usize % 3];
            log.add(&rejected(fault, line));
        }
        assert_eq!(log.report_if_due(), 0, "not yet due");
        assert_eq!(log.report(), 3, "one line per fault");
        assert_eq!(log.report(), 0, "nothing new");
        assert_eq!(log.faults[&Fault::BadReference].count, 100);
        assert_eq!(
            log.faults[&Fault::BadReference].first.origin,
            "Encounter.ndjson:1"
        );
        let mut often = RejectLog::every(std::time::Duration::ZERO);
        often.add(&rejected(Fault::BadDate, 1));
        assert_eq!(often.report_if_due(), 1, "a long read reports as it goes");
        often.add(&rejected(Fault::BadId, 2));
        assert_eq!(often.report_if_due(), 1, "only the fault with more");
    }

    #[test]
    fn lorenz_curve_and_age_bands() {
        let mut costs: Vec<f64> = (1..=100).map(f64::from).collect();
        let c = concentration(&mut costs);
        assert_eq!(c.lorenz.first(), Some(&(0.0, 0.0)));
        assert_eq!(c.lorenz.last(), Some(&(1.0, 1.0)));
        assert!((c.top_1 - 100.0 / 5050.0).abs() < 1e-9);
        assert!(c.lorenz.windows(2).all(|w| w[0].1 <= w[1].1));
        assert_eq!(
            [
                None,
                Some(0.0),
                Some(17.9),
                Some(18.0),
                Some(74.0),
                Some(90.0)
            ]
            .map(age_band),
            [4, 0, 0, 1, 2, 3]
        );
    }

    #[test]
    fn top_share_of_a_heavy_tail() {
        let mut values: Vec<f64> = (0..10)
            .map(|i| if i == 0 { 80.0 } else { 20.0 / 9.0 })
            .collect();
        assert!((top_share(&mut values, 0.10) - 0.8).abs() < 1e-9);
        assert_eq!(top_share(&mut [], 0.1), 0.0);
    }
}
