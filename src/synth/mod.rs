//! Temporary interface of the synthetic population while its generator is being written.

use std::path::Path;

use crate::day::Day;
use crate::types::ResourceKind;

/// Code systems.
#[derive(Debug, Clone, Copy)]
pub enum CodeFlavor {
    /// Finnish.
    Finnish,
    /// International.
    International,
}

/// Output format.
#[derive(Debug, Clone, Copy)]
pub enum SynthFormat {
    /// NDJSON.
    Ndjson,
    /// Bundles.
    Bundles,
}

/// Options of the synthetic population.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    /// Clients.
    pub clients: u64,
    /// Seed.
    pub seed: u64,
    /// Codes.
    pub flavor: CodeFlavor,
    /// As-of date.
    pub as_of: Day,
}

/// Report.
#[derive(Debug, Clone, Default)]
pub struct SynthReport {
    /// n
    pub clients: u64,
    /// n
    pub patients: u64,
    /// n
    pub encounters: u64,
    /// n
    pub conditions: u64,
    /// eur
    pub total_cost_eur: f64,
    /// share
    pub top_decile_cost_share: f64,
}

/// Error.
#[derive(Debug, thiserror::Error)]
#[error("synth")]
pub struct SynthError;

/// The NDJSON lines, client by client.
pub fn lines(_opts: &SynthOptions) -> impl Iterator<Item = (ResourceKind, String)> {
    std::iter::empty()
}

/// Writes.
pub fn write_dir(
    _opts: &SynthOptions,
    _format: SynthFormat,
    _dir: &Path,
) -> Result<SynthReport, SynthError> {
    Ok(SynthReport::default())
}
