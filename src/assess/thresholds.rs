//! Population thresholds: the value at which a client is in the top share of a `top_percent`
//! test, over the folded population, and what the test held for. One run computes them once,
//! before any client is assessed; an incremental run or a shard takes them from elsewhere (a
//! checkpoint, a thresholds file) through `given_thresholds`.

use rayon::prelude::*;
use serde::Serialize;

use crate::assess::eval;
use crate::model::plan::Plan;
use crate::record::{ClientRecord, Clients};

/// How many clients are assessed (and their columns taken) in parallel at a time.
pub(crate) const CHUNK: usize = 4096;

/// A population threshold of a `top_percent` test.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Threshold {
    /// Feature id.
    pub feature: String,
    /// The top share, in percent.
    pub percent: f64,
    /// The feature value at which a client is in the top share.
    pub value: Option<f64>,
}

/// What a `top_percent` test held for in a run.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct TopShare {
    /// Feature id.
    pub feature: String,
    /// The top share, in percent.
    pub percent: f64,
    /// Clients the test held for.
    pub clients: u64,
    /// Their share of the run's clients: at most `percent` / 100 (`eval::top_cut`).
    pub share: f64,
    /// Why the test held for no one, when it could not be applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Where a run's `top_percent` thresholds come from: the one place that turns that choice into
/// the values `eval::assess` compares with.
#[derive(Debug, Clone, Copy)]
pub enum Basis<'a> {
    /// The clients at hand are the population (a full run, a file run, a joined run).
    Population(&'a Clients),
    /// Thresholds kept from a full run (a checkpoint, a thresholds file): the clients at hand
    /// are only those that changed, or one client.
    Given(&'a [Threshold]),
    /// Neither: the clients at hand are no population and nothing was kept, so a `top_percent`
    /// test holds for no one.
    Unknown,
}

/// `plan`'s `top_percent` thresholds, in its order, on `basis`.
pub fn of(plan: &Plan, basis: Basis<'_>) -> Vec<Option<f64>> {
    match basis {
        Basis::Population(clients) => population_thresholds(plan, clients),
        Basis::Given(given) => given_thresholds(plan, given),
        Basis::Unknown => vec![None; plan.percentiles.len()],
    }
}

/// The `top_percent` thresholds over the whole folded population.
pub fn population_thresholds(plan: &Plan, clients: &Clients) -> Vec<Option<f64>> {
    if plan.percentiles.is_empty() {
        return Vec::new();
    }
    eval::thresholds(plan, threshold_columns(plan, clients))
}

/// `plan`'s `top_percent` thresholds as kept between runs and shards, from their values in
/// the plan's order.
pub(crate) fn threshold_list(plan: &Plan, values: &[Option<f64>]) -> Vec<Threshold> {
    (plan.percentiles.iter().zip(values))
        .map(|(&(f, percent), &value)| Threshold {
            feature: plan.features[f].id.clone(),
            percent,
            value,
        })
        .collect()
}

/// Whom each `top_percent` test held for, and why it held for no one where it could not be
/// applied.
pub(crate) fn realised(
    plan: &Plan,
    thresholds: &[Option<f64>],
    held: &[u64],
    clients: u64,
    fixed: bool,
) -> Vec<TopShare> {
    threshold_list(plan, thresholds)
        .into_iter()
        .zip(held)
        .map(|(t, &held)| {
            let note = match t.value {
                Some(_) => None,
                None if fixed => Some("the given thresholds have no value for this test".to_owned()),
                None if eval::top_room(clients as usize, t.percent) == 0 => Some(format!(
                    "not applied: {clients} clients are too few for a top {} % (it needs at least {})",
                    t.percent,
                    (100.0 / t.percent).ceil()
                )),
                None => Some("no client is above zero and clear of the ties at the cut".to_owned()),
            };
            TopShare {
                feature: t.feature,
                percent: t.percent,
                clients: held,
                share: ratio(held as f64, clients as f64),
                note,
            }
        })
        .collect()
}

/// `plan`'s `top_percent` thresholds, in its order, from thresholds kept elsewhere (a checkpoint,
/// a thresholds file); a test they do not cover has none and never holds.
fn given_thresholds(plan: &Plan, given: &[Threshold]) -> Vec<Option<f64>> {
    plan.percentiles
        .iter()
        .map(|&(f, p)| {
            given
                .iter()
                .find(|t| t.feature == plan.features[f].id && t.percent == p)
                .and_then(|t| t.value)
        })
        .collect()
}

/// The column of every `top_percent` test over the folded clients, for a shard's part of the
/// population thresholds.
pub fn threshold_columns(plan: &Plan, clients: &Clients) -> Vec<Vec<f64>> {
    // On all cores, in runs of clients, as the id sort before it: at national scale this is a
    // stage of its own, and a column's order does not matter ([`eval::top_cut`]).
    // Clients who get no assessment are no part of the population a share is taken of.
    let records: Vec<&ClientRecord> = clients
        .values()
        .filter(|r| r.unassessed.is_none())
        .collect();
    records
        .par_chunks(CHUNK)
        .map(|chunk| eval::columns(plan, chunk.iter().map(|r| r.values(plan))))
        .reduce(
            || vec![Vec::new(); plan.percentiles.len()],
            |mut all, part| {
                all.iter_mut().zip(part).for_each(|(a, p)| a.extend(p));
                all
            },
        )
}

/// `a / b`, or 0 when there is nothing to divide by.
pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// The share of the total held by the top `fraction` of values.
pub(crate) fn top_share(values: &mut [f64], fraction: f64) -> f64 {
    let total: f64 = values.iter().sum();
    let keep = ((values.len() as f64) * fraction).ceil() as usize;
    values.sort_unstable_by(|a, b| b.total_cmp(a));
    ratio(values.iter().take(keep).sum(), total)
}
