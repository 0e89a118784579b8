//! One resource's JSON to one [`Fact`]: only the fields a model can read are deserialised
//! (borrowed where the JSON has no escapes), codes are matched against the plan's code lists
//! and Encounters are priced, so the fold that follows touches no JSON and no strings but ids.
//! Runs on any thread; holds no state between resources.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};

use compact_str::CompactString;
use rustc_hash::FxHasher;
use serde::Deserialize;

use crate::day::Day;
use crate::model::mapping::Field;
use crate::model::plan::Plan;
use crate::types::ResourceKind;

/// What the fold needs of one resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Fact {
    /// The client: the Patient's own id, or the Patient an Encounter or Condition refers to.
    pub patient: CompactString,
    /// The resource's type.
    pub kind: ResourceKind,
    /// The resource's id.
    pub id: CompactString,
    /// Encounter period start, Condition onset or recorded date, Patient birth date.
    pub day: Option<Day>,
    /// Encounter period end.
    pub end: Option<Day>,
    /// Which of the plan's matchers the resource hits.
    pub mask: u128,
    /// The Encounter's price; 0 for other resources.
    pub cost: f64,
    /// Hashes of the codes `distinct` features count, with the distinct-field index.
    pub codes: Vec<(u8, u64)>,
}

/// Why a resource was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Rejection {
    /// `Type/id` when known, so a rejected resource can be found.
    pub resource: Option<String>,
    /// What is wrong and what to do.
    pub reason: String,
}

#[derive(Deserialize)]
struct Lite<'a> {
    #[serde(rename = "resourceType", borrow)]
    resource_type: Cow<'a, str>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    subject: Option<LiteRef<'a>>,
    #[serde(borrow)]
    class: Option<LiteCoding<'a>>,
    #[serde(rename = "type", borrow, default)]
    types: Few<LiteConcept<'a>>,
    #[serde(rename = "serviceType", borrow)]
    service_type: Option<LiteConcept<'a>>,
    #[serde(rename = "reasonCode", borrow, default)]
    reason_code: Few<LiteConcept<'a>>,
    #[serde(borrow)]
    period: Option<LitePeriod<'a>>,
    #[serde(borrow)]
    code: Option<LiteConcept<'a>>,
    #[serde(borrow, default)]
    category: Few<LiteConcept<'a>>,
    #[serde(rename = "clinicalStatus", borrow)]
    clinical_status: Option<LiteConcept<'a>>,
    #[serde(rename = "onsetDateTime", borrow)]
    onset: Option<Cow<'a, str>>,
    #[serde(rename = "onsetPeriod", borrow)]
    onset_period: Option<LitePeriod<'a>>,
    #[serde(rename = "recordedDate", borrow)]
    recorded: Option<Cow<'a, str>>,
    #[serde(rename = "birthDate", borrow)]
    birth_date: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct LiteRef<'a> {
    #[serde(borrow)]
    reference: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct LiteCoding<'a> {
    #[serde(borrow)]
    system: Option<Cow<'a, str>>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct LiteConcept<'a> {
    #[serde(borrow, default)]
    coding: Few<LiteCoding<'a>>,
}

/// Arrays that hold one or two items almost always: kept inline, no allocation per resource.
type Few<T> = smallvec::SmallVec<[T; 2]>;

#[derive(Deserialize)]
struct LitePeriod<'a> {
    #[serde(borrow)]
    start: Option<Cow<'a, str>>,
    #[serde(borrow)]
    end: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct JustType<'a> {
    #[serde(rename = "resourceType", borrow)]
    resource_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
}

/// The Patient id in a reference: `Patient/123`, an absolute URL ending in `Patient/123`, or
/// either with `/_history/n`.
pub fn patient_id(reference: &str) -> Option<&str> {
    let reference = reference.split("/_history/").next().unwrap_or(reference);
    let (kind, id) = reference.rsplit_once('/')?;
    let kind = kind.rsplit('/').next().unwrap_or(kind);
    (kind == "Patient" && !id.is_empty()).then_some(id)
}

/// Extracts the fact of one resource given as JSON text.
pub fn extract_str(plan: &Plan, text: &str) -> Result<Fact, Rejection> {
    match serde_json::from_str::<Lite<'_>>(text) {
        Ok(lite) => extract(plan, lite),
        Err(e) => Err(explain_parse_error(
            serde_json::from_str::<JustType<'_>>(text).ok(),
            &e,
        )),
    }
}

/// Extracts the fact of one resource given as a JSON value (Bundle entries).
pub fn extract_value(plan: &Plan, value: &serde_json::Value) -> Result<Fact, Rejection> {
    match Lite::deserialize(value) {
        Ok(lite) => extract(plan, lite),
        Err(e) => Err(explain_parse_error(JustType::deserialize(value).ok(), &e)),
    }
}

fn explain_parse_error(head: Option<JustType<'_>>, e: &serde_json::Error) -> Rejection {
    match head {
        Some(JustType {
            resource_type: Some(t),
            id,
        }) => {
            let resource = id.map(|id| format!("{t}/{id}"));
            match ResourceKind::parse(&t) {
                None => unknown_type(&t, resource),
                Some(_) => Rejection {
                    resource,
                    reason: format!(
                        "{t} does not follow FHIR R4: {e}; fix the resource at its source"
                    ),
                },
            }
        }
        Some(JustType {
            resource_type: None,
            ..
        }) => Rejection {
            resource: None,
            reason: "JSON object without resourceType; each line must be one FHIR resource".into(),
        },
        None if e.is_eof() => Rejection {
            resource: None,
            reason: format!("truncated JSON ({e}); the file may be cut short, export it again"),
        },
        None => Rejection {
            resource: None,
            reason: format!("malformed JSON ({e}); each line must be one FHIR resource"),
        },
    }
}

fn unknown_type(t: &str, resource: Option<String>) -> Rejection {
    Rejection {
        resource,
        reason: format!(
            "resourceType `{t}` is not read by segmentti (it reads Patient, Encounter and Condition); leave it out of the input"
        ),
    }
}

/// Every coding of `concepts`, tagged with the field they come from.
fn codings<'l, 'a: 'l>(
    field: Field,
    concepts: impl IntoIterator<Item = &'l LiteConcept<'a>>,
) -> impl Iterator<Item = (Field, &'l LiteCoding<'a>)> {
    concepts
        .into_iter()
        .flat_map(|c| &c.coding)
        .map(move |c| (field, c))
}

fn extract(plan: &Plan, lite: Lite<'_>) -> Result<Fact, Rejection> {
    let Some(kind) = ResourceKind::parse(&lite.resource_type) else {
        return Err(unknown_type(
            &lite.resource_type,
            lite.id.map(|id| format!("{}/{id}", lite.resource_type)),
        ));
    };
    let Some(id) = lite.id.as_deref().filter(|id| !id.is_empty()) else {
        return Err(Rejection {
            resource: None,
            reason: format!("{kind} without id; every resource needs its logical id"),
        });
    };
    let resource = || Some(format!("{kind}/{id}"));
    let day = |s: &Option<Cow<'_, str>>, what: &str| -> Result<Option<Day>, Rejection> {
        match s.as_deref() {
            None => Ok(None),
            Some(text) => Day::parse_fhir(text).map(Some).ok_or_else(|| Rejection {
                resource: resource(),
                reason: format!("{what} `{text}` is not a FHIR date"),
            }),
        }
    };
    let mut fact = Fact {
        patient: CompactString::default(),
        kind,
        id: CompactString::new(id),
        day: None,
        end: None,
        mask: 0,
        cost: 0.0,
        codes: Vec::new(),
    };
    if kind == ResourceKind::Patient {
        fact.patient = fact.id.clone();
        fact.day = day(&lite.birth_date, "birthDate")?;
        return Ok(fact);
    }
    let reference = lite.subject.as_ref().and_then(|s| s.reference.as_deref());
    let Some(reference) = reference else {
        return Err(Rejection {
            resource: resource(),
            reason: format!("{kind} without subject; it cannot be tied to a client"),
        });
    };
    let Some(patient) = patient_id(reference) else {
        return Err(Rejection {
            resource: resource(),
            reason: format!("subject `{reference}` is not a Patient reference"),
        });
    };
    fact.patient = CompactString::new(patient);
    let mut fields: Vec<(Field, &LiteCoding<'_>)> = Vec::new();
    if kind == ResourceKind::Encounter {
        let period = lite.period.as_ref();
        fact.day = day(&period.and_then(|p| p.start.clone()), "period.start")?;
        fact.end = day(&period.and_then(|p| p.end.clone()), "period.end")?;
        fact.day = fact.day.or(fact.end);
        fields.extend(lite.class.iter().map(|c| (Field::Class, c)));
        fields.extend(codings(Field::Type, &lite.types));
        fields.extend(codings(Field::ServiceType, &lite.service_type));
        fields.extend(codings(Field::ReasonCode, &lite.reason_code));
    } else {
        let onset = lite
            .onset
            .clone()
            .or_else(|| lite.onset_period.as_ref().and_then(|p| p.start.clone()));
        fact.day = day(&onset, "onset")?.or(day(&lite.recorded, "recordedDate")?);
        fields.extend(codings(Field::Code, &lite.code));
        fields.extend(codings(Field::Category, &lite.category));
        fields.extend(codings(Field::ClinicalStatus, &lite.clinical_status));
    }
    for (field, coding) in fields {
        let (Some(system), Some(code)) = (coding.system.as_deref(), coding.code.as_deref()) else {
            continue;
        };
        fact.mask |= plan.mask_of(field, system, code);
        if let Some(slot) = plan.distinct_fields.iter().position(|f| *f == field) {
            let mut h = FxHasher::default();
            (system, code).hash(&mut h);
            fact.codes
                .push((u8::try_from(slot).unwrap_or(u8::MAX), h.finish()));
        }
    }
    if kind == ResourceKind::Encounter
        && let Some(prices) = &plan.prices
    {
        fact.cost = prices.price(fact.mask, fact.day, fact.end);
    }
    Ok(fact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_ids_come_from_relative_and_absolute_references() {
        assert_eq!(patient_id("Patient/123"), Some("123"));
        assert_eq!(
            patient_id("https://fhir.example/r4/Patient/a-1"),
            Some("a-1")
        );
        assert_eq!(patient_id("Patient/123/_history/2"), Some("123"));
        assert_eq!(patient_id("Group/1"), None);
        assert_eq!(patient_id("Patient/"), None);
        assert_eq!(patient_id("123"), None);
    }
}
