//! Evaluation: a client's feature values through the criteria and the question tree to a
//! segment, the overlays beside it, and an [`Explanation`] a nurse can read. Pure: the
//! population thresholds for `top_percent` are computed once by [`thresholds`] and passed in.

use serde::Serialize;

use super::mapping::Text;
use super::plan::{Facts, Plan};
use crate::day::Day;
use crate::record::ClientRecord;

/// One client's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// Feature values, in plan order.
    pub features: Vec<Option<f64>>,
    /// Level index per criterion.
    pub levels: Vec<usize>,
    /// The tree node that placed the client.
    pub node: usize,
    /// The segment index.
    pub segment: usize,
    /// Per overlay, the rules that hold (the overlay holds when any does).
    pub overlays: Vec<Vec<usize>>,
    /// Bit `i` set: feature `i` decided a raised criterion level or a holding overlay rule.
    pub decisive: u64,
}

impl Assessment {
    /// Whether overlay `i` holds.
    pub fn overlay_holds(&self, i: usize) -> bool {
        !self.overlays[i].is_empty()
    }
}

/// The population threshold of every `top_percent` test, from the tests' [`columns`] over the
/// whole population: the value of the last client inside the top share (nearest rank).
pub fn thresholds(plan: &Plan, columns: Vec<Vec<f64>>) -> Vec<Option<f64>> {
    plan.percentiles
        .iter()
        .zip(columns)
        .map(|(&(_, percent), values)| nearest_rank(values, percent))
        .collect()
}

/// The column of every `top_percent` test: one value per row (0 where the feature has none).
///
/// The rows are read once, keeping one column per test, so memory grows by one number per
/// client and test, not by a row of every feature.
pub fn columns(plan: &Plan, rows: impl Iterator<Item = Vec<Option<f64>>>) -> Vec<Vec<f64>> {
    let mut columns: Vec<Vec<f64>> = vec![Vec::new(); plan.percentiles.len()];
    for row in rows {
        for (column, &(feature, _)) in columns.iter_mut().zip(&plan.percentiles) {
            column.push(row[feature].unwrap_or(0.0));
        }
    }
    columns
}

/// The value of the last of `values` inside the top `percent` (nearest rank); `None` when the
/// top share holds no one. Depends only on the multiset of values, not their order, which is
/// what lets shards merge their columns exactly.
pub fn nearest_rank(mut values: Vec<f64>, percent: f64) -> Option<f64> {
    let keep = ((values.len() as f64) * percent / 100.0).ceil() as usize;
    if keep == 0 {
        return None;
    }
    let at = values.len() - keep;
    let (_, nth, _) = values.select_nth_unstable_by(at, f64::total_cmp);
    Some(*nth)
}

/// Places one client. `None` only when no tree node holds, which `check-mapping` rules out.
pub fn assess(
    plan: &Plan,
    features: Vec<Option<f64>>,
    thresholds: &[Option<f64>],
) -> Option<Assessment> {
    let mut levels = vec![0usize; plan.criteria.len()];
    let mut decisive = 0u64;
    for (c, criterion) in plan.criteria.iter().enumerate() {
        let facts = Facts {
            features: &features,
            levels: &levels,
            thresholds,
        };
        if let Some(top) = criterion.levels.iter().rposition(|cond| cond.holds(facts)) {
            levels[c] = top + 1;
            criterion.features.iter().for_each(|&f| decisive |= 1 << f);
        }
    }
    let facts = Facts {
        features: &features,
        levels: &levels,
        thresholds,
    };
    let node = plan
        .tree
        .iter()
        .position(|n| n.when.as_ref().is_none_or(|w| w.holds(facts)))?;
    let overlays: Vec<Vec<usize>> = plan
        .overlays
        .iter()
        .map(|o| {
            let fired: Vec<usize> = o
                .rules
                .iter()
                .enumerate()
                .filter(|(_, (cond, _))| cond.holds(facts))
                .map(|(i, _)| i)
                .collect();
            for &r in &fired {
                o.rules[r].1.iter().for_each(|&f| decisive |= 1 << f);
            }
            fired
        })
        .collect();
    let segment = plan.tree[node].segment;
    Some(Assessment {
        features,
        levels,
        node,
        segment,
        overlays,
        decisive,
    })
}

/// A language of the model's texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    /// Suomi.
    Fi,
    /// Svenska.
    Sv,
    /// English.
    En,
}

impl Text {
    /// The text in `lang`.
    pub fn get(&self, lang: Lang) -> &str {
        match lang {
            Lang::Fi => &self.fi,
            Lang::Sv => &self.sv,
            Lang::En => &self.en,
        }
    }
}

/// Why a client is where they are, for people (`explain`) and machines (`explain --json`).
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The client's Patient id.
    pub patient: String,
    /// Model id and version.
    pub model: String,
    /// The as-of date.
    pub as_of: Day,
    /// The segment code.
    pub segment: String,
    /// The segment's name.
    pub segment_display: String,
    /// What professionals should do.
    pub guidance: String,
    /// Tree nodes tried, in order, up to the one that placed the client.
    pub path: Vec<Step>,
    /// Every criterion with its level and the features behind it.
    pub criteria: Vec<CriterionResult>,
    /// Overlays that hold, with their rules.
    pub overlays: Vec<OverlayResult>,
    /// The resources that counted, most recent first (capped), and how many there were.
    pub evidence: Vec<EvidenceLine>,
    /// How many resources counted in all.
    pub evidence_total: u32,
    /// For a client joined from several sources: each source that holds the client, with the
    /// client's Patient there; empty for one source.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held_by: Vec<HeldBy>,
}

/// One tree node tried.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Node id.
    pub node: String,
    /// Whether its question held.
    pub held: bool,
    /// Why the node exists.
    pub because: String,
}

/// One criterion's result.
#[derive(Debug, Clone, Serialize)]
pub struct CriterionResult {
    /// Criterion id.
    pub id: String,
    /// Its name.
    pub title: String,
    /// The level's code.
    pub level: String,
    /// The level's name.
    pub level_display: String,
    /// The features its levels read.
    pub features: Vec<FeatureValue>,
}

/// One feature's value.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureValue {
    /// Feature id.
    pub id: String,
    /// Its name.
    pub title: String,
    /// Its value; `null` when the client has none.
    pub value: Option<f64>,
}

/// One overlay that holds.
#[derive(Debug, Clone, Serialize)]
pub struct OverlayResult {
    /// Overlay code.
    pub code: String,
    /// Its name.
    pub display: String,
    /// The rules that hold, by name.
    pub rules: Vec<String>,
}

/// A source holding a joined client.
#[derive(Debug, Clone, Serialize)]
pub struct HeldBy {
    /// The source, as the command line named it (a server URL or an input path).
    pub source: String,
    /// The client's Patient id on that source.
    pub patient: String,
}

/// One resource behind the result.
#[derive(Debug, Clone, Serialize)]
pub struct EvidenceLine {
    /// `Type/id`.
    pub resource: String,
    /// The source it was read from, for a joined client; ids are only unique per source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Its day.
    pub day: Option<Day>,
    /// The features it counted for.
    pub features: Vec<String>,
}

/// Builds the explanation of `assessment` in `lang`. `sources` names the sources by number for
/// a joined client, so that each resource says where it was read; empty for one source.
pub fn explain(
    plan: &Plan,
    patient: &str,
    record: &ClientRecord,
    a: &Assessment,
    lang: Lang,
    sources: &[String],
) -> Explanation {
    let m = &plan.mapping;
    let feature_value = |i: usize| FeatureValue {
        id: m.features[i].id.clone(),
        title: m.features[i].title.get(lang).to_owned(),
        value: a.features[i],
    };
    let path = (0..=a.node)
        .map(|n| Step {
            node: m.tree[n].id.clone(),
            held: n == a.node,
            because: m.tree[n].because.get(lang).to_owned(),
        })
        .collect();
    let criteria = plan
        .criteria
        .iter()
        .enumerate()
        .map(|(c, cp)| {
            let level = &m.criteria[c].levels[a.levels[c]];
            CriterionResult {
                id: cp.id.clone(),
                title: m.criteria[c].title.get(lang).to_owned(),
                level: level.code.clone(),
                level_display: level.display.get(lang).to_owned(),
                features: cp.features.iter().map(|&f| feature_value(f)).collect(),
            }
        })
        .collect();
    let overlays = a
        .overlays
        .iter()
        .enumerate()
        .filter(|(_, fired)| !fired.is_empty())
        .map(|(o, fired)| OverlayResult {
            code: m.overlays[o].code.clone(),
            display: m.overlays[o].display.get(lang).to_owned(),
            rules: fired
                .iter()
                .map(|&r| m.overlays[o].rules[r].title.get(lang).to_owned())
                .collect(),
        })
        .collect();
    let mut evidence: Vec<EvidenceLine> = record
        .evidence
        .iter()
        .map(|e| EvidenceLine {
            resource: e.reference().to_string(),
            source: sources.get(usize::from(e.source)).cloned(),
            day: e.day(),
            features: (0..m.features.len())
                .filter(|i| e.features & (1 << i) != 0)
                .map(|i| m.features[i].id.clone())
                .collect(),
        })
        .collect();
    evidence.sort_by(|x, y| y.day.cmp(&x.day).then_with(|| x.resource.cmp(&y.resource)));
    let segment = &m.segments[a.segment];
    Explanation {
        patient: patient.to_owned(),
        model: format!("{} {}", m.id, m.version),
        as_of: plan.as_of,
        segment: segment.code.to_string(),
        segment_display: segment.display.get(lang).to_owned(),
        guidance: segment.guidance.get(lang).to_owned(),
        path,
        criteria,
        overlays,
        evidence,
        evidence_total: record.evidence_total,
        held_by: Vec::new(),
    }
}

impl Explanation {
    /// The explanation as text for a professional.
    pub fn render(&self) -> String {
        let mut out = format!(
            "Patient/{}  ·  {}  ·  as of {}\nSegment {}: {}\n  {}\n",
            self.patient, self.model, self.as_of, self.segment, self.segment_display, self.guidance
        );
        if !self.held_by.is_empty() {
            out.push_str("\nHeld by:\n");
            for h in &self.held_by {
                out.push_str(&format!("  {}  Patient/{}\n", h.source, h.patient));
            }
        }
        out.push_str("\nQuestion tree:\n");
        for step in &self.path {
            let mark = if step.held { "→ yes" } else { "  no " };
            out.push_str(&format!("  {mark}  {}: {}\n", step.node, step.because));
        }
        out.push_str("\nCriteria:\n");
        for c in &self.criteria {
            out.push_str(&format!(
                "  {}: {} ({})\n",
                c.title, c.level_display, c.level
            ));
            for f in &c.features {
                let value = f.value.map_or_else(|| "–".to_owned(), format_number);
                out.push_str(&format!("      {} = {value}\n", f.title));
            }
        }
        if !self.overlays.is_empty() {
            out.push_str("\nOverlays:\n");
            for o in &self.overlays {
                out.push_str(&format!("  {}: {}\n", o.display, o.rules.join("; ")));
            }
        }
        out.push_str(&format!(
            "\nResources behind it ({} shown of {}):\n",
            self.evidence.len(),
            self.evidence_total
        ));
        for e in &self.evidence {
            let day = e
                .day
                .map_or_else(|| "undated".to_owned(), |d| d.to_string());
            let at = e
                .source
                .as_ref()
                .map_or_else(String::new, |s| format!(" at {s}"));
            out.push_str(&format!(
                "  {}  {}{at}  [{}]\n",
                day,
                e.resource,
                e.features.join(", ")
            ));
        }
        out
    }
}

/// A feature value as people write it: whole numbers without decimals.
pub fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.2}")
    }
}
