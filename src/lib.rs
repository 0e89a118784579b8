//! segmentti reads clients' Patient, Encounter and Condition resources, places each client in
//! a segment of a segmentation model that a wellbeing county defines in a mapping file, and
//! writes the result back as FHIR resources: an Observation (the assessment and the criteria
//! behind it) and a Flag (the current segment, active until superseded).
//!
//! # Layout
//! The modules follow the data flow, so a reader finds their room by name:
//! - [`fhir`]: the HTTP side of FHIR: client, retry policy, paging, OperationOutcome errors.
//! - [`source`]: where FHIR resources come from (NDJSON and Bundle files, synthetic data).
//! - [`record`]: one client's resources folded into the facts a model asks for.
//! - [`model`]: mapping files (load, schema, checks), features, criteria, the question tree.
//! - [`writeback`]: pure builders of the Observation and Flag, with deterministic identifiers.
//! - [`sink`]: where results go (NDJSON files, summary).
//! - [`profiles`]: the FHIR package (profiles, code systems, examples) of what is written.
//! - [`report`]: the population report of a run's output (HTML with SVG, JSON, CSV).
//! - [`state`]: the checkpoint of incremental server runs.
//! - [`job`]: one run against a server (read, evaluate, write back, checkpoint), shared by
//!   `run --server` and the service's schedule.
//! - [`conformance`]: the kit that checks a FHIR server does what a run needs, by doing it.
//! - [`multi`]: one run over several sources, joined into whole clients, written back to each.
//! - [`serve`]: the long-running service: scheduled runs, CDS Hooks cards, health, metrics.
//! - [`shard`]: one population split over processes, and their shared thresholds.
//! - [`pipeline`]: source → record → model → writeback → sink, and the run's summary.
//! - [`progress`]: counters of a run and their display (bars or log lines).
//! - [`cases`]: hand-written clients kept beside a model, with the results they must get.
//! - [`synth`]: the deterministic synthetic population used as the embedded default.
//! - [`bench`]: the parse-only floor and peak-memory measurements behind `segmentti bench`.
//! - [`types`] and [`day`]: small value types every stage shares.

pub mod bench;
pub mod cases;
pub mod conformance;
pub mod day;
pub mod fhir;
pub mod job;
pub mod model;
pub mod multi;
pub mod pipeline;
pub mod profiles;
pub mod progress;
pub mod record;
pub mod report;
pub mod serve;
pub mod shard;
pub mod sink;
pub mod source;
pub mod state;
pub mod synth;
pub mod types;
pub mod writeback;
