//! Pure builders of what segmentti writes into a client's record: the assessment
//! `Observation` and the segment and overlay `Flag`s, with deterministic
//! identifiers and logical ids so that every later write can be conditional and every rerun
//! gives the same bytes. Built with fhir-sdk's typed R4B resources (Observation and Flag are the
//! same in R4 and R4B, and no R4B-only element is used), so a missing required element is a
//! compile or build error here rather than a server's rejection later. The clock is never
//! read: the as-of date is passed in. No I/O.

mod assemble;
pub(crate) mod flag;
pub mod lifecycle;
pub(crate) mod observation;

use fhir_sdk::r4b::types::{
    CodeableConcept, Coding, Extension, ExtensionValue, FieldExtension, Identifier, Meta, Quantity,
    Reference,
};

use crate::assess::eval::Assessment;
use crate::fhir::day::Day;
use crate::model::mapping::{Attribute, DEFAULT_FLAG_CATEGORY, FLAG_CATEGORIES, Text};
use crate::model::plan::Plan;
use fhir_sdk::r4b::resources::{ObservationComponent, ObservationComponentValue};

pub mod validate;

pub use assemble::{Built, ClientResources, View, Views};
pub(crate) use assemble::{Whole, build, build_view};
pub(crate) use flag::{overlay_flag, segment_flag};
pub use observation::Parts;
pub(crate) use observation::assessment;

/// segmentti's own code system: the assessment code and other codes not owned by a model.
pub(crate) const SEGMENTTI_SYSTEM: &str = "https://segmentti.fi/fhir/CodeSystem/segmentti";
/// The standard extension (R4 core, context Observation) pointing at a resource behind an
/// assessment. Not `derivedFrom`: R4 restricts its targets to Observation, DocumentReference and
/// the like, and the criteria stand on Encounters and Conditions.
const SUPPORTING_INFO: &str = "http://hl7.org/fhir/StructureDefinition/workflow-supportingInfo";
/// Extension holding how many resources counted when the supporting-info list is capped.
const SUPPORTING_INFO_COUNT: &str =
    "https://segmentti.fi/fhir/StructureDefinition/supporting-info-count";
/// Extension on a joined client's Observation: how many resources counted on another source,
/// which this server's resources must not refer to (`source`: its name, `count`).
const SUPPORTING_INFO_ELSEWHERE: &str =
    "https://segmentti.fi/fhir/StructureDefinition/supporting-info-elsewhere";
/// Extension on segmentti's Flags: the assessment's segment, levels and overlays in one string,
/// so a later run can tell from the Flag alone whether anything changed.
const FINGERPRINT: &str = "https://segmentti.fi/fhir/StructureDefinition/assessment-fingerprint";
/// Where segmentti's profiles live (the `profiles/` package's canonical base).
const PROFILES: &str = "https://segmentti.fi/fhir/StructureDefinition";
/// The system of the tag on each write-back's Provenance whose code names that write (a
/// UUIDv5 of its instant, model and targets): the Provenance is created only if no resource
/// carries the tag yet (`ifNoneExist`), so a transaction sent again after a lost answer leaves
/// one Provenance. A tag, since R4's Provenance has no identifier and `_tag` is searchable on
/// every resource.
pub(crate) const WRITE_TAG: &str = "https://segmentti.fi/fhir/CodeSystem/write";
/// The standard extension pointing from a Flag to the resource that explains it.
pub(crate) const FLAG_DETAIL: &str = "http://hl7.org/fhir/StructureDefinition/flag-detail";
/// The standard extension carrying a display's translation.
const TRANSLATION: &str = "http://hl7.org/fhir/StructureDefinition/translation";
/// The code system of Flag categories, by which EHRs choose the Flags their banner shows.
pub(crate) const FLAG_CATEGORY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/flag-category";
/// The code system of Observation categories, by which EHRs sort Observations into views.
pub(crate) const OBSERVATION_CATEGORY_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/observation-category";
/// The identifier system of what segmentti is as a Device: the software that made the
/// assessment (value [`DEVICE_NAME`]).
const DEVICE_SYSTEM: &str = "https://segmentti.fi/fhir/identifier/device";
/// segmentti's name as a Device, in its identifier and its references' display: no version,
/// so that what is written stays the same across releases.
const DEVICE_NAME: &str = "segmentti";
/// How many resources an Observation lists as supporting information at most.
const SUPPORTING_INFO_CAP: usize = 10;

/// Resources that counted for a client on another source than the one written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elsewhere {
    /// The source, as named in the run's summary.
    pub source: String,
    /// How many of its resources counted.
    pub count: u32,
}

/// Why a resource could not be built; always a bug in segmentti, since inputs are checked.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot build {resource} for Patient/{patient}: {cause}\nhint: this is a bug in segmentti; report it with the model file"
)]
pub struct BuildError {
    /// The resource type being built.
    pub resource: &'static str,
    /// The client.
    pub patient: String,
    /// What the builder said.
    pub cause: String,
}

/// The kinds of resource a model writes, each with its own identifier system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// The assessment Observation.
    Assessment,
    /// The segment Flag.
    SegmentFlag,
    /// An overlay's Flag.
    OverlayFlag,
}

impl Written {
    fn path(self) -> &'static str {
        match self {
            Self::Assessment => "assessment",
            Self::SegmentFlag => "segment-flag",
            Self::OverlayFlag => "overlay-flag",
        }
    }
}

/// A deterministic business identifier: the system names the model and what is written, the
/// value the client, the part (overlay code) and the as-of date.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BusinessId {
    /// `{canonical}/identifier/{kind}`.
    pub system: String,
    /// `{model}:{patient}:{as_of}` or `{model}:{overlay}:{patient}:{as_of}`; no `|` or `,`,
    /// so it can go into a search URL unescaped.
    pub value: String,
}

impl BusinessId {
    /// The identifier of `written` for `patient` at `as_of`.
    pub(crate) fn new(
        plan: &Plan,
        written: Written,
        part: Option<&str>,
        patient: &str,
        as_of: Day,
    ) -> Self {
        let model = &plan.mapping.id;
        let system = format!("{}/identifier/{}", plan.mapping.canonical, written.path());
        let value = match part {
            Some(part) => format!("{model}:{part}:{patient}:{as_of}"),
            None => format!("{model}:{patient}:{as_of}"),
        };
        Self { system, value }
    }

    /// The logical id derived from the identifier (UUID v5), stable across runs and machines.
    fn logical_id(&self) -> String {
        let name = [self.system.as_bytes(), b"|", self.value.as_bytes()].concat();
        let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, &name);
        // Encoded straight into a buffer: `to_string` goes through the formatting machinery,
        // for every resource of every client.
        (*id.hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer()))
        .to_owned()
    }

    /// The FHIR Identifier.
    pub(crate) fn to_fhir(&self) -> Result<Identifier, String> {
        Identifier::builder()
            .system(self.system.clone())
            .value(self.value.clone())
            .build()
            .map_err(|e| e.to_string())
    }
}

/// A Coding whose `display` is Finnish, with Swedish and English as translation extensions.
pub(crate) fn coding(system: &str, code: &str, display: &Text) -> Result<Coding, String> {
    let translation = |lang: &str, content: &str| -> Result<Extension, String> {
        let parts = vec![
            Extension::builder()
                .url("lang".to_owned())
                .value(ExtensionValue::Code(lang.to_owned()))
                .build(),
            Extension::builder()
                .url("content".to_owned())
                .value(ExtensionValue::String(content.to_owned()))
                .build(),
        ];
        let parts = parts
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        Extension::builder()
            .url(TRANSLATION.to_owned())
            .extension(parts)
            .build()
            .map_err(|e| e.to_string())
    };
    let ext = FieldExtension::builder()
        .extension(vec![
            translation("sv", &display.sv)?,
            translation("en", &display.en)?,
        ])
        .build()
        .map_err(|e| e.to_string())?;
    Coding::builder()
        .system(system.to_owned())
        .code(code.to_owned())
        .display(display.fi.clone())
        .display_ext(ext)
        .build()
        .map_err(|e| e.to_string())
}

/// A CodeableConcept of one coding, with the Finnish display as text and Swedish and English
/// as translations: for what an EHR shows people (the segment, the Flag's code).
pub(crate) fn concept(system: &str, code: &str, display: &Text) -> Result<CodeableConcept, String> {
    CodeableConcept::builder()
        .coding(vec![Some(coding(system, code, display)?)])
        .text(display.fi.clone())
        .build()
        .map_err(|e| e.to_string())
}

/// A CodeableConcept of one coding with its Finnish display only: for the many codes inside an
/// assessment (criteria, levels, rules), whose Swedish and English designations live in the
/// model's code systems. Carrying every translation inline doubled the Observation's size.
fn concept_fi(system: &str, code: &str, display: &Text) -> Result<CodeableConcept, String> {
    hl7_concept(system, code, &display.fi)
}

/// The codes and components of one model, built once per run and cloned into each client's
/// resources: they are the same for every client, and building them per client was most of the
/// build's cost. The file sink serialises the same parts once too (`sink::ndjson`).
#[derive(Debug, Clone)]
pub struct Concepts {
    /// `Observation.code`: segmentti's assessment code and the model's own.
    pub assessment: CodeableConcept,
    /// `Observation.method`: the model's canonical and version.
    pub method: CodeableConcept,
    /// Per segment, with translations (the Observation's value, the segment Flag's code).
    pub segments: Vec<CodeableConcept>,
    /// Every component an assessment can have.
    pub components: Components<ObservationComponent>,
    /// Per overlay, its Flag's code, with translations.
    pub overlay_flags: Vec<CodeableConcept>,
    /// `Observation.category`: `survey`, an assessment instrument.
    pub observation_category: CodeableConcept,
    /// `Observation.device`: segmentti, the software that made the assessment.
    pub device: Reference,
    /// Every Flag's `category`: the model's `flag_category`, `admin` by default.
    pub flag_category: CodeableConcept,
}

impl Concepts {
    /// The codes of `plan`'s model.
    pub(crate) fn new(plan: &Plan) -> Result<Self, BuildError> {
        Self::build(plan).map_err(|cause| BuildError {
            resource: "CodeableConcept",
            patient: "-".into(),
            cause,
        })
    }

    fn build(plan: &Plan) -> Result<Self, String> {
        let m = &plan.mapping;
        let mut assessment = concept(
            SEGMENTTI_SYSTEM,
            "segment-assessment",
            &observation::assessment_code(),
        )?;
        assessment.coding.push(Some(coding(
            &model_system(plan, "model"),
            m.id.as_str(),
            &m.title,
        )?));
        let method = CodeableConcept::builder()
            .coding(vec![Some(
                Coding::builder()
                    .system(m.canonical.to_string())
                    .version(m.version.clone())
                    .code(m.id.to_string())
                    .display(m.title.fi.clone())
                    .build()
                    .map_err(|e| e.to_string())?,
            )])
            .text(format!("{}|{}", m.canonical, m.version))
            .build()
            .map_err(|e| e.to_string())?;
        let (segment, criterion, level, overlay, rule) = (
            model_system(plan, "segment"),
            model_system(plan, "criterion"),
            model_system(plan, "level"),
            model_system(plan, "overlay"),
            model_system(plan, "overlay-rule"),
        );
        let segments: Vec<CodeableConcept> = m
            .segments
            .iter()
            .map(|s| concept(&segment, s.code.as_str(), &s.display))
            .collect::<Result<_, _>>()?;
        let parent_code = concept_fi(SEGMENTTI_SYSTEM, "parent-segment", &parent_segment())?;
        let segment_components = m
            .segments
            .iter()
            .map(|s| {
                let parent = s
                    .parent
                    .as_ref()
                    .and_then(|p| m.segments.iter().position(|x| &x.code == p))
                    .map(|p| {
                        component(
                            &parent_code,
                            ObservationComponentValue::CodeableConcept(segments[p].clone()),
                        )
                    });
                parent
                    .into_iter()
                    .chain(s.attributes.iter().map(|a| attribute_component(plan, a)))
                    .collect::<Result<_, _>>()
            })
            .collect::<Result<_, _>>()?;
        let levels = m
            .criteria
            .iter()
            .map(|c| {
                let code = concept_fi(&criterion, &c.id, &c.title)?;
                let system = format!("{level}/{}", c.id);
                c.levels
                    .iter()
                    .map(|l| {
                        let value = concept_fi(&system, &l.code, &l.display)?;
                        component(&code, ObservationComponentValue::CodeableConcept(value))
                    })
                    .collect::<Result<_, _>>()
            })
            .collect::<Result<_, _>>()?;
        let overlays = m
            .overlays
            .iter()
            .map(|o| {
                let code = concept_fi(&overlay, &o.code, &o.display)?;
                let holds = |b| component(&code, ObservationComponentValue::Boolean(b));
                Ok([holds(false)?, holds(true)?])
            })
            .collect::<Result<_, String>>()?;
        let rules = m
            .overlays
            .iter()
            .map(|o| {
                o.rules
                    .iter()
                    .map(|r| {
                        let code = concept_fi(&rule, &r.id, &r.title)?;
                        component(&code, ObservationComponentValue::Boolean(true))
                    })
                    .collect::<Result<_, _>>()
            })
            .collect::<Result<_, _>>()?;
        let overlay_flags = m
            .overlays
            .iter()
            .map(|o| concept(&overlay, &o.code, &o.display))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            assessment,
            method,
            observation_category: observation_category()?,
            device: device()?,
            flag_category: flag_category(plan)?,
            segments,
            components: Components {
                segments: segment_components,
                levels,
                overlays,
                rules,
            },
            overlay_flags,
        })
    }
}

/// The components an assessment can have, by what selects them: typed in [`Concepts`],
/// serialised by the file sink, put in order for one assessment by `Components::of`.
#[derive(Debug, Clone, Default)]
pub struct Components<T> {
    /// Per segment, the components its Observations start with: the parent segment of a
    /// sub-segment, then the segment's attributes (care path, appointment length, …).
    pub segments: Vec<Vec<T>>,
    /// Per criterion and level, the component. Each criterion's levels are a code system of
    /// their own (`…/CodeSystem/level/{criterion}`): two criteria may both have a level `none`
    /// that means different things, and a code system holds one meaning per code.
    pub levels: Vec<Vec<T>>,
    /// Per overlay, its component when it does not hold (`[0]`) and when it does (`[1]`).
    pub overlays: Vec<[T; 2]>,
    /// Per overlay and rule, the component saying the rule holds.
    pub rules: Vec<Vec<T>>,
}

impl<T> Components<T> {
    /// The components of assessment `a`, in order: the segment's own, each criterion's level,
    /// then each overlay followed by the rules that made it hold.
    pub(crate) fn of<'a>(&'a self, a: &'a Assessment) -> impl Iterator<Item = &'a T> {
        let levels = a.levels.iter().enumerate();
        let overlays = a.overlays.iter().enumerate();
        self.segments[a.segment]
            .iter()
            .chain(levels.map(|(c, &level)| &self.levels[c][level]))
            .chain(overlays.flat_map(move |(o, fired)| {
                let holds = &self.overlays[o][usize::from(!fired.is_empty())];
                std::iter::once(holds).chain(fired.iter().map(move |&r| &self.rules[o][r]))
            }))
    }

    /// Every component any assessment can have.
    pub(crate) fn all(&self) -> impl Iterator<Item = &T> {
        let segments = self.segments.iter().flatten();
        let levels = self.levels.iter().flatten();
        let overlays = self.overlays.iter().flatten();
        segments
            .chain(levels)
            .chain(overlays)
            .chain(self.rules.iter().flatten())
    }

    /// The same set with each component made into `U` by `f`.
    pub(crate) fn try_map<U, E>(
        &self,
        mut f: impl FnMut(&T) -> Result<U, E>,
    ) -> Result<Components<U>, E> {
        let mut nested = |lists: &[Vec<T>]| -> Result<Vec<Vec<U>>, E> {
            lists
                .iter()
                .map(|list| list.iter().map(&mut f).collect())
                .collect()
        };
        let segments = nested(&self.segments)?;
        let levels = nested(&self.levels)?;
        let rules = nested(&self.rules)?;
        let overlays = self
            .overlays
            .iter()
            .map(|[no, yes]| Ok([f(no)?, f(yes)?]))
            .collect::<Result<_, E>>()?;
        Ok(Components {
            segments,
            levels,
            overlays,
            rules,
        })
    }
}

/// An Observation component with `code` and `value`.
fn component(
    code: &CodeableConcept,
    value: ObservationComponentValue,
) -> Result<ObservationComponent, String> {
    ObservationComponent::builder()
        .code(code.clone())
        .value(value)
        .build()
        .map_err(|e| e.to_string())
}

/// A segment attribute as an Observation component: the attribute's code in the model's
/// `attribute` CodeSystem, its value as a UCUM Quantity, an integer, or a code in the
/// attribute's own CodeSystem (`…/CodeSystem/attribute/{code}`).
fn attribute_component(plan: &Plan, a: &Attribute) -> Result<ObservationComponent, String> {
    let system = model_system(plan, "attribute");
    let value = match (&a.quantity, a.integer, &a.concept) {
        (Some(q), _, _) => ObservationComponentValue::Quantity(
            Quantity::builder()
                .value(q.value)
                .unit(q.unit.clone())
                .system(UCUM.to_owned())
                .code(q.unit.clone())
                .build()
                .map_err(|e| e.to_string())?,
        ),
        (None, Some(n), _) => ObservationComponentValue::Integer(n),
        (None, None, Some(c)) => ObservationComponentValue::CodeableConcept(concept(
            &format!("{system}/{}", a.code),
            &c.code,
            &c.display,
        )?),
        (None, None, None) => return Err(format!("attribute `{}` has no value", a.code)),
    };
    ObservationComponent::builder()
        .code(concept_fi(&system, &a.code, &a.display)?)
        .value(value)
        .build()
        .map_err(|e| e.to_string())
}

/// `meta` claiming segmentti's profile `id`, so validators and EHRs know what to hold the
/// resource to.
pub(crate) fn meta(id: &str) -> Result<Meta, String> {
    Meta::builder()
        .profile(vec![Some(format!("{PROFILES}/{id}"))])
        .build()
        .map_err(|e| e.to_string())
}

/// UCUM, the units of Quantity values.
const UCUM: &str = "http://unitsofmeasure.org";

/// A literal reference `Type/id`.
pub(crate) fn reference(target: &str) -> Result<Reference, String> {
    Reference::builder()
        .reference(target.to_owned())
        .build()
        .map_err(|e| e.to_string())
}

/// The code system of a model's segments, criteria, overlays (and, below it, levels).
pub(crate) fn model_system(plan: &Plan, what: &str) -> String {
    format!("{}/CodeSystem/{what}", plan.mapping.canonical)
}

/// A CodeableConcept of one coding with `display`: for the HL7 codes EHRs filter by, the code
/// system's own (English) display, which a validator holds to the code system's.
fn hl7_concept(system: &str, code: &str, display: &str) -> Result<CodeableConcept, String> {
    let coding = Coding::builder()
        .system(system.to_owned())
        .code(code.to_owned())
        .display(display.to_owned())
        .build()
        .map_err(|e| e.to_string())?;
    CodeableConcept::builder()
        .coding(vec![Some(coding)])
        .build()
        .map_err(|e| e.to_string())
}

/// `Observation.category` of every assessment: `survey` ("assessment tool or survey
/// instrument"), the category EHRs list assessments under.
fn observation_category() -> Result<CodeableConcept, String> {
    hl7_concept(OBSERVATION_CATEGORY_SYSTEM, "survey", "Survey")
}

/// The `category` of every Flag of `plan`'s model: its `flag_category` (checked when the model
/// was loaded), `admin` when it names none.
pub(crate) fn flag_category(plan: &Plan) -> Result<CodeableConcept, String> {
    let code = plan
        .mapping
        .flag_category
        .as_deref()
        .unwrap_or(DEFAULT_FLAG_CATEGORY);
    let (code, display) = FLAG_CATEGORIES
        .iter()
        .find(|(c, _)| *c == code)
        .ok_or_else(|| format!("`{code}` is not a Flag category"))?;
    hl7_concept(FLAG_CATEGORY_SYSTEM, code, display)
}

/// segmentti as the Device that made an assessment: a logical reference (by identifier, since
/// no Device resource is written) with the type and a display.
pub(crate) fn device() -> Result<Reference, String> {
    Reference::builder()
        .r#type("Device".to_owned())
        .identifier(
            Identifier::builder()
                .system(DEVICE_SYSTEM.to_owned())
                .value(DEVICE_NAME.to_owned())
                .build()
                .map_err(|e| e.to_string())?,
        )
        .display(DEVICE_NAME.to_owned())
        .build()
        .map_err(|e| e.to_string())
}

/// The display of the component naming a sub-segment's parent.
pub(crate) fn parent_segment() -> Text {
    Text {
        fi: "Pääsegmentti".into(),
        sv: "Huvudsegment".into(),
        en: "Parent segment".into(),
    }
}

/// A FHIR `date` for the as-of day.
pub(crate) fn fhir_date(day: Day) -> fhir_sdk::Date {
    fhir_sdk::Date::Date(day.to_date())
}
