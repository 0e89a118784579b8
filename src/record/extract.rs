//! One resource's JSON to one [`Fact`]: only the fields a model can read are deserialised
//! (borrowed where the JSON has no escapes), codes are matched against the plan's code lists
//! and Encounters are priced, so the fold that follows touches no JSON and no strings but ids.
//! Runs on any thread; holds no state between resources.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};

use compact_str::CompactString;
use rustc_hash::FxHasher;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

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
    /// A Patient's identifiers, links and last update, for joining several sources
    /// ([`super::join`]); `None` for other resources and for Patients that have none.
    pub person: Option<Box<Person>>,
}

/// What a Patient says about whom it is. It holds identity codes: it goes to
/// [`super::join`] and nowhere else (never into logs, reports or rejections).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Person {
    /// `identifier`: system and value.
    pub identifiers: Vec<(CompactString, CompactString)>,
    /// `link`: the reference to the other Patient as written (`Patient/id`, or an absolute URL
    /// when it is on another server) and the link type (`replaced-by`, `seealso`, ...).
    pub links: Vec<(CompactString, CompactString)>,
    /// `meta.lastUpdated`.
    pub last_updated: Option<CompactString>,
}

/// Why a resource was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Rejection {
    /// `Type/id` when known, so a rejected resource can be found.
    pub resource: Option<String>,
    /// What is wrong and what to do.
    pub reason: String,
    /// The resource's type when it is a FHIR R4 type segmentti does not read, such as
    /// `Observation`: no broken resource, only one not asked for, which a Bulk export may
    /// hold (the run counts those as ignored); `None` for anything else, `Foo` included.
    pub other_type: Option<CompactString>,
}

/// What a resource's JSON is scanned for: the strings the fold needs, borrowed where the JSON
/// has no escapes, and the codes already matched against the plan's code lists, so no coding is
/// kept once it has been looked at.
#[derive(Default)]
struct Scan<'a> {
    resource_type: Option<Cow<'a, str>>,
    id: Option<Cow<'a, str>>,
    subject: Option<Cow<'a, str>>,
    start: Option<Cow<'a, str>>,
    end: Option<Cow<'a, str>>,
    onset: Option<Cow<'a, str>>,
    onset_start: Option<Cow<'a, str>>,
    recorded: Option<Cow<'a, str>>,
    birth_date: Option<Cow<'a, str>>,
    identifiers: Vec<LiteIdentifier<'a>>,
    links: Vec<LiteLink<'a>>,
    last_updated: Option<Cow<'a, str>>,
    codes: Codes,
}

/// The match mask and the distinct-code hashes gathered while scanning.
#[derive(Default)]
struct Codes {
    mask: u128,
    distinct: Vec<(u8, u64)>,
}

impl Codes {
    fn add(&mut self, plan: &Plan, field: Field, system: &str, code: &str) {
        self.mask |= plan.mask_of(field, system, code);
        if let Some(slot) = plan.distinct_fields.iter().position(|f| *f == field) {
            let mut h = FxHasher::default();
            (system, code).hash(&mut h);
            self.distinct
                .push((u8::try_from(slot).unwrap_or(u8::MAX), h.finish()));
        }
    }
}

/// The keys a scan looks at; everything else is skipped unparsed.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum Key {
    ResourceType,
    Id,
    Subject,
    Period,
    OnsetDateTime,
    OnsetPeriod,
    RecordedDate,
    BirthDate,
    Identifier,
    Link,
    Meta,
    Class,
    Type,
    ServiceType,
    ReasonCode,
    Code,
    Category,
    ClinicalStatus,
    #[serde(other)]
    Other,
}

/// A string, borrowed from the input when it has no escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Deserialize)]
struct LiteRef<'a> {
    #[serde(borrow)]
    reference: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct LiteCoding<'a> {
    #[serde(borrow)]
    system: Option<Text<'a>>,
    #[serde(borrow)]
    code: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct LiteIdentifier<'a> {
    #[serde(borrow)]
    system: Option<Text<'a>>,
    #[serde(borrow)]
    value: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct LiteLink<'a> {
    #[serde(borrow)]
    other: Option<LiteRef<'a>>,
    #[serde(rename = "type", borrow)]
    kind: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct LiteMeta<'a> {
    #[serde(rename = "lastUpdated", borrow)]
    last_updated: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct LitePeriod<'a> {
    #[serde(borrow)]
    start: Option<Text<'a>>,
    #[serde(borrow)]
    end: Option<Text<'a>>,
}

/// Reads an array of Codings into [`Codes`] one by one, keeping none of them.
struct Codings<'p, 'c> {
    plan: &'p Plan,
    field: Field,
    codes: &'c mut Codes,
}

impl<'de> DeserializeSeed<'de> for Codings<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Codings<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of Codings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(coding) = seq.next_element::<LiteCoding<'de>>()? {
            if let (Some(system), Some(code)) = (coding.system, coding.code) {
                self.codes.add(self.plan, self.field, &system.0, &code.0);
            }
        }
        Ok(())
    }
}

/// Scans one resource.
struct ResourceSeed<'p> {
    plan: &'p Plan,
}

impl<'de> DeserializeSeed<'de> for ResourceSeed<'_> {
    type Value = Scan<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Scan<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ResourceSeed<'_> {
    type Value = Scan<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a FHIR resource")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scan<'de>, A::Error> {
        let plan = self.plan;
        let mut scan = Scan::default();
        let text = |t: Option<Text<'de>>| t.map(|t| t.0);
        while let Some(key) = map.next_key::<Key>()? {
            let concept = |field| ConceptSeed {
                plan,
                field,
                many: false,
            };
            let concepts = |field| ConceptSeed {
                plan,
                field,
                many: true,
            };
            match key {
                Key::ResourceType => scan.resource_type = Some(map.next_value::<Text<'de>>()?.0),
                Key::Id => scan.id = Some(map.next_value::<Text<'de>>()?.0),
                Key::Subject => scan.subject = text(map.next_value::<LiteRef<'de>>()?.reference),
                Key::Period => {
                    let p = map.next_value::<LitePeriod<'de>>()?;
                    (scan.start, scan.end) = (text(p.start), text(p.end));
                }
                Key::OnsetDateTime => scan.onset = Some(map.next_value::<Text<'de>>()?.0),
                Key::OnsetPeriod => {
                    scan.onset_start = text(map.next_value::<LitePeriod<'de>>()?.start)
                }
                Key::RecordedDate => scan.recorded = Some(map.next_value::<Text<'de>>()?.0),
                Key::BirthDate => scan.birth_date = Some(map.next_value::<Text<'de>>()?.0),
                // Read whatever the type (Encounters have identifiers too, and `resourceType` may
                // come last); only a Patient's are kept.
                Key::Identifier => scan.identifiers = map.next_value()?,
                Key::Link => scan.links = map.next_value()?,
                Key::Meta => {
                    scan.last_updated = text(map.next_value::<LiteMeta<'de>>()?.last_updated)
                }
                Key::Class => {
                    let coding = map.next_value::<LiteCoding<'de>>()?;
                    if let (Some(system), Some(code)) = (coding.system, coding.code) {
                        scan.codes.add(plan, Field::Class, &system.0, &code.0);
                    }
                }
                Key::Type => map.next_value_seed(concepts(Field::Type).with(&mut scan.codes))?,
                Key::ServiceType => {
                    map.next_value_seed(concept(Field::ServiceType).with(&mut scan.codes))?
                }
                Key::ReasonCode => {
                    map.next_value_seed(concepts(Field::ReasonCode).with(&mut scan.codes))?
                }
                Key::Code => map.next_value_seed(concept(Field::Code).with(&mut scan.codes))?,
                Key::Category => {
                    map.next_value_seed(concepts(Field::Category).with(&mut scan.codes))?
                }
                Key::ClinicalStatus => {
                    map.next_value_seed(concept(Field::ClinicalStatus).with(&mut scan.codes))?
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(scan)
    }
}

/// Which CodeableConcept(s) a seed reads: one, or an array of them.
#[derive(Clone, Copy)]
struct ConceptSeed<'p> {
    plan: &'p Plan,
    field: Field,
    many: bool,
}

impl<'p> ConceptSeed<'p> {
    fn with<'c>(self, codes: &'c mut Codes) -> Concepts<'p, 'c> {
        Concepts { seed: self, codes }
    }
}

/// A [`ConceptSeed`] with where its codes go.
struct Concepts<'p, 'c> {
    seed: ConceptSeed<'p>,
    codes: &'c mut Codes,
}

impl<'de> DeserializeSeed<'de> for Concepts<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.seed.many {
            d.deserialize_seq(self)
        } else {
            d.deserialize_map(self)
        }
    }
}

impl<'de> Visitor<'de> for Concepts<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.seed.many {
            "an array of CodeableConcepts"
        } else {
            "a CodeableConcept"
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let one = ConceptSeed {
            many: false,
            ..self.seed
        };
        while seq.next_element_seed(one.with(&mut *self.codes))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Text<'de>>()? {
            if key.0 == "coding" {
                let seed = self.seed;
                map.next_value_seed(Codings {
                    plan: seed.plan,
                    field: seed.field,
                    codes: &mut *self.codes,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
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
    let mut de = serde_json::Deserializer::from_str(text);
    let scanned = ResourceSeed { plan }
        .deserialize(&mut de)
        .and_then(|scan| de.end().map(|()| scan));
    match scanned {
        Ok(scan) => extract(plan, scan),
        Err(e) => Err(explain_parse_error(
            serde_json::from_str::<JustType<'_>>(text).ok(),
            &e,
        )),
    }
}

/// Extracts the fact of one resource given as a JSON value (Bundle entries).
pub fn extract_value(plan: &Plan, value: &serde_json::Value) -> Result<Fact, Rejection> {
    match (ResourceSeed { plan }).deserialize(value) {
        Ok(scan) => extract(plan, scan),
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
                    other_type: None,
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
            other_type: None,
            resource: None,
            reason: "JSON object without resourceType; each line must be one FHIR resource".into(),
        },
        None if e.is_eof() => Rejection {
            other_type: None,
            resource: None,
            reason: format!("truncated JSON ({e}); the file may be cut short, export it again"),
        },
        None => Rejection {
            other_type: None,
            resource: None,
            reason: format!("malformed JSON ({e}); each line must be one FHIR resource"),
        },
    }
}

fn unknown_type(t: &str, resource: Option<String>) -> Rejection {
    Rejection {
        other_type: crate::types::is_r4_resource_type(t).then(|| CompactString::new(t)),
        resource,
        reason: format!(
            "resourceType `{t}` is not read by segmentti (it reads Patient, Encounter and Condition); leave it out of the input"
        ),
    }
}

fn extract(plan: &Plan, scan: Scan<'_>) -> Result<Fact, Rejection> {
    let Some(resource_type) = scan.resource_type.as_deref() else {
        return Err(Rejection {
            other_type: None,
            resource: None,
            reason: "JSON object without resourceType; each line must be one FHIR resource".into(),
        });
    };
    let Some(kind) = ResourceKind::parse(resource_type) else {
        return Err(unknown_type(
            resource_type,
            scan.id.map(|id| format!("{resource_type}/{id}")),
        ));
    };
    let Some(id) = scan.id.as_deref().filter(|id| !id.is_empty()) else {
        return Err(Rejection {
            other_type: None,
            resource: None,
            reason: format!("{kind} without id; every resource needs its logical id"),
        });
    };
    let resource = || Some(format!("{kind}/{id}"));
    let day = |s: &Option<Cow<'_, str>>, what: &str| -> Result<Option<Day>, Rejection> {
        match s.as_deref() {
            None => Ok(None),
            Some(text) => Day::parse_fhir(text).map(Some).ok_or_else(|| Rejection {
                other_type: None,
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
        person: None,
    };
    if kind == ResourceKind::Patient {
        fact.patient = fact.id.clone();
        fact.day = day(&scan.birth_date, "birthDate")?;
        fact.person = person(scan);
        return Ok(fact);
    }
    let Some(reference) = scan.subject.as_deref() else {
        return Err(Rejection {
            other_type: None,
            resource: resource(),
            reason: format!("{kind} without subject; it cannot be tied to a client"),
        });
    };
    let Some(patient) = patient_id(reference) else {
        return Err(Rejection {
            other_type: None,
            resource: resource(),
            reason: format!("subject `{reference}` is not a Patient reference"),
        });
    };
    fact.patient = CompactString::new(patient);
    if kind == ResourceKind::Encounter {
        fact.day = day(&scan.start, "period.start")?;
        fact.end = day(&scan.end, "period.end")?;
        fact.day = fact.day.or(fact.end);
    } else {
        let onset = scan.onset.clone().or_else(|| scan.onset_start.clone());
        fact.day = day(&onset, "onset")?.or(day(&scan.recorded, "recordedDate")?);
    }
    fact.mask = scan.codes.mask;
    fact.codes = scan.codes.distinct;
    if kind == ResourceKind::Encounter
        && let Some(prices) = &plan.prices
    {
        fact.cost = prices.price(fact.mask, fact.day, fact.end);
    }
    Ok(fact)
}

/// The identity facts of a Patient's scan, when it has any.
fn person(scan: Scan<'_>) -> Option<Box<Person>> {
    let text = |t: Option<Text<'_>>| t.map(|t| CompactString::new(t.0));
    let person = Person {
        identifiers: scan
            .identifiers
            .into_iter()
            .filter_map(|i| Some((text(i.system)?, text(i.value)?)))
            .collect(),
        links: scan
            .links
            .into_iter()
            .filter_map(|l| {
                let other = l.other?.reference?.0;
                patient_id(&other)?;
                Some((CompactString::new(other), text(l.kind)?))
            })
            .collect(),
        last_updated: scan.last_updated.map(CompactString::new),
    };
    (person != Person::default()).then(|| Box::new(person))
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
