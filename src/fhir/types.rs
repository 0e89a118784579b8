//! Small value types shared by every stage: patient ids, resource references, segment codes,
//! model ids and canonical URLs. They exist so that a function signature says which string it
//! means; this module does no I/O and knows nothing of mapping files or FHIR servers.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps a string without checking it; callers validate where the string enters.
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            /// The wrapped string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }
    };
}

string_newtype!(
    /// The logical id of a Patient on its source (`Patient/{id}` without the type).
    PatientId
);
string_newtype!(
    /// A segment's code inside its model, such as `3` or `self-care`.
    SegmentCode
);
string_newtype!(
    /// A model's id, such as `paijat-sote`; also the stem of its mapping file.
    ModelId
);
string_newtype!(
    /// A canonical URL: the base of a model's code systems and identifiers.
    Canonical
);

/// A reference to a resource on the source, kept as type and id so it can be re-rendered as
/// `Type/id` for supporting information and for explanations.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct ResourceRef {
    /// The resource type, such as `Encounter`.
    pub kind: ResourceKind,
    /// The logical id.
    pub id: String,
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.id)
    }
}

/// The resource types segmentti reads. Anything else in an input is rejected with its type
/// named, never dropped silently.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum ResourceKind {
    /// The client.
    Patient,
    /// A contact: visit, home visit, phone call, inpatient stay, social-welfare meeting.
    Encounter,
    /// A diagnosis or problem.
    Condition,
    /// A finding: functional ability, oral status (DMF index, pocket depth). Read only by a
    /// model with a feature over it.
    Observation,
    /// A period of care or service: social-welfare service decisions (home care, housing
    /// services). Read only by a model with a feature over it.
    EpisodeOfCare,
    /// A bill for care, whose `total` is what the care cost. Read only by a model whose cost
    /// feature is `billed` from it.
    Claim,
    /// A payer's adjudicated claim, whose `submitted` total is what the care cost. Read only by
    /// a model whose cost feature is `billed` from it.
    ExplanationOfBenefit,
}

impl ResourceKind {
    /// Every kind, in the order Bulk Data output lists them.
    pub(crate) const ALL: [ResourceKind; 7] = [
        Self::Patient,
        Self::Encounter,
        Self::Condition,
        Self::Observation,
        Self::EpisodeOfCare,
        Self::Claim,
        Self::ExplanationOfBenefit,
    ];

    /// The kinds every model reads; the others are read only by a model that names them.
    pub const CORE: [ResourceKind; 3] = [Self::Patient, Self::Encounter, Self::Condition];

    /// The FHIR resourceType string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Patient => "Patient",
            Self::Encounter => "Encounter",
            Self::Condition => "Condition",
            Self::Observation => "Observation",
            Self::EpisodeOfCare => "EpisodeOfCare",
            Self::Claim => "Claim",
            Self::ExplanationOfBenefit => "ExplanationOfBenefit",
        }
    }

    /// The element that names the client: `subject`, or `patient` on EpisodeOfCare, Claim and
    /// ExplanationOfBenefit (which have no `subject`); also the name of the search parameter
    /// is `patient` for every one of them.
    pub(crate) fn client_element(self) -> &'static str {
        match self {
            Self::EpisodeOfCare | Self::Claim | Self::ExplanationOfBenefit => "patient",
            _ => "subject",
        }
    }

    /// Parses a FHIR resourceType string; `None` for types segmentti does not read.
    pub(crate) fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == value)
    }
}

/// Every resource type of FHIR R4 (4.0.1), sorted, as the vendored JSON Schema's discriminator
/// lists them. A type in here that segmentti does not read is a resource it may leave aside
/// (a Bulk export's types not asked for); a type not in here is no FHIR resource at all.
const R4_TYPES: [&str; 146] = [
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceDefinition",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EffectEvidenceSynthesis",
    "Encounter",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "InsurancePlan",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
    "Measure",
    "MeasureReport",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationKnowledge",
    "MedicationRequest",
    "MedicationStatement",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "MessageDefinition",
    "MessageHeader",
    "MolecularSequence",
    "NamingSystem",
    "NutritionOrder",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Parameters",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchDefinition",
    "ResearchElementDefinition",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "RiskEvidenceSynthesis",
    "Schedule",
    "SearchParameter",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Subscription",
    "Substance",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "TerminologyCapabilities",
    "TestReport",
    "TestScript",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
];

/// Whether `id` is a FHIR id: 1 to 64 of ASCII letters, digits, `-` and `.`. Only such ids may
/// be shown in a reason, error or log; anything else is described (`record::shape`).
pub fn is_fhir_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Whether `value` is a resource type of FHIR R4.
pub(crate) fn is_r4_resource_type(value: &str) -> bool {
    R4_TYPES.binary_search(&value).is_ok()
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fhir_ids_are_short_and_plain() {
        assert!(is_fhir_id("p1"));
        assert!(is_fhir_id("a-1.B"));
        assert!(is_fhir_id(&"x".repeat(64)));
        assert!(!is_fhir_id(&"x".repeat(65)));
        assert!(!is_fhir_id(""));
        assert!(!is_fhir_id("Matti Meikäläinen"));
        assert!(!is_fhir_id("a_b"));
        assert!(!is_fhir_id("a/b"));
    }

    #[test]
    fn r4_resource_types_are_known_and_others_are_not() {
        assert!(
            R4_TYPES.windows(2).all(|w| w[0] < w[1]),
            "sorted, for the search"
        );
        for kind in ResourceKind::ALL {
            assert!(is_r4_resource_type(kind.as_str()));
        }
        assert!(is_r4_resource_type("MedicationRequest"));
        assert!(!is_r4_resource_type("Foo"));
        assert!(!is_r4_resource_type("patient"));
    }

    #[test]
    fn resource_kind_round_trips_and_refuses_other_types() {
        for kind in ResourceKind::ALL {
            assert_eq!(ResourceKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(ResourceKind::parse("MedicationRequest"), None);
        assert_eq!(ResourceKind::parse("patient"), None);
    }

    #[test]
    fn resource_ref_renders_as_fhir_reference() {
        let r = ResourceRef {
            kind: ResourceKind::Encounter,
            id: "e1".into(),
        };
        assert_eq!(r.to_string(), "Encounter/e1");
    }
}
