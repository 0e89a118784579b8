//! The Flags: one for the client's current segment, active until a later run supersedes it,
//! and one per overlay that holds (key client). Each points to its assessment Observation with
//! the standard `flag-detail` extension, so an EHR showing the Flag can show why. Each carries
//! the model's Flag `category` (`admin` unless the model names another), which EHRs choose the
//! Flags of their patient banner by.

use fhir_sdk::r4b::codes::FlagStatus;
use fhir_sdk::r4b::resources::Flag;
use fhir_sdk::r4b::types::{CodeableConcept, Extension, ExtensionValue, Period};

use super::{BuildError, BusinessId, Concepts, FLAG_DETAIL, Written, fhir_date, reference};
use crate::assess::eval::Assessment;
use crate::model::plan::Plan;

/// What every Flag of one assessment shares: whose it is, the reference to its Observation
/// (`Observation/{id}` in files, the entry's `urn:uuid:` in a transaction) and the assessment's
/// fingerprint (see [`super::lifecycle`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Assessed<'a> {
    /// The client's Patient id.
    pub patient: &'a str,
    /// The reference to the assessment Observation.
    pub observation: &'a str,
    /// [`super::lifecycle::fingerprint`] of the assessment.
    pub fingerprint: &'a str,
}

/// Builds the segment Flag of the client placed in `a`.
pub(crate) fn segment_flag(
    plan: &Plan,
    concepts: &Concepts,
    a: &Assessment,
    of: Assessed<'_>,
) -> Result<Flag, BuildError> {
    let code = concepts.segments[a.segment].clone();
    build(plan, concepts, of, (Written::SegmentFlag, None), code)
}

/// Builds the Flag of overlay `o` (which must hold).
pub(crate) fn overlay_flag(
    plan: &Plan,
    concepts: &Concepts,
    o: usize,
    of: Assessed<'_>,
) -> Result<Flag, BuildError> {
    let part = Some(plan.mapping.overlays[o].code.as_str());
    let code = concepts.overlay_flags[o].clone();
    build(plan, concepts, of, (Written::OverlayFlag, part), code)
}

/// The profile (in `profiles/`) a Flag of `written` with overlay `part` claims.
pub(crate) fn profile(written: Written, part: Option<&str>) -> &'static str {
    match (written, part) {
        (Written::OverlayFlag, Some("key-client")) => "key-client-flag",
        (Written::OverlayFlag, _) => "overlay-flag",
        _ => "segment-flag",
    }
}

fn build(
    plan: &Plan,
    concepts: &Concepts,
    of: Assessed<'_>,
    (written, part): (Written, Option<&str>),
    code: CodeableConcept,
) -> Result<Flag, BuildError> {
    let Assessed {
        patient,
        observation,
        fingerprint,
    } = of;
    let fail = |cause: String| BuildError {
        resource: "Flag",
        patient: patient.to_owned(),
        cause,
    };
    let built = || -> Result<Flag, String> {
        let id = BusinessId::new(plan, written, part, patient, plan.as_of);
        let detail = Extension::builder()
            .url(FLAG_DETAIL.to_owned())
            .value(ExtensionValue::Reference(reference(observation)?))
            .build()
            .map_err(|e| e.to_string())?;
        let start = fhir_sdk::DateTime::Date(fhir_date(plan.as_of));
        Flag::builder()
            .id(id.logical_id())
            .meta(super::meta(profile(written, part))?)
            .extension(vec![
                detail,
                super::lifecycle::fingerprint_extension(fingerprint)?,
            ])
            .identifier(vec![Some(id.to_fhir()?)])
            .status(FlagStatus::Active)
            .category(vec![Some(concepts.flag_category.clone())])
            .code(code)
            .subject(reference(&format!("Patient/{patient}"))?)
            .period(
                Period::builder()
                    .start(start)
                    .build()
                    .map_err(|e| e.to_string())?,
            )
            .build()
            .map_err(|e| e.to_string())
    };
    built().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::super::FLAG_CATEGORY_SYSTEM;
    use crate::model::load::load_str;
    use crate::model::plan::Plan;
    use crate::record::ClientRecord;

    /// The JSON of every Flag built for a client with many contacts (a segment and the
    /// key-client overlay), under paijat-sote with `flag_category`.
    fn flags(flag_category: Option<&str>) -> Vec<serde_json::Value> {
        let mut mapping = load_str(include_str!("../../mappings/paijat-sote.yaml")).expect("model");
        mapping.flag_category = flag_category.map(str::to_owned);
        let plan = Plan::compile(mapping, "2026-01-01".parse().expect("day")).expect("plan");
        let mut values = vec![Some(0.0); plan.features.len()];
        let contacts = plan.features.iter().position(|f| f.id == "contacts_12m");
        values[contacts.expect("feature")] = Some(20.0);
        let thresholds = vec![Some(10.0); plan.percentiles.len()];
        let a = crate::assess::eval::assess(&plan, values, &thresholds).expect("placed");
        let concepts = super::super::Concepts::new(&plan).expect("concepts");
        let record = ClientRecord::empty(&plan);
        let built = crate::writeback::build(&plan, &concepts, "p1", &record, &a).expect("built");
        assert!(built.flags.len() > 1, "an overlay Flag too");
        built
            .flags
            .iter()
            .map(|f| serde_json::to_value(f).expect("json"))
            .collect()
    }

    #[test]
    fn every_flag_carries_the_admin_category_by_default() {
        for flag in flags(None) {
            assert_eq!(
                flag["category"],
                serde_json::json!([{"coding": [{
                    "system": FLAG_CATEGORY_SYSTEM,
                    "code": "admin",
                    "display": "Administrative"
                }]}]),
                "{flag}"
            );
        }
    }

    #[test]
    fn every_flag_carries_the_models_flag_category() {
        for flag in flags(Some("behavioral")) {
            let coding = &flag["category"][0]["coding"][0];
            assert_eq!(coding["system"], FLAG_CATEGORY_SYSTEM);
            assert_eq!(coding["code"], "behavioral", "{flag}");
            assert_eq!(coding["display"], "Behavioral");
            assert_eq!(flag["category"].as_array().map(Vec::len), Some(1));
        }
    }
}
