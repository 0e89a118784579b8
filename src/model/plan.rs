//! A mapping compiled for one run: names resolved to indexes, code lists to hash sets, look-back
//! windows to calendar days before the as-of date. The record fold and the evaluator work on
//! this, never on the YAML structs, so the hot path does no string look-ups. Compiling assumes
//! the mapping passed [`super::check`]; it reports a reference it cannot resolve as an error
//! rather than guessing.

use rustc_hash::FxHashMap;

use super::mapping::{self, Field, Filter, Mapping, Matching};
use crate::fhir::day::Day;
use crate::fhir::types::ResourceKind;

/// The most (field, code list) pairs a model may filter on; each is one bit of a resource's
/// match mask.
const MAX_MATCHERS: usize = 128;

/// A mapping ready to run at one as-of date.
#[derive(Debug)]
pub struct Plan {
    /// The mapping as written, for displays and identifiers.
    pub mapping: Mapping,
    /// The as-of date: windows end here and later resources are ignored.
    pub as_of: Day,
    /// Each (field, code list) pair any filter uses.
    pub matchers: Vec<Matcher>,
    index: FxHashMap<Field, FieldIndex>,
    /// Fields whose codes `distinct` features count.
    pub distinct_fields: Vec<Field>,
    /// Features in mapping order.
    pub features: Vec<FeaturePlan>,
    /// Criteria in mapping order.
    pub criteria: Vec<CriterionPlan>,
    /// Tree nodes in order.
    pub tree: Vec<NodePlan>,
    /// Overlays in mapping order.
    pub overlays: Vec<OverlayPlan>,
    /// Price rules, when the mapping has a price table.
    pub prices: Option<PricePlan>,
    /// (feature, percent) pairs that `top_percent` tests need population thresholds for.
    pub percentiles: Vec<(usize, f64)>,
    /// Index of the feature the summary uses for cost concentration.
    pub cost_feature: Option<usize>,
    /// Per service area of the mapping, the feature that puts a client in it.
    pub service_areas: Vec<usize>,
    /// The resource types the model reads: Patient, Encounter and Condition always, and
    /// Observation, EpisodeOfCare, Claim and ExplanationOfBenefit when a feature names them.
    /// Sources ask for these only, so a model without such features costs no extra request.
    pub kinds: Vec<ResourceKind>,
    /// How many cost features are `billed` (each keeps per-source sums per client).
    pub billed_features: usize,
    /// Per resource type, in [`ResourceKind::ALL`]'s order, the statuses that count for nothing.
    not_counted: Vec<Vec<String>>,
    /// A filter or `distinct` feature reads [`Field::Service`]: Encounter types and service
    /// types are matched a second time, as services.
    pub reads_service: bool,
    /// Facts keep the codings their `distinct` concepts come from, so that an explanation can
    /// name them; off in runs, where nothing reads them.
    pub keep_codings: bool,
}

/// A compiled (field, code list) pair: one bit of a resource's match mask.
#[derive(Debug)]
pub struct Matcher {
    /// The field tested.
    pub field: Field,
    /// The code list's id.
    pub list: String,
}

/// For one field, every listed code with the bits of the matchers that list it and the concept
/// it stands for, so a coding is matched against all code lists with one look-up (plus one per
/// prefix length).
#[derive(Debug, Default)]
struct FieldIndex {
    /// Per code system, per code.
    exact: FxHashMap<String, FxHashMap<String, Listed>>,
    /// Per code system, its code prefixes.
    prefix: FxHashMap<String, Prefixes>,
}

/// The listed prefixes of one code system, and the longest one's length: a code's prefixes
/// are looked up only that far, so a coding costs the same whatever the length of its code
/// (hashing every prefix of a code is quadratic in its length).
#[derive(Debug, Default)]
struct Prefixes {
    codes: FxHashMap<String, Listed>,
    longest: usize,
}

/// A listed code: the bits of the lists that hold it, and its concept's key.
#[derive(Debug, Clone, Copy, Default)]
struct Listed {
    mask: u128,
    concept: u64,
}

/// Code systems whose codes carry no hierarchy: a prefix list matches them exactly.
const FLAT_SYSTEMS: [&str; 2] = ["http://snomed.info/sct", "http://loinc.org"];

/// The bit that marks a coding no list names: [`Plan::distinct_key`] prefers a listed concept.
/// Inside the 48 bits a client's distinct set keeps of a key.
const UNLISTED: u64 = 1 << 47;

/// The bit that marks an unlisted key as a second choice ([`Plan::distinct_concept`]).
const SECOND: u64 = 1 << 46;

/// Whether a client with `value` is in a top share whose threshold is `threshold`: at or above
/// it, and above zero; never where either is missing.
pub(crate) fn in_top_share(value: Option<f64>, threshold: Option<f64>) -> bool {
    value.zip(threshold).is_some_and(|(v, t)| v > 0.0 && v >= t)
}

/// The URL of a code system the mapping names by `system` (a short name or a URL).
fn system_url(mapping: &Mapping, system: &str) -> String {
    mapping
        .systems
        .get(system)
        .cloned()
        .unwrap_or_else(|| system.to_owned())
}

/// The key a concept is counted by: its name, or its one code.
fn concept_key(concept: Option<&str>, system: &str, code: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    match concept {
        Some(name) => ("concept", name).hash(&mut h),
        None => (system, code).hash(&mut h),
    }
    h.finish() & !(UNLISTED | SECOND)
}

/// Filters compiled to match-mask tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaskTest {
    /// Bits that must all be set.
    pub required: u128,
    /// Bits that must all be clear.
    pub forbidden: u128,
}

impl MaskTest {
    /// Whether a resource with this match mask passes.
    pub(crate) fn holds(self, mask: u128) -> bool {
        mask & self.required == self.required && mask & self.forbidden == 0
    }
}

/// How a feature aggregates.
#[derive(Debug, Clone, PartialEq)]
pub enum Aggregate {
    /// Age at the as-of date.
    Age,
    /// Number of matching resources.
    Count,
    /// Distinct codes of `distinct_fields[field]`.
    Distinct {
        /// Index into [`Plan::distinct_fields`].
        field: usize,
    },
    /// Number of lists hit; each list is a matcher bit.
    ListsHit {
        /// Matcher indexes, one per list.
        matchers: Vec<usize>,
    },
    /// Sum of prices, or of billed totals.
    Cost {
        /// For a `billed` cost: its index among the model's billed cost features, where a client
        /// keeps the sum per billing source; `None` for a price-table cost.
        billed: Option<usize>,
    },
    /// Days from first to last.
    SpanDays,
    /// Days from last to as-of.
    DaysSinceLast,
    /// The value of the latest Observation.
    LastValue,
}

/// A compiled feature.
#[derive(Debug)]
pub struct FeaturePlan {
    /// The feature's id.
    pub id: String,
    /// How it aggregates.
    pub aggregate: Aggregate,
    /// The resource type it reads (Patient for age).
    pub resource: ResourceKind,
    /// Resources on or before this day are outside the window.
    pub after: Option<Day>,
    /// The filters, on resources of `resource`.
    pub test: MaskTest,
    /// For a `billed` cost: Claim and ExplanationOfBenefit in order of preference.
    pub billed: Vec<ResourceKind>,
}

impl FeaturePlan {
    /// Whether a resource of `kind` on `day` with match `mask` counts for this feature: one of
    /// `resource` that passes the filters, or a billing resource of a `billed` cost (the
    /// filters test Encounter codes, which a Claim has not), inside the window.
    pub(crate) fn selects(&self, kind: ResourceKind, day: Option<Day>, mask: u128) -> bool {
        let chosen = if kind == self.resource {
            self.test.holds(mask)
        } else {
            self.billed.contains(&kind)
        };
        chosen
            && match (self.after, day) {
                (None, _) => true,
                (Some(after), Some(day)) => day > after,
                (Some(_), None) => false,
            }
    }
}

/// A compiled criterion.
#[derive(Debug)]
pub struct CriterionPlan {
    /// The criterion's id.
    pub id: String,
    /// Conditions of levels 1.. (level 0 is the default).
    pub levels: Vec<Cond>,
    /// Features its conditions read, for explanations and evidence.
    pub features: Vec<usize>,
}

/// A compiled tree node.
#[derive(Debug)]
pub struct NodePlan {
    /// The condition; `None` always holds.
    pub when: Option<Cond>,
    /// Index into the mapping's segments.
    pub segment: usize,
}

/// A compiled overlay.
#[derive(Debug)]
pub struct OverlayPlan {
    /// Conditions of its rules, and the features each reads.
    pub rules: Vec<(Cond, Vec<usize>)>,
}

/// Compiled price rules.
#[derive(Debug)]
pub struct PricePlan {
    rules: Vec<(MaskTest, Price)>,
    otherwise: f64,
}

#[derive(Debug, Clone, Copy)]
enum Price {
    Each(f64),
    PerDay(f64),
}

impl PricePlan {
    /// The price of an Encounter with this match mask and period.
    pub(crate) fn price(&self, mask: u128, start: Option<Day>, end: Option<Day>) -> f64 {
        match self.rules.iter().find(|(test, _)| test.holds(mask)) {
            Some((_, Price::Each(p))) => *p,
            Some((_, Price::PerDay(p))) => {
                let days = match (start, end) {
                    (Some(s), Some(e)) => s.days_until(e).max(1),
                    _ => 1,
                };
                p * f64::from(days)
            }
            None => self.otherwise,
        }
    }
}

/// A compiled condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// Every one holds.
    All(Vec<Cond>),
    /// At least one holds.
    Any(Vec<Cond>),
    /// The inner one does not hold.
    Not(Box<Cond>),
    /// A numeric test on a feature; a missing value fails every comparison.
    Compare {
        /// Feature index.
        feature: usize,
        /// Comparison.
        op: Op,
        /// Right-hand side.
        value: f64,
    },
    /// The feature has no value (or has one, with `false`).
    Missing {
        /// Feature index.
        feature: usize,
        /// Whether missing is what holds.
        missing: bool,
    },
    /// The feature is positive and at or above the population threshold in slot `slot`.
    TopPercent {
        /// Feature index.
        feature: usize,
        /// Index into [`Plan::percentiles`].
        slot: usize,
    },
    /// The criterion's level is at least `level` (or exactly, with `exact`).
    Level {
        /// Criterion index.
        criterion: usize,
        /// Level index.
        level: usize,
        /// Exactly this level.
        exact: bool,
    },
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `>=`
    Gte,
    /// `>`
    Gt,
    /// `<=`
    Lte,
    /// `<`
    Lt,
    /// `==`
    Eq,
}

impl Op {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Self::Gte => a >= b,
            Self::Gt => a > b,
            Self::Lte => a <= b,
            Self::Lt => a < b,
            Self::Eq => (a - b).abs() < 1e-9,
        }
    }
}

/// What conditions are evaluated against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts<'a> {
    /// Feature values.
    pub features: &'a [Option<f64>],
    /// Criterion levels so far.
    pub levels: &'a [usize],
    /// Population thresholds, by percentile slot.
    pub thresholds: &'a [Option<f64>],
}

impl Cond {
    /// Whether the condition holds.
    pub(crate) fn holds(&self, facts: Facts<'_>) -> bool {
        match self {
            Self::All(cs) => cs.iter().all(|c| c.holds(facts)),
            Self::Any(cs) => cs.iter().any(|c| c.holds(facts)),
            Self::Not(c) => !c.holds(facts),
            Self::Compare { feature, op, value } => {
                facts.features[*feature].is_some_and(|v| op.holds(v, *value))
            }
            Self::Missing { feature, missing } => facts.features[*feature].is_none() == *missing,
            Self::TopPercent { feature, slot } => {
                in_top_share(facts.features[*feature], facts.thresholds[*slot])
            }
            Self::Level {
                criterion,
                level,
                exact,
            } => {
                let have = facts.levels[*criterion];
                if *exact {
                    have == *level
                } else {
                    have >= *level
                }
            }
        }
    }

    /// Feature indexes this condition reads.
    pub(crate) fn features(&self, out: &mut Vec<usize>) {
        match self {
            Self::All(cs) | Self::Any(cs) => cs.iter().for_each(|c| c.features(out)),
            Self::Not(c) => c.features(out),
            Self::Compare { feature, .. }
            | Self::Missing { feature, .. }
            | Self::TopPercent { feature, .. } => {
                if !out.contains(feature) {
                    out.push(*feature);
                }
            }
            Self::Level { .. } => {}
        }
    }
}

/// Why a mapping could not be compiled; [`super::check`] reports these with positions.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct CompileError {
    /// JSON pointer of the offending value.
    pub pointer: String,
    /// What is wrong.
    pub message: String,
    /// What to do.
    pub hint: String,
}

fn err(
    pointer: impl Into<String>,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> CompileError {
    CompileError {
        pointer: pointer.into(),
        message: message.into(),
        hint: hint.into(),
    }
}

/// Parses an ISO 8601 duration of years, months, weeks and days (`P1Y6M`, `P90D`).
fn parse_window(text: &str) -> Option<(u32, u32)> {
    let rest = text.strip_prefix('P')?;
    if rest.is_empty() {
        return None;
    }
    let (mut months, mut days, mut number) = (0u32, 0u32, String::new());
    for ch in rest.chars() {
        if ch.is_ascii_digit() {
            number.push(ch);
            continue;
        }
        let n: u32 = number.parse().ok()?;
        number.clear();
        match ch {
            'Y' => months += n.checked_mul(12)?,
            'M' => months += n,
            'W' => days += n.checked_mul(7)?,
            'D' => days += n,
            _ => return None,
        }
    }
    number.is_empty().then_some((months, days))
}

/// The day `months` calendar months and `days` days before `day` (end of month clamped).
fn days_before(day: Day, months: u32, days: u32) -> Day {
    let date = day.to_date();
    let total = date.year() * 12 + i32::from(date.month() as u8)
        - 1
        - i32::try_from(months).unwrap_or(i32::MAX / 2);
    let (year, month0) = (total.div_euclid(12), total.rem_euclid(12));
    let month = time::Month::try_from(u8::try_from(month0 + 1).unwrap_or(1))
        .unwrap_or(time::Month::January);
    let dom = date.day().min(month.length(year));
    let moved = time::Date::from_calendar_date(year, month, dom)
        .map(Day::from_date)
        .unwrap_or(day);
    moved.plus_days(-i32::try_from(days).unwrap_or(0))
}

struct Compiler<'m> {
    mapping: &'m Mapping,
    matchers: Vec<Matcher>,
    index: FxHashMap<Field, FieldIndex>,
    matcher_index: FxHashMap<(Field, String), usize>,
    percentiles: Vec<(usize, f64)>,
    billed_features: usize,
}

impl<'m> Compiler<'m> {
    fn list(&self, id: &str) -> Option<&'m mapping::CodeList> {
        self.mapping.code_lists.iter().find(|l| l.id == id)
    }

    fn matcher(&mut self, field: Field, list: &str, pointer: &str) -> Result<usize, CompileError> {
        if let Some(&i) = self.matcher_index.get(&(field, list.to_owned())) {
            return Ok(i);
        }
        let Some(code_list) = self.list(list) else {
            return Err(err(
                pointer,
                format!("unknown code list `{list}`"),
                "define it under code_lists, or fix the name",
            ));
        };
        if self.matchers.len() == MAX_MATCHERS {
            return Err(err(
                pointer,
                format!("more than {MAX_MATCHERS} (field, code list) pairs"),
                "merge code lists",
            ));
        }
        let bit = 1u128 << self.matchers.len();
        for entry in &code_list.codes {
            let system = system_url(self.mapping, &entry.system);
            let concept = concept_key(entry.concept.as_deref(), &system, &entry.code);
            let index = self.index.entry(field).or_default();
            let flat = FLAT_SYSTEMS.contains(&system.as_str());
            let table = match code_list.matching {
                Matching::Prefix if !flat => {
                    let prefixes = index.prefix.entry(system).or_default();
                    prefixes.longest = prefixes.longest.max(entry.code.len());
                    &mut prefixes.codes
                }
                _ => index.exact.entry(system).or_default(),
            };
            let listed = table
                .entry(entry.code.clone())
                .or_insert(Listed { mask: 0, concept });
            listed.mask |= bit;
        }
        self.matchers.push(Matcher {
            field,
            list: list.to_owned(),
        });
        self.matcher_index
            .insert((field, list.to_owned()), self.matchers.len() - 1);
        Ok(self.matchers.len() - 1)
    }

    fn filters(
        &mut self,
        filters: &[Filter],
        resource: ResourceKind,
        pointer: &str,
    ) -> Result<MaskTest, CompileError> {
        let mut test = MaskTest::default();
        for (i, f) in filters.iter().enumerate() {
            let p = format!("{pointer}/{i}");
            if !f.field.belongs_to(resource) {
                return Err(err(
                    format!("{p}/field"),
                    format!(
                        "field `{}` belongs to {}, not {resource}",
                        f.field.as_str(),
                        f.field.resources_text()
                    ),
                    "filter on a field of the resource the feature reads",
                ));
            }
            match (&f.in_list, &f.not_in) {
                (Some(list), None) => {
                    test.required |= 1 << self.matcher(f.field, list, &format!("{p}/in"))?
                }
                (None, Some(list)) => {
                    test.forbidden |= 1 << self.matcher(f.field, list, &format!("{p}/not_in"))?
                }
                _ => {
                    return Err(err(
                        p,
                        "a filter needs exactly one of `in` and `not_in`",
                        "write `in: <code list>` or `not_in: <code list>`",
                    ));
                }
            }
        }
        Ok(test)
    }

    fn feature_index(&self, id: &str) -> Option<usize> {
        self.mapping.features.iter().position(|f| f.id == id)
    }

    fn criterion_index(&self, id: &str) -> Option<usize> {
        self.mapping.criteria.iter().position(|c| c.id == id)
    }

    /// Compiles a condition; `criteria_upto` is how many criteria it may read (none for
    /// criteria's own levels, all for the tree and overlays), `features` whether it may read features.
    fn cond(
        &mut self,
        c: &mapping::Condition,
        pointer: &str,
        criteria_upto: usize,
        features: bool,
    ) -> Result<Cond, CompileError> {
        let forms = [
            c.all.is_some(),
            c.any.is_some(),
            c.not.is_some(),
            c.feature.is_some(),
            c.criterion.is_some(),
        ];
        if forms.iter().filter(|f| **f).count() != 1 {
            return Err(err(
                pointer,
                "a condition needs exactly one of `all`, `any`, `not`, `feature` and `criterion`",
                "split it into `all: [...]` of single conditions",
            ));
        }
        let list = |this: &mut Self,
                    cs: &[mapping::Condition],
                    key: &str|
         -> Result<Vec<Cond>, CompileError> {
            if cs.is_empty() {
                return Err(err(
                    format!("{pointer}/{key}"),
                    format!("`{key}` is empty"),
                    "list at least one condition",
                ));
            }
            cs.iter()
                .enumerate()
                .map(|(i, c)| {
                    this.cond(c, &format!("{pointer}/{key}/{i}"), criteria_upto, features)
                })
                .collect()
        };
        if let Some(cs) = &c.all {
            return Ok(Cond::All(list(self, cs, "all")?));
        }
        if let Some(cs) = &c.any {
            return Ok(Cond::Any(list(self, cs, "any")?));
        }
        if let Some(inner) = &c.not {
            return Ok(Cond::Not(Box::new(self.cond(
                inner,
                &format!("{pointer}/not"),
                criteria_upto,
                features,
            )?)));
        }
        if let Some(name) = &c.feature {
            return self.feature_test(c, name, pointer, features);
        }
        let name = c.criterion.as_deref().unwrap_or_default();
        let Some(criterion) = self.criterion_index(name).filter(|&i| i < criteria_upto) else {
            let hint = if criteria_upto == 0 {
                "criteria levels are computed from features only"
            } else {
                "use a criterion id defined under criteria"
            };
            return Err(err(
                format!("{pointer}/criterion"),
                format!("unknown criterion `{name}` here"),
                hint,
            ));
        };
        let levels = &self.mapping.criteria[criterion].levels;
        let (code, exact, key) = match (&c.at_least, &c.is) {
            (Some(code), None) => (code, false, "at_least"),
            (None, Some(code)) => (code, true, "is"),
            _ => {
                return Err(err(
                    pointer,
                    "a criterion test needs exactly one of `at_least` and `is`",
                    "write `at_least: <level>`",
                ));
            }
        };
        let Some(level) = levels.iter().position(|l| &l.code == code) else {
            let known: Vec<&str> = levels.iter().map(|l| l.code.as_str()).collect();
            return Err(err(
                format!("{pointer}/{key}"),
                format!("criterion `{name}` has no level `{code}`"),
                format!("use one of: {}", known.join(", ")),
            ));
        };
        if c.gte.is_some()
            || c.gt.is_some()
            || c.lte.is_some()
            || c.lt.is_some()
            || c.eq.is_some()
            || c.missing.is_some()
            || c.top_percent.is_some()
        {
            return Err(err(
                pointer,
                "a criterion test takes only `at_least` or `is`",
                "move numeric tests to a feature condition",
            ));
        }
        Ok(Cond::Level {
            criterion,
            level,
            exact,
        })
    }

    fn feature_test(
        &mut self,
        c: &mapping::Condition,
        name: &str,
        pointer: &str,
        features: bool,
    ) -> Result<Cond, CompileError> {
        if !features {
            return Err(err(
                format!("{pointer}/feature"),
                "the question tree tests criteria, not features",
                "turn the feature test into a criterion level",
            ));
        }
        let Some(feature) = self.feature_index(name) else {
            return Err(err(
                format!("{pointer}/feature"),
                format!("unknown feature `{name}`"),
                "use a feature id defined under features",
            ));
        };
        let mut tests = Vec::new();
        for (op, v) in [
            (Op::Gte, c.gte),
            (Op::Gt, c.gt),
            (Op::Lte, c.lte),
            (Op::Lt, c.lt),
            (Op::Eq, c.eq),
        ] {
            if let Some(value) = v {
                tests.push(Cond::Compare { feature, op, value });
            }
        }
        if let Some(missing) = c.missing {
            tests.push(Cond::Missing { feature, missing });
        }
        if let Some(p) = c.top_percent {
            if !(p > 0.0 && p <= 100.0) {
                return Err(err(
                    format!("{pointer}/top_percent"),
                    format!("top_percent {p} is outside 0–100"),
                    "give a share of the population, such as 10",
                ));
            }
            let slot = match self
                .percentiles
                .iter()
                .position(|&(f, q)| f == feature && q == p)
            {
                Some(s) => s,
                None => {
                    self.percentiles.push((feature, p));
                    self.percentiles.len() - 1
                }
            };
            tests.push(Cond::TopPercent { feature, slot });
        }
        if c.at_least.is_some() || c.is.is_some() {
            return Err(err(
                pointer,
                "`at_least` and `is` go with `criterion`, not `feature`",
                "compare a feature with gte/gt/lte/lt/eq",
            ));
        }
        match tests.len() {
            0 => Err(err(
                pointer,
                format!("feature `{name}` is named but not tested"),
                "add gte, gt, lte, lt, eq, missing or top_percent",
            )),
            1 => Ok(tests.remove(0)),
            _ => Ok(Cond::All(tests)),
        }
    }
}

impl Plan {
    /// Compiles `mapping` for a run at `as_of`. Each feature, level, node, rule and price
    /// rule is compiled on its own, so one call reports the first problem of every one of them.
    pub fn compile(mapping: Mapping, as_of: Day) -> Result<Plan, Vec<CompileError>> {
        let mut c = Compiler {
            mapping: &mapping,
            matchers: Vec::new(),
            index: FxHashMap::default(),
            matcher_index: FxHashMap::default(),
            percentiles: Vec::new(),
            billed_features: 0,
        };
        let mut errors = Vec::new();
        let mut distinct_fields = Vec::new();
        let mut features = Vec::new();
        for (i, f) in mapping.features.iter().enumerate() {
            let compiled = compile_feature(
                &mut c,
                f,
                &format!("/features/{i}"),
                as_of,
                &mut distinct_fields,
            );
            features.extend(keep(&mut errors, compiled));
        }
        let mut criteria = Vec::new();
        for (i, crit) in mapping.criteria.iter().enumerate() {
            let p = format!("/criteria/{i}");
            criteria.extend(compile_criterion(&mut c, crit, &p, &mut errors));
        }
        let mut tree = Vec::new();
        for (i, node) in mapping.tree.iter().enumerate() {
            let p = format!("/tree/{i}");
            let when = node
                .when
                .as_ref()
                .map(|w| c.cond(w, &format!("{p}/when"), mapping.criteria.len(), false))
                .transpose();
            let segment = mapping
                .segments
                .iter()
                .position(|s| s.code == node.segment)
                .ok_or_else(|| {
                    err(
                        format!("{p}/segment"),
                        format!("unknown segment `{}`", node.segment),
                        "use a code defined under segments",
                    )
                });
            if let (Some(when), Some(segment)) =
                (keep(&mut errors, when), keep(&mut errors, segment))
            {
                tree.push(NodePlan { when, segment });
            }
        }
        let mut overlays = Vec::new();
        for (i, o) in mapping.overlays.iter().enumerate() {
            let mut rules = Vec::new();
            for (j, r) in o.rules.iter().enumerate() {
                if let Some(cond) = keep(
                    &mut errors,
                    c.cond(
                        &r.when,
                        &format!("/overlays/{i}/rules/{j}/when"),
                        mapping.criteria.len(),
                        true,
                    ),
                ) {
                    let mut used = Vec::new();
                    cond.features(&mut used);
                    rules.push((cond, used));
                }
            }
            overlays.push(OverlayPlan { rules });
        }
        let mut prices = None;
        if let Some(table) = &mapping.prices {
            let mut rules = Vec::new();
            for (i, r) in table.rules.iter().enumerate() {
                let p = format!("/prices/rules/{i}");
                let test = c.filters(&r.filters, ResourceKind::Encounter, &format!("{p}/where"));
                let price = match (r.each, r.per_day) {
                    (Some(e), None) => Ok(Price::Each(e)),
                    (None, Some(d)) => Ok(Price::PerDay(d)),
                    _ => Err(err(
                        p,
                        "a price rule needs exactly one of `each` and `per_day`",
                        "write `each: 120` or `per_day: 650`",
                    )),
                };
                if let (Some(test), Some(price)) =
                    (keep(&mut errors, test), keep(&mut errors, price))
                {
                    rules.push((test, price));
                }
            }
            prices = Some(PricePlan {
                rules,
                otherwise: table.otherwise,
            });
        }
        let mut cost_feature = None;
        if let Some(id) = &mapping.cost_feature {
            let found = features.iter().position(|f: &FeaturePlan| {
                &f.id == id && matches!(f.aggregate, Aggregate::Cost { .. })
            });
            let found = found.ok_or_else(|| {
                err(
                    "/cost_feature",
                    format!("`{id}` is not a cost feature"),
                    "name a feature defined with `cost:`",
                )
            });
            cost_feature = keep(&mut errors, found);
        }
        let mut service_areas = Vec::new();
        for (i, area) in mapping.service_areas.iter().enumerate() {
            let found = features
                .iter()
                .position(|f: &FeaturePlan| f.id == area.feature)
                .ok_or_else(|| {
                    err(
                        format!("/service_areas/{i}/feature"),
                        format!("unknown feature `{}`", area.feature),
                        "name a feature that counts the client's contacts in the area",
                    )
                });
            service_areas.extend(keep(&mut errors, found));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut kinds = ResourceKind::CORE.to_vec();
        for f in &features {
            for kind in std::iter::once(&f.resource).chain(&f.billed) {
                if !kinds.contains(kind) {
                    kinds.push(*kind);
                }
            }
        }
        let billed_features = c.billed_features;
        let (matchers, index, percentiles) = (c.matchers, c.index, c.percentiles);
        let not_counted = ResourceKind::ALL
            .iter()
            .map(|kind| match mapping.not_counted.get(kind) {
                Some(statuses) => statuses.clone(),
                None => mapping::default_not_counted(*kind)
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect(),
            })
            .collect();
        let reads_service =
            index.contains_key(&Field::Service) || distinct_fields.contains(&Field::Service);
        Ok(Plan {
            not_counted,
            reads_service,
            keep_codings: false,
            mapping,
            as_of,
            matchers,
            index,
            distinct_fields,
            features,
            criteria,
            tree,
            overlays,
            prices,
            percentiles,
            cost_feature,
            service_areas,
            kinds,
            billed_features,
        })
    }

    /// Whether a resource of `kind` with `status` (a Condition's `verificationStatus`) counts
    /// for nothing ([`Mapping::not_counted`]).
    pub(crate) fn not_counted(&self, kind: ResourceKind, status: &str) -> bool {
        self.not_counted[kind as usize].iter().any(|s| s == status)
    }

    /// Whether the model reads resources of `kind`.
    pub(crate) fn reads_kind(&self, kind: ResourceKind) -> bool {
        self.kinds.contains(&kind)
    }

    /// The match bits of one coding of `field`, and the key of its listed concept (an exact
    /// code before the longest prefix), if a list holds it.
    pub(crate) fn lookup(&self, field: Field, system: &str, code: &str) -> (u128, Option<u64>) {
        let Some(index) = self.index.get(&field) else {
            return (0, None);
        };
        // Looked up by borrowed str: this runs for every coding of every resource.
        let exact = index.exact.get(system).and_then(|codes| codes.get(code));
        let (mut mask, mut concept) = exact.map_or((0, None), |l| (l.mask, Some(l.concept)));
        if let Some(prefixes) = index.prefix.get(system) {
            let mut longest = None;
            let ends = 1..=code.len().min(prefixes.longest);
            for end in ends.filter(|&end| code.is_char_boundary(end)) {
                if let Some(l) = prefixes.codes.get(&code[..end]) {
                    mask |= l.mask;
                    longest = Some(l.concept);
                }
            }
            concept = concept.or(longest);
        }
        (mask, concept)
    }

    /// The key a `distinct` feature counts a coding by: its `listed` concept ([`Plan::lookup`]),
    /// or for a code no list holds, the coding itself, marked so that a listed concept of the
    /// same resource is preferred ([`Plan::distinct_key`]). A `second_choice` coding (an
    /// Encounter's `type` taken as its service) gives way to the resource's other unlisted
    /// codings too. Hashed only here, for the fields `distinct` features count.
    pub(crate) fn distinct_concept(
        listed: Option<u64>,
        system: &str,
        code: &str,
        second_choice: bool,
    ) -> u64 {
        listed.unwrap_or_else(|| {
            let key = concept_key(None, system, code) | UNLISTED;
            if second_choice { key | SECOND } else { key }
        })
    }

    /// Of two concept keys of one resource's codings, the one it is counted by: a listed
    /// concept before an unlisted coding, then the lower key, so the choice does not depend on
    /// the order of the codings.
    pub(crate) fn distinct_key(a: u64, b: u64) -> u64 {
        a.min(b)
    }

    /// What a person calls the concept a `distinct` feature counted as `key`: its listed
    /// concept's name or the entry's display; `None` for a code no list holds. For
    /// explanations: it searches every list.
    pub(crate) fn concept_name(&self, key: u64) -> Option<&str> {
        self.mapping
            .code_lists
            .iter()
            .flat_map(|l| &l.codes)
            .find(|e| {
                concept_key(
                    e.concept.as_deref(),
                    &system_url(&self.mapping, &e.system),
                    &e.code,
                ) == key
            })
            .map(|e| match (&e.concept, e.display.is_empty()) {
                (Some(name), _) => name.as_str(),
                (None, false) => e.display.as_str(),
                (None, true) => e.code.as_str(),
            })
    }

    /// Whether the coding `system|code` of `field` is (one of) what a `distinct` feature
    /// counted as `key`.
    pub(crate) fn counts_as(&self, field: Field, system: &str, code: &str, key: u64) -> bool {
        match self.lookup(field, system, code).1 {
            Some(listed) => listed == key,
            None => concept_key(None, system, code) == key & !(UNLISTED | SECOND),
        }
    }

    /// The short name the mapping gives a code system's URL, or the URL.
    pub(crate) fn system_name<'a>(&'a self, url: &'a str) -> &'a str {
        self.mapping
            .systems
            .iter()
            .find(|(_, u)| u.as_str() == url)
            .map_or(url, |(name, _)| name.as_str())
    }

    /// Index of the first tree node that holds for these criterion levels.
    pub(crate) fn place(&self, levels: &[usize]) -> Option<usize> {
        let facts = Facts {
            features: &[],
            levels,
            thresholds: &[],
        };
        self.tree
            .iter()
            .position(|n| n.when.as_ref().is_none_or(|w| w.holds(facts)))
    }
}

/// Every resource type any of `plans` reads, in `ResourceKind::ALL`'s order: what a source
/// asks a server for.
pub fn kinds_read(plans: &[Plan]) -> Vec<ResourceKind> {
    ResourceKind::ALL
        .into_iter()
        .filter(|k| plans.iter().any(|p| p.reads_kind(*k)))
        .collect()
}

/// The value of `result`, or `None` with its error recorded.
fn keep<T>(errors: &mut Vec<CompileError>, result: Result<T, CompileError>) -> Option<T> {
    result.map_err(|e| errors.push(e)).ok()
}

/// Compiles one criterion, recording the first problem of each of its levels.
fn compile_criterion(
    c: &mut Compiler<'_>,
    crit: &mapping::Criterion,
    p: &str,
    errors: &mut Vec<CompileError>,
) -> Option<CriterionPlan> {
    if crit.levels.is_empty() {
        errors.push(err(
            format!("{p}/levels"),
            format!("criterion `{}` has no levels", crit.id),
            "list levels from lowest to highest",
        ));
        return None;
    }
    let before = errors.len();
    let mut levels = Vec::new();
    let mut used = Vec::new();
    for (j, level) in crit.levels.iter().enumerate() {
        let lp = format!("{p}/levels/{j}");
        let compiled = match (j, &level.when) {
            (0, None) => continue,
            (0, Some(_)) => Err(err(
                format!("{lp}/when"),
                "the lowest level takes no `when`",
                "it is the level of everyone the higher levels leave; remove `when`",
            )),
            (_, None) => Err(err(
                lp,
                format!("level `{}` has no `when`", level.code),
                "say when a client reaches this level",
            )),
            (_, Some(when)) => c.cond(when, &format!("{lp}/when"), 0, true),
        };
        if let Some(cond) = keep(errors, compiled) {
            cond.features(&mut used);
            levels.push(cond);
        }
    }
    (errors.len() == before).then(|| CriterionPlan {
        id: crit.id.clone(),
        levels,
        features: used,
    })
}

fn compile_feature(
    c: &mut Compiler<'_>,
    f: &mapping::Feature,
    p: &str,
    as_of: Day,
    distinct_fields: &mut Vec<Field>,
) -> Result<FeaturePlan, CompileError> {
    let given = [
        ("age", f.age.is_some()),
        ("count", f.count.is_some()),
        ("distinct", f.distinct.is_some()),
        ("lists_hit", f.lists_hit.is_some()),
        ("cost", f.cost.is_some()),
        ("span_days", f.span_days.is_some()),
        ("days_since_last", f.days_since_last.is_some()),
        ("last_value", f.last_value.is_some()),
    ];
    let named: Vec<&str> = given.iter().filter(|g| g.1).map(|g| g.0).collect();
    if named.len() != 1 {
        let kinds: Vec<&str> = given.iter().map(|g| g.0).collect();
        return Err(err(
            p,
            format!(
                "feature `{}` needs exactly one aggregation, found {}",
                f.id,
                named.len()
            ),
            format!("use one of: {}", kinds.join(", ")),
        ));
    }
    if f.age.is_some() {
        return Ok(FeaturePlan {
            id: f.id.clone(),
            aggregate: Aggregate::Age,
            resource: ResourceKind::Patient,
            after: None,
            test: MaskTest::default(),
            billed: Vec::new(),
        });
    }
    let key = named[0];
    let sel = f
        .selections()
        .next()
        .ok_or_else(|| err(p, "feature without aggregation", "report this as a bug"))?;
    let sp = format!("{p}/{key}");
    match sel.resource {
        ResourceKind::Patient => {
            return Err(err(
                format!("{sp}/resource"),
                "features over Patient are written `age: {}`",
                "select Encounter, Condition, Observation or EpisodeOfCare resources",
            ));
        }
        ResourceKind::Claim | ResourceKind::ExplanationOfBenefit => {
            return Err(err(
                format!("{sp}/resource"),
                format!("{} is read for costs only", sel.resource),
                "write `cost: {resource: Encounter, billed: [Claim, ExplanationOfBenefit]}`",
            ));
        }
        ResourceKind::Observation | ResourceKind::EpisodeOfCare if sel.if_absent.is_none() => {
            return Err(err(
                sp,
                format!(
                    "feature `{}` reads {} but does not say what happens without one",
                    f.id, sel.resource
                ),
                "add `if_absent: <what the value means for a client with none>`; many systems hold none",
            ));
        }
        _ => {}
    }
    let after = match &sel.window {
        None => None,
        Some(w) => {
            let Some((months, days)) = parse_window(w) else {
                return Err(err(
                    format!("{sp}/window"),
                    format!("`{w}` is not an ISO 8601 duration"),
                    "write e.g. P12M, P2Y or P90D",
                ));
            };
            Some(days_before(as_of, months, days))
        }
    };
    let test = c.filters(&sel.filters, sel.resource, &format!("{sp}/where"))?;
    let needs_field = matches!(key, "distinct" | "lists_hit");
    if needs_field != sel.field.is_some() || (key == "lists_hit") != sel.lists.is_some() {
        let hint = match key {
            "distinct" => "`distinct` takes `field`",
            "lists_hit" => "`lists_hit` takes `field` and `lists`",
            _ => "only `distinct` and `lists_hit` take `field`, and only `lists_hit` takes `lists`",
        };
        return Err(err(sp, format!("`{key}` has the wrong settings"), hint));
    }
    if let Some(field) = sel.field
        && !field.belongs_to(sel.resource)
    {
        return Err(err(
            format!("{sp}/field"),
            format!(
                "field `{}` belongs to {}",
                field.as_str(),
                field.resources_text()
            ),
            "count a field of the selected resource",
        ));
    }
    let billed = billed_sources(sel, key, &sp)?;
    let aggregate = match key {
        "count" => Aggregate::Count,
        "cost" => {
            if sel.resource != ResourceKind::Encounter || c.mapping.prices.is_none() {
                return Err(err(
                    sp,
                    "`cost` sums the price table over Encounters",
                    "select Encounter and define `prices`",
                ));
            }
            let slot = (!billed.is_empty()).then(|| {
                c.billed_features += 1;
                c.billed_features - 1
            });
            Aggregate::Cost { billed: slot }
        }
        "span_days" => Aggregate::SpanDays,
        "days_since_last" => Aggregate::DaysSinceLast,
        "last_value" if sel.resource != ResourceKind::Observation => {
            return Err(err(
                format!("{sp}/resource"),
                format!(
                    "`last_value` reads Observation values, not {}",
                    sel.resource
                ),
                "select Observation, or count the resources with `count`",
            ));
        }
        "last_value" => Aggregate::LastValue,
        "distinct" => {
            let field = sel.field.unwrap_or(Field::Code);
            let index = match distinct_fields.iter().position(|f| *f == field) {
                Some(i) => i,
                None => {
                    distinct_fields.push(field);
                    distinct_fields.len() - 1
                }
            };
            Aggregate::Distinct { field: index }
        }
        _ => {
            let field = sel.field.unwrap_or(Field::Code);
            let lists = sel.lists.as_deref().unwrap_or_default();
            if lists.is_empty() {
                return Err(err(
                    format!("{sp}/lists"),
                    "`lists` is empty",
                    "name the code lists to count",
                ));
            }
            let matchers = lists
                .iter()
                .enumerate()
                .map(|(i, l)| c.matcher(field, l, &format!("{sp}/lists/{i}")))
                .collect::<Result<_, _>>()?;
            Aggregate::ListsHit { matchers }
        }
    };
    Ok(FeaturePlan {
        id: f.id.clone(),
        aggregate,
        resource: sel.resource,
        after,
        test,
        billed,
    })
}

/// The billing sources of a `cost` selection, checked: Claim and ExplanationOfBenefit at most
/// once each, no Encounter filters beside them (a Claim has no Encounter codes to filter on,
/// so the two would price different sets of care), and on `cost` only.
fn billed_sources(
    sel: &mapping::Selection,
    key: &str,
    sp: &str,
) -> Result<Vec<ResourceKind>, CompileError> {
    let Some(billed) = &sel.billed else {
        return Ok(Vec::new());
    };
    let pointer = format!("{sp}/billed");
    if key != "cost" {
        return Err(err(
            pointer,
            "only `cost` takes `billed`",
            "remove `billed`, or make the feature a `cost`",
        ));
    }
    if billed.is_empty() {
        return Err(err(
            pointer,
            "`billed` is empty",
            "name Claim, ExplanationOfBenefit or both, or remove `billed` to use the price table alone",
        ));
    }
    if !sel.filters.is_empty() {
        return Err(err(
            format!("{sp}/where"),
            "a billed cost cannot filter on Encounter codes",
            "remove `where` to cost all of the client's care, or remove `billed` to price the filtered Encounters",
        ));
    }
    let mut out = Vec::new();
    for (i, kind) in billed.iter().enumerate() {
        if !matches!(
            kind,
            ResourceKind::Claim | ResourceKind::ExplanationOfBenefit
        ) || out.contains(kind)
        {
            return Err(err(
                format!("{pointer}/{i}"),
                format!("`{kind}` cannot be billed here"),
                "name Claim and ExplanationOfBenefit, each at most once, in order of preference",
            ));
        }
        out.push(*kind);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_value_reads_observations_only() {
        use crate::model::load::load_str;
        let text = include_str!("../../mappings/suuntima.yaml").replace(
            "count: {resource: Encounter, window: P12M, where: [{field: class, in: home}]}",
            "last_value: {resource: Encounter, window: P12M, where: [{field: class, in: home}]}",
        );
        // Loading compiles the model, and reports where the problem is.
        let problems = match load_str(&text) {
            Ok(m) => format!("{:?}", Plan::compile(m, Day::EPOCH).err()),
            Err(d) => format!("{d:?}"),
        };
        assert!(
            problems.contains("`last_value` reads Observation values, not Encounter"),
            "{problems}"
        );
    }

    #[test]
    fn a_model_reads_the_types_its_features_name_and_no_other() {
        use crate::model::load::load_str;
        use ResourceKind::*;
        let kinds = |text: &str| {
            let plan = Plan::compile(load_str(text).expect("model"), Day::EPOCH).expect("plan");
            kinds_read(std::slice::from_ref(&plan))
        };
        let oral = kinds(include_str!("../../mappings/helsinki-oral-health.yaml"));
        assert_eq!(oral, [Patient, Encounter, Condition, Observation]);
        let virta = kinds(include_str!("../../mappings/virta.yaml"));
        assert_eq!(
            virta,
            [
                Patient,
                Encounter,
                Condition,
                Observation,
                EpisodeOfCare,
                Claim,
                ExplanationOfBenefit
            ]
        );
        let suuntima = kinds(include_str!("../../mappings/suuntima.yaml"));
        assert_eq!(
            suuntima,
            [
                Patient,
                Encounter,
                Condition,
                Observation,
                Claim,
                ExplanationOfBenefit
            ]
        );
    }

    #[test]
    fn prefix_lookup_costs_the_same_for_a_code_of_any_length() {
        use crate::model::load::load_str;
        let text = include_str!("../../mappings/paijat-sote.yaml");
        let plan = Plan::compile(load_str(text).expect("model"), Day::EPOCH).expect("plan");
        let icd10 = "urn:oid:1.2.246.537.6.1";
        let (mask, concept) = plan.lookup(Field::Code, icd10, "F32.1");
        assert!(
            mask != 0 && concept.is_some(),
            "F32.1 is listed by its prefix F3"
        );
        // Hashing every prefix of this code would be quadratic: minutes, not milliseconds.
        let long = format!("F3{}", "9".repeat(1_280_000));
        let started = std::time::Instant::now();
        assert_eq!(plan.lookup(Field::Code, icd10, &long), (mask, concept));
        assert_eq!(plan.lookup(Field::Code, icd10, &long[1..]), (0, None));
        assert!(
            started.elapsed() < std::time::Duration::from_millis(500),
            "two look-ups of a 1.28 MB code took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn windows_parse_as_iso_durations() {
        assert_eq!(parse_window("P12M"), Some((12, 0)));
        assert_eq!(parse_window("P1Y6M"), Some((18, 0)));
        assert_eq!(parse_window("P2W3D"), Some((0, 17)));
        for bad in ["12M", "P", "P1H", "P1Y2", "PM"] {
            assert_eq!(parse_window(bad), None, "{bad}");
        }
    }

    #[test]
    fn months_are_calendar_months_clamped_to_month_end() {
        let day = |s: &str| s.parse::<Day>().expect("day");
        assert_eq!(days_before(day("2026-01-01"), 12, 0), day("2025-01-01"));
        assert_eq!(days_before(day("2026-03-31"), 1, 0), day("2026-02-28"));
        assert_eq!(days_before(day("2026-01-10"), 0, 10), day("2025-12-31"));
    }
}
