//! What a JSON Schema cannot see in a mapping: duplicate ids and codes, code system URLs that
//! are not URLs, references to unknown features, criteria, levels, lists and segments, question
//! tree nodes that no client can reach, and segments that no node gives. Reports every
//! problem it finds as a [`Diagnostic`]; never changes the mapping. Also words, for
//! `check-mapping`, what a model reads beyond Patient, Encounter and Condition and what a
//! client without it gets ([`data_notes`]).

use std::collections::HashSet;

use super::mapping::{
    DEFAULT_FLAG_CATEGORY, FLAG_CATEGORIES, Feature, Fragment, Mapping, PriceTable, Segment, Text,
    TreeNode, known_statuses,
};
use super::plan::Plan;
use super::yaml::Diagnostic;
use crate::fhir::day::Day;
use crate::fhir::types::ResourceKind;

/// The most criterion-level combinations the tree check walks; more is reported, not walked.
const MAX_COMBINATIONS: usize = 1_000_000;

/// Per feature that reads Observation, EpisodeOfCare, Claim or ExplanationOfBenefit, a line
/// saying what it reads and what a client (or a system) without it gets, so that a county sees
/// every data dependency beyond Patient, Encounter and Condition when it checks a model.
pub fn data_notes(features: &[Feature]) -> Vec<String> {
    let mut out = Vec::new();
    for f in features {
        for sel in f.selections() {
            if let Some(billed) = sel.billed.as_deref().filter(|b| !b.is_empty()) {
                let names: Vec<&str> = billed.iter().map(|k| k.as_str()).collect();
                out.push(format!(
                    "{}: the cost is the totals of the first of {} the client has in the window; without any, the price table over Encounters",
                    f.id,
                    names.join(", then ")
                ));
            }
            if !ResourceKind::CORE.contains(&sel.resource) {
                let absent = sel.if_absent.as_deref().unwrap_or("(not said)");
                out.push(format!(
                    "{}: reads {}; without one: {absent}",
                    f.id, sel.resource
                ));
            }
        }
    }
    out
}

/// Every problem in `mapping` that its schema does not catch.
pub(crate) fn check(mapping: &Mapping) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    duplicates(mapping, &mut out);
    systems(mapping, &mut out);
    parents(mapping, &mut out);
    attributes(mapping, &mut out);
    statuses(mapping, &mut out);
    flag_category(mapping, &mut out);
    match Plan::compile(mapping.clone(), Day::EPOCH) {
        Err(errors) => out.extend(
            errors
                .into_iter()
                .map(|e| Diagnostic::new(e.pointer, e.message, e.hint)),
        ),
        Ok(plan) if out.is_empty() => tree(mapping, &plan, &mut out),
        Ok(_) => {}
    }
    out
}

/// Every problem in a file to include, on its own: it must stand alone, naming only its own
/// code lists and features. It is checked as a model with its entries, one segment and a tree
/// that places everyone there, and a price table of its own, since a `cost` feature sums the
/// including model's table; the pointers of its entries are the same in both shapes.
pub(crate) fn check_fragment(f: &Fragment) -> Vec<Diagnostic> {
    let stand_in = Text {
        fi: f.fragment.clone(),
        sv: f.fragment.clone(),
        en: f.fragment.clone(),
    };
    let model = Mapping {
        id: f.fragment.as_str().into(),
        canonical: "https://segmentti.fi/fhir/fragment".into(),
        version: f.version.clone(),
        title: f.title.clone(),
        description: None,
        include: Vec::new(),
        systems: f.systems.clone(),
        code_lists: f.code_lists.clone(),
        prices: Some(PriceTable {
            currency: "EUR".into(),
            source: "the including model's".into(),
            rules: Vec::new(),
            otherwise: 0.0,
            rates: Default::default(),
        }),
        features: f.features.clone(),
        criteria: Vec::new(),
        segments: vec![Segment {
            code: "-".into(),
            order: 1,
            display: stand_in.clone(),
            definition: None,
            guidance: stand_in.clone(),
            parent: None,
            attributes: Vec::new(),
        }],
        tree: vec![TreeNode {
            id: "-".into(),
            when: None,
            segment: "-".into(),
            because: stand_in,
        }],
        overlays: f.overlays.clone(),
        cost_feature: None,
        service_areas: f.service_areas.clone(),
        not_counted: Default::default(),
        assess_inactive: false,
        flag_category: None,
    };
    check(&model)
}

fn duplicates(m: &Mapping, out: &mut Vec<Diagnostic>) {
    let mut dup = |kind: &str, base: &str, names: Vec<String>| {
        let mut seen = HashSet::new();
        for (i, name) in names.into_iter().enumerate() {
            if !seen.insert(name.clone()) {
                out.push(Diagnostic::new(
                    format!("{base}/{i}"),
                    format!("{kind} `{name}` is defined twice"),
                    format!("give each {kind} its own name"),
                ));
            }
        }
    };
    dup(
        "code list",
        "/code_lists",
        m.code_lists.iter().map(|l| l.id.clone()).collect(),
    );
    dup(
        "feature",
        "/features",
        m.features.iter().map(|f| f.id.clone()).collect(),
    );
    dup(
        "criterion",
        "/criteria",
        m.criteria.iter().map(|c| c.id.clone()).collect(),
    );
    dup(
        "segment code",
        "/segments",
        m.segments.iter().map(|s| s.code.to_string()).collect(),
    );
    dup(
        "segment order",
        "/segments",
        m.segments.iter().map(|s| s.order.to_string()).collect(),
    );
    dup(
        "tree node",
        "/tree",
        m.tree.iter().map(|n| n.id.clone()).collect(),
    );
    dup(
        "overlay",
        "/overlays",
        m.overlays.iter().map(|o| o.code.clone()).collect(),
    );
    dup(
        "service area",
        "/service_areas",
        m.service_areas.iter().map(|a| a.code.clone()).collect(),
    );
    for (i, c) in m.criteria.iter().enumerate() {
        dup(
            "level",
            &format!("/criteria/{i}/levels"),
            c.levels.iter().map(|l| l.code.clone()).collect(),
        );
    }
    for (i, o) in m.overlays.iter().enumerate() {
        dup(
            "rule",
            &format!("/overlays/{i}/rules"),
            o.rules.iter().map(|r| r.id.clone()).collect(),
        );
    }
    for (i, l) in m.code_lists.iter().enumerate() {
        let codes = l
            .codes
            .iter()
            .map(|c| format!("{}|{}", c.system, c.code))
            .collect();
        dup("code", &format!("/code_lists/{i}/codes"), codes);
    }
}

/// A sub-segment must refine a segment of the model that is not itself a sub-segment.
fn parents(m: &Mapping, out: &mut Vec<Diagnostic>) {
    for (i, segment) in m.segments.iter().enumerate() {
        let Some(parent) = &segment.parent else {
            continue;
        };
        let pointer = format!("/segments/{i}/parent");
        match m.segments.iter().find(|s| &s.code == parent) {
            None => out.push(Diagnostic::new(
                pointer,
                format!("segment `{}` is a sub-segment of `{parent}`, which is no segment of this model", segment.code),
                "name the code of the segment it refines",
            )),
            Some(p) if p.parent.is_some() || p.code == segment.code => out.push(Diagnostic::new(
                pointer,
                format!("segment `{}` refines `{parent}`, which is itself a sub-segment", segment.code),
                "refine a top-level segment; one level of sub-segments is supported",
            )),
            Some(_) => {}
        }
    }
}

/// Each attribute has exactly one value, and an attribute code means one kind of value in
/// every segment (a booking system reads `first-visit-minutes` the same way everywhere).
fn attributes(m: &Mapping, out: &mut Vec<Diagnostic>) {
    let mut kinds: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for (i, segment) in m.segments.iter().enumerate() {
        let mut seen = HashSet::new();
        for (j, a) in segment.attributes.iter().enumerate() {
            let pointer = format!("/segments/{i}/attributes/{j}");
            let given: Vec<&str> = [
                a.quantity.as_ref().map(|_| "quantity"),
                a.integer.map(|_| "integer"),
                a.concept.as_ref().map(|_| "concept"),
            ]
            .into_iter()
            .flatten()
            .collect();
            let [kind] = given.as_slice() else {
                out.push(Diagnostic::new(
                    pointer,
                    format!(
                        "attribute `{}` of segment `{}` has {} values",
                        a.code,
                        segment.code,
                        given.len()
                    ),
                    "give exactly one of quantity, integer or concept",
                ));
                continue;
            };
            if !seen.insert(a.code.as_str()) {
                out.push(Diagnostic::new(
                    pointer.clone(),
                    format!(
                        "attribute `{}` is given twice in segment `{}`",
                        a.code, segment.code
                    ),
                    "give each attribute once per segment",
                ));
            }
            if let Some(q) = &a.quantity
                && (q.unit.trim().is_empty() || !q.value.is_finite())
            {
                out.push(Diagnostic::new(
                    format!("{pointer}/quantity"),
                    format!(
                        "attribute `{}` needs a finite value and a UCUM unit",
                        a.code
                    ),
                    "write it as {value: 45, unit: min}",
                ));
            }
            match kinds.insert(a.code.as_str(), kind) {
                Some(other) if other != *kind => out.push(Diagnostic::new(
                    pointer,
                    format!(
                        "attribute `{}` is given as {kind} here and as {other} in an earlier segment",
                        a.code
                    ),
                    "give an attribute code one kind of value in every segment",
                )),
                _ => {}
            }
        }
    }
}

/// Whether `url` can name a code system: an http(s) URL or an OID or UUID URN.
pub(crate) fn is_system_url(url: &str) -> bool {
    if url.chars().any(char::is_whitespace) {
        return false;
    }
    if let Some(oid) = url.strip_prefix("urn:oid:") {
        return !oid.is_empty()
            && oid
                .split('.')
                .all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()));
    }
    if let Some(uuid) = url.strip_prefix("urn:uuid:") {
        return uuid::Uuid::parse_str(uuid).is_ok();
    }
    ["http://", "https://"].iter().any(|scheme| {
        url.strip_prefix(scheme)
            .is_some_and(|rest| rest.contains('.') && !rest.starts_with('/'))
    })
}

fn systems(m: &Mapping, out: &mut Vec<Diagnostic>) {
    for (alias, url) in &m.systems {
        if !is_system_url(url) {
            out.push(Diagnostic::new(
                format!("/systems/{alias}"),
                format!("`{url}` is not a code system URL"),
                "write an http(s) URL or an OID as urn:oid:1.2.246.537.6.1",
            ));
        }
    }
    for (i, list) in m.code_lists.iter().enumerate() {
        if list.codes.is_empty() && list.valueset.is_none() {
            out.push(Diagnostic::new(
                format!("/code_lists/{i}"),
                format!("code list `{}` has no codes and no valueset", list.id),
                "list its codes under `codes`, or name a FHIR ValueSet file with `valueset:`",
            ));
        }
        for (j, code) in list.codes.iter().enumerate() {
            if !m.systems.contains_key(&code.system) && !is_system_url(&code.system) {
                out.push(Diagnostic::new(
                    format!("/code_lists/{i}/codes/{j}/system"),
                    format!(
                        "`{}` is neither a name under `systems` nor a code system URL",
                        code.system
                    ),
                    "use a short name defined under systems, or a full URL / urn:oid:",
                ));
            }
        }
    }
}

/// `not_counted` names statuses FHIR defines for each type's status element.
fn statuses(m: &Mapping, out: &mut Vec<Diagnostic>) {
    for (kind, statuses) in &m.not_counted {
        let known = known_statuses(*kind);
        if known.is_empty() {
            out.push(Diagnostic::new(
                format!("/not_counted/{kind}"),
                format!("{kind} has no status that could leave it uncounted"),
                "remove it from not_counted; a model reads every client's Patient",
            ));
        }
        for (i, status) in statuses.iter().enumerate() {
            if !known.is_empty() && !known.contains(&status.as_str()) {
                out.push(Diagnostic::new(
                    format!("/not_counted/{kind}/{i}"),
                    format!("`{status}` is not a status of {kind} in FHIR R4"),
                    format!("use one of {}", known.join(", ")),
                ));
            }
        }
    }
}

/// `flag_category` is a code of the FHIR flag-category code system that a Flag may carry.
fn flag_category(m: &Mapping, out: &mut Vec<Diagnostic>) {
    if let Some(code) = &m.flag_category
        && !FLAG_CATEGORIES.iter().any(|(c, _)| c == code)
    {
        let codes: Vec<&str> = FLAG_CATEGORIES.iter().map(|(c, _)| *c).collect();
        out.push(Diagnostic::new(
            "/flag_category",
            format!(
                "`{code}` is not a Flag category (http://terminology.hl7.org/CodeSystem/flag-category)"
            ),
            format!(
                "use one of {}, or leave it out for `{DEFAULT_FLAG_CATEGORY}`",
                codes.join(", ")
            ),
        ));
    }
}

/// Walks every combination of criterion levels through the tree.
fn tree(m: &Mapping, plan: &Plan, out: &mut Vec<Diagnostic>) {
    let sizes: Vec<usize> = m.criteria.iter().map(|c| c.levels.len()).collect();
    let total = sizes.iter().try_fold(1usize, |acc, &n| {
        acc.checked_mul(n).filter(|&t| t <= MAX_COMBINATIONS)
    });
    let Some(total) = total else {
        out.push(Diagnostic::new(
            "/criteria",
            format!(
                "too many criterion-level combinations to check the tree (over {MAX_COMBINATIONS})"
            ),
            "use fewer criteria or levels",
        ));
        return;
    };
    let mut reached = vec![false; plan.tree.len()];
    let mut first_blocker: Vec<Option<usize>> = vec![None; plan.tree.len()];
    let mut unplaced: Option<Vec<usize>> = None;
    let mut levels = vec![0usize; sizes.len()];
    for n in 0..total {
        let mut rest = n;
        for (slot, &size) in levels.iter_mut().zip(&sizes) {
            *slot = rest % size;
            rest /= size;
        }
        match plan.place(&levels) {
            Some(node) => {
                reached[node] = true;
                for (later, blocker) in first_blocker.iter_mut().enumerate().skip(node + 1) {
                    let holds = plan.tree[later].when.as_ref().is_none_or(|w| {
                        w.holds(super::plan::Facts {
                            features: &[],
                            levels: &levels,
                            thresholds: &[],
                        })
                    });
                    if holds && blocker.is_none() {
                        *blocker = Some(node);
                    }
                }
            }
            None => {
                unplaced.get_or_insert_with(|| levels.clone());
            }
        }
    }
    for (i, was_reached) in reached.iter().enumerate() {
        if !was_reached {
            let why = match first_blocker[i] {
                Some(b) => format!(
                    "every client it would take is placed earlier by node `{}`",
                    m.tree[b].id
                ),
                None => "its condition can never hold".into(),
            };
            out.push(Diagnostic::new(
                format!("/tree/{i}"),
                format!("tree node `{}` can never be reached: {why}", m.tree[i].id),
                "reorder the nodes, narrow the earlier node, or remove this one",
            ));
        }
    }
    if let Some(levels) = unplaced {
        let example: Vec<String> = m
            .criteria
            .iter()
            .zip(&levels)
            .map(|(c, &l)| format!("{}={}", c.id, c.levels[l].code))
            .collect();
        out.push(Diagnostic::new(
            "/tree",
            format!(
                "some clients reach no tree node, for example {}",
                example.join(", ")
            ),
            "end the tree with a node without `when`",
        ));
    }
    for (s, segment) in m.segments.iter().enumerate() {
        let given = plan
            .tree
            .iter()
            .zip(&reached)
            .any(|(node, &r)| r && node.segment == s);
        if !given {
            out.push(Diagnostic::new(
                format!("/segments/{s}"),
                format!(
                    "no reachable tree node places a client in segment `{}`",
                    segment.code
                ),
                "add a tree node for it or remove the segment",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_urls() {
        for ok in [
            "urn:oid:1.2.246.537.6.1",
            "http://snomed.info/sct",
            "https://example.org/cs",
        ] {
            assert!(is_system_url(ok), "{ok}");
        }
        for bad in [
            "urn:oid:1..2",
            "urn:oid:1.2.x",
            "snomed",
            "http://",
            "https://a b.org",
            "ftp://x.org",
        ] {
            assert!(!is_system_url(bad), "{bad}");
        }
    }

    #[test]
    fn attributes_need_one_value_of_one_kind_per_code() {
        let text = include_str!("../../mappings/helsinki-oral-health.yaml");
        let mut m = crate::model::load::load_str(text).expect("the oral-health model loads");
        assert!(check(&m).is_empty());
        let a = &mut m.segments[0].attributes;
        a[1].integer = Some(30);
        a.push(a[2].clone());
        m.segments[2].attributes[2].integer = None;
        m.segments[2].attributes[2].quantity = m.segments[0].attributes[1].quantity.clone();
        let messages: Vec<String> = check(&m).into_iter().map(|d| d.message).collect();
        assert!(
            messages
                .iter()
                .any(|t| t.contains("`first-visit-minutes` of segment `light` has 2 values")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|t| t.contains("`follow-up-visits` is given twice")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|t| t.contains("`follow-up-visits` is given as quantity here and as integer")),
            "{messages:?}"
        );
    }

    #[test]
    fn flag_category_is_one_of_the_eight_flag_category_codes() {
        let text = include_str!("../../mappings/paijat-sote.yaml");
        let mut m = crate::model::load::load_str(text).expect("the model loads");
        for code in FLAG_CATEGORIES.iter().map(|(c, _)| *c) {
            m.flag_category = Some(code.into());
            assert!(check(&m).is_empty(), "{code}");
        }
        for bad in ["Admin", "contact", "advance-directive", "banner", ""] {
            m.flag_category = Some(bad.into());
            let found = check(&m);
            assert_eq!(found.len(), 1, "{bad}: {found:?}");
            assert_eq!(found[0].pointer, "/flag_category");
            assert!(found[0].message.contains(&format!("`{bad}`")), "{found:?}");
            let hint = found[0].hint.as_deref().unwrap_or_default();
            assert!(hint.contains("admin, behavioral"), "{hint}");
        }
    }
}
