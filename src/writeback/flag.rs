//! The Flags: one for the client's current segment, active until a later run supersedes it,
//! and one per overlay that holds (key client). Each points to its assessment Observation with
//! the standard `flag-detail` extension, so an EHR showing the Flag can show why.

use fhir_sdk::r4b::codes::FlagStatus;
use fhir_sdk::r4b::resources::Flag;
use fhir_sdk::r4b::types::{CodeableConcept, Extension, ExtensionValue, Period};

use super::{BuildError, BusinessId, Concepts, FLAG_DETAIL, Written, fhir_date, reference};
use crate::model::eval::Assessment;
use crate::model::plan::Plan;

/// What every Flag of one assessment shares: whose it is, the reference to its Observation
/// (`Observation/{id}` in files, the entry's `urn:uuid:` in a transaction) and the assessment's
/// fingerprint (see [`super::lifecycle`]).
#[derive(Debug, Clone, Copy)]
pub struct Assessed<'a> {
    /// The client's Patient id.
    pub patient: &'a str,
    /// The reference to the assessment Observation.
    pub observation: &'a str,
    /// [`super::lifecycle::fingerprint`] of the assessment.
    pub fingerprint: &'a str,
}

/// Builds the segment Flag of the client placed in `a`.
pub fn segment_flag(
    plan: &Plan,
    concepts: &Concepts,
    a: &Assessment,
    of: Assessed<'_>,
) -> Result<Flag, BuildError> {
    let code = concepts.segments[a.segment].clone();
    build(plan, of, (Written::SegmentFlag, None), code)
}

/// Builds the Flag of overlay `o` (which must hold).
pub fn overlay_flag(
    plan: &Plan,
    concepts: &Concepts,
    o: usize,
    of: Assessed<'_>,
) -> Result<Flag, BuildError> {
    let part = Some(plan.mapping.overlays[o].code.as_str());
    let code = concepts.overlay_flags[o].clone();
    build(plan, of, (Written::OverlayFlag, part), code)
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
