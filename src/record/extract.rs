//! One resource's JSON to one [`Fact`]: only the fields a model can read are deserialised
//! (borrowed where the JSON has no escapes), codes are matched against the plan's code lists,
//! Encounters are priced and Claims' and ExplanationOfBenefits' totals taken, so the fold that
//! follows touches no JSON and no strings but ids. A resource type the plan does not read
//! (an Observation for a model without Observation features) is rejected as not asked for.
//! Runs on any thread; holds no state between resources.
//!
//! The day that places a resource in a feature's window:
//!
//! | resource | day |
//! |---|---|
//! | Encounter | `period.start`, else `period.end` |
//! | Condition | `onsetDateTime` or `onsetPeriod.start`, else `recordedDate` |
//! | Observation | `effectiveDateTime`, `effectivePeriod.start` or `effectiveInstant`, else `issued` |
//! | EpisodeOfCare | the last day it was active up to the as-of date: `period.end`, or the as-of date while open (an episode that starts after the as-of date keeps its start, and is left out) |
//! | Claim, ExplanationOfBenefit | `billablePeriod.start`, else `created` |
//!
//! An Observation's value is its `valueQuantity.value` or `valueInteger`, whatever the unit:
//! the code list a `last_value` feature selects by names the score, and with it the unit.

use std::borrow::Cow;
use std::cell::Cell;

use compact_str::CompactString;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use smallvec::SmallVec;

use super::shape;
use crate::fhir::day::Day;
use crate::fhir::types::{ResourceKind, is_fhir_id, is_r4_resource_type};
use crate::model::mapping::Field;
use crate::model::plan::Plan;

mod scan;

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
    /// The Encounter's price, the Claim's total or the ExplanationOfBenefit's `submitted`
    /// total, in the price table's currency; 0 for other resources.
    pub cost: f64,
    /// An Observation's `valueQuantity.value` or `valueInteger`.
    pub value: Option<f64>,
    /// Read and counted, but selected by no feature: a resource whose status the model does
    /// not count (`Plan::not_counted`: an `entered-in-error` Encounter, a `refuted`
    /// Condition), or a Claim or ExplanationOfBenefit without a total to cost it by.
    pub void: Option<Void>,
    /// The concept (key) `distinct` features count the resource as, one per distinct field
    /// (`Plan::distinct_concept`), with the distinct-field index; a resource has one or two, so they
    /// live inside the fact rather than in an allocation.
    pub codes: SmallVec<[(u8, u64); 2]>,
    /// The codings behind [`Fact::codes`], as recorded, when the plan keeps them for an
    /// explanation ([`Plan::keep_codings`]); `None` in runs.
    pub codings: Option<Box<[KeptCoding]>>,
    /// A Patient's identifiers, links and last update, for joining several sources
    /// ([`super::join`]); `None` for other resources and for Patients that have none.
    pub person: Option<Box<Person>>,
    /// Why a Patient's client gets no assessment at the as-of date; `None` for other resources.
    pub unassessed: Option<Unassessed>,
}

/// One coding of a field that `distinct` features count, kept for `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptCoding {
    /// The distinct-field index ([`Plan::distinct_fields`]).
    pub slot: u8,
    /// The code system's URL.
    pub system: CompactString,
    /// The code.
    pub code: CompactString,
}

/// Why a resource that was read counts for nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Void {
    /// Its status (a Condition's `verificationStatus`) is one the model does not count.
    Status(CompactString),
    /// A Claim or ExplanationOfBenefit without a total to cost the care by.
    NoTotal,
    /// A bill in a currency the model has no rate for: the run counts such bills per currency.
    Unpriced(CompactString),
}

impl Void {
    /// Why, for `explain`.
    pub fn reason(&self) -> String {
        match self {
            Self::Status(s) => format!("status `{s}` is not counted"),
            Self::NoTotal => "a bill without a total to cost the care by".to_owned(),
            Self::Unpriced(c) => {
                format!(
                    "a bill in {c}, which the model has no rate for (costed by the price table)"
                )
            }
        }
    }
}

/// Why a client gets no assessment and no active Flag: what their Patient says at the as-of
/// date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unassessed {
    /// `deceasedBoolean` true, or `deceasedDateTime` on or before the as-of date.
    Deceased,
    /// `birthDate` after the as-of date.
    NotYetBorn,
    /// `active` false, unless the model assesses inactive clients.
    Inactive,
}

impl Unassessed {
    /// As `summary.json` and the Flags' ending name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deceased => "deceased",
            Self::NotYetBorn => "not-yet-born",
            Self::Inactive => "inactive",
        }
    }

    /// Why, for a person reading an ended Flag.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Deceased => "the client has died",
            Self::NotYetBorn => "the client is born after the as-of date",
            Self::Inactive => "the client's record is no longer active",
        }
    }
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
    /// `Type/id` when known (and the id a valid FHIR id), so a rejected resource can be found.
    pub resource: Option<String>,
    /// What kind of fault: what rejections are counted and summarised by.
    pub fault: Fault,
    /// What is wrong and what to do. It names elements and describes values by their shape
    /// ([`super::shape`]); it never copies a value from the input.
    pub reason: String,
    /// The resource's type when it is a FHIR R4 type segmentti does not read, such as
    /// `Observation`: no broken resource, only one not asked for, which a Bulk export may
    /// hold (the run counts those as ignored); `None` for anything else, `Foo` included.
    pub other_type: Option<CompactString>,
}

/// The kinds of fault a resource is rejected for, as `rejected.ndjson` and the run's WARN
/// summary name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// Not one JSON object: malformed or truncated JSON, or a line the reader could not read.
    Unreadable,
    /// A JSON object without `resourceType`.
    NoResourceType,
    /// A `resourceType` that segmentti or the model does not read, or no FHIR type at all.
    UnknownType,
    /// An element whose JSON does not follow FHIR R4.
    NotR4,
    /// No id, or one that is not a FHIR id.
    BadId,
    /// No reference to the client (`subject` or `patient`), or one that is not `Patient/id`.
    BadReference,
    /// A date element that is not a FHIR date.
    BadDate,
    /// The same Patient twice in the input.
    DuplicatePatient,
    /// Resources that refer to a Patient the input does not hold.
    MissingPatient,
}

impl Fault {
    /// As `rejected.ndjson` and the logs name it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Unreadable => "unreadable",
            Self::NoResourceType => "no-resource-type",
            Self::UnknownType => "unknown-type",
            Self::NotR4 => "not-r4",
            Self::BadId => "bad-id",
            Self::BadReference => "bad-reference",
            Self::BadDate => "bad-date",
            Self::DuplicatePatient => "duplicate-patient",
            Self::MissingPatient => "missing-patient",
        }
    }
}

impl serde::Serialize for Fault {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a resource's JSON is scanned for: the strings the fold needs, borrowed where the JSON
/// has no escapes, and the codes already matched against the plan's code lists, so no coding is
/// kept once it has been looked at.
#[derive(Default)]
struct Scan<'a> {
    resource_type: Option<Cow<'a, str>>,
    id: Option<Cow<'a, str>>,
    subject: Option<Cow<'a, str>>,
    patient: Option<Cow<'a, str>>,
    start: Option<Cow<'a, str>>,
    end: Option<Cow<'a, str>>,
    onset: Option<Cow<'a, str>>,
    onset_start: Option<Cow<'a, str>>,
    recorded: Option<Cow<'a, str>>,
    birth_date: Option<Cow<'a, str>>,
    effective: Option<Cow<'a, str>>,
    issued: Option<Cow<'a, str>>,
    billable_start: Option<Cow<'a, str>>,
    created: Option<Cow<'a, str>>,
    status: Option<Cow<'a, str>>,
    deceased: Option<bool>,
    deceased_at: Option<Cow<'a, str>>,
    active: Option<bool>,
    total: Option<Totals<'a>>,
    value: Option<f64>,
    identifiers: Vec<LiteIdentifier<'a>>,
    links: Vec<LiteLink<'a>>,
    last_updated: Option<Cow<'a, str>>,
    codes: Codes,
}

/// The match mask and the distinct-code hashes gathered while scanning.
#[derive(Default)]
struct Codes {
    mask: u128,
    distinct: SmallVec<[(u8, u64); 2]>,
    /// The codings behind `distinct`, when the plan keeps them.
    kept: Vec<KeptCoding>,
    /// A Condition's `verificationStatus`, when it is one the model does not count.
    void: Option<CompactString>,
}

impl Codes {
    /// Matches one Coding of `field`; one without a system or a code matches nothing.
    fn add(&mut self, plan: &Plan, field: Field, coding: LiteCoding<'_>) {
        let (Some(Text(system)), Some(Text(code))) = (coding.system, coding.code) else {
            return;
        };
        let (system, code) = (system.as_ref(), code.as_ref());
        if field == Field::VerificationStatus
            && system == VERIFICATION_STATUS
            && plan.not_counted(ResourceKind::Condition, code)
        {
            self.void = Some(CompactString::new(code));
        }
        if matches!(field, Field::Type | Field::ServiceType) && plan.reads_service {
            // Where neither names a listed service, the service type is the service.
            self.add_code(plan, Field::Service, system, code, field == Field::Type);
        }
        self.add_code(plan, field, system, code, false);
    }

    /// Matches one coding as `field` ([`Plan::distinct_concept`] for `second_choice`).
    fn add_code(
        &mut self,
        plan: &Plan,
        field: Field,
        system: &str,
        code: &str,
        second_choice: bool,
    ) {
        let (mask, listed) = plan.lookup(field, system, code);
        self.mask |= mask;
        if let Some(slot) = plan.distinct_fields.iter().position(|f| *f == field) {
            let concept = Plan::distinct_concept(listed, system, code, second_choice);
            // One concept per resource: its codings in several systems are one thing.
            let slot = u8::try_from(slot).unwrap_or(u8::MAX);
            if plan.keep_codings {
                self.kept.push(KeptCoding {
                    slot,
                    system: system.into(),
                    code: code.into(),
                });
            }
            match self.distinct.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, key)) => *key = Plan::distinct_key(*key, concept),
                None => self.distinct.push((slot, concept)),
            }
        }
    }
}

/// The code system of Condition.verificationStatus (a required binding in FHIR R4).
const VERIFICATION_STATUS: &str = "http://terminology.hl7.org/CodeSystem/condition-ver-status";

/// The keys a scan looks at; everything else is skipped unparsed. A key's name in messages is
/// its `Debug` name in camelCase ([`Key::element`]), as the JSON spells it.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(field_identifier, rename_all = "camelCase")]
enum Key {
    ResourceType,
    Id,
    Subject,
    Patient,
    Period,
    EffectiveDateTime,
    EffectiveInstant,
    EffectivePeriod,
    Issued,
    BillablePeriod,
    Created,
    Status,
    Total,
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
    VerificationStatus,
    DeceasedBoolean,
    DeceasedDateTime,
    Active,
    ValueQuantity,
    ValueInteger,
    #[serde(other)]
    Other,
}

impl Key {
    /// The element as the JSON names it: `birthDate` for [`Key::BirthDate`].
    fn element(self) -> String {
        let name = format!("{self:?}");
        let mut chars = name.chars();
        chars.next().map_or_else(String::new, |first| {
            first.to_ascii_lowercase().to_string() + chars.as_str()
        })
    }
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

/// An Observation's `valueQuantity`.
#[derive(Deserialize)]
struct LiteQuantity {
    value: Option<f64>,
}

/// An amount: Claim.total, or an ExplanationOfBenefit total's `amount`.
#[derive(Deserialize)]
struct LiteMoney<'a> {
    value: Option<f64>,
    #[serde(borrow)]
    currency: Option<Text<'a>>,
}

/// One of an ExplanationOfBenefit's totals: the adjudication category and its amount.
#[derive(Deserialize)]
struct LiteTotal<'a> {
    #[serde(borrow)]
    category: Option<LiteConcept<'a>>,
    #[serde(borrow)]
    amount: Option<LiteMoney<'a>>,
}

#[derive(Deserialize)]
struct LiteConcept<'a> {
    #[serde(borrow, default)]
    coding: Vec<LiteCoding<'a>>,
}

/// `total`: one amount on a Claim, a list by category on an ExplanationOfBenefit.
#[derive(Deserialize)]
#[serde(untagged)]
enum Totals<'a> {
    One(#[serde(borrow)] LiteMoney<'a>),
    ByCategory(#[serde(borrow)] Vec<LiteTotal<'a>>),
}

/// The adjudication category of the ExplanationOfBenefit total that is the cost: what was
/// charged for the care (Synthea's `Submitted Amount`), the amount a Claim's total states, and
/// not the payer's share (`benefit`), which leaves out what the client paid.
const SUBMITTED: (&str, &str) = (
    "http://terminology.hl7.org/CodeSystem/adjudication",
    "submitted",
);

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
            self.codes.add(self.plan, self.field, coding);
        }
        Ok(())
    }
}

/// Scans one resource, noting in `at` the element it reads, so that an error can name it.
struct ResourceSeed<'p> {
    plan: &'p Plan,
    at: &'p Cell<Option<Key>>,
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
            self.at.set(Some(key));
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
                Key::Patient => scan.patient = text(map.next_value::<LiteRef<'de>>()?.reference),
                Key::EffectiveDateTime | Key::EffectiveInstant => {
                    scan.effective = Some(map.next_value::<Text<'de>>()?.0)
                }
                Key::EffectivePeriod => {
                    scan.effective = text(map.next_value::<LitePeriod<'de>>()?.start)
                }
                Key::Issued => scan.issued = Some(map.next_value::<Text<'de>>()?.0),
                Key::BillablePeriod => {
                    scan.billable_start = text(map.next_value::<LitePeriod<'de>>()?.start)
                }
                Key::Created => scan.created = Some(map.next_value::<Text<'de>>()?.0),
                Key::Status => scan.status = Some(map.next_value::<Text<'de>>()?.0),
                Key::Total => scan.total = Some(map.next_value()?),
                Key::ValueQuantity => scan.value = map.next_value::<LiteQuantity>()?.value,
                Key::ValueInteger => scan.value = Some(map.next_value()?),
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
                Key::Class => scan.codes.add(plan, Field::Class, map.next_value()?),
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
                Key::VerificationStatus => {
                    map.next_value_seed(concept(Field::VerificationStatus).with(&mut scan.codes))?
                }
                Key::DeceasedBoolean => scan.deceased = Some(map.next_value()?),
                Key::DeceasedDateTime => scan.deceased_at = Some(map.next_value::<Text<'de>>()?.0),
                Key::Active => scan.active = Some(map.next_value()?),
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        self.at.set(None);
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
        // `type` is an array on Encounter and EpisodeOfCare but one concept on Claim and
        // ExplanationOfBenefit, and `resourceType` need not come first: take either shape.
        if self.seed.many {
            d.deserialize_any(self)
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
pub(crate) fn patient_id(reference: &str) -> Option<&str> {
    // The common case first: it runs for nearly every resource read.
    if let Some(id) = reference.strip_prefix("Patient/")
        && !id.is_empty()
        && !id.contains('/')
    {
        return Some(id);
    }
    let reference = reference.split("/_history/").next().unwrap_or(reference);
    let (kind, id) = reference.rsplit_once('/')?;
    let kind = kind.rsplit('/').next().unwrap_or(kind);
    (kind == "Patient" && !id.is_empty()).then_some(id)
}

/// Extracts the fact of one resource given as JSON text: by the `scan` fast path when it
/// can, else by the serde visitors, which also explain what is wrong with a broken line.
pub fn extract_str(plan: &Plan, text: &str) -> Result<Fact, Rejection> {
    let Some(scan) = scan::scan(plan, text) else {
        return extract_str_serde(plan, text);
    };
    let fact = extract(plan, scan);
    // Not `debug_assert_eq!`: the facts hold identity codes, which no message may show.
    debug_assert!(
        fact == extract_str_serde(plan, text),
        "the scanner and serde read {} differently",
        fact.as_ref().map_or_else(
            |r| format!("{:?}", r.resource),
            |f| format!("{}/{}", f.kind, f.id)
        )
    );
    fact
}

fn extract_str_serde(plan: &Plan, text: &str) -> Result<Fact, Rejection> {
    let at = Cell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let scanned = ResourceSeed { plan, at: &at }
        .deserialize(&mut de)
        .and_then(|scan| de.end().map(|()| scan));
    match scanned {
        Ok(scan) => extract(plan, scan),
        Err(e) => Err(explain_parse_error(
            plan,
            serde_json::from_str::<JustType<'_>>(text).ok(),
            at.get(),
            &e,
        )),
    }
}

/// Extracts the fact of one resource given as a JSON value (Bundle entries).
pub fn extract_value(plan: &Plan, value: &serde_json::Value) -> Result<Fact, Rejection> {
    let at = Cell::new(None);
    match (ResourceSeed { plan, at: &at }).deserialize(value) {
        Ok(scan) => extract(plan, scan),
        Err(e) => Err(explain_parse_error(
            plan,
            JustType::deserialize(value).ok(),
            at.get(),
            &e,
        )),
    }
}

/// A rejection of a resource that is not one JSON object of a type the plan reads, or one with
/// an element serde could not read (`at`, when the scan had reached one). serde's message
/// quotes the offending value: it is kept with the value described, not copied.
fn explain_parse_error(
    plan: &Plan,
    head: Option<JustType<'_>>,
    at: Option<Key>,
    e: &serde_json::Error,
) -> Rejection {
    let cause = shape::redact_quoted(&e.to_string());
    match head {
        Some(JustType {
            resource_type: Some(t),
            id,
        }) => {
            let resource = id.and_then(|id| shown(&t, &id));
            match ResourceKind::parse(&t).filter(|k| plan.reads_kind(*k)) {
                None => unknown_type(plan, &t, resource),
                Some(kind) => {
                    let element = at.map_or_else(String::new, |k| format!(" at `{}`", k.element()));
                    Rejection {
                        other_type: None,
                        resource,
                        fault: Fault::NotR4,
                        reason: format!(
                            "{kind} does not follow FHIR R4{element}: {cause}; fix the resource at its source"
                        ),
                    }
                }
            }
        }
        Some(JustType {
            resource_type: None,
            ..
        }) => no_resource_type(),
        None if e.is_eof() => Rejection {
            other_type: None,
            resource: None,
            fault: Fault::Unreadable,
            reason: format!("truncated JSON ({cause}); the file may be cut short, export it again"),
        },
        None => Rejection {
            other_type: None,
            resource: None,
            fault: Fault::Unreadable,
            reason: format!("malformed JSON ({cause}); each line must be one FHIR resource"),
        },
    }
}

fn no_resource_type() -> Rejection {
    Rejection {
        other_type: None,
        resource: None,
        fault: Fault::NoResourceType,
        reason: "JSON object without resourceType; each line must be one FHIR resource".into(),
    }
}

/// `Type/id` for messages, when both may be shown: an R4 type and a valid FHIR id.
fn shown(resource_type: &str, id: &str) -> Option<String> {
    (is_r4_resource_type(resource_type) && is_fhir_id(id)).then(|| format!("{resource_type}/{id}"))
}

/// A resource of a type this plan does not read: no FHIR type at all, one segmentti never
/// reads, or one only a model with features over it reads. Only an R4 type is named; anything
/// else in `resourceType` is described.
fn unknown_type(plan: &Plan, t: &str, resource: Option<String>) -> Rejection {
    let r4 = is_r4_resource_type(t);
    let reason = if ResourceKind::parse(t).is_some() {
        format!(
            "resourceType `{t}` is not read by model {} (no feature of it names {t}); leave it out of the input, or add a feature over it to the model",
            plan.mapping.id
        )
    } else {
        let what = if r4 {
            format!("resourceType `{t}`")
        } else {
            format!(
                "resourceType ({}) is no FHIR R4 resource type and",
                shape::describe(t)
            )
        };
        format!(
            "{what} is not read by segmentti (it reads Patient, Encounter and Condition, and Observation, EpisodeOfCare, Claim and ExplanationOfBenefit for models that name them); leave it out of the input"
        )
    };
    Rejection {
        other_type: r4.then(|| CompactString::new(t)),
        resource,
        fault: Fault::UnknownType,
        reason,
    }
}

fn extract(plan: &Plan, scan: Scan<'_>) -> Result<Fact, Rejection> {
    let Some(resource_type) = scan.resource_type.as_deref() else {
        return Err(no_resource_type());
    };
    let Some(kind) = ResourceKind::parse(resource_type).filter(|k| plan.reads_kind(*k)) else {
        return Err(unknown_type(
            plan,
            resource_type,
            scan.id.as_deref().and_then(|id| shown(resource_type, id)),
        ));
    };
    let id = match scan.id.as_deref() {
        Some(id) if is_fhir_id(id) => id,
        found => {
            let what = found.map_or_else(
                || "without id".to_owned(),
                |id| format!("with an id that is not a FHIR id ({})", shape::describe(id)),
            );
            return Err(Rejection {
                other_type: None,
                resource: None,
                fault: Fault::BadId,
                reason: format!(
                    "{kind} {what}; every resource needs its logical id, 1 to 64 letters, digits, '-' and '.'"
                ),
            });
        }
    };
    let resource = || Some(format!("{kind}/{id}"));
    let day = |s: &Option<Cow<'_, str>>, what: &str| -> Result<Option<Day>, Rejection> {
        match s.as_deref() {
            None => Ok(None),
            Some(text) => Day::parse_fhir(text).map(Some).ok_or_else(|| Rejection {
                other_type: None,
                resource: resource(),
                fault: Fault::BadDate,
                reason: format!(
                    "{what} is not a FHIR date ({}); a date is YYYY, YYYY-MM or YYYY-MM-DD, a dateTime starts with one; fix the resource at its source",
                    shape::describe(text)
                ),
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
        value: None,
        void: None,
        codes: SmallVec::new(),
        codings: None,
        person: None,
        unassessed: None,
    };
    if kind == ResourceKind::Patient {
        fact.patient = fact.id.clone();
        fact.day = day(&scan.birth_date, "birthDate")?;
        let died = day(&scan.deceased_at, "deceasedDateTime")?;
        fact.unassessed = if scan.deceased == Some(true) || died.is_some_and(|d| d <= plan.as_of) {
            Some(Unassessed::Deceased)
        } else if fact.day.is_some_and(|born| born > plan.as_of) {
            Some(Unassessed::NotYetBorn)
        } else if scan.active == Some(false) && !plan.mapping.assess_inactive {
            Some(Unassessed::Inactive)
        } else {
            None
        };
        fact.person = person(scan);
        return Ok(fact);
    }
    let element = kind.client_element();
    let client = match element {
        "patient" => scan.patient.as_deref(),
        _ => scan.subject.as_deref(),
    };
    let Some(reference) = client else {
        return Err(Rejection {
            other_type: None,
            resource: resource(),
            fault: Fault::BadReference,
            reason: format!(
                "{kind} without {element}.reference; it cannot be tied to a client, give it a Patient/id reference"
            ),
        });
    };
    let Some(patient) = patient_id(reference).filter(|id| is_fhir_id(id)) else {
        return Err(Rejection {
            other_type: None,
            resource: resource(),
            fault: Fault::BadReference,
            reason: format!(
                "{element}.reference is {}, not Patient/id; resolve it to the Patient's id before the export",
                shape::describe_reference(reference)
            ),
        });
    };
    fact.patient = CompactString::new(patient);
    match kind {
        // Its birth date was taken above.
        ResourceKind::Patient => {}
        ResourceKind::Encounter => {
            fact.day = day(&scan.start, "period.start")?;
            fact.end = day(&scan.end, "period.end")?;
            fact.day = fact.day.or(fact.end);
        }
        ResourceKind::Condition => {
            let onset = scan.onset.clone().or_else(|| scan.onset_start.clone());
            fact.day = day(&onset, "onset")?.or(day(&scan.recorded, "recordedDate")?);
        }
        ResourceKind::Observation => {
            fact.day = day(&scan.effective, "effective")?.or(day(&scan.issued, "issued")?);
            fact.value = scan.value;
        }
        ResourceKind::EpisodeOfCare => {
            let start = day(&scan.start, "period.start")?;
            fact.end = day(&scan.end, "period.end")?;
            fact.day = match (start, fact.end) {
                (Some(s), _) if s > plan.as_of => Some(s),
                (None, None) => None,
                (_, end) => Some(end.map_or(plan.as_of, |e| e.min(plan.as_of))),
            };
        }
        ResourceKind::Claim | ResourceKind::ExplanationOfBenefit => {
            fact.day = day(&scan.billable_start, "billablePeriod.start")?
                .or(day(&scan.created, "created")?);
            match billed_total(plan, kind, scan.total.as_ref()) {
                Ok(Total::Amount(total)) => fact.cost = total,
                Ok(Total::None) => fact.void = Some(Void::NoTotal),
                Ok(Total::Unpriced(currency)) => {
                    fact.void = Some(Void::Unpriced(CompactString::new(currency)))
                }
                Err(reason) => {
                    return Err(Rejection {
                        other_type: None,
                        resource: resource(),
                        fault: Fault::NotR4,
                        reason,
                    });
                }
            }
        }
    }
    let status = match kind {
        ResourceKind::Condition => scan.codes.void.clone(),
        _ => scan
            .status
            .as_deref()
            .filter(|s| plan.not_counted(kind, s))
            .map(CompactString::new),
    };
    if let Some(status) = status {
        fact.void = Some(Void::Status(status));
    }
    fact.mask = scan.codes.mask;
    fact.codes = scan.codes.distinct;
    if !scan.codes.kept.is_empty() {
        fact.codings = Some(scan.codes.kept.into_boxed_slice());
    }
    if kind == ResourceKind::Encounter
        && let Some(prices) = &plan.prices
    {
        fact.cost = prices.price(fact.mask, fact.day, fact.end);
    }
    Ok(fact)
}

/// What a bill's total says, in the price table's currency.
#[derive(Debug, PartialEq)]
enum Total<'t> {
    /// No total to cost the care by.
    None,
    /// The amount, converted at the model's rate where it is in another currency.
    Amount(f64),
    /// An amount in a currency the model has no rate for.
    Unpriced(&'t str),
}

/// The cost a Claim (`total`) or ExplanationOfBenefit (the `submitted` total) states; an error
/// for a total of the wrong shape.
fn billed_total<'t>(
    plan: &Plan,
    kind: ResourceKind,
    total: Option<&'t Totals<'_>>,
) -> Result<Total<'t>, String> {
    let money = match (kind, total) {
        (_, None) => return Ok(Total::None),
        (ResourceKind::Claim, Some(Totals::One(money))) => money,
        (ResourceKind::ExplanationOfBenefit, Some(Totals::ByCategory(totals))) => {
            let submitted = totals.iter().find(|t| {
                t.category.as_ref().is_some_and(|c| {
                    c.coding.iter().any(|coding| {
                        coding.system.as_ref().is_some_and(|s| s.0 == SUBMITTED.0)
                            && coding.code.as_ref().is_some_and(|c| c.0 == SUBMITTED.1)
                    })
                })
            });
            match submitted.and_then(|t| t.amount.as_ref()) {
                Some(money) => money,
                None => return Ok(Total::None),
            }
        }
        _ => {
            return Err(format!(
                "{kind}.total does not follow FHIR R4 (an amount on Claim, a list of category and amount on ExplanationOfBenefit); fix the resource at its source"
            ));
        }
    };
    let Some(value) = money.value else {
        return Ok(Total::None);
    };
    let Some(prices) = &plan.mapping.prices else {
        return Ok(Total::Amount(value));
    };
    match money.currency.as_ref().map(|c| c.0.as_ref()) {
        // Unpriced currencies are counted by name in the summary, so only a code is kept.
        Some(found) if !is_currency_code(found) => Err(format!(
            "{kind}.total's currency is not an ISO 4217 code ({}); fix the resource at its source",
            shape::describe(found)
        )),
        Some(found) if found != prices.currency => match prices.rates.get(found) {
            Some(rate) => Ok(Total::Amount(value * rate)),
            None => Ok(Total::Unpriced(found)),
        },
        _ => Ok(Total::Amount(value)),
    }
}

/// Whether `code` has the shape of an ISO 4217 currency code: three capital letters.
fn is_currency_code(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
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

    /// A Finnish identity code, a name and a birth date: what no rejection may copy.
    const PERSONAL: [&str; 4] = ["010203A123B", "Virtanen", "1950-13-45", "19500101"];

    fn billed_plan() -> Plan {
        let yaml = crate::model::one_segment_model(
            r#"prices: {currency: EUR, source: test, rules: [], otherwise: 100}
features:
  - id: f
    title: {fi: k, sv: k, en: c}
    cost: {resource: Encounter, window: P12M, billed: [Claim]}"#,
        );
        let mapping = crate::model::load::load_str(&yaml).expect("model");
        Plan::compile(mapping, "2026-01-01".parse().expect("day")).expect("plan")
    }

    #[test]
    fn rejections_describe_personal_data_without_copying_it() {
        let plan = billed_plan();
        let enc = r#""resourceType":"Encounter","id":"e1""#;
        let cases = [
            (
                format!(
                    r#"{{{enc},"subject":{{"reference":"Patient?identifier=urn:oid:1.2.246.21|010203A123B"}}}}"#
                ),
                Fault::BadReference,
                "subject.reference is a conditional reference with an identifier, not Patient/id",
            ),
            (
                format!(r#"{{{enc},"subject":{{"reference":"Patient/Matti Virtanen"}}}}"#),
                Fault::BadReference,
                "whose id is not a FHIR id (14 characters, letters and spaces)",
            ),
            (
                r#"{"resourceType":"Patient","id":"p1","birthDate":"1950-13-45"}"#.to_owned(),
                Fault::BadDate,
                "birthDate is not a FHIR date (10 characters, digits and '-')",
            ),
            (
                r#"{"resourceType":"Patient","id":"010203A123B Virtanen"}"#.to_owned(),
                Fault::BadId,
                "Patient with an id that is not a FHIR id (20 characters, digits, letters and spaces)",
            ),
            (
                r#"{"resourceType":"Patient","id":"p1","birthDate":19500101}"#.to_owned(),
                Fault::NotR4,
                "Patient does not follow FHIR R4 at `birthDate`: invalid type: integer (8 characters, digits)",
            ),
            (
                r#"{"resourceType":"Patient","id":"p1","active":"010203A123B"}"#.to_owned(),
                Fault::NotR4,
                "at `active`: invalid type: string (11 characters, digits and letters)",
            ),
            (
                r#"{"resourceType":"Virtanen","id":"010203A123B"}"#.to_owned(),
                Fault::UnknownType,
                "resourceType (8 characters, letters) is no FHIR R4 resource type",
            ),
            (
                r#""010203A123B""#.to_owned(),
                Fault::Unreadable,
                "malformed JSON (invalid type: string (11 characters, digits and letters)",
            ),
            (
                r#"{"resourceType":"Claim","id":"c1","patient":{"reference":"Patient/p1"},"total":{"value":5,"currency":"Virtanen"}}"#.to_owned(),
                Fault::NotR4,
                "Claim.total's currency is not an ISO 4217 code (8 characters, letters)",
            ),
        ];
        for (line, fault, reason) in cases {
            let value: serde_json::Value = serde_json::from_str(&line).expect("JSON");
            let rejections = [
                extract_str(&plan, &line).expect_err("rejected"),
                extract_value(&plan, &value).expect_err("rejected"),
            ];
            for r in rejections {
                assert_eq!(r.fault, fault, "{line}: {r:?}");
                assert!(r.reason.contains(reason), "{line}: {}", r.reason);
                let shown = format!("{} {:?}", r.reason, r.resource);
                for personal in PERSONAL {
                    assert!(!shown.contains(personal), "{personal} in {shown}");
                }
            }
        }
    }
}
