//! The check every built resource passes before it leaves the process: the rules a receiving
//! EHR relies on, stated once here (the profiles of what segmentti writes say the same):
//!
//! | resource | rule |
//! |---|---|
//! | Observation | `status` final; `meta.profile` is `segment-assessment`; `category` carries `survey`; `device` is segmentti (a Device by identifier); `code` carries segmentti's `segment-assessment`; exactly one identifier, the business identifier (model, client, date); `subject` is the client's Patient; `effectiveDateTime` is the as-of date; the value is one of the model's segments; `method` names the model; every component has a code and exactly one value; no `derivedFrom` (R4 allows no Encounter or Condition there); `workflow-supportingInfo` extensions point at the client's resources of the types segmentti reads (Encounter, Condition, Observation, EpisodeOfCare, Claim, ExplanationOfBenefit) only, at most the cap, with the full count once |
//! | Flag | `status` active; `meta.profile` is `segment-flag`, `key-client-flag` or `overlay-flag`; exactly one identifier, the business identifier (model, overlay, client, date); `category` carries the model's Flag category (`admin` by default); `code` is a segment (the first Flag) or an overlay (the others) of the model; `subject` is the client's Patient; `period.start` is the as-of date and there is no end; `flag-detail` points at this client's Observation; the fingerprint extension is there |
//!
//! It reads the typed resources the builders made, so it costs no serialisation. A failure
//! names the resource and the rule; the pipeline then writes nothing for that client and says
//! so in the run's summary and exit code. This module never changes a resource.

use fhir_sdk::r4b::codes::{FlagStatus, ObservationStatus};
use fhir_sdk::r4b::resources::{
    Flag, Observation, ObservationComponent, ObservationEffective, ObservationValue,
};
use fhir_sdk::r4b::types::{CodeableConcept, ExtensionValue, Identifier, Meta, Reference};

use super::{
    BuildError, BusinessId, Concepts, DEVICE_NAME, DEVICE_SYSTEM, FINGERPRINT,
    FLAG_CATEGORY_SYSTEM, FLAG_DETAIL, OBSERVATION_CATEGORY_SYSTEM, PROFILES, Parts,
    SEGMENTTI_SYSTEM, SUPPORTING_INFO, SUPPORTING_INFO_CAP, SUPPORTING_INFO_COUNT, Written,
    fhir_date, model_system,
};
use crate::fhir::types::ResourceKind;
use crate::model::mapping::DEFAULT_FLAG_CATEGORY;
use crate::model::plan::Plan;
use crate::writeback::ClientResources;

/// A built resource that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{resource} of Patient/{patient} breaks the rule: {rule}")]
pub struct Invalid {
    /// `Type/id` of the resource.
    pub resource: String,
    /// The client.
    pub patient: String,
    /// The rule, in words.
    pub rule: String,
}

/// Checks one client's resources; the first broken rule.
pub(crate) fn check(plan: &Plan, resources: &ClientResources) -> Result<(), Invalid> {
    let patient = resources.patient.as_str();
    let obs = &resources.observation;
    let obs_ref = format!("Observation/{}", obs.id.as_deref().unwrap_or_default());
    check_observation(plan, patient, obs, resources.parts).map_err(|rule| Invalid {
        resource: obs_ref.clone(),
        patient: patient.to_owned(),
        rule,
    })?;
    if resources.flags.is_empty() {
        return Err(Invalid {
            resource: obs_ref,
            patient: patient.to_owned(),
            rule: "a client has a segment Flag".into(),
        });
    }
    for (i, flag) in resources.flags.iter().enumerate() {
        check_flag(plan, patient, i == 0, &obs_ref, flag).map_err(|rule| Invalid {
            resource: format!("Flag/{}", flag.id.as_deref().unwrap_or_default()),
            patient: patient.to_owned(),
            rule,
        })?;
    }
    Ok(())
}

type Rule = Result<(), String>;

fn rule(holds: bool, text: &str) -> Rule {
    if holds { Ok(()) } else { Err(text.to_owned()) }
}

fn has_code<'a>(
    concept: &CodeableConcept,
    system: &str,
    codes: impl IntoIterator<Item = &'a str>,
) -> bool {
    let found: Vec<(&str, &str)> = concept
        .coding
        .iter()
        .flatten()
        .filter_map(|c| Some((c.system.as_deref()?, c.code.as_deref()?)))
        .collect();
    codes
        .into_iter()
        .any(|code| found.iter().any(|&(s, c)| s == system && c == code))
}

/// Exactly one identifier, the business identifier the lifecycle finds the resource by.
fn one_identifier(identifiers: &[Option<Identifier>], expected: &BusinessId) -> Rule {
    let ids: Vec<&Identifier> = identifiers.iter().flatten().collect();
    rule(
        ids.len() == 1
            && ids[0].system.as_deref() == Some(expected.system.as_str())
            && ids[0].value.as_deref() == Some(expected.value.as_str()),
        "exactly one identifier, the business identifier of the model, client and date",
    )
}

/// `meta.profile` names segmentti's profile `id` and nothing else.
fn claims(meta: Option<&Meta>, id: &str) -> Rule {
    let expected = format!("{PROFILES}/{id}");
    rule(
        meta.is_some_and(|m| m.profile.len() == 1 && m.profile[0].as_deref() == Some(&expected)),
        "meta.profile claims its profile",
    )
}

fn is_patient(reference: Option<&Reference>, patient: &str) -> bool {
    reference.and_then(|r| r.reference.as_deref()) == Some(format!("Patient/{patient}").as_str())
}

fn check_observation(plan: &Plan, patient: &str, obs: &Observation, parts: Parts) -> Rule {
    rule(obs.status == ObservationStatus::Final, "status is final")?;
    claims(obs.meta.as_ref(), "segment-assessment")?;
    if parts == Parts::All {
        let value = match &obs.value {
            Some(ObservationValue::CodeableConcept(c)) => Some(c),
            _ => None,
        };
        let components = obs.component.iter().flatten();
        let shared = Shared {
            category: &obs.category,
            code: &obs.code,
            value,
            method: obs.method.as_ref(),
            device: obs.device.as_ref(),
        };
        check_shared(plan, &shared, components)?;
    }
    one_identifier(
        &obs.identifier,
        &BusinessId::new(plan, Written::Assessment, None, patient, plan.as_of),
    )?;
    rule(
        is_patient(obs.subject.as_ref(), patient),
        "subject is the client's Patient",
    )?;
    let as_of = fhir_sdk::DateTime::Date(fhir_date(plan.as_of));
    rule(
        matches!(&obs.effective, Some(ObservationEffective::DateTime(d)) if *d == as_of),
        "effectiveDateTime is the as-of date",
    )?;
    rule(obs.derived_from.is_empty(), "derivedFrom is not used")?;
    let supporting: Vec<_> = obs
        .extension
        .iter()
        .filter(|e| e.url == SUPPORTING_INFO)
        .collect();
    rule(
        supporting.len() <= SUPPORTING_INFO_CAP,
        "supporting information is capped",
    )?;
    rule(
        supporting.iter().all(|e| match &e.value {
            Some(ExtensionValue::Reference(r)) => r.reference.as_deref().is_some_and(|t| {
                t.split_once('/')
                    .and_then(|(kind, _)| ResourceKind::parse(kind))
                    .is_some_and(|k| k != ResourceKind::Patient)
            }),
            _ => false,
        }),
        "supporting information points at the client's resources of the types segmentti reads",
    )?;
    rule(
        obs.extension
            .iter()
            .filter(|e| e.url == SUPPORTING_INFO_COUNT)
            .count()
            == 1,
        "the count of supporting resources is there once",
    )
}

/// The elements every client of an assessment shares, but the components.
struct Shared<'a> {
    category: &'a [Option<CodeableConcept>],
    code: &'a CodeableConcept,
    value: Option<&'a CodeableConcept>,
    method: Option<&'a CodeableConcept>,
    device: Option<&'a Reference>,
}

/// Whether `reference` names segmentti as a Device, by identifier.
fn is_segmentti_device(reference: Option<&Reference>) -> bool {
    reference.is_some_and(|r| {
        r.r#type.as_deref() == Some("Device")
            && r.identifier.as_ref().is_some_and(|i| {
                i.system.as_deref() == Some(DEVICE_SYSTEM)
                    && i.value.as_deref() == Some(DEVICE_NAME)
            })
    })
}

/// The rules on the elements every client of an assessment shares.
fn check_shared<'a>(
    plan: &Plan,
    shared: &Shared<'_>,
    components: impl IntoIterator<Item = &'a ObservationComponent>,
) -> Rule {
    let m = &plan.mapping;
    let Shared {
        category,
        code,
        value,
        method,
        device,
    } = *shared;
    rule(
        category
            .iter()
            .flatten()
            .any(|c| has_code(c, OBSERVATION_CATEGORY_SYSTEM, std::iter::once("survey"))),
        "category carries survey",
    )?;
    rule(
        is_segmentti_device(device),
        "device names segmentti as a Device",
    )?;
    rule(
        has_code(
            code,
            SEGMENTTI_SYSTEM,
            std::iter::once("segment-assessment"),
        ),
        "code carries segment-assessment",
    )?;
    let segment_system = model_system(plan, "segment");
    rule(
        value.is_some_and(|c| {
            has_code(
                c,
                &segment_system,
                m.segments.iter().map(|s| s.code.as_str()),
            )
        }),
        "the value is a segment of the model",
    )?;
    rule(
        method.is_some_and(|c| has_code(c, m.canonical.as_str(), std::iter::once(m.id.as_str()))),
        "method names the model",
    )?;
    for c in components {
        rule(
            c.code
                .coding
                .iter()
                .flatten()
                .any(|x| x.system.is_some() && x.code.is_some()),
            "every component has a coded code",
        )?;
        rule(c.value.is_some(), "every component has a value")?;
    }
    Ok(())
}

/// The rules on the shared elements, checked once for a run whose builders leave them out of
/// each client's resource ([`Parts::Own`]): every segment's value, the code, the method and
/// every component any client can get.
pub(crate) fn shared(plan: &Plan, concepts: &Concepts) -> Result<(), BuildError> {
    let category = [Some(concepts.observation_category.clone())];
    for segment in &concepts.segments {
        let shared = Shared {
            category: &category,
            code: &concepts.assessment,
            value: Some(segment),
            method: Some(&concepts.method),
            device: Some(&concepts.device),
        };
        check_shared(plan, &shared, concepts.components.all()).map_err(|rule| BuildError {
            resource: "Observation",
            patient: "-".into(),
            cause: format!("the model's shared parts break the rule: {rule}"),
        })?;
    }
    Ok(())
}

fn check_flag(plan: &Plan, patient: &str, segment: bool, obs_ref: &str, flag: &Flag) -> Rule {
    let m = &plan.mapping;
    rule(flag.status == FlagStatus::Active, "status is active")?;
    let code = flag
        .code
        .coding
        .iter()
        .flatten()
        .find_map(|c| c.code.as_deref())
        .unwrap_or_default();
    let expected = if segment {
        BusinessId::new(plan, Written::SegmentFlag, None, patient, plan.as_of)
    } else {
        BusinessId::new(plan, Written::OverlayFlag, Some(code), patient, plan.as_of)
    };
    one_identifier(&flag.identifier, &expected)?;
    let written = if segment {
        Written::SegmentFlag
    } else {
        Written::OverlayFlag
    };
    claims(
        flag.meta.as_ref(),
        super::flag::profile(written, Some(code)),
    )?;
    if segment {
        rule(
            has_code(
                &flag.code,
                &model_system(plan, "segment"),
                m.segments.iter().map(|s| s.code.as_str()),
            ),
            "the first Flag's code is a segment of the model",
        )?;
    } else {
        rule(
            has_code(
                &flag.code,
                &model_system(plan, "overlay"),
                m.overlays.iter().map(|o| o.code.as_str()),
            ),
            "an overlay Flag's code is an overlay of the model",
        )?;
    }
    let category = m.flag_category.as_deref().unwrap_or(DEFAULT_FLAG_CATEGORY);
    rule(
        flag.category
            .iter()
            .flatten()
            .any(|c| has_code(c, FLAG_CATEGORY_SYSTEM, std::iter::once(category))),
        "category carries the model's Flag category",
    )?;
    rule(
        is_patient(Some(&flag.subject), patient),
        "subject is the client's Patient",
    )?;
    let as_of = fhir_sdk::DateTime::Date(fhir_date(plan.as_of));
    rule(
        flag.period
            .as_ref()
            .is_some_and(|p| p.start.as_ref().is_some_and(|s| *s == as_of) && p.end.is_none()),
        "period starts at the as-of date and has no end",
    )?;
    rule(
        flag.extension.iter().any(|e| {
            e.url == FLAG_DETAIL
                && matches!(&e.value, Some(ExtensionValue::Reference(r)) if r.reference.as_deref() == Some(obs_ref))
        }),
        "flag-detail points at the client's Observation",
    )?;
    rule(
        flag.extension.iter().any(|e| e.url == FINGERPRINT),
        "the assessment fingerprint is there",
    )
}

#[cfg(test)]
mod tests {
    use fhir_sdk::r4b::types::Reference;

    use super::*;
    use crate::model::load::load_str;
    use crate::record::ClientRecord;

    fn built() -> (Plan, ClientResources) {
        let mapping = load_str(include_str!("../../mappings/paijat-sote.yaml")).expect("model");
        let plan = Plan::compile(mapping, "2026-01-01".parse().expect("day")).expect("plan");
        let record = ClientRecord::empty(&plan);
        let thresholds = vec![None; plan.percentiles.len()];
        let a = crate::run::pipeline::assess(&plan, "p1", &record, &thresholds).expect("placed");
        let concepts = super::super::Concepts::new(&plan).expect("concepts");
        let resources =
            crate::writeback::build(&plan, &concepts, "p1", &record, &a).expect("built");
        (plan, resources)
    }

    #[test]
    fn what_the_builders_make_passes() {
        let (plan, resources) = built();
        assert_eq!(check(&plan, &resources), Ok(()));
    }

    /// The parts a file-writing run leaves out of each client's resource pass once per run, and
    /// a broken one is caught.
    #[test]
    fn shared_parts_are_checked_once() {
        let (plan, _) = built();
        let mut concepts = super::super::Concepts::new(&plan).expect("concepts");
        assert!(shared(&plan, &concepts).is_ok());
        concepts.method.coding.clear();
        let e = shared(&plan, &concepts).expect_err("broken method");
        assert!(e.to_string().contains("method names the model"), "{e}");
    }

    /// A way to break what a builder made.
    type Break = fn(&mut ClientResources);

    /// Each broken builder is caught, naming the resource and the rule.
    #[test]
    fn broken_resources_are_caught_with_their_rule() {
        let breaks: [(&str, Break); 12] = [
            ("status is final", |r| {
                r.observation.status = ObservationStatus::Preliminary
            }),
            ("subject is the client's Patient", |r| {
                r.observation.subject = Some(
                    Reference::builder()
                        .reference("Patient/p2".into())
                        .build()
                        .expect("ref"),
                );
            }),
            ("the value is a segment of the model", |r| {
                r.observation.value = None
            }),
            ("derivedFrom is not used", |r| {
                let target = Reference::builder()
                    .reference("Condition/c1".into())
                    .build()
                    .expect("ref");
                r.observation.derived_from = vec![Some(target)];
            }),
            ("the count of supporting resources is there once", |r| {
                r.observation
                    .extension
                    .retain(|e| e.url != SUPPORTING_INFO_COUNT)
            }),
            ("status is active", |r| {
                r.flags[0].status = FlagStatus::Inactive
            }),
            ("meta.profile claims its profile", |r| {
                r.flags[0].meta = None
            }),
            ("flag-detail points at the client's Observation", |r| {
                r.flags[0].extension.retain(|e| e.url != FLAG_DETAIL)
            }),
            ("a client has a segment Flag", |r| r.flags.clear()),
            ("category carries survey", |r| {
                r.observation.category.clear()
            }),
            ("device names segmentti as a Device", |r| {
                r.observation.device = None
            }),
            ("category carries the model's Flag category", |r| {
                r.flags[0].category.clear()
            }),
        ];
        for (expected, break_it) in breaks {
            let (plan, mut resources) = built();
            break_it(&mut resources);
            let e = check(&plan, &resources).expect_err(expected);
            assert_eq!(e.rule, expected);
            assert_eq!(e.patient, "p1");
            assert!(e.to_string().contains("Patient/p1"), "{e}");
        }
    }
}
