//! The summary of a run: what `run` prints after a run and keeps in `summary.json`, and what
//! `report` reads back. One set of types for both directions, so the file and its reader cannot
//! disagree. Every field has a default when read, so a summary written by an older version still
//! reads; written, the fields keep their order, since the file must be byte-identical across
//! reruns.

use std::collections::BTreeMap;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::assess::thresholds::{Threshold, TopShare, ratio, top_share};
use crate::writeback::validate::Invalid;

/// What a file run prints and keeps in `summary.json`; `report` reads it back.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    pub input: String,
    pub resources: BTreeMap<String, u64>,
    pub after_as_of: u64,
    pub rejected: u64,
    /// Resources of FHIR types that no model reads, per type: left aside, not rejected.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ignored: BTreeMap<String, u64>,
    /// Bills in a currency the model has no rate for, per currency: costed by the price table.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub unpriced_bills: BTreeMap<CompactString, u64>,
    /// Files of an export's manifest of types not asked for, per type: not even downloaded.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ignored_files: BTreeMap<String, usize>,
    pub models: Vec<ModelSummary>,
    /// Kept out of `summary.json`, which lives in that directory anyway and must not differ
    /// between two runs into different directories.
    #[serde(skip)]
    pub out: String,
}

impl Summary {
    /// The table printed after a run; wall time is printed but kept out of `summary.json`, so
    /// that file is byte-identical across reruns.
    pub fn render(&self, seconds: f64) -> String {
        let resources: u64 = self.resources.values().sum();
        let mut out = format!(
            "Input: {} ({} resources, {:.1} s)\n",
            self.input, resources, seconds
        );
        for m in &self.models {
            out.push_str(&format!(
                "\nModel {} {} · as of {} · {} clients\n",
                m.model, m.version, m.as_of, m.clients
            ));
            out.push_str(&format!(
                "  {:<13} {:<45} {:>8} {:>7} {:>7}\n",
                "code", "segment", "clients", "share", "cost"
            ));
            for s in m.segments.iter().chain(&m.overlays) {
                let cost = s
                    .cost_share
                    .map_or_else(|| "–".to_owned(), |c| format!("{:.1} %", c * 100.0));
                out.push_str(&format!(
                    "  {:<13} {:<45} {:>8} {:>5.1} % {:>7}\n",
                    truncate(&s.code, 13),
                    truncate(&s.display, 45),
                    s.count,
                    s.share * 100.0,
                    cost
                ));
            }
            if !m.not_assessed.is_empty() {
                out.push_str(&format!(
                    "  Not assessed (no assessment, no active Flag): {}\n",
                    counts(&m.not_assessed)
                ));
            }
            for t in m.top_shares.iter().filter(|t| t.note.is_some()) {
                out.push_str(&format!(
                    "  Top {} % by {}: {}\n",
                    t.percent,
                    t.feature,
                    t.note.as_deref().unwrap_or_default()
                ));
            }
            if let Some(share) = m.top_decile_cost_share {
                out.push_str(&format!(
                    "  The 10 % most costly clients hold {:.1} % of the cost.\n",
                    share * 100.0
                ));
            }
        }
        out.push_str(&format!("\nRejected inputs: {}", self.rejected));
        if self.rejected > 0 {
            out.push_str(&format!(" (see {}/rejected.ndjson)", self.out));
        }
        let mut by_count: Vec<(&String, &u64)> = self.ignored.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let ignored: Vec<String> = by_count
            .into_iter()
            .map(|(t, n)| format!("{t} {}", thousands(*n)))
            .chain(
                self.ignored_files
                    .iter()
                    .map(|(t, n)| format!("{n} file(s) of {t}, not downloaded")),
            )
            .collect();
        if !ignored.is_empty() {
            out.push_str(&format!(
                "\nIgnored (no model reads them): {}",
                ignored.join(", ")
            ));
        }
        if !self.unpriced_bills.is_empty() {
            out.push_str(&format!(
                "\nBills in currencies the model has no rate for (their clients costed by the price table): {}",
                counts(&self.unpriced_bills)
            ));
        }
        if self.after_as_of > 0 {
            out.push_str(&format!(
                "\nResources after the as-of date (read, not counted): {}",
                self.after_as_of
            ));
        }
        out.push_str(&format!(
            "\nWritten: {0}/Observation.ndjson, {0}/Flag.ndjson, {0}/summary.json\n",
            self.out
        ));
        out
    }
}

/// Counts and shares of one model's results, for the printed table and `summary.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelSummary {
    /// Model id.
    pub model: String,
    /// Model version.
    pub version: String,
    /// As-of date.
    pub as_of: String,
    /// Clients segmented.
    pub clients: u64,
    /// Clients not assessed, by why (`deceased`, `not-yet-born`, `inactive`): their Patient
    /// says so at the as-of date.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub not_assessed: BTreeMap<String, u64>,
    /// Per segment, light to heavy.
    pub segments: Vec<Share>,
    /// Per overlay.
    pub overlays: Vec<Share>,
    /// Total of the cost feature over all clients, when the model has one.
    pub total_cost: Option<f64>,
    /// Share of total cost held by the 10 % most costly clients.
    pub top_decile_cost_share: Option<f64>,
    /// Resources built.
    pub written: BTreeMap<String, u64>,
    /// The population thresholds the `top_percent` tests used.
    pub thresholds: Vec<Threshold>,
    /// Whom each `top_percent` test held for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub top_shares: Vec<TopShare>,
    /// How cost concentrates, when the model has a cost feature.
    pub cost_concentration: Option<CostConcentration>,
    /// Clients per age band and segment, when the model has an age feature.
    pub age_bands: Vec<AgeBand>,
    /// Clients per service area and segment, when the model names service areas.
    pub service_areas: Vec<AreaCounts>,
    /// Clients whose built resources broke a rule of [`crate::writeback::validate`]: not written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<Invalid>,
}

/// How cost concentrates on few clients (the brief: about 10 % of clients carry 80 % of cost).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CostConcentration {
    /// Share of cost held by the most costly 1 %, 5 % and 10 % of clients.
    pub top_1: f64,
    /// See `top_1`.
    pub top_5: f64,
    /// See `top_1`.
    pub top_10: f64,
    /// The Lorenz curve: (share of clients, least costly first; share of cost they hold), at
    /// every 5 %.
    pub lorenz: Vec<(f64, f64)>,
}

/// One age band's clients per segment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgeBand {
    /// `0–17`, `18–64`, `65–74`, `75+`, or `unknown` (no birth date).
    pub band: String,
    /// Clients per segment, in the model's segment order.
    pub counts: Vec<u64>,
}

/// One service area's clients per segment. A client with contacts in several areas is counted
/// in each; the last row, `none`, holds the clients with a contact in none of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AreaCounts {
    /// The area's code (`health`, `social`, `oral`), or `none`.
    pub area: String,
    /// The area's name in English.
    pub display: String,
    /// Clients per segment, in the model's segment order.
    pub counts: Vec<u64>,
}

/// The bands of [`AgeBand`]: lower bound (inclusive) and label.
pub(crate) const AGE_BANDS: [(f64, &str); 4] = [
    (0.0, "0–17"),
    (18.0, "18–64"),
    (65.0, "65–74"),
    (75.0, "75+"),
];

/// The index in [`AGE_BANDS`] of `age`; one past the end when it is unknown.
pub(crate) fn age_band(age: Option<f64>) -> usize {
    match age {
        None => AGE_BANDS.len(),
        Some(a) => AGE_BANDS
            .iter()
            .rposition(|(low, _)| a >= *low)
            .unwrap_or(0),
    }
}

/// The Lorenz curve and top shares of `costs` (sorted in place).
pub(crate) fn concentration(costs: &mut [f64]) -> CostConcentration {
    let top = |f: f64, c: &mut [f64]| top_share(c, f);
    let (top_1, top_5, top_10) = (top(0.01, costs), top(0.05, costs), top(0.10, costs));
    costs.sort_unstable_by(f64::total_cmp);
    let total: f64 = costs.iter().sum();
    let lorenz = (0..=20)
        .map(|i| {
            let share = f64::from(i) / 20.0;
            let n = ((costs.len() as f64) * share).round() as usize;
            (
                share,
                ratio(costs[..n.min(costs.len())].iter().sum(), total),
            )
        })
        .collect();
    CostConcentration {
        top_1,
        top_5,
        top_10,
        lorenz,
    }
}

/// A count and its share of clients (and of cost, where the model has a cost feature).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Share {
    /// Segment or overlay code.
    pub code: String,
    /// Its English name.
    pub display: String,
    /// Clients.
    pub count: u64,
    /// Share of all clients.
    pub share: f64,
    /// Share of total cost these clients hold.
    pub cost_share: Option<f64>,
}

/// `deceased 110, inactive 3`.
fn counts<K: std::fmt::Display>(counts: &BTreeMap<K, u64>) -> String {
    let parts: Vec<String> = counts
        .iter()
        .map(|(k, n)| format!("{k} {}", thousands(*n)))
        .collect();
    parts.join(", ")
}

/// `84715` as `84 715`: counts in the printed summary are read at a glance.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n - 1).chain(['…']).collect()
    }
}
