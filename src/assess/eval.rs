//! Evaluation: a client's feature values through the criteria and the question tree to a
//! segment, the overlays beside it, and an [`Explanation`] a nurse can read. Pure: the
//! population thresholds for `top_percent` are computed once by `thresholds` and passed in.

use serde::Serialize;

use crate::fhir::day::Day;
use crate::model::mapping::Text;
use crate::model::plan::{Aggregate, Facts, Plan};
use crate::record::{ClientRecord, Counted};

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
    pub(crate) fn overlay_holds(&self, i: usize) -> bool {
        !self.overlays[i].is_empty()
    }
}

/// The population threshold of every `top_percent` test, from the tests' [`columns`] over the
/// whole population ([`top_cut`]).
pub(crate) fn thresholds(plan: &Plan, columns: Vec<Vec<f64>>) -> Vec<Option<f64>> {
    plan.percentiles
        .iter()
        .zip(columns)
        .map(|(&(_, percent), values)| top_cut(values, percent))
        .collect()
}

/// The column of every `top_percent` test: one value per row (0 where the feature has none).
///
/// The rows are read once, keeping one column per test, so memory grows by one number per
/// client and test, not by a row of every feature.
pub(crate) fn columns(plan: &Plan, rows: impl Iterator<Item = Vec<Option<f64>>>) -> Vec<Vec<f64>> {
    let mut columns: Vec<Vec<f64>> = vec![Vec::new(); plan.percentiles.len()];
    for row in rows {
        for (column, &(feature, _)) in columns.iter_mut().zip(&plan.percentiles) {
            column.push(row[feature].unwrap_or(0.0));
        }
    }
    columns
}

/// How many clients a top `percent` share may hold out of `population`: whole clients, rounded
/// down, so that "the top 5 %" is never more than 5 %. 0 means the population is too small for
/// the share (fewer than 20 clients for 5 %).
pub(crate) fn top_room(population: usize, percent: f64) -> usize {
    // The epsilon keeps 20 × 5 / 100 at 1 where floating point would give 0.999….
    ((population as f64) * percent / 100.0 + 1e-9).floor() as usize
}

/// The threshold of a top `percent` share of `values`: the lowest value above zero at which at
/// most [`top_room`] clients are at or above it. Ties at the cut are resolved downwards: when
/// the clients tied at the last place would overfill the share, all of them fall out and the
/// threshold is the next higher value, so the share holds fewer clients, never more. `None`
/// when the population is too small for the share, or no client is above zero and clear of
/// the ties. Depends only on the multiset of values, not their order, which is what lets
/// shards merge their columns exactly.
pub(crate) fn top_cut(mut values: Vec<f64>, percent: f64) -> Option<f64> {
    let room = top_room(values.len(), percent);
    if room == 0 {
        return None;
    }
    // Descending: the first `room` values are the top share's candidates.
    let (above, &mut last, below) = values.select_nth_unstable_by(room - 1, |a, b| b.total_cmp(a));
    let cut = if below.contains(&last) {
        // A client outside the share ties with the last one inside: the tie goes out whole.
        above
            .iter()
            .copied()
            .filter(|v| *v > last)
            .min_by(f64::total_cmp)?
    } else {
        last
    };
    (cut > 0.0).then_some(cut)
}

/// Places one client. `None` only when no tree node holds, which `check-mapping` rules out.
pub(crate) fn assess(
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
    pub(crate) fn get(&self, lang: Lang) -> &str {
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
    /// The client's resources that were read and counted for nothing, and why (a status the
    /// model does not count, a bill it cannot price).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<LeftOutLine>,
}

/// One resource left out of the assessment.
#[derive(Debug, Clone, Serialize)]
pub struct LeftOutLine {
    /// `Type/id`.
    pub resource: String,
    /// Why it counted for nothing.
    pub reason: String,
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
    /// For a `distinct` count with the input at hand (`explain`), what it counted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub concepts: Vec<ConceptLine>,
}

/// One concept a `distinct` count counted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConceptLine {
    /// Its name in the model's lists, or its code for one no list holds.
    pub name: String,
    /// The codings it was recorded with, as `system code` in the model's system names.
    pub codes: Vec<String>,
    /// The resources that recorded it, `Type/id`.
    pub resources: Vec<String>,
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
        concepts: Vec::new(),
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
        left_out: Vec::new(),
    }
}

impl Explanation {
    /// Names what each `distinct` count of the explanation counted, from the fold's record of
    /// the client (`crate::record::Fold::counted`).
    pub fn name_concepts(&mut self, plan: &Plan, counted: &[Counted]) {
        for f in self.criteria.iter_mut().flat_map(|c| &mut c.features) {
            let Some(i) = plan.mapping.features.iter().position(|m| m.id == f.id) else {
                continue;
            };
            let Aggregate::Distinct { field } = plan.features[i].aggregate else {
                continue;
            };
            let field = plan.distinct_fields[field];
            let mut lines: Vec<(u64, ConceptLine)> = Vec::new();
            for c in counted.iter().filter(|c| c.feature == i) {
                let at = match lines.iter().position(|(key, _)| *key == c.key) {
                    Some(at) => at,
                    None => {
                        lines.push((c.key, ConceptLine::default()));
                        lines.len() - 1
                    }
                };
                let line = &mut lines[at].1;
                let resource = format!("{}/{}", c.kind, c.id);
                if !line.resources.contains(&resource) {
                    line.resources.push(resource);
                }
                for (system, code) in &c.codings {
                    let text = format!("{} {code}", plan.system_name(system));
                    if plan.counts_as(field, system, code, c.key) && !line.codes.contains(&text) {
                        line.codes.push(text);
                    }
                }
            }
            f.concepts = lines
                .into_iter()
                .map(|(key, mut line)| {
                    line.name = plan.concept_name(key).map_or_else(
                        || line.codes.first().cloned().unwrap_or_default(),
                        str::to_owned,
                    );
                    line
                })
                .collect();
        }
    }

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
                let concepts: Vec<String> = f
                    .concepts
                    .iter()
                    .map(|c| format!("{} ({})", c.name, c.codes.join(", ")))
                    .collect();
                let counted = if concepts.is_empty() {
                    String::new()
                } else {
                    format!(": {}", concepts.join("; "))
                };
                out.push_str(&format!("      {} = {value}{counted}\n", f.title));
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
        if !self.left_out.is_empty() {
            out.push_str("\nLeft out (read, counted for nothing):\n");
            for l in &self.left_out {
                out.push_str(&format!("  {}: {}\n", l.resource, l.reason));
            }
        }
        out
    }
}

/// A feature value as people write it: whole numbers without decimals.
fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_top_share_holds_at_most_its_percent() {
        // 78 clients, most with one contact: the 95th percentile is 1, and a nearest-rank cut
        // would let all of them in.
        let mut contacts = vec![1.0; 60];
        contacts.extend([0.0; 10]);
        contacts.extend([2.0, 2.0, 3.0, 3.0, 4.0, 5.0, 6.0, 9.0]);
        let cut = top_cut(contacts.clone(), 5.0).expect("a cut");
        let held = contacts.iter().filter(|v| **v >= cut).count();
        assert_eq!(top_room(78, 5.0), 3);
        assert_eq!((cut, held), (5.0, 3));
    }

    #[test]
    fn ties_at_the_cut_fall_out_together() {
        // Room for 2; the second and third place tie at 7: both out, only 9 holds.
        assert_eq!(
            top_cut(vec![9.0, 7.0, 7.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], 20.0),
            Some(9.0)
        );
        // Every client tied: no one clears the tie.
        assert_eq!(top_cut(vec![1.0; 40], 10.0), None);
        // No tie at the cut: the last place inside is the threshold.
        assert_eq!(top_cut((1..=20).map(f64::from).collect(), 10.0), Some(19.0));
    }

    #[test]
    fn zero_never_holds_and_small_populations_get_no_cut() {
        assert_eq!(top_cut(vec![0.0; 100], 5.0), None);
        assert_eq!(
            top_cut(vec![3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], 10.0),
            Some(3.0)
        );
        assert_eq!(top_room(19, 5.0), 0);
        assert_eq!(top_cut((1..=19).map(f64::from).collect(), 5.0), None);
        assert_eq!(top_room(20, 5.0), 1);
        assert_eq!(top_cut((1..=20).map(f64::from).collect(), 5.0), Some(20.0));
    }

    #[test]
    fn the_cut_does_not_depend_on_order() {
        let values: Vec<f64> = (0..200).map(|i| f64::from((i * 37) % 23)).collect();
        let mut reversed = values.clone();
        reversed.reverse();
        assert_eq!(top_cut(values, 10.0), top_cut(reversed, 10.0));
    }
}
