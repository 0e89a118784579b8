//! The mapping file format, as a county analyst writes it: plain serde structs with
//! `deny_unknown_fields`, documented field by field because these doc comments become the
//! JSON Schema (`mappings/schema.json`) that editors use for completion. This module only
//! describes the shape; what a schema cannot see (unknown references, unreachable nodes) is
//! checked in [`super::check`], and evaluation lives in [`super::plan`] and [`crate::assess::eval`].

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::fhir::types::{Canonical, ModelId, ResourceKind, SegmentCode};

/// A segmentation model: what to compute from a client's resources and how to place the
/// client in a segment.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Short id of the model, lowercase letters, digits and dashes (`paijat-sote`). Part of
    /// every identifier segmentti writes, so changing it starts a new series of results.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9-]*$"))]
    pub id: ModelId,
    /// Canonical URL of the model. Its code systems live below it (`{canonical}/CodeSystem/segment`).
    #[schemars(regex(pattern = r"^https?://[^\s]+[^/\s]$"))]
    pub canonical: Canonical,
    /// Version of the model; change it whenever a threshold, a code list or the tree changes.
    pub version: String,
    /// Name of the model in Finnish, Swedish and English.
    pub title: Text,
    /// What the model is for and where it comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Text>,
    /// Files whose code lists, features and overlays become part of this model (paths relative
    /// to this file, such as `key-client.yaml`): one definition of an overlay for several
    /// models. A name the model and an included file both define is an error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Short names for code system URLs, used in code lists (`icd10fi: urn:oid:1.2.246.537.6.1`).
    #[serde(default)]
    pub systems: BTreeMap<String, String>,
    /// Named lists of codes that features and prices filter on.
    #[serde(default)]
    pub code_lists: Vec<CodeList>,
    /// How much a contact costs, for `cost` features when the data carry no cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prices: Option<PriceTable>,
    /// Numbers computed from each client's resources.
    pub features: Vec<Feature>,
    /// The assessment's criteria, each a level computed from features.
    pub criteria: Vec<Criterion>,
    /// The segments, light to heavy.
    pub segments: Vec<Segment>,
    /// The question tree: nodes tried in order, the first whose condition holds places the client.
    pub tree: Vec<TreeNode>,
    /// Markings beside the segment, such as the key-client overlay.
    #[serde(default)]
    pub overlays: Vec<Overlay>,
    /// Which feature the run summary uses for cost concentration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_feature: Option<String>,
    /// Service areas (health, social welfare, oral health) the report breaks segments down by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_areas: Vec<ServiceArea>,
    /// Statuses whose resources count for nothing, per resource type: Encounter `status`,
    /// Condition `verificationStatus`, the others' `status`. A type named here replaces its
    /// defaults: Encounter `entered-in-error`, `cancelled` and `planned` (a planned visit is no
    /// contact); Condition `refuted` and `entered-in-error`; Observation, EpisodeOfCare, Claim
    /// and ExplanationOfBenefit `cancelled` and `entered-in-error`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub not_counted: BTreeMap<ResourceKind, Vec<String>>,
    /// Assess clients whose Patient has `active: false`. By default they get no assessment and
    /// no active Flag, as the dead and those born after the as-of date do.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub assess_inactive: bool,
    /// The `category` of every Flag the model writes, a code of
    /// `http://terminology.hl7.org/CodeSystem/flag-category`: `diet`, `drug`, `lab`, `admin`,
    /// `behavioral`, `research`, `clinical` or `safety`; `admin` when not given. EHRs choose
    /// by it which Flags their patient banner shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag_category: Option<String>,
}

/// The codes of `http://terminology.hl7.org/CodeSystem/flag-category` a model's
/// [`Mapping::flag_category`] may name, with their displays in that code system.
pub(crate) const FLAG_CATEGORIES: [(&str, &str); 8] = [
    ("diet", "Diet"),
    ("drug", "Drug"),
    ("lab", "Lab"),
    ("admin", "Administrative"),
    ("behavioral", "Behavioral"),
    ("research", "Research"),
    ("clinical", "Clinical"),
    ("safety", "Safety"),
];

/// The Flag category when a model names none.
pub(crate) const DEFAULT_FLAG_CATEGORY: &str = "admin";

/// The statuses of `kind` that count for nothing by default ([`Mapping::not_counted`]).
pub(crate) fn default_not_counted(kind: ResourceKind) -> &'static [&'static str] {
    match kind {
        ResourceKind::Patient => &[],
        ResourceKind::Encounter => &["entered-in-error", "cancelled", "planned"],
        ResourceKind::Condition => &["refuted", "entered-in-error"],
        ResourceKind::Observation
        | ResourceKind::EpisodeOfCare
        | ResourceKind::Claim
        | ResourceKind::ExplanationOfBenefit => &["cancelled", "entered-in-error"],
    }
}

/// The statuses FHIR R4 defines for `kind`'s status element (Condition: `verificationStatus`),
/// which `not_counted` may name.
pub(crate) fn known_statuses(kind: ResourceKind) -> &'static [&'static str] {
    match kind {
        ResourceKind::Patient => &[],
        ResourceKind::Encounter => &[
            "planned",
            "arrived",
            "triaged",
            "in-progress",
            "onleave",
            "finished",
            "cancelled",
            "entered-in-error",
            "unknown",
        ],
        ResourceKind::Condition => &[
            "unconfirmed",
            "provisional",
            "differential",
            "confirmed",
            "refuted",
            "entered-in-error",
        ],
        ResourceKind::Observation => &[
            "registered",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "cancelled",
            "entered-in-error",
            "unknown",
        ],
        ResourceKind::EpisodeOfCare => &[
            "planned",
            "waitlist",
            "active",
            "onhold",
            "finished",
            "cancelled",
            "entered-in-error",
        ],
        ResourceKind::Claim | ResourceKind::ExplanationOfBenefit => {
            &["active", "cancelled", "draft", "entered-in-error"]
        }
    }
}

/// A service area for the report: a client is in it when its feature is above zero (a contact
/// there), so a client who used several areas is counted in each.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceArea {
    /// Code of the area (`health`, `social`, `oral`).
    pub code: String,
    /// Name of the area.
    pub display: Text,
    /// The feature that counts the client's contacts in the area (`health_contacts_12m`).
    pub feature: String,
}

/// A file that models include (`include: [key-client.yaml]`): code lists, features, overlays
/// and service areas that become the including model's own, as if written there. It has no tree, so it places no
/// one; a `cost` feature in it sums the including model's price table.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fragment {
    /// Short id of the included file (`key-client`), lowercase letters, digits and dashes. Its
    /// presence is what marks a file as one to include rather than a model.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9-]*$"))]
    pub fragment: String,
    /// Version of the file; a model that includes it changes with it, so bump the model's too.
    pub version: String,
    /// Name in Finnish, Swedish and English.
    pub title: Text,
    /// What it is for and where it comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Text>,
    /// Short names for code system URLs, for this file's code lists only.
    #[serde(default)]
    pub systems: BTreeMap<String, String>,
    /// Code lists, added to the model's.
    #[serde(default)]
    pub code_lists: Vec<CodeList>,
    /// Features, added to the model's.
    #[serde(default)]
    pub features: Vec<Feature>,
    /// Overlays, added to the model's.
    #[serde(default)]
    pub overlays: Vec<Overlay>,
    /// Service areas for the report, added to the model's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_areas: Vec<ServiceArea>,
}

/// A text in Finnish, Swedish and English.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Text {
    /// Suomeksi.
    pub fi: String,
    /// På svenska.
    pub sv: String,
    /// In English.
    pub en: String,
}

/// A named list of codes.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeList {
    /// Name used by features and prices (`mental_health`).
    pub id: String,
    /// What the list holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// `exact` codes only, or `prefix`: `F32` also matches `F32.1` (ICD-10 hierarchies). SNOMED
    /// CT and LOINC codes match exactly either way: their identifiers carry no hierarchy, so a
    /// descendant is listed by its own code.
    #[serde(default)]
    pub matching: Matching,
    /// The codes. May be left out when `valueset` gives them.
    #[serde(default)]
    pub codes: Vec<CodeEntry>,
    /// A FHIR ValueSet in JSON whose concepts join `codes` (path relative to the file that names
    /// it, such as `valuesets/heart-failure.json`): its `compose.include[].concept[]` and its
    /// pinned `expansion.contains[]`, each once by system and code, with the ValueSet's display
    /// and `ValueSet {url}|{version}` as source, and no concept of their own. A ValueSet with
    /// filters needs a pinned expansion: `segmentti expand MODEL --terminology URL` writes one
    /// into the file, and runs never ask a terminology server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valueset: Option<String>,
}

/// How a code list matches codes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Matching {
    /// The code must be equal.
    #[default]
    Exact,
    /// The code must start with the listed code.
    Prefix,
}

/// One code of a code list.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeEntry {
    /// Code system: a short name from `systems` or a URL / `urn:oid:`.
    pub system: String,
    /// The code.
    pub code: String,
    /// The concept the code stands for (`heart-failure`), when the list names one concept in
    /// several codes: ICD-10 I50 and SNOMED CT 84114007 and 88805009 are one illness. A
    /// `distinct` count counts concepts, and a resource counts once, so an illness recorded in
    /// two systems or two resources is one. A code without a concept is a concept of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9-]*$"))]
    pub concept: Option<String>,
    /// Its display, for people reading the mapping and explanations.
    pub display: String,
    /// Where the code comes from (code system edition, document).
    pub source: String,
}

/// A price table: rules tried in order, the first whose filters all hold prices the contact.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    /// Currency of every price (`EUR`).
    pub currency: String,
    /// Where the prices come from.
    pub source: String,
    /// The rules.
    pub rules: Vec<PriceRule>,
    /// Price of a contact that no rule matches.
    pub otherwise: f64,
    /// Exchange rates into `currency` for bills (Claim, ExplanationOfBenefit) in others
    /// (`{USD: 0.92}`: one dollar is 0.92 euros). A bill in a currency without a rate does not
    /// count: its client is costed by the price table, and the run counts such bills per
    /// currency.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rates: BTreeMap<String, f64>,
}

/// One price rule.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceRule {
    /// Filters on the Encounter; all must hold.
    #[serde(rename = "where")]
    pub filters: Vec<Filter>,
    /// Price per contact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub each: Option<f64>,
    /// Price per day of the contact's period (inpatient stays), at least one day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_day: Option<f64>,
}

/// A filter on one field of a resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// The field whose codes are tested.
    pub field: Field,
    /// Holds when a code of the field is in this code list.
    #[serde(rename = "in", default, skip_serializing_if = "Option::is_none")]
    pub in_list: Option<String>,
    /// Holds when no code of the field is in this code list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_in: Option<String>,
}

/// A coded field of the resources segmentti reads. `code`, `type` and `category` are the same
/// element name on several resource types; a filter or feature tests the field of the resource
/// it selects.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Field {
    /// Encounter.class (HL7 v3 ActCode: AMB, HH, VR, EMER, IMP).
    Class,
    /// Encounter.type (contact type: AvoHILMO yhteystapa, SNOMED CT) or EpisodeOfCare.type
    /// (the service decided: home care, housing service, child welfare).
    Type,
    /// Encounter.serviceType (service type: AvoHILMO palvelumuoto, SNOMED CT).
    ServiceType,
    /// Encounter.reasonCode.
    ReasonCode,
    /// Condition.code (ICD-10, ICPC-2, SNOMED CT) or Observation.code (LOINC, SNOMED CT: a
    /// functional-ability score, an oral-status finding). Encounter.diagnosis is not read.
    Code,
    /// Condition.category or Observation.category.
    Category,
    /// Condition.clinicalStatus.
    ClinicalStatus,
    /// Condition.verificationStatus (a model's `not_counted` decides which statuses count).
    VerificationStatus,
    /// The service a contact was: the codings of Encounter.serviceType and Encounter.type
    /// together. Systems record it in either (Synthea and many EHRs only in `type`), so a list
    /// of service types names the codes of both, and a `distinct` count over it counts each
    /// contact's service once ([`CodeEntry::concept`]).
    Service,
}

impl Field {
    /// The resource types that have this field.
    pub(crate) fn resources(self) -> &'static [ResourceKind] {
        match self {
            Self::Class | Self::ServiceType | Self::ReasonCode | Self::Service => {
                &[ResourceKind::Encounter]
            }
            Self::Type => &[ResourceKind::Encounter, ResourceKind::EpisodeOfCare],
            Self::Code | Self::Category => &[ResourceKind::Condition, ResourceKind::Observation],
            Self::ClinicalStatus | Self::VerificationStatus => &[ResourceKind::Condition],
        }
    }

    /// Whether a resource of `kind` has this field.
    pub(crate) fn belongs_to(self, kind: ResourceKind) -> bool {
        self.resources().contains(&kind)
    }

    /// The resource types that have this field, for messages (`Condition or Observation`).
    pub(crate) fn resources_text(self) -> String {
        let names: Vec<&str> = self.resources().iter().map(|k| k.as_str()).collect();
        names.join(" or ")
    }

    /// The FHIR element name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Class => "class",
            Self::Type => "type",
            Self::ServiceType => "serviceType",
            Self::ReasonCode => "reasonCode",
            Self::Code => "code",
            Self::Category => "category",
            Self::ClinicalStatus => "clinicalStatus",
            Self::VerificationStatus => "verificationStatus",
            Self::Service => "serviceType and type",
        }
    }
}

/// A number computed from a client's resources. Exactly one of the aggregations is given.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    /// Name used by criteria and overlays (`contacts_12m`).
    pub id: String,
    /// What the number means, for explanations.
    pub title: Text,
    /// Age in whole years at the as-of date, from Patient.birthDate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age: Option<AgeSpec>,
    /// Number of matching resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<Selection>,
    /// Number of distinct codes in `field` among matching resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct: Option<Selection>,
    /// Number of the given code lists that at least one matching resource hits in `field`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lists_hit: Option<Selection>,
    /// Sum of the price table over matching Encounters, or, with `billed`, of the client's
    /// Claim or ExplanationOfBenefit totals when the client has any in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Selection>,
    /// Days from the first to the last matching resource (long-term need).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_days: Option<Selection>,
    /// Days from the last matching resource to the as-of date; missing when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days_since_last: Option<Selection>,
    /// The value of the latest matching Observation (`valueQuantity.value` or
    /// `valueInteger`: a functional-ability score); missing when there is none. Of two on the
    /// same day, the higher counts, so the order of the input does not matter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_value: Option<Selection>,
}

impl Feature {
    /// The selections the feature aggregates over (one, once the model is checked).
    pub(crate) fn selections(&self) -> impl Iterator<Item = &Selection> {
        [
            &self.count,
            &self.distinct,
            &self.lists_hit,
            &self.cost,
            &self.span_days,
            &self.days_since_last,
            &self.last_value,
        ]
        .into_iter()
        .flatten()
    }
}

/// Age needs no settings; written `age: {}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgeSpec {}

/// Which resources a feature looks at.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// Encounter, Condition, Observation or EpisodeOfCare (`cost` takes Encounter, and names
    /// Claim and ExplanationOfBenefit under `billed`).
    pub resource: ResourceKind,
    /// Look-back window before the as-of date as an ISO 8601 duration (`P12M`, `P2Y`, `P90D`);
    /// without it the whole history counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Filters; all must hold.
    #[serde(rename = "where", default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// For `distinct` and `lists_hit`: the field whose codes are counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<Field>,
    /// For `lists_hit`: the code lists counted (for example one per service area).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lists: Option<Vec<String>>,
    /// For `cost`: where billed costs come from, in order of preference (`[Claim,
    /// ExplanationOfBenefit]`). Per client, the first of these the client has in the window
    /// gives the cost (the sum of its totals); a client with none of them is priced by the price
    /// table over its Encounters. Only one source counts per client, since a payer's
    /// ExplanationOfBenefit restates the Claim it answers (Synthea writes both for every
    /// Encounter). A Claim or ExplanationOfBenefit falls in the window by `billablePeriod.start`,
    /// else `created`; its amounts must be in the price table's currency (an amount without a
    /// currency is taken to be in it), and one in another currency is rejected. Cancelled and
    /// entered-in-error ones count for nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billed: Option<Vec<ResourceKind>>,
    /// What the feature's value is for a client who has none of the selected resources, in
    /// words a county reads (`no Observation: the oral status is unknown, the need comes from
    /// diagnoses alone`). Required for Observation and EpisodeOfCare, which many systems do not
    /// hold; `check-mapping` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_absent: Option<String>,
}

/// A criterion of the assessment: ordered levels, the highest whose condition holds wins.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Criterion {
    /// Name used by the tree (`support_need`).
    pub id: String,
    /// Name of the criterion.
    pub title: Text,
    /// Where the criterion comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Text>,
    /// Levels from lowest to highest. The first has no `when`: it is the level of a client no
    /// other level's condition holds for.
    pub levels: Vec<Level>,
}

/// One level of a criterion.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Level {
    /// Code of the level (`low`, `moderate`, `high`).
    pub code: String,
    /// Name of the level.
    pub display: Text,
    /// When the client reaches this level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Condition>,
}

/// A condition. Exactly one form is given: `all`, `any`, `not`, a feature test
/// (`feature` with `gte`/`gt`/`lte`/`lt`/`eq`, `missing` or `top_percent`), or a criterion test
/// (`criterion` with `at_least` or `is`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Holds when every condition holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<Vec<Condition>>,
    /// Holds when at least one condition holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<Vec<Condition>>,
    /// Holds when the condition does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<Condition>>,
    /// A feature to test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    /// The feature is at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gte: Option<f64>,
    /// The feature is more than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<f64>,
    /// The feature is at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lte: Option<f64>,
    /// The feature is less than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<f64>,
    /// The feature equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eq: Option<f64>,
    /// `true`: the feature has no value (no birth date, no contact ever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<bool>,
    /// The feature is positive and within the top this-many percent of the evaluated population.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_percent: Option<f64>,
    /// A criterion to test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub criterion: Option<String>,
    /// The criterion's level is this one or a higher one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_least: Option<String>,
    /// The criterion's level is exactly this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is: Option<String>,
}

/// A segment of the model.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    /// Code of the segment, written into the Observation and Flag.
    pub code: SegmentCode,
    /// Position from light (1) to heavy.
    pub order: u32,
    /// Name of the segment.
    pub display: Text,
    /// Who belongs here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<Text>,
    /// What professionals should do for a client in this segment.
    pub guidance: Text,
    /// For a sub-segment (segmentation within a segment): the code of the segment it refines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<SegmentCode>,
    /// What the segment decides beyond its name, for systems that act on it (the care path,
    /// the first appointment's length, the follow-up visits a booking system books): each
    /// written as a component of the assessment Observation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<Attribute>,
}

/// One thing a segment decides. Exactly one of `quantity`, `integer` and `concept` is given.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Attribute {
    /// Code of the attribute (`first-visit-minutes`), the same in every segment that has it.
    pub code: String,
    /// Name of the attribute.
    pub display: Text,
    /// A measured amount, with its UCUM unit (`{value: 60, unit: min}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<AttributeQuantity>,
    /// A count (`follow-up visits: 3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integer: Option<i32>,
    /// A coded choice (`care path: dentist`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concept: Option<AttributeConcept>,
}

/// An amount with a UCUM unit.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttributeQuantity {
    /// The amount.
    pub value: f64,
    /// UCUM code of the unit (`min`, `d`, `wk`).
    pub unit: String,
}

/// A coded value of an attribute.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttributeConcept {
    /// Code of the value.
    pub code: String,
    /// Name of the value.
    pub display: Text,
}

/// A node of the question tree.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TreeNode {
    /// Name of the node, shown in explanations.
    pub id: String,
    /// The question, over criteria only. Without it the node always holds, so it must be last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Condition>,
    /// The segment a client gets here.
    pub segment: SegmentCode,
    /// Why, in words a professional reads in the explanation.
    pub because: Text,
}

/// A marking beside the segment (key client): holds when any of its rules holds.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    /// Code of the overlay, written into its own Flag.
    pub code: String,
    /// Name of the overlay.
    pub display: Text,
    /// What professionals should do for such a client.
    pub guidance: Text,
    /// The rules; the overlay holds when at least one holds.
    pub rules: Vec<OverlayRule>,
}

/// One rule of an overlay.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OverlayRule {
    /// Code of the rule, recorded in the Observation when it holds.
    pub id: String,
    /// Name of the rule.
    pub title: Text,
    /// When the rule holds.
    pub when: Condition,
}
