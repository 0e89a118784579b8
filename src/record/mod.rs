//! One client's resources folded into the numbers a model asks for. Resources arrive in any
//! order (Bulk Data output is grouped by type, not by client), so every client has a small
//! accumulator per feature and a capped list of the resources that counted. Memory grows with
//! the number of clients, never with the number of resources. This module reads no files and
//! knows nothing of segments: it turns [`Fact`]s into [`ClientRecord`]s, and ([`join`]) the
//! records of several sources into whole clients. A resource it cannot use is a [`Rejection`]
//! whose reason names elements and describes values by their [`shape`], never copying them:
//! a bad reference or date may hold an identity code or a birth date.
//!
//! A `billed` cost keeps, per client, one sum per billing source (Claim, ExplanationOfBenefit)
//! beside the price table's sum over Encounters, and a bit per source seen: three numbers per
//! client whatever the number of bills. The cost is the sum of the first source in the model's
//! order that the client has in the window, else the priced Encounters. Only one source counts,
//! since a payer's ExplanationOfBenefit restates the Claim it answers; the choice is per client
//! (not per Encounter, which would need every bill kept until the end), so a client with one
//! Claim in the window is costed by its Claims alone.

pub mod extract;
pub mod join;
pub mod shape;

use compact_str::CompactString;
use rustc_hash::FxHashMap;

pub(crate) use extract::{Fact, Fault, Rejection, Unassessed, Void};

use crate::fhir::day::Day;
use crate::fhir::types::{ResourceKind, ResourceRef};
use crate::model::plan::{Aggregate, Plan};

/// How many contributing resources of each type a client keeps for the assessment's supporting information and
/// explanations; the most recent win, and the full count is kept beside them. Kept per type so
/// that a flood of recent contacts cannot push out the diagnoses that also decided the result.
const EVIDENCE_CAP: usize = 8;

const NO_DAY_LOW: i32 = i32::MAX;
const NO_DAY_HIGH: i32 = i32::MIN;

/// A resource that counted for at least one feature. Every client keeps up to
/// `EVIDENCE_CAP` of each type, most of the fold's memory at a million clients: the day is
/// kept as a day number, so an entry takes 40 bytes rather than 48.
#[derive(Debug, Clone, PartialEq)]
pub struct Evidence {
    /// Its type.
    pub kind: ResourceKind,
    /// Its id.
    pub id: CompactString,
    /// Its day ([`day_number`]), or [`NO_DAY_HIGH`] when it has none.
    day: i32,
    /// Bit `i` set: it counted for feature `i`.
    pub features: u64,
    /// The source it was read from, when several are joined ([`join`]); 0 otherwise.
    pub source: u16,
}

impl Evidence {
    /// A resource of the first source.
    pub(crate) fn new(
        kind: ResourceKind,
        id: CompactString,
        day: Option<Day>,
        features: u64,
    ) -> Self {
        Self {
            kind,
            id,
            day: day.map_or(NO_DAY_HIGH, day_number),
            features,
            source: 0,
        }
    }

    /// Its day, when it has one.
    pub(crate) fn day(&self) -> Option<Day> {
        (self.day != NO_DAY_HIGH).then(|| Day::EPOCH.plus_days(self.day))
    }

    /// The resource as a reference.
    pub(crate) fn reference(&self) -> ResourceRef {
        ResourceRef {
            kind: self.kind,
            id: self.id.to_string(),
        }
    }
}

/// Every client of a fold, by Patient id (as the source names the Patient).
pub(crate) type Clients = FxHashMap<CompactString, ClientRecord>;

/// One client's accumulated facts.
#[derive(Debug, Clone)]
pub struct ClientRecord {
    /// Whether the Patient resource itself was seen.
    pub has_patient: bool,
    /// Patient.birthDate.
    pub birth: Option<Day>,
    /// Why the client gets no assessment, when their Patient says so.
    pub unassessed: Option<Unassessed>,
    slots: Box<[u64]>,
    bills: Box<[Bills]>,
    distinct: Vec<u64>,
    /// The most recent contributing resources, at most `EVIDENCE_CAP` of each type.
    pub evidence: Vec<Evidence>,
    /// How many resources contributed in all.
    pub evidence_total: u32,
    /// How many resources referred to this client (the Patient included).
    pub resources: u32,
}

impl ClientRecord {
    /// A client with a Patient and nothing else yet.
    pub(crate) fn empty(plan: &Plan) -> Self {
        Self {
            has_patient: true,
            ..Self::new(plan)
        }
    }

    fn new(plan: &Plan) -> Self {
        let slots = plan
            .features
            .iter()
            .map(|f| match f.aggregate {
                Aggregate::SpanDays => pack(NO_DAY_LOW, NO_DAY_HIGH),
                Aggregate::DaysSinceLast => pack(0, NO_DAY_HIGH),
                Aggregate::Cost { .. } => 0f64.to_bits(),
                Aggregate::LastValue => NO_VALUE,
                _ => 0,
            })
            .collect();
        Self {
            has_patient: false,
            birth: None,
            unassessed: None,
            slots,
            bills: vec![Bills::default(); plan.billed_features].into_boxed_slice(),
            distinct: Vec::new(),
            evidence: Vec::new(),
            evidence_total: 0,
            resources: 0,
        }
    }

    /// The value of every feature of `plan`, in order; `None` where the client has none
    /// (no birth date, no matching contact for `days_since_last` or `span_days`).
    pub(crate) fn values(&self, plan: &Plan) -> Vec<Option<f64>> {
        plan.features
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let slot = self.slots[i];
                match &f.aggregate {
                    Aggregate::Age => self.birth.map(|b| f64::from(b.years_until(plan.as_of))),
                    Aggregate::Count => Some(slot as f64),
                    Aggregate::Cost { billed: None } => Some(f64::from_bits(slot)),
                    Aggregate::Cost { billed: Some(b) } => {
                        Some(self.bills[*b].cost().unwrap_or(f64::from_bits(slot)))
                    }
                    Aggregate::ListsHit { .. } => Some(f64::from(u64::count_ones(slot))),
                    Aggregate::Distinct { .. } => {
                        let tag = feature_tag(i);
                        Some(
                            self.distinct
                                .iter()
                                .filter(|d| *d & TAG_MASK == tag)
                                .count() as f64,
                        )
                    }
                    Aggregate::SpanDays => {
                        let (first, last) = unpack(slot);
                        (first != NO_DAY_LOW).then(|| f64::from(last - first))
                    }
                    Aggregate::DaysSinceLast => {
                        let (_, last) = unpack(slot);
                        (last != NO_DAY_HIGH)
                            .then(|| f64::from(Day::EPOCH.plus_days(last).days_until(plan.as_of)))
                    }
                    Aggregate::LastValue => {
                        (slot != NO_VALUE).then(|| f64::from(f32::from_bits(slot as u32)))
                    }
                }
            })
            .collect()
    }
}

/// A client's billed totals for one `billed` cost feature, per source in the feature's order
/// of preference.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Bills {
    sums: [f64; 2],
    /// Bit `i`: the client has a bill of source `i` in the window.
    seen: u8,
}

impl Bills {
    fn add(&mut self, source: usize, amount: f64) {
        self.sums[source] += amount;
        self.seen |= 1 << source;
    }

    /// The sum of the first source seen; `None` when the client has no bill.
    fn cost(&self) -> Option<f64> {
        (0..self.sums.len())
            .find(|i| self.seen & (1 << i) != 0)
            .map(|i| self.sums[i])
    }

    fn merge(&mut self, other: Bills) {
        for (mine, theirs) in self.sums.iter_mut().zip(other.sums) {
            *mine += theirs;
        }
        self.seen |= other.seen;
    }
}

const TAG_SHIFT: u32 = 48;
const TAG_MASK: u64 = !((1 << TAG_SHIFT) - 1);

fn feature_tag(feature: usize) -> u64 {
    (feature as u64) << TAG_SHIFT
}

fn pack(low: i32, high: i32) -> u64 {
    (u64::from(low as u32) << 32) | u64::from(high as u32)
}

fn unpack(slot: u64) -> (i32, i32) {
    ((slot >> 32) as u32 as i32, slot as u32 as i32)
}

/// A `last_value` slot without a value: older than any day.
const NO_VALUE: u64 = (i32::MIN as u32 as u64) << 32;

/// A `last_value` slot: the day in the high half (offset so that later days compare higher)
/// and the value as an `f32` in the low half. A score needs no more precision, and the pair
/// fits the one slot every feature has.
fn dated_value(day: Day, value: f64) -> u64 {
    pack(day_number(day), (value as f32).to_bits() as i32)
}

/// The later of two `last_value` slots; of two on the same day, the higher value, so the
/// order resources arrive in does not matter.
fn later_value(a: u64, b: u64) -> u64 {
    let key = |slot: u64| {
        let (day, bits) = unpack(slot);
        (day, f32::from_bits(bits as u32))
    };
    let ((day_a, value_a), (day_b, value_b)) = (key(a), key(b));
    match day_a.cmp(&day_b) {
        std::cmp::Ordering::Less => b,
        std::cmp::Ordering::Greater => a,
        std::cmp::Ordering::Equal if value_b > value_a => b,
        std::cmp::Ordering::Equal => a,
    }
}

fn day_number(day: Day) -> i32 {
    Day::EPOCH.days_until(day)
}

impl ClientRecord {
    /// Adds `other`, the same person's record from another Patient resource (another source,
    /// or a Patient linked to this one), as if one fold had seen both: counts and costs add,
    /// code sets and date spans unite, evidence is kept per source. The birth date already
    /// here wins: sources are merged in the order given, the first preferred.
    pub(crate) fn merge(&mut self, plan: &Plan, other: ClientRecord) {
        // Death or a birth after the as-of date in any source decides; an inactive record in
        // one system does not end the client's care in the others.
        self.unassessed = match (self.has_patient, other.has_patient) {
            (_, false) => self.unassessed,
            (false, true) => other.unassessed,
            (true, true) => match (self.unassessed, other.unassessed) {
                (Some(Unassessed::Inactive), Some(Unassessed::Inactive)) => {
                    Some(Unassessed::Inactive)
                }
                (a, b) => a
                    .into_iter()
                    .chain(b)
                    .filter(|u| *u != Unassessed::Inactive)
                    .min(),
            },
        };
        self.has_patient |= other.has_patient;
        self.birth = self.birth.or(other.birth);
        for (i, feature) in plan.features.iter().enumerate() {
            let (slot, theirs) = (&mut self.slots[i], other.slots[i]);
            match feature.aggregate {
                Aggregate::Age | Aggregate::Distinct { .. } => {}
                Aggregate::Count => *slot += theirs,
                Aggregate::Cost { billed } => {
                    *slot = (f64::from_bits(*slot) + f64::from_bits(theirs)).to_bits();
                    if let Some(b) = billed {
                        self.bills[b].merge(other.bills[b]);
                    }
                }
                Aggregate::ListsHit { .. } => *slot |= theirs,
                Aggregate::SpanDays | Aggregate::DaysSinceLast => {
                    let ((low, high), (l, h)) = (unpack(*slot), unpack(theirs));
                    *slot = pack(low.min(l), high.max(h));
                }
                Aggregate::LastValue => *slot = later_value(*slot, theirs),
            }
        }
        for entry in other.distinct {
            if let Err(at) = self.distinct.binary_search(&entry) {
                self.distinct.insert(at, entry);
            }
        }
        for e in other.evidence {
            keep_recent(&mut self.evidence, e);
        }
        self.evidence_total += other.evidence_total;
        self.resources += other.resources;
    }
}

/// Counts of what the fold saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FoldStats {
    /// Resources folded, per type.
    pub resources: FxHashMap<ResourceKind, u64>,
    /// Resources dated after the as-of date: read, but outside every window.
    pub after_as_of: u64,
    /// Bills in a currency the model has no rate for, per currency: they count for nothing,
    /// and their clients are costed by the price table.
    pub unpriced_bills: std::collections::BTreeMap<CompactString, u64>,
}

/// A resource of the watched client that was read and counted for nothing, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct LeftOut {
    /// Its type.
    pub kind: ResourceKind,
    /// Its id.
    pub id: CompactString,
    /// Why.
    pub why: Void,
}

/// One concept a `distinct` feature counted for the watched client, and the resource and
/// codings it was recorded with.
#[derive(Debug, Clone, PartialEq)]
pub struct Counted {
    /// The feature's index.
    pub feature: usize,
    /// The concept's key (`Plan::distinct_concept`).
    pub key: u64,
    /// The resource's type.
    pub kind: ResourceKind,
    /// The resource's id.
    pub id: CompactString,
    /// Its codings of the feature's field, as (system URL, code), when the plan keeps them
    /// ([`Plan::keep_codings`]).
    pub codings: Vec<(CompactString, CompactString)>,
}

/// The running fold over every client.
#[derive(Debug)]
pub struct Fold<'p> {
    plan: &'p Plan,
    clients: Clients,
    stats: FoldStats,
    /// One client whose left-out resources are kept, for `explain`.
    watch: Option<CompactString>,
    left_out: Vec<LeftOut>,
    counted: Vec<Counted>,
}

impl<'p> Fold<'p> {
    /// An empty fold for `plan`.
    pub fn new(plan: &'p Plan) -> Self {
        Self {
            plan,
            clients: FxHashMap::default(),
            stats: FoldStats::default(),
            watch: None,
            left_out: Vec::new(),
            counted: Vec::new(),
        }
    }

    /// Keeps the resources of `patient` that count for nothing, and why ([`Fold::left_out`]).
    pub(crate) fn watching(plan: &'p Plan, patient: Option<CompactString>) -> Self {
        Self {
            watch: patient,
            ..Self::new(plan)
        }
    }

    /// The watched client's resources that counted for nothing, in input order.
    pub(crate) fn left_out(&self) -> &[LeftOut] {
        &self.left_out
    }

    /// The concepts `distinct` features counted for the watched client, in input order.
    pub(crate) fn counted(&self) -> &[Counted] {
        &self.counted
    }

    /// Folds one fact. A second Patient resource with the same id is refused, since its data
    /// would otherwise be counted twice.
    pub fn apply(&mut self, fact: Fact) -> Result<(), Rejection> {
        let plan = self.plan;
        let record = self
            .clients
            .entry(fact.patient.clone())
            .or_insert_with(|| ClientRecord::new(plan));
        if fact.kind == ResourceKind::Patient {
            if record.has_patient {
                return Err(Rejection {
                    other_type: None,
                    resource: Some(format!("Patient/{}", fact.id)),
                    fault: Fault::DuplicatePatient,
                    reason: "the same Patient appears twice in the input; keep one copy".into(),
                });
            }
            record.has_patient = true;
            record.birth = fact.day;
            record.unassessed = fact.unassessed;
        }
        record.resources += 1;
        *self.stats.resources.entry(fact.kind).or_default() += 1;
        if let Some(Void::Unpriced(currency)) = &fact.void {
            *self
                .stats
                .unpriced_bills
                .entry(currency.clone())
                .or_default() += 1;
        }
        if fact.kind == ResourceKind::Patient {
            return Ok(());
        }
        if fact.day.is_some_and(|d| d > plan.as_of) {
            self.stats.after_as_of += 1;
            return Ok(());
        }
        if let Some(why) = fact.void {
            if self.watch.as_deref() == Some(fact.patient.as_str()) {
                self.left_out.push(LeftOut {
                    kind: fact.kind,
                    id: fact.id,
                    why,
                });
            }
            return Ok(());
        }
        let mut used = 0u64;
        for (i, feature) in plan.features.iter().enumerate() {
            if !feature.selects(fact.kind, fact.day, fact.mask) {
                continue;
            }
            used |= 1 << i;
            let slot = &mut record.slots[i];
            match &feature.aggregate {
                Aggregate::Age => {}
                Aggregate::Count => *slot += 1,
                Aggregate::Cost { billed } => {
                    match billed.zip(feature.billed.iter().position(|k| *k == fact.kind)) {
                        Some((b, source)) => record.bills[b].add(source, fact.cost),
                        None => *slot = (f64::from_bits(*slot) + fact.cost).to_bits(),
                    }
                }
                Aggregate::ListsHit { matchers } => {
                    for (bit, m) in matchers.iter().enumerate() {
                        if fact.mask & (1 << m) != 0 {
                            *slot |= 1 << bit;
                        }
                    }
                }
                Aggregate::SpanDays | Aggregate::DaysSinceLast => {
                    if let Some(day) = fact.day {
                        let (low, high) = unpack(*slot);
                        let d = day_number(day);
                        *slot = pack(low.min(d), high.max(d));
                    }
                }
                Aggregate::LastValue => {
                    if let Some((day, value)) = fact.day.zip(fact.value) {
                        *slot = later_value(*slot, dated_value(day, value));
                    }
                }
                Aggregate::Distinct { field } => {
                    let tag = feature_tag(i);
                    for (f, hash) in &fact.codes {
                        if usize::from(*f) == *field {
                            let entry = tag | (hash & !TAG_MASK);
                            if let Err(at) = record.distinct.binary_search(&entry) {
                                record.distinct.insert(at, entry);
                            }
                            if self.watch.as_deref() == Some(fact.patient.as_str()) {
                                self.counted.push(Counted {
                                    feature: i,
                                    key: *hash,
                                    kind: fact.kind,
                                    id: fact.id.clone(),
                                    codings: fact
                                        .codings
                                        .iter()
                                        .flat_map(|c| c.iter())
                                        .filter(|c| c.slot == *f)
                                        .map(|c| (c.system.clone(), c.code.clone()))
                                        .collect(),
                                });
                            }
                        }
                    }
                }
            }
        }
        if used != 0 {
            record.evidence_total += 1;
            let evidence = Evidence::new(fact.kind, fact.id, fact.day, used);
            keep_recent(&mut record.evidence, evidence);
        }
        Ok(())
    }

    /// What the fold saw.
    #[cfg(test)]
    pub(crate) fn stats(&self) -> &FoldStats {
        &self.stats
    }

    /// The clients, in no particular order.
    pub fn into_clients(self) -> (Clients, FoldStats) {
        (self.clients, self.stats)
    }
}

/// Keeps at most [`EVIDENCE_CAP`] entries of each type and source, dropping the oldest (undated
/// counts as oldest); ties keep the one already there, so the result does not depend on input
/// order beyond dates. Per source, so that a joined client keeps what each source may cite.
fn keep_recent(list: &mut Vec<Evidence>, new: Evidence) {
    let same = |e: &Evidence| e.kind == new.kind && e.source == new.source;
    if list.iter().filter(|e| same(e)).count() < EVIDENCE_CAP {
        // Four at a time rather than doubling: a million lists' unused room is memory.
        if list.len() == list.capacity() {
            list.reserve_exact(4);
        }
        list.push(new);
        return;
    }
    let key = |e: &Evidence| (e.day(), std::cmp::Reverse(e.id.clone()));
    if let Some((oldest, _)) = list
        .iter()
        .enumerate()
        .filter(|(_, e)| same(e))
        .min_by_key(|(_, e)| key(e))
        && key(&new) > key(&list[oldest])
    {
        list[oldest] = new;
    }
}

/// A resource that was not used, and why: a line of `rejected.ndjson`. It locates the
/// resource and says what is wrong; it holds no copy of the resource or of any value in it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejected {
    /// File and line (or entry) it came from.
    pub origin: String,
    /// `Type/id` when known.
    pub resource: Option<String>,
    /// What kind of fault, the key of the run's summary of rejections.
    pub fault: Fault,
    /// What is wrong and what to do.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::model::load::load_str;

    /// A model whose one feature is a billed cost over 12 months, with every Encounter at 100.
    fn billed_plan(billed: &str) -> Plan {
        one_feature_plan(&format!(
            "cost: {{resource: Encounter, window: P12M{billed}}}"
        ))
    }

    /// A model with one feature, `aggregation` (`count: {...}`), and a price table at 100.
    fn one_feature_plan(aggregation: &str) -> Plan {
        priced_plan("", aggregation)
    }

    /// [`one_feature_plan`] with `prices` (`, rates: {...}`) added to its price table.
    fn priced_plan(prices: &str, aggregation: &str) -> Plan {
        let yaml = crate::model::one_segment_model(&format!(
            r#"prices: {{currency: EUR, source: test, rules: [], otherwise: 100{prices}}}
features:
  - id: f
    title: {{fi: k, sv: k, en: c}}
    {aggregation}"#
        ));
        let mapping = load_str(&yaml).expect("model");
        Plan::compile(mapping, "2026-01-01".parse().expect("day")).expect("plan")
    }

    fn encounter(id: &str, start: &str) -> Value {
        json!({"resourceType": "Encounter", "id": id, "subject": {"reference": "Patient/p"},
            "class": {"code": "AMB"}, "period": {"start": start}})
    }

    fn claim(id: &str, start: &str, value: f64) -> Value {
        json!({"resourceType": "Claim", "id": id, "status": "active", "patient": {"reference": "Patient/p"},
            "type": {"coding": [{"code": "professional"}]},
            "billablePeriod": {"start": start}, "created": "2026-01-01",
            "total": {"value": value, "currency": "EUR"}})
    }

    fn eob(id: &str, start: &str, value: f64) -> Value {
        let submitted = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adjudication", "code": "submitted"}]});
        let benefit = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adjudication", "code": "benefit"}]});
        json!({"resourceType": "ExplanationOfBenefit", "id": id, "status": "active",
            "patient": {"reference": "Patient/p"}, "billablePeriod": {"start": start},
            "total": [{"category": benefit, "amount": {"value": value / 2.0, "currency": "EUR"}},
                      {"category": submitted, "amount": {"value": value, "currency": "EUR"}}]})
    }

    /// The client's cost after folding `resources` (a Patient is added).
    fn cost(plan: &Plan, resources: &[Value]) -> f64 {
        value(plan, resources).expect("a cost")
    }

    /// The client's feature value after folding `resources` (a Patient is added).
    fn value(plan: &Plan, resources: &[Value]) -> Option<f64> {
        let mut fold = Fold::new(plan);
        let patient = json!({"resourceType": "Patient", "id": "p"});
        for r in std::iter::once(&patient).chain(resources) {
            fold.apply(extract::extract_value(plan, r).expect("fact"))
                .expect("folded");
        }
        let (clients, _) = fold.into_clients();
        clients["p"].values(plan)[0]
    }

    fn score(id: &str, day: &str, value: Value) -> Value {
        json!({"resourceType": "Observation", "id": id, "status": "final",
            "subject": {"reference": "Patient/p"}, "effectiveDateTime": day,
            "code": {"coding": [{"system": "http://loinc.org", "code": "96761-2"}]},
            "valueQuantity": {"value": value}})
    }

    #[test]
    fn last_value_is_the_latest_score_and_the_higher_of_one_day_in_any_order() {
        let plan =
            one_feature_plan("last_value: {resource: Observation, window: P24M, if_absent: none}");
        let (early, late) = (
            score("a", "2025-01-10", json!(40)),
            score("b", "2025-06-01", json!(85.5)),
        );
        assert_eq!(value(&plan, &[early.clone(), late.clone()]), Some(85.5));
        assert_eq!(value(&plan, &[late.clone(), early.clone()]), Some(85.5));
        let same_day = score("c", "2025-06-01", json!(70));
        assert_eq!(value(&plan, &[late.clone(), same_day.clone()]), Some(85.5));
        assert_eq!(value(&plan, &[same_day, late]), Some(85.5));
        // `valueInteger` counts too; one without a value, or outside the window, does not.
        let mut integer = score("d", "2025-07-01", json!(null));
        integer["valueInteger"] = json!(12);
        integer.as_object_mut().map(|o| o.remove("valueQuantity"));
        assert_eq!(value(&plan, &[early.clone(), integer]), Some(12.0));
        let mut bare = score("e", "2025-08-01", json!(null));
        bare.as_object_mut().map(|o| o.remove("valueQuantity"));
        assert_eq!(value(&plan, &[early, bare]), Some(40.0));
        assert_eq!(value(&plan, &[score("f", "2023-12-01", json!(10))]), None);
        assert_eq!(value(&plan, &[]), None);
    }

    #[test]
    fn last_value_merges_to_the_later_score() {
        let plan =
            one_feature_plan("last_value: {resource: Observation, window: P24M, if_absent: none}");
        let record = |r: &Value| {
            let mut fold = Fold::new(&plan);
            fold.apply(extract::extract_value(&plan, r).expect("fact"))
                .expect("folded");
            fold.into_clients().0.remove("p").expect("client")
        };
        let (early, late) = (
            record(&score("a", "2025-01-10", json!(40))),
            record(&score("b", "2025-06-01", json!(90))),
        );
        let mut one = early.clone();
        one.merge(&plan, late.clone());
        let mut other = late;
        other.merge(&plan, early);
        assert_eq!(one.values(&plan)[0], Some(90.0));
        assert_eq!(other.values(&plan)[0], Some(90.0));
    }

    const BOTH: &str = ", billed: [Claim, ExplanationOfBenefit]";

    #[test]
    fn claims_are_the_cost_when_the_client_has_any_else_explanations_else_prices() {
        let plan = billed_plan(BOTH);
        let e = encounter("e", "2025-06-01");
        let (c, x) = (
            claim("c", "2025-06-01", 250.0),
            eob("x", "2025-06-01", 240.0),
        );
        assert_eq!(cost(&plan, &[e.clone(), c.clone(), x.clone()]), 250.0);
        assert_eq!(
            cost(&plan, &[e.clone(), x, eob("y", "2025-07-01", 10.0)]),
            250.0
        );
        assert_eq!(cost(&plan, std::slice::from_ref(&e)), 100.0);
        assert_eq!(cost(&plan, &[]), 0.0);
        let explanations_first = billed_plan(", billed: [ExplanationOfBenefit, Claim]");
        let x = eob("x", "2025-06-01", 240.0);
        assert_eq!(cost(&explanations_first, &[e, c, x]), 240.0);
    }

    #[test]
    fn a_bill_falls_in_the_window_by_its_billable_period_else_its_creation() {
        let plan = billed_plan(BOTH);
        let e = encounter("e", "2025-06-01");
        // P12M before 2026-01-01 leaves out 2025-01-01 itself, as for Encounters.
        assert_eq!(
            cost(&plan, &[e.clone(), claim("c", "2025-01-01", 250.0)]),
            100.0
        );
        assert_eq!(
            cost(&plan, &[e.clone(), claim("c", "2025-01-02", 250.0)]),
            250.0
        );
        let mut created = claim("c", "2025-06-01", 250.0);
        created
            .as_object_mut()
            .expect("object")
            .remove("billablePeriod");
        created["created"] = json!("2024-12-01T10:00:00Z");
        assert_eq!(cost(&plan, &[e, created]), 100.0);
    }

    #[test]
    fn cancelled_bills_and_bills_without_a_total_count_for_nothing() {
        let plan = billed_plan(BOTH);
        let e = encounter("e", "2025-06-01");
        let mut cancelled = claim("c", "2025-06-01", 250.0);
        cancelled["status"] = json!("cancelled");
        let mut no_total = claim("d", "2025-06-01", 250.0);
        no_total.as_object_mut().expect("object").remove("total");
        let mut no_submitted = eob("x", "2025-06-01", 240.0);
        no_submitted["total"].as_array_mut().expect("totals").pop();
        assert_eq!(cost(&plan, &[e, cancelled, no_total, no_submitted]), 100.0);
    }

    #[test]
    fn a_bill_in_an_unpriced_currency_falls_back_to_the_price_table_and_is_counted() {
        let plan = billed_plan(BOTH);
        let mut dollars = claim("c", "2025-06-01", 250.0);
        dollars["total"]["currency"] = json!("USD");
        let fact = extract::extract_value(&plan, &dollars).expect("read, not rejected");
        assert_eq!(fact.void, Some(Void::Unpriced("USD".into())));
        // The client's one Encounter is priced at 100 by the table.
        assert_eq!(
            cost(&plan, &[dollars.clone(), encounter("e", "2025-06-01")]),
            100.0
        );
        let mut fold = Fold::new(&plan);
        fold.apply(extract::extract_value(&plan, &dollars).expect("fact"))
            .expect("folded");
        assert_eq!(fold.stats().unpriced_bills.get("USD"), Some(&1));

        let mut bare = claim("c", "2025-06-01", 250.0);
        bare["total"]
            .as_object_mut()
            .expect("money")
            .remove("currency");
        assert_eq!(cost(&plan, &[bare]), 250.0);
    }

    #[test]
    fn a_bill_in_a_currency_with_a_rate_is_converted() {
        let plan = priced_plan(
            ", rates: {USD: 0.5}",
            &format!("cost: {{resource: Encounter, window: P12M{BOTH}}}"),
        );
        let mut dollars = claim("c", "2025-06-01", 250.0);
        dollars["total"]["currency"] = json!("USD");
        assert_eq!(cost(&plan, &[dollars]), 125.0);
    }

    #[test]
    fn statuses_that_fhir_marks_as_void_count_for_nothing() {
        let plan = one_feature_plan("count: {resource: Encounter, window: P12M}");
        let with_status = |status: &str| {
            let mut e = encounter("e", "2025-06-01");
            e["status"] = json!(status);
            e
        };
        for status in ["entered-in-error", "cancelled", "planned"] {
            assert_eq!(value(&plan, &[with_status(status)]), Some(0.0), "{status}");
        }
        for status in ["finished", "in-progress", "arrived"] {
            assert_eq!(value(&plan, &[with_status(status)]), Some(1.0), "{status}");
        }
        let conditions = one_feature_plan("count: {resource: Condition}");
        let condition = |verification: &str| {
            json!({"resourceType": "Condition", "id": verification, "subject": {"reference": "Patient/p"},
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
                "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": verification}]}})
        };
        assert_eq!(value(&conditions, &[condition("refuted")]), Some(0.0));
        assert_eq!(
            value(&conditions, &[condition("entered-in-error")]),
            Some(0.0)
        );
        assert_eq!(value(&conditions, &[condition("confirmed")]), Some(1.0));
        assert_eq!(value(&conditions, &[condition("provisional")]), Some(1.0));
    }

    #[test]
    fn a_distinct_count_counts_concepts_and_each_resource_once() {
        let plan = one_feature_plan(
            r#"distinct: {resource: Condition, field: code, where: [{field: code, in: chronic}]}
systems: {icd10: "http://hl7.org/fhir/sid/icd-10", snomed: "http://snomed.info/sct"}
code_lists:
  - id: chronic
    matching: prefix
    codes:
      - {system: icd10, code: I50, concept: heart-failure, display: Heart failure, source: t}
      - {system: snomed, code: "84114007", concept: heart-failure, display: Heart failure, source: t}
      - {system: snomed, code: "88805009", concept: heart-failure, display: Chronic congestive heart failure, source: t}
      - {system: icd10, code: E11, display: Type 2 diabetes, source: t}
      - {system: snomed, code: "4411", display: A SNOMED CT id, source: t}"#,
        );
        let condition = |id: &str, codings: &[(&str, &str)]| {
            let coding: Vec<Value> = codings
                .iter()
                .map(|(system, code)| json!({"system": system, "code": code}))
                .collect();
            json!({"resourceType": "Condition", "id": id, "subject": {"reference": "Patient/p"},
                "code": {"coding": coding}})
        };
        let (icd, sct) = ("http://hl7.org/fhir/sid/icd-10", "http://snomed.info/sct");
        let dual = condition("a", &[(icd, "I50.9"), (sct, "84114007")]);
        assert_eq!(
            value(&plan, std::slice::from_ref(&dual)),
            Some(1.0),
            "two systems, one illness"
        );
        let descendant = condition("b", &[(sct, "88805009")]);
        assert_eq!(
            value(&plan, &[dual.clone(), descendant.clone()]),
            Some(1.0),
            "two resources, one illness"
        );
        let diabetes = [
            condition("c", &[(icd, "E11.9")]),
            condition("d", &[(icd, "E11.65")]),
        ];
        let mut all = vec![dual, descendant];
        all.extend(diabetes);
        assert_eq!(
            value(&plan, &all),
            Some(2.0),
            "E11.9 and E11.65 are one list entry"
        );
        // SNOMED CT ids carry no hierarchy: a prefix list matches them exactly.
        assert_eq!(
            value(&plan, &[condition("e", &[(sct, "44112")])]),
            Some(0.0)
        );
        assert_eq!(value(&plan, &[condition("e", &[(sct, "4411")])]), Some(1.0));
    }

    #[test]
    fn a_model_may_count_what_the_defaults_leave_out() {
        let plan = one_feature_plan(
            "count: {resource: Encounter, window: P12M}\nnot_counted: {Encounter: [entered-in-error]}",
        );
        let mut planned = encounter("e", "2025-06-01");
        planned["status"] = json!("planned");
        assert_eq!(value(&plan, &[planned]), Some(1.0));
    }

    #[test]
    fn the_dead_the_unborn_and_the_inactive_are_not_assessed() {
        let plan = one_feature_plan("count: {resource: Encounter, window: P12M}");
        let unassessed = |patient: Value| {
            extract::extract_value(&plan, &patient)
                .expect("fact")
                .unassessed
        };
        let p = |extra: Value| {
            let mut p = json!({"resourceType": "Patient", "id": "p", "birthDate": "1950-01-01"});
            for (k, v) in extra.as_object().expect("object") {
                p[k] = v.clone();
            }
            p
        };
        assert_eq!(unassessed(p(json!({}))), None);
        assert_eq!(
            unassessed(p(json!({"deceasedBoolean": true}))),
            Some(Unassessed::Deceased)
        );
        assert_eq!(unassessed(p(json!({"deceasedBoolean": false}))), None);
        assert_eq!(
            unassessed(p(json!({"deceasedDateTime": "2026-01-01T10:00:00Z"}))),
            Some(Unassessed::Deceased),
            "on the as-of date"
        );
        assert_eq!(
            unassessed(p(json!({"deceasedDateTime": "2026-01-02"}))),
            None,
            "after it"
        );
        assert_eq!(
            unassessed(p(json!({"birthDate": "2026-01-02"}))),
            Some(Unassessed::NotYetBorn)
        );
        assert_eq!(
            unassessed(p(json!({"active": false}))),
            Some(Unassessed::Inactive)
        );
        assert_eq!(unassessed(p(json!({"active": true}))), None);
        let assessing =
            one_feature_plan("count: {resource: Encounter, window: P12M}\nassess_inactive: true");
        let inactive = p(json!({"active": false}));
        assert_eq!(
            extract::extract_value(&assessing, &inactive)
                .expect("fact")
                .unassessed,
            None
        );
    }

    #[test]
    fn a_model_that_bills_nothing_does_not_read_claims() {
        let plan = billed_plan("");
        let r =
            extract::extract_value(&plan, &claim("c", "2025-06-01", 250.0)).expect_err("not read");
        assert_eq!(r.other_type.as_deref(), Some("Claim"));
        assert!(r.reason.contains("not read by model t"), "{}", r.reason);
    }

    #[test]
    fn joined_records_choose_the_source_over_the_whole_client() {
        let plan = billed_plan(BOTH);
        let record = |resources: &[Value]| {
            let mut fold = Fold::new(&plan);
            let patient = json!({"resourceType": "Patient", "id": "p"});
            for r in std::iter::once(&patient).chain(resources) {
                fold.apply(extract::extract_value(&plan, r).expect("fact"))
                    .expect("folded");
            }
            fold.into_clients().0.remove("p").expect("client")
        };
        let mut health = record(&[encounter("e", "2025-06-01"), eob("x", "2025-06-01", 240.0)]);
        health.merge(&plan, record(&[claim("c", "2025-06-01", 250.0)]));
        assert_eq!(health.values(&plan)[0], Some(250.0));
    }

    #[test]
    fn packs_two_days_into_one_slot() {
        for (a, b) in [(0, 0), (-5, 20_000), (NO_DAY_LOW, NO_DAY_HIGH)] {
            assert_eq!(unpack(pack(a, b)), (a, b));
        }
    }

    #[test]
    fn evidence_keeps_the_most_recent() {
        let mut list = Vec::new();
        for d in 0..(EVIDENCE_CAP as i32 + 5) {
            let e = Evidence::new(
                ResourceKind::Encounter,
                CompactString::new(format!("e{d}")),
                Some(Day::EPOCH.plus_days(d)),
                1,
            );
            keep_recent(&mut list, e);
        }
        assert_eq!(list.len(), EVIDENCE_CAP);
        let oldest = list.iter().filter_map(Evidence::day).min().expect("days");
        assert_eq!(oldest, Day::EPOCH.plus_days(5));
        let condition = Evidence::new(ResourceKind::Condition, CompactString::new("c"), None, 2);
        keep_recent(&mut list, condition.clone());
        assert!(
            list.contains(&condition),
            "an old diagnosis is kept beside many recent contacts"
        );
        assert_eq!(condition.day(), None);
        assert_eq!(size_of::<Evidence>(), 40);
    }
}
