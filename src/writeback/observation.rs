//! The assessment Observation: the segment as its value, one component per criterion with its
//! level and one per overlay, the model named in `method`, and the resources that decided it as
//! `workflow-supportingInfo` extensions (capped, with the full count in an extension). It is
//! of the category `survey` (an assessment instrument), which EHRs list it under, and names
//! segmentti as the Device that made it (`device`: R4 allows no Device as `performer`).

use fhir_sdk::r4b::codes::ObservationStatus;
use fhir_sdk::r4b::resources::{Observation, ObservationEffective, ObservationValue};
use fhir_sdk::r4b::types::{CodeableConcept, Extension, ExtensionValue};

use super::{
    BuildError, BusinessId, Concepts, Elsewhere, SUPPORTING_INFO, SUPPORTING_INFO_CAP,
    SUPPORTING_INFO_COUNT, SUPPORTING_INFO_ELSEWHERE, Written, fhir_date, reference,
};
use crate::assess::eval::Assessment;
use crate::model::mapping::Text;
use crate::model::plan::Plan;
use crate::record::ClientRecord;

/// The code of every assessment Observation, whatever the model.
pub(crate) fn assessment_code() -> Text {
    Text {
        fi: "Asiakassegmentin arvio".into(),
        sv: "Bedömning av kundsegment".into(),
        en: "Client segment assessment".into(),
    }
}

/// The resources that decided the result, capped at [`SUPPORTING_INFO_CAP`]: diagnoses first
/// (few, and the most telling), then contacts, most recent first; all that counted when nothing
/// raised a criterion or an overlay (a light client).
fn decisive_references(record: &ClientRecord, a: &Assessment) -> Vec<String> {
    let mut chosen: Vec<_> = record
        .evidence
        .iter()
        .filter(|e| e.features & a.decisive != 0)
        .collect();
    if chosen.is_empty() {
        chosen = record.evidence.iter().collect();
    }
    chosen.sort_by(|x, y| {
        let diagnosis =
            |e: &crate::record::Evidence| e.kind != crate::fhir::types::ResourceKind::Condition;
        diagnosis(x)
            .cmp(&diagnosis(y))
            .then_with(|| y.day().cmp(&x.day()))
            .then_with(|| x.id.cmp(&y.id))
    });
    chosen
        .into_iter()
        .take(SUPPORTING_INFO_CAP)
        .map(|e| e.reference().to_string())
        .collect()
}

/// Which of an assessment's elements a builder fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parts {
    /// Every element: the resource as a FHIR server receives it.
    All,
    /// The client's own elements only (id, meta, extensions, identifier, status, subject,
    /// date): `code` is left empty and the category, value, `method`, `device` and components
    /// out, for a writer that adds the parts every client shares from their serialised form
    /// (the file sink's `ndjson`). Cloning those into every client's resource, only to serialise and
    /// free them, was most of what building cost.
    Own,
}

/// Builds the assessment Observation of `patient`; `elsewhere` says what counted on other
/// sources of a joined client (an extension per source, since supporting information may only
/// point at what the receiving server holds).
pub(crate) fn assessment(
    plan: &Plan,
    concepts: &Concepts,
    (patient, record): (&str, &ClientRecord),
    a: &Assessment,
    elsewhere: &[Elsewhere],
    parts: Parts,
) -> Result<Observation, BuildError> {
    let mut obs = build(plan, patient, record, a, elsewhere).map_err(|cause| BuildError {
        resource: "Observation",
        patient: patient.to_owned(),
        cause,
    })?;
    if parts == Parts::All {
        share(&mut obs, concepts, a);
    }
    Ok(obs)
}

/// Sets the elements every client of the same assessment shares: the category, the assessment
/// code, the segment as the value, the model as `method`, segmentti as the `device`, and the
/// components.
pub(crate) fn share(obs: &mut Observation, concepts: &Concepts, a: &Assessment) {
    obs.category = vec![Some(concepts.observation_category.clone())];
    obs.code = concepts.assessment.clone();
    obs.value = Some(ObservationValue::CodeableConcept(
        concepts.segments[a.segment].clone(),
    ));
    obs.method = Some(concepts.method.clone());
    obs.device = Some(concepts.device.clone());
    obs.component = concepts.components.of(a).cloned().map(Some).collect();
}

fn build(
    plan: &Plan,
    patient: &str,
    record: &ClientRecord,
    a: &Assessment,
    elsewhere: &[Elsewhere],
) -> Result<Observation, String> {
    let id = BusinessId::new(plan, Written::Assessment, None, patient, plan.as_of);
    let extension = |url: &str, value: ExtensionValue| {
        Extension::builder()
            .url(url.to_owned())
            .value(value)
            .build()
            .map_err(|e| e.to_string())
    };
    let mut extensions = decisive_references(record, a)
        .iter()
        .map(|r| extension(SUPPORTING_INFO, ExtensionValue::Reference(reference(r)?)))
        .collect::<Result<Vec<_>, _>>()?;
    extensions.push(extension(
        SUPPORTING_INFO_COUNT,
        ExtensionValue::Integer(i32::try_from(record.evidence_total).unwrap_or(i32::MAX)),
    )?);
    for other in elsewhere {
        let parts = vec![
            extension("source", ExtensionValue::String(other.source.clone()))?,
            extension(
                "count",
                ExtensionValue::Integer(i32::try_from(other.count).unwrap_or(i32::MAX)),
            )?,
        ];
        extensions.push(
            Extension::builder()
                .url(SUPPORTING_INFO_ELSEWHERE.to_owned())
                .extension(parts)
                .build()
                .map_err(|e| e.to_string())?,
        );
    }
    Observation::builder()
        .id(id.logical_id())
        .meta(super::meta("segment-assessment")?)
        .extension(extensions)
        .identifier(vec![Some(id.to_fhir()?)])
        .status(ObservationStatus::Final)
        .code(
            CodeableConcept::builder()
                .build()
                .map_err(|e| e.to_string())?,
        )
        .subject(reference(&format!("Patient/{patient}"))?)
        .effective(ObservationEffective::DateTime(fhir_sdk::DateTime::Date(
            fhir_date(plan.as_of),
        )))
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::{DEVICE_SYSTEM, OBSERVATION_CATEGORY_SYSTEM};
    use super::*;
    use crate::model::load::load_str;

    #[test]
    fn the_assessment_is_a_survey_made_by_segmentti_as_a_device() {
        let mapping = load_str(include_str!("../../mappings/paijat-sote.yaml")).expect("model");
        let plan = Plan::compile(mapping, "2026-01-01".parse().expect("day")).expect("plan");
        let record = ClientRecord::empty(&plan);
        let thresholds = vec![None; plan.percentiles.len()];
        let a = crate::run::pipeline::assess(&plan, "p1", &record, &thresholds).expect("placed");
        let concepts = Concepts::new(&plan).expect("concepts");
        let obs =
            assessment(&plan, &concepts, ("p1", &record), &a, &[], Parts::All).expect("built");
        let json = serde_json::to_value(&obs).expect("json");
        assert_eq!(
            json["category"],
            serde_json::json!([{"coding": [{
                "system": OBSERVATION_CATEGORY_SYSTEM,
                "code": "survey",
                "display": "Survey"
            }]}])
        );
        assert_eq!(
            json["device"],
            serde_json::json!({
                "type": "Device",
                "identifier": {"system": DEVICE_SYSTEM, "value": "segmentti"},
                "display": "segmentti"
            }),
            "no version in it: the same bytes from every release"
        );
        assert!(
            json.get("performer").is_none(),
            "R4 allows no Device as performer"
        );
        // The parts a file writer adds itself are left out of the client's own.
        let own =
            assessment(&plan, &concepts, ("p1", &record), &a, &[], Parts::Own).expect("built");
        assert!(own.category.is_empty() && own.device.is_none());
    }
}
