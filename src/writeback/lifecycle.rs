//! The Flag lifecycle, decided without I/O: given what a server already holds for a client (its
//! active segmentti Flags of this model) and the new results, which resources to create, which
//! to end and which to leave alone. An unchanged client gets no write at all; a new segment ends
//! the old Flag (status `inactive`, `period.end`) in the same transaction that creates the new
//! one; an overlay that no longer holds has its Flag ended. Whether anything changed is read
//! from a fingerprint extension on the Flag, so no Observation has to be fetched to compare.
//! A Flag that stays gets the model's Flag `category` too, so Flags written before segmentti
//! wrote categories (or under another category of the model) gain it; an unchanged client
//! whose Flags lack it gets those Flags rewritten, and no new assessment.
//!
//! A Flag read from the server and written again (kept, ended, given a category) changes only
//! in segmentti's own elements: status, period, category, and the extensions segmentti writes
//! (`FLAG_DETAIL`, `FINGERPRINT`); other writers' extensions and fields stay. Such a Flag
//! keeps the server's `meta`, whose `versionId` the write is conditional on (`If-Match`, see
//! [`crate::sink::fhir::transaction`]).

use fhir_sdk::r4b::resources::Flag;
use fhir_sdk::r4b::types::{Extension, ExtensionValue};
use serde_json::Value;

use super::{BuildError, FINGERPRINT, FLAG_CATEGORY_SYSTEM, FLAG_DETAIL};
use crate::assess::eval::Assessment;
use crate::fhir::day::Day;
use crate::model::mapping::FLAG_CATEGORIES;
use crate::model::plan::Plan;
use crate::record::Unassessed;
use crate::writeback::ClientResources;

/// What a client's assessment looks like, compactly: segment, every criterion level, and the
/// overlays with the rules that hold. Two assessments with the same fingerprint need no write.
pub(crate) fn fingerprint(plan: &Plan, a: &Assessment) -> String {
    use std::fmt::Write;
    // One string written in place: it is made for every client of every run.
    let m = &plan.mapping;
    let mut out = String::with_capacity(128);
    _ = write!(
        out,
        "{}@{};segment={}",
        m.id, m.version, m.segments[a.segment].code
    );
    for (c, criterion) in m.criteria.iter().enumerate() {
        let level = &criterion.levels[a.levels[c]].code;
        _ = write!(out, ";{}={level}", criterion.id);
    }
    for (o, overlay) in m.overlays.iter().enumerate() {
        _ = write!(out, ";{}=[", overlay.code);
        for (i, &r) in a.overlays[o].iter().enumerate() {
            out.push_str(if i == 0 { "" } else { "," });
            out.push_str(&overlay.rules[r].id);
        }
        out.push(']');
    }
    out
}

/// The fingerprint extension.
pub(crate) fn fingerprint_extension(value: &str) -> Result<Extension, String> {
    Extension::builder()
        .url(FINGERPRINT.to_owned())
        .value(ExtensionValue::String(value.to_owned()))
        .build()
        .map_err(|e| e.to_string())
}

/// An active Flag of this model already on the server, as read back (any JSON shape the server
/// returns is accepted; only these fields are used).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Existing {
    /// The Flag as the server returned it, to be re-sent with its status changed.
    pub resource: Value,
    /// Its identifier value.
    pub identifier: String,
    /// Whether it is the segment Flag (else an overlay Flag).
    pub segment: bool,
    /// Its code (segment or overlay code).
    pub code: String,
    /// Its fingerprint extension, if any.
    pub fingerprint: Option<String>,
}

impl Existing {
    /// Reads an active Flag of `plan`'s model from server JSON; `None` for anything else
    /// (other models' Flags, inactive ones, Flags not written by segmentti).
    pub(crate) fn from_server(plan: &Plan, flag: &Value) -> Option<Self> {
        if flag.get("status").and_then(Value::as_str) != Some("active") {
            return None;
        }
        let base = format!("{}/identifier/", plan.mapping.canonical);
        let identifier = flag.get("identifier")?.as_array()?.iter().find_map(|i| {
            let system = i.get("system")?.as_str()?;
            let kind = system.strip_prefix(&base)?;
            Some((kind.to_owned(), i.get("value")?.as_str()?.to_owned()))
        })?;
        let segment = match identifier.0.as_str() {
            "segment-flag" => true,
            "overlay-flag" => false,
            _ => return None,
        };
        let code = flag.pointer("/code/coding/0/code")?.as_str()?.to_owned();
        let fingerprint = flag
            .get("extension")
            .and_then(Value::as_array)
            .and_then(|exts| {
                exts.iter()
                    .find(|e| e.get("url").and_then(Value::as_str) == Some(FINGERPRINT))?
                    .get("valueString")?
                    .as_str()
                    .map(str::to_owned)
            });
        Some(Self {
            resource: flag.clone(),
            identifier: identifier.1,
            segment,
            code,
            fingerprint,
        })
    }
}

/// What to send for one client.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// The new assessment, when anything changed.
    pub observation: Option<Value>,
    /// Flags to create or update (conditional on their identifier).
    pub upsert: Vec<Value>,
    /// Flags to end: the server's Flag with `status: inactive` and `period.end` set.
    pub end: Vec<Value>,
}

impl Changes {
    /// Whether nothing is to be written.
    pub(crate) fn is_empty(&self) -> bool {
        self.observation.is_none() && self.upsert.is_empty() && self.end.is_empty()
    }
}

/// Decides what to write for a client whose new resources are `new` (built at `as_of`, each Flag
/// carrying the fingerprint `print`) given the active Flags the server holds.
pub(crate) fn decide(
    new: &ClientResources,
    print: &str,
    existing: &[Existing],
    as_of: Day,
) -> Result<Changes, BuildError> {
    let mut changes = Changes::default();
    let unchanged = existing
        .iter()
        .any(|e| e.segment && e.fingerprint.as_deref() == Some(print));
    let category = match new.flags.first() {
        Some(f) => to_json(&new.patient, "Flag", &f.category)?,
        None => Value::Array(Vec::new()),
    };
    if unchanged {
        // Nothing to reassess; Flags written before they carried the model's category get it.
        for e in existing {
            let mut flag = e.resource.clone();
            if with_category(&mut flag, &category) {
                changes.upsert.push(flag);
            }
        }
        return Ok(changes);
    }
    changes.observation = Some(to_json(&new.patient, "Observation", &new.observation)?);
    let new_codes: Vec<(bool, String)> = new
        .flags
        .iter()
        .enumerate()
        .map(|(i, f)| (i == 0, flag_code(f)))
        .collect();
    let values: Vec<Value> = new
        .flags
        .iter()
        .map(|f| to_json(&new.patient, "Flag", f))
        .collect::<Result<_, _>>()?;
    for e in existing {
        let kept = new_codes
            .iter()
            .any(|(segment, code)| *segment == e.segment && *code == e.code);
        // A Flag started on the same day as the new one has the new one's identifier: the
        // new Flag's conditional write replaces it in place, and ending it in the same
        // transaction would address one resource twice, which servers refuse (`serve`
        // reassesses several times a day).
        let replaced = values.iter().any(|v| same_identifier(v, &e.identifier));
        if !kept && !replaced {
            changes.end.push(ended(&e.resource, as_of));
        }
    }
    for (i, (flag, mut value)) in new.flags.iter().zip(values).enumerate() {
        let code = flag_code(flag);
        // A Flag that stays (same segment or overlay) keeps its identity and start date, and
        // only points to the new assessment; a new one starts today.
        if let Some(e) = existing
            .iter()
            .find(|e| e.segment == (i == 0) && e.code == code)
        {
            let mut kept = e.resource.clone();
            with_extensions(&mut kept, value["extension"].take());
            with_category(&mut kept, &category);
            value = kept;
        }
        changes.upsert.push(value);
    }
    Ok(changes)
}

/// Puts `ours` (segmentti's extensions of a new Flag, a JSON array) on the server's `flag` in
/// place of the ones segmentti wrote before, first, as builders write them; every other
/// writer's extension stays, in its order after them.
fn with_extensions(flag: &mut Value, ours: Value) {
    let Value::Array(mut merged) = ours else {
        return;
    };
    let ours_url = |e: &Value| {
        e.get("url").and_then(Value::as_str).is_some_and(|url| {
            url == FLAG_DETAIL
                || url == FINGERPRINT
                || merged
                    .iter()
                    .any(|o| o.get("url").and_then(Value::as_str) == Some(url))
        })
    };
    let theirs: Vec<Value> = flag
        .get("extension")
        .and_then(Value::as_array)
        .map(|all| all.iter().filter(|e| !ours_url(e)).cloned().collect())
        .unwrap_or_default();
    merged.extend(theirs);
    flag["extension"] = Value::Array(merged);
}

/// Gives the server's `flag` the `category` segmentti writes now (a JSON array of concepts),
/// keeping its other categories: only a category of the shape segmentti writes (one
/// flag-category coding with its display, nothing else) that is not among the new ones is
/// taken out, since the model named another. Whether anything changed.
fn with_category(flag: &mut Value, category: &Value) -> bool {
    let ours = category.as_array().map_or(&[][..], Vec::as_slice);
    let before = flag
        .get("category")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut after: Vec<Value> = before
        .iter()
        .filter(|c| ours.contains(c) || !segmentti_shaped(c))
        .cloned()
        .collect();
    for c in ours {
        if !after.contains(c) {
            after.push(c.clone());
        }
    }
    if after == before {
        return false;
    }
    match flag.as_object_mut() {
        Some(o) if after.is_empty() => {
            o.remove("category");
        }
        Some(o) => {
            o.insert("category".into(), Value::Array(after));
        }
        None => return false,
    }
    true
}

/// Whether `concept` is what segmentti writes as a Flag category: one coding of the
/// flag-category code system, with the display segmentti gives it, and nothing else.
fn segmentti_shaped(concept: &Value) -> bool {
    let Some([coding]) = concept
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.get("coding")?.as_array())
        .map(Vec::as_slice)
    else {
        return false;
    };
    let field = |key: &str| coding.get(key).and_then(Value::as_str);
    coding.as_object().is_some_and(|o| o.len() == 3)
        && field("system") == Some(FLAG_CATEGORY_SYSTEM)
        && FLAG_CATEGORIES.iter().any(|&(code, display)| {
            field("code") == Some(code) && field("display") == Some(display)
        })
}

/// Whether the Flag `value` carries an identifier whose value is `identifier`.
fn same_identifier(value: &Value, identifier: &str) -> bool {
    value["identifier"]
        .as_array()
        .is_some_and(|ids| ids.iter().any(|i| i["value"] == identifier))
}

fn flag_code(flag: &Flag) -> String {
    flag.code
        .coding
        .first()
        .and_then(|c| c.as_ref())
        .and_then(|c| c.code.clone())
        .unwrap_or_default()
}

/// Extension on a Flag segmentti ended because its client gets no assessment any more: why, as
/// a code (`deceased`, `not-yet-born`, `inactive`), so that a reader of the record sees the Flag
/// ended for that and not because the segment changed.
const END_REASON: &str = "https://segmentti.fi/fhir/StructureDefinition/end-reason";

/// Ends every active Flag of a client who gets no assessment any more ([`Unassessed`]), each
/// with why.
pub(crate) fn retire(existing: &[Existing], why: Unassessed, as_of: Day) -> Changes {
    let end = existing
        .iter()
        .map(|e| {
            let mut flag = ended(&e.resource, as_of);
            let reason = serde_json::json!({"url": END_REASON, "valueCode": why.as_str()});
            match flag["extension"].as_array_mut() {
                Some(extensions) => extensions.push(reason),
                None => flag["extension"] = Value::Array(vec![reason]),
            }
            flag
        })
        .collect();
    Changes {
        observation: None,
        upsert: Vec::new(),
        end,
    }
}

/// The server's Flag, ended at `as_of` (its `meta` kept for the version the write is
/// conditional on).
pub fn ended(flag: &Value, as_of: Day) -> Value {
    let mut flag = flag.clone();
    flag["status"] = Value::String("inactive".into());
    flag["period"]["end"] = Value::String(as_of.to_string());
    flag
}

fn to_json<T: serde::Serialize>(
    patient: &str,
    resource: &'static str,
    value: &T,
) -> Result<Value, BuildError> {
    serde_json::to_value(value).map_err(|e| BuildError {
        resource,
        patient: patient.to_owned(),
        cause: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assess::eval;
    use crate::model::load::load_str;
    use crate::record::ClientRecord;
    use crate::writeback::build;

    fn plan() -> Plan {
        let mapping =
            load_str(include_str!("../../mappings/paijat-sote.yaml")).expect("model loads");
        Plan::compile(mapping, "2026-01-01".parse().expect("day")).expect("model compiles")
    }

    /// An assessment from raw feature values (in the model's feature order), with every
    /// `top_percent` threshold at 10.
    fn assessed(plan: &Plan, set: &[(&str, f64)]) -> Assessment {
        let mut values = vec![Some(0.0); plan.features.len()];
        for (name, v) in set {
            let i = plan
                .features
                .iter()
                .position(|f| f.id == *name)
                .expect("feature");
            values[i] = Some(*v);
        }
        eval::assess(plan, values, &vec![Some(10.0); plan.percentiles.len()]).expect("placed")
    }

    fn resources(plan: &Plan, a: &Assessment) -> (ClientResources, String) {
        let record = ClientRecord::empty(plan);
        let concepts = crate::writeback::Concepts::new(plan).expect("concepts");
        (
            build(plan, &concepts, "p1", &record, a).expect("built"),
            fingerprint(plan, a),
        )
    }

    fn on_server(plan: &Plan, r: &ClientResources) -> Vec<Existing> {
        r.flags
            .iter()
            .map(|f| {
                Existing::from_server(plan, &serde_json::to_value(f).expect("json"))
                    .expect("our own Flag is recognised")
            })
            .collect()
    }

    #[test]
    fn a_new_client_gets_an_observation_and_its_flags() {
        let plan = plan();
        let (new, print) = resources(&plan, &assessed(&plan, &[("contacts_12m", 20.0)]));
        let changes = decide(&new, &print, &[], plan.as_of).expect("decided");
        assert!(changes.observation.is_some());
        assert_eq!(changes.upsert.len(), 2, "segment and key-client Flags");
        assert!(changes.end.is_empty());
    }

    #[test]
    fn an_unchanged_client_gets_no_write() {
        let plan = plan();
        let (new, print) = resources(&plan, &assessed(&plan, &[("contacts_12m", 20.0)]));
        let changes = decide(&new, &print, &on_server(&plan, &new), plan.as_of).expect("decided");
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn a_new_segment_ends_the_old_flag_and_the_lost_overlay() {
        let plan = plan();
        let (old, _) = resources(&plan, &assessed(&plan, &[("contacts_12m", 20.0)]));
        let later = Plan::compile(plan.mapping.clone(), "2026-06-01".parse().expect("day"))
            .expect("compiles");
        let (new, print) = resources(&later, &assessed(&later, &[("contacts_12m", 6.0)]));
        let changes = decide(&new, &print, &on_server(&plan, &old), later.as_of).expect("decided");
        assert!(changes.observation.is_some());
        assert_eq!(
            changes.end.len(),
            2,
            "old segment Flag and key-client Flag end"
        );
        for ended in &changes.end {
            assert_eq!(ended["status"], "inactive");
            assert_eq!(ended["period"]["end"], "2026-06-01");
        }
        assert_eq!(changes.upsert.len(), 1);
        assert_eq!(changes.upsert[0]["code"]["coding"][0]["code"], "2");
        assert_eq!(changes.upsert[0]["period"]["start"], "2026-06-01");
    }

    #[test]
    fn issue_8_a_new_segment_on_the_same_day_replaces_the_flag_instead_of_ending_it() {
        let plan = plan();
        let (old, _) = resources(&plan, &assessed(&plan, &[("contacts_12m", 20.0)]));
        let (new, print) = resources(&plan, &assessed(&plan, &[("contacts_12m", 6.0)]));
        let changes = decide(&new, &print, &on_server(&plan, &old), plan.as_of).expect("decided");
        assert_eq!(changes.upsert.len(), 1);
        assert_eq!(changes.upsert[0]["code"]["coding"][0]["code"], "2");
        // The old segment Flag is the new one's target; only the lost overlay ends.
        assert_eq!(changes.end.len(), 1, "{:#?}", changes.end);
        assert_ne!(
            changes.end[0]["identifier"], changes.upsert[0]["identifier"],
            "no resource is addressed twice"
        );
    }

    /// A client in the same segment on 2026-01-01 and 2026-06-01 with other criterion levels:
    /// the plans of both dates, the earlier resources, the later ones and their fingerprint.
    fn same_segment_other_levels() -> (Plan, ClientResources, Plan, ClientResources, String) {
        let plan = plan();
        let (old, _) = resources(&plan, &assessed(&plan, &[("contacts_12m", 15.0)]));
        let later = Plan::compile(plan.mapping.clone(), "2026-06-01".parse().expect("day"))
            .expect("compiles");
        let (new, print) = resources(
            &later,
            &assessed(&later, &[("contacts_12m", 15.0), ("age", 80.0)]),
        );
        (plan, old, later, new, print)
    }

    #[test]
    fn changed_levels_in_the_same_segment_keep_the_flag_and_point_it_to_the_new_assessment() {
        let (plan, old, later, new, print) = same_segment_other_levels();
        let existing = on_server(&plan, &old);
        let changes = decide(&new, &print, &existing, later.as_of).expect("decided");
        assert!(changes.observation.is_some());
        let segment_flag = &changes.upsert[0];
        assert_eq!(
            segment_flag["identifier"], existing[0].resource["identifier"],
            "same Flag, same identity"
        );
        assert_eq!(
            segment_flag["period"]["start"], "2026-01-01",
            "the segment has held since the first run"
        );
        assert_ne!(segment_flag["extension"], existing[0].resource["extension"]);
    }

    #[test]
    fn a_kept_flag_keeps_other_writers_extensions_and_takes_segmenttis_new_ones() {
        let (plan, old, later, new, print) = same_segment_other_levels();
        let mut existing = on_server(&plan, &old);
        let theirs =
            serde_json::json!({"url": "https://ehr.example/banner-colour", "valueCode": "red"});
        existing[0].resource["extension"]
            .as_array_mut()
            .expect("segmentti's extensions")
            .push(theirs.clone());
        let changes = decide(&new, &print, &existing, later.as_of).expect("decided");
        let extensions = changes.upsert[0]["extension"]
            .as_array()
            .expect("extensions");
        let urls: Vec<&str> = extensions
            .iter()
            .map(|e| e["url"].as_str().expect("url"))
            .collect();
        assert_eq!(
            urls,
            [
                FLAG_DETAIL,
                FINGERPRINT,
                "https://ehr.example/banner-colour"
            ],
            "segmentti's first (the transaction points the first at the assessment), once each"
        );
        assert_eq!(extensions[1]["valueString"], print.as_str());
        assert_eq!(extensions[2], theirs);
    }

    #[test]
    fn an_ended_flag_keeps_its_version_and_other_writers_extensions() {
        let plan = plan();
        let mut flag = serde_json::to_value(&resources(&plan, &assessed(&plan, &[])).0.flags[0])
            .expect("json");
        flag["meta"] = serde_json::json!({"versionId": "3"});
        flag["extension"]
            .as_array_mut()
            .expect("extensions")
            .push(serde_json::json!({"url": "https://ehr.example/x", "valueBoolean": true}));
        let end = ended(&flag, "2026-06-01".parse().expect("day"));
        assert_eq!(end["meta"]["versionId"], "3");
        assert_eq!(end["extension"], flag["extension"]);
        assert_eq!(end["status"], "inactive");
    }

    /// A Flag as an earlier segmentti wrote it: without a category.
    fn without_category(e: &Existing) -> Existing {
        let mut e = e.clone();
        e.resource
            .as_object_mut()
            .expect("object")
            .remove("category");
        e
    }

    #[test]
    fn a_kept_flag_gains_the_category_and_keeps_other_writers_categories() {
        let (plan, old, later, new, print) = same_segment_other_levels();
        let mut existing: Vec<Existing> = on_server(&plan, &old)
            .iter()
            .map(without_category)
            .collect();
        let theirs = serde_json::json!({"coding": [{"system": "https://ehr.example/flag-kind", "code": "banner"}]});
        existing[0].resource["category"] = serde_json::json!([theirs]);
        existing[0].resource["note"] = serde_json::json!("kept");
        let changes = decide(&new, &print, &existing, later.as_of).expect("decided");
        let kept = &changes.upsert[0];
        assert_eq!(kept["identifier"], existing[0].resource["identifier"]);
        assert_eq!(kept["note"], "kept", "other writers' fields stay");
        assert_eq!(
            kept["category"],
            serde_json::json!([
                theirs,
                {"coding": [{"system": FLAG_CATEGORY_SYSTEM, "code": "admin", "display": "Administrative"}]}
            ])
        );
    }

    #[test]
    fn an_unchanged_clients_flags_without_the_category_get_it_and_nothing_else_is_written() {
        let plan = plan();
        let (new, print) = resources(&plan, &assessed(&plan, &[("contacts_12m", 20.0)]));
        let existing: Vec<Existing> = on_server(&plan, &new)
            .iter()
            .map(without_category)
            .collect();
        let changes = decide(&new, &print, &existing, plan.as_of).expect("decided");
        assert!(changes.observation.is_none(), "no new assessment");
        assert!(changes.end.is_empty());
        assert_eq!(changes.upsert.len(), 2, "segment and key-client Flags");
        for (flag, before) in changes.upsert.iter().zip(&existing) {
            assert_eq!(flag["category"][0]["coding"][0]["code"], "admin");
            let mut without = flag.clone();
            without.as_object_mut().expect("object").remove("category");
            assert_eq!(without, before.resource, "only the category is added");
        }
    }

    #[test]
    fn a_new_flag_category_of_the_model_replaces_the_one_segmentti_wrote() {
        let plan = plan();
        let (old, _) = resources(&plan, &assessed(&plan, &[("contacts_12m", 20.0)]));
        let mut mapping = plan.mapping.clone();
        mapping.flag_category = Some("clinical".into());
        let clinical = Plan::compile(mapping, plan.as_of).expect("compiles");
        let (new, print) = resources(&clinical, &assessed(&clinical, &[("contacts_12m", 20.0)]));
        let mut existing = on_server(&plan, &old);
        let theirs = serde_json::json!({"coding": [{"system": FLAG_CATEGORY_SYSTEM, "code": "safety"}], "text": "Turvallisuus"});
        existing[0].resource["category"]
            .as_array_mut()
            .expect("array")
            .push(theirs.clone());
        let changes = decide(&new, &print, &existing, plan.as_of).expect("decided");
        assert_eq!(changes.upsert.len(), 2);
        assert_eq!(
            changes.upsert[0]["category"],
            serde_json::json!([
                theirs,
                {"coding": [{"system": FLAG_CATEGORY_SYSTEM, "code": "clinical", "display": "Clinical"}]}
            ]),
            "segmentti's admin goes, another writer's category stays"
        );
    }

    #[test]
    fn flags_of_other_models_and_inactive_flags_are_not_ours() {
        let plan = plan();
        let (new, _) = resources(&plan, &assessed(&plan, &[]));
        let mut flag = serde_json::to_value(&new.flags[0]).expect("json");
        flag["status"] = "inactive".into();
        assert!(Existing::from_server(&plan, &flag).is_none());
        flag["status"] = "active".into();
        flag["identifier"][0]["system"] = "https://other.example/identifier/segment-flag".into();
        assert!(Existing::from_server(&plan, &flag).is_none());
    }
}
