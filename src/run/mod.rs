//! Orchestration: a run wires a source, the fold, the assessment, the write-back and a sink
//! together, and keeps what must outlive it (the summary, the checkpoint). Everything below this
//! layer is a part a run uses; everything above (serve, the command line) starts runs.
//!
//! - [`pipeline`]: source → record → assess → writeback → sink, on a reader thread and both
//!   cores, and the run's summary.
//! - [`files`]: a run whose results go to files (from files, a Bulk Data export, the synthetic
//!   population).
//! - [`bulk`](mod@bulk): a run over a Bulk Data export, its kick-off, resumption and checkpoint.
//! - [`job`]: one run against a FHIR server by paged search, as `run --server` and `serve` do it.
//! - [`multi`]: one run over several sources, joined into whole clients, written back to each.
//! - [`shard`]: one population split over processes, and their shared thresholds.
//! - [`state`]: the checkpoint of incremental runs, and its one advance.
//! - [`summary`]: what a run prints and keeps in `summary.json`, read back by `report`.
//! - [`progress`]: counters of a run and their display (bars or log lines).
//! - [`bench`](mod@bench): the parse-only floor a run is compared with.
//! - [`telemetry`]: logging set-up, and this process's CPU time and memory.

pub mod bench;
pub mod bulk;
pub mod files;
pub mod job;
pub mod multi;
pub mod pipeline;
pub mod progress;
pub mod shard;
pub mod state;
pub mod summary;
pub mod telemetry;
