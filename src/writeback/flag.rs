//! The Flags: one for the client's current segment, active until a later run supersedes it,
//! and one per overlay that holds (key client). Each points to its assessment Observation with
//! the standard `flag-detail` extension, so an EHR showing the Flag can show why.

use fhir_sdk::r4b::codes::FlagStatus;
use fhir_sdk::r4b::resources::Flag;
use fhir_sdk::r4b::types::{CodeableConcept, Extension, ExtensionValue, Period};

use super::{BuildError, BusinessId, Concepts, FLAG_DETAIL, Written, fhir_date, reference};
use crate::model::eval::Assessment;
use crate::model::plan::Plan;

/// Builds the segment Flag of `patient`; `observation` is the reference to its assessment
/// (`Observation/{id}` in files, the entry's `urn:uuid:` in a transaction).
pub fn segment_flag(
    plan: &Plan,
    concepts: &Concepts,
    patient: &str,
    a: &Assessment,
    observation: &str,
) -> Result<Flag, BuildError> {
    let code = concepts.segments[a.segment].clone();
    build(
        plan,
        patient,
        a,
        (Written::SegmentFlag, None),
        code,
        observation,
    )
}

/// Builds the Flag of overlay `o` (which must hold) for `patient`. Every Flag carries the
/// assessment's fingerprint (see [`super::lifecycle`]).
pub fn overlay_flag(
    plan: &Plan,
    concepts: &Concepts,
    patient: &str,
    a: &Assessment,
    o: usize,
    observation: &str,
) -> Result<Flag, BuildError> {
    let part = Some(plan.mapping.overlays[o].code.as_str());
    let code = concepts.overlay_flags[o].clone();
    build(
        plan,
        patient,
        a,
        (Written::OverlayFlag, part),
        code,
        observation,
    )
}

/// The profile (in `profiles/`) a Flag of `written` with overlay `part` claims.
pub fn profile(written: Written, part: Option<&str>) -> &'static str {
    match (written, part) {
        (Written::OverlayFlag, Some("key-client")) => "key-client-flag",
        (Written::OverlayFlag, _) => "overlay-flag",
        _ => "segment-flag",
    }
}

fn build(
    plan: &Plan,
    patient: &str,
    a: &Assessment,
    (written, part): (Written, Option<&str>),
    code: CodeableConcept,
    observation: &str,
) -> Result<Flag, BuildError> {
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
                super::lifecycle::fingerprint_extension(&super::lifecycle::fingerprint(plan, a))?,
            ])
            .identifier(vec![Some(id.to_fhir()?)])
            .status(FlagStatus::Active)
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
