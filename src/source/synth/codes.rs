//! The code tables the synthetic population draws from: contact and service types, diagnoses,
//! municipalities and names, each code with its display and source. Finnish data use THL's code
//! systems (ICD-10 Finnish edition, ICPC-2, AvoHILMO contact and service types); international
//! data use SNOMED CT, one SNOMED code per Finnish code, so the same model runs on both.

/// ICD-10 Finnish edition.
pub(crate) const ICD10FI: &str = "urn:oid:1.2.246.537.6.1";
/// ICPC-2, Finnish edition.
pub(crate) const ICPC2: &str = "urn:oid:1.2.246.537.6.31";
/// AvoHILMO contact type (yhteystapa).
pub(crate) const YHTEYSTAPA: &str = "urn:oid:1.2.246.537.5.40160";
/// AvoHILMO service type (palvelumuoto).
pub(crate) const PALVELUMUOTO: &str = "urn:oid:1.2.246.537.6.2015";
/// SNOMED CT.
pub(crate) const SNOMED: &str = "http://snomed.info/sct";
/// HL7 v3 ActCode (Encounter.class).
pub(crate) const ACTCODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
/// Condition clinical status.
pub(crate) const CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/condition-clinical";
/// Condition verification status.
pub(crate) const VERIFICATION: &str = "http://terminology.hl7.org/CodeSystem/condition-ver-status";
/// Finnish municipality codes (Statistics Finland, via the fi-base municipality extension).
pub(crate) const MUNICIPALITY: &str = "urn:oid:1.2.246.537.6.21";
/// The fi-base extension carrying a Patient's municipality.
pub(crate) const MUNICIPALITY_EXTENSION: &str =
    "https://hl7.fi/fhir/finnish-base-profiles/StructureDefinition/municipality-code";
/// The Finnish personal identity code.
pub(crate) const HETU: &str = "urn:oid:1.2.246.21";
/// LOINC.
pub(crate) const LOINC: &str = "http://loinc.org";
/// HL7 episode-of-care types (EpisodeOfCare.type of international data).
pub(crate) const EPISODE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/episodeofcare-type";
/// HL7 Observation categories.
pub(crate) const OBSERVATION_CATEGORY: &str =
    "http://terminology.hl7.org/CodeSystem/observation-category";

/// A code with its display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Code {
    /// The code.
    pub code: &'static str,
    /// Its display.
    pub display: &'static str,
}

const fn c(code: &'static str, display: &'static str) -> Code {
    Code { code, display }
}

/// An Encounter class with its Finnish contact type and international contact type.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ContactKind {
    /// HL7 v3 ActCode.
    pub class: Code,
    /// AvoHILMO yhteystapa (source: THL AvoHILMO Yhteystapa).
    pub yhteystapa: Code,
    /// SNOMED CT encounter type (source: SNOMED CT International).
    pub snomed: Code,
}

/// Ambulatory visit.
pub(crate) const AMB: ContactKind = ContactKind {
    class: c("AMB", "ambulatory"),
    yhteystapa: c("R10", "Asiakkaan käynti vastaanotolla"),
    snomed: c("185349003", "Encounter for check up"),
};
/// Home visit.
pub(crate) const HH: ContactKind = ContactKind {
    class: c("HH", "home health"),
    yhteystapa: c("R20", "Kotikäynti"),
    snomed: c("439708006", "Home visit"),
};
/// Phone or digital contact.
pub(crate) const VR: ContactKind = ContactKind {
    class: c("VR", "virtual"),
    yhteystapa: c("R30", "Puhelinyhteys"),
    snomed: c("185316007", "Indirect encounter"),
};
/// Emergency visit.
pub(crate) const EMER: ContactKind = ContactKind {
    class: c("EMER", "emergency"),
    yhteystapa: c("R10", "Asiakkaan käynti vastaanotolla"),
    snomed: c("50849002", "Emergency room admission"),
};
/// Inpatient stay.
pub(crate) const IMP: ContactKind = ContactKind {
    class: c("IMP", "inpatient encounter"),
    yhteystapa: c("R10", "Asiakkaan käynti vastaanotolla"),
    snomed: c("32485007", "Hospital admission"),
};

/// A service type with its service area and international equivalent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Service {
    /// AvoHILMO palvelumuoto (source: THL AvoHILMO Palvelumuoto).
    pub palvelumuoto: Code,
    /// SNOMED CT service type (source: SNOMED CT International).
    pub snomed: Code,
    /// Health, social welfare or oral health.
    pub area: Area,
}

/// A service area: each has its own information system in a wellbeing county, so
/// `synth --service-area` gives one system's view of the population.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// Health care.
    Health,
    /// Social welfare.
    Social,
    /// Oral health care.
    Oral,
}

const GP: Code = c("394814009", "General practice (specialty)");
const MEDICINE: Code = c("394802001", "General medicine (specialty)");
const PSYCHIATRY: Code = c("394587001", "Psychiatry (specialty)");
const SOCIAL: Code = c("410001006", "Social service (qualifier value)");

/// General practice.
pub(crate) const T11: Service = Service {
    palvelumuoto: c("T11", "Yleislääkäritason avosairaanhoito"),
    snomed: GP,
    area: Area::Health,
};
/// Home nursing.
pub(crate) const T22: Service = Service {
    palvelumuoto: c("T22", "Kotisairaanhoito"),
    snomed: MEDICINE,
    area: Area::Health,
};
/// Mental-health work.
pub(crate) const T30: Service = Service {
    palvelumuoto: c("T30", "Mielenterveystyö"),
    snomed: PSYCHIATRY,
    area: Area::Health,
};
/// Substance-use work.
pub(crate) const T40: Service = Service {
    palvelumuoto: c("T40", "Päihdetyö"),
    snomed: PSYCHIATRY,
    area: Area::Health,
};
/// Oral health care.
pub(crate) const T60: Service = Service {
    palvelumuoto: c("T60", "Suun terveydenhuolto"),
    snomed: c("722163006", "Dentistry (specialty)"),
    area: Area::Oral,
};
/// Social work.
pub(crate) const T71: Service = Service {
    palvelumuoto: c("T71", "Sosiaalityö"),
    snomed: SOCIAL,
    area: Area::Social,
};
/// Home care.
pub(crate) const T72: Service = Service {
    palvelumuoto: c("T72", "Kotihoito"),
    snomed: SOCIAL,
    area: Area::Social,
};
/// Disability services.
pub(crate) const T73: Service = Service {
    palvelumuoto: c("T73", "Vammaispalvelut"),
    snomed: SOCIAL,
    area: Area::Social,
};
/// Specialised care (emergency and inpatient).
pub(crate) const T80: Service = Service {
    palvelumuoto: c("T80", "Erikoissairaanhoito"),
    snomed: MEDICINE,
    area: Area::Health,
};

/// The social-welfare services a decision (an EpisodeOfCare) grants in Finnish data.
pub(crate) const DECIDED: [Service; 3] = [T71, T72, T73];

/// Home care as an HL7 episode-of-care type: international data tell only home care apart
/// among social-welfare services (their service type is one SNOMED code for all three).
pub(crate) const HOME_AND_COMMUNITY_CARE: Code = c("hacc", "Home and Community Care");

/// The Barthel Index total (0–100, higher is more independent), in 5-point steps.
pub(crate) const BARTHEL: Code = c("96761-2", "Total score Barthel Index");

/// Oral-status findings recorded at an oral-health contact (Observation.code), with their
/// system, from the most common.
pub(crate) const ORAL_FINDINGS: [(&str, Code); 3] = [
    (SNOMED, c("80967001", "Dental caries")),
    (SNOMED, c("109629007", "Periodontal pocket")),
    (LOINC, c("32881-5", "Periodontal attachment loss")),
];

/// Every service type, for telling an Encounter's area from its `serviceType`.
pub(crate) const SERVICES: [Service; 9] = [T11, T22, T30, T40, T60, T71, T72, T73, T80];

impl Area {
    /// The name used on the command line and in local ids.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Health => "health",
            Self::Social => "social",
            Self::Oral => "oral",
        }
    }
}

/// A diagnosis: ICD-10 (source: ICD-10 Finnish edition, THL), an ICPC-2 equivalent where one is
/// clean (source: ICPC-2, THL), and SNOMED CT (source: SNOMED CT International).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Diagnosis {
    /// ICD-10.
    pub icd10: Code,
    /// ICPC-2.
    pub icpc2: Option<Code>,
    /// SNOMED CT.
    pub snomed: Code,
}

const fn d(icd10: Code, icpc2: Option<Code>, snomed: Code) -> Diagnosis {
    Diagnosis {
        icd10,
        icpc2,
        snomed,
    }
}

/// Hypertension: common, and on its own no long-term illness a model counts.
pub(crate) const HYPERTENSION: Diagnosis = d(
    c("I10", "Verenpainetauti"),
    Some(c("K86", "Verenpainetauti")),
    c("38341003", "Hypertensive disorder"),
);

/// Long-term illnesses that models count, most common first.
pub(crate) const CHRONIC: [Diagnosis; 7] = [
    d(
        c("E11.9", "Tyypin 2 diabetes ilman komplikaatioita"),
        Some(c("T90", "Diabetes, muu")),
        c("44054006", "Diabetes mellitus type 2"),
    ),
    d(
        c("J45.9", "Astma, määrittämätön"),
        Some(c("R96", "Astma")),
        c("195967001", "Asthma"),
    ),
    d(
        c("I50.9", "Sydämen vajaatoiminta, määrittämätön"),
        Some(c("K77", "Sydämen vajaatoiminta")),
        c("84114007", "Heart failure"),
    ),
    d(
        c("J44.9", "Keuhkoahtaumatauti, määrittämätön"),
        Some(c("R95", "Keuhkoahtaumatauti")),
        c("13645005", "Chronic obstructive lung disease"),
    ),
    d(
        c("F03", "Määrittämätön dementia"),
        Some(c("P70", "Dementia")),
        c("52448006", "Dementia"),
    ),
    d(
        c("N18.4", "Krooninen munuaisten vajaatoiminta, vaikea"),
        None,
        c("709044004", "Chronic kidney disease"),
    ),
    d(
        c("C50.9", "Rintasyöpä, määrittämätön"),
        None,
        c("254837009", "Malignant neoplasm of breast"),
    ),
];

/// Mental-health disorders.
pub(crate) const MENTAL: [Diagnosis; 2] = [
    d(
        c("F32.1", "Keskivaikea masennustila"),
        Some(c("P76", "Masennus")),
        c("35489007", "Depressive disorder"),
    ),
    d(
        c("F41.1", "Yleistynyt ahdistuneisuushäiriö"),
        Some(c("P74", "Ahdistuneisuushäiriö")),
        c("197480006", "Anxiety disorder"),
    ),
];

/// Oral-health diagnoses: caries, gingivitis, periodontitis, a periapical abscess (urgent),
/// tooth loss. ICPC-2 has one code for teeth and gum disease (D82).
pub(crate) const ORAL: [Diagnosis; 5] = [
    d(
        c("K02.1", "Hampaan dentiinikaries"),
        Some(c("D82", "Hampaiden/ikenien sairaus")),
        c("80967001", "Dental caries"),
    ),
    d(
        c("K05.1", "Krooninen ientulehdus"),
        Some(c("D82", "Hampaiden/ikenien sairaus")),
        c("66383009", "Gingivitis"),
    ),
    d(
        c("K05.3", "Krooninen parodontiitti"),
        Some(c("D82", "Hampaiden/ikenien sairaus")),
        c("41565005", "Periodontitis"),
    ),
    d(
        c("K04.7", "Periapikaalinen paise ilman fisteliä"),
        Some(c("D82", "Hampaiden/ikenien sairaus")),
        c("109641008", "Periapical abscess"),
    ),
    d(
        c("K08.1", "Hampaiden menetys"),
        Some(c("D82", "Hampaiden/ikenien sairaus")),
        c("234947003", "Loss of teeth"),
    ),
];

/// Substance-use disorders.
pub(crate) const SUBSTANCE: Diagnosis = d(
    c("F10.2", "Alkoholiriippuvuus"),
    Some(c("P15", "Alkoholin pitkäaikainen väärinkäyttö")),
    c("7200002", "Alcoholism"),
);

/// Social circumstances recorded as diagnoses.
pub(crate) const SOCIAL_RISK: [Diagnosis; 2] = [
    d(c("Z59.0", "Asunnottomuus"), None, c("32911000", "Homeless")),
    d(
        c("Z60.2", "Yksin asuminen"),
        None,
        c("105529008", "Lives alone"),
    ),
];

/// Short illnesses of light users.
pub(crate) const ACUTE: [Diagnosis; 4] = [
    d(
        c("J06.9", "Äkillinen ylähengitystieinfektio"),
        Some(c("R74", "Äkillinen ylähengitystieinfektio")),
        c("54150009", "Upper respiratory infection"),
    ),
    d(
        c("M54.5", "Alaselän kipu"),
        Some(c("L03", "Alaselän oireet")),
        c("279039007", "Low back pain"),
    ),
    d(
        c("N39.0", "Virtsatieinfektio"),
        Some(c("U71", "Virtsarakon tulehdus")),
        c("68566005", "Urinary tract infectious disease"),
    ),
    d(
        c("S93.4", "Nilkan nyrjähdys"),
        Some(c("L77", "Nilkan nyrjähdys")),
        c("44465007", "Sprain of ankle"),
    ),
];

/// Municipalities of Päijät-Häme with a population weight.
pub(crate) const MUNICIPALITIES: [(Code, u32); 10] = [
    (c("398", "Lahti"), 120),
    (c("098", "Hollola"), 23),
    (c("560", "Orimattila"), 16),
    (c("111", "Heinola"), 18),
    (c("016", "Asikkala"), 8),
    (c("142", "Iitti"), 7),
    (c("316", "Kärkölä"), 4),
    (c("781", "Sysmä"), 4),
    (c("576", "Padasjoki"), 3),
    (c("081", "Hartola"), 3),
];

/// Family names.
pub(crate) const FAMILY: [&str; 16] = [
    "Korhonen",
    "Virtanen",
    "Mäkinen",
    "Nieminen",
    "Mäkelä",
    "Hämäläinen",
    "Laine",
    "Heikkinen",
    "Koskinen",
    "Järvinen",
    "Lehtonen",
    "Lehtinen",
    "Saarinen",
    "Salminen",
    "Heinonen",
    "Niemi",
];
/// Given names of women.
pub(crate) const GIVEN_F: [&str; 10] = [
    "Aino", "Helmi", "Sofia", "Maria", "Liisa", "Anna", "Kaarina", "Eeva", "Johanna", "Emilia",
];
/// Given names of men.
pub(crate) const GIVEN_M: [&str; 10] = [
    "Juhani", "Olavi", "Antero", "Mikael", "Johannes", "Matti", "Kalevi", "Tapani", "Eino", "Onni",
];

/// CVX vaccine codes (Immunization.vaccineCode, as Synthea writes them).
pub(crate) const CVX: &str = "http://hl7.org/fhir/sid/cvx";
/// RxNorm (MedicationRequest medicines of international data, as Synthea writes them).
pub(crate) const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
/// WHO ATC (MedicationRequest medicines of Finnish data).
pub(crate) const ATC: &str = "http://www.whocc.no/atc";
/// HL7 organization types.
pub(crate) const ORGANIZATION_TYPE: &str =
    "http://terminology.hl7.org/CodeSystem/organization-type";

/// Procedures of `synth --real-shapes`, a type no model reads (source: SNOMED CT
/// International, codes Synthea uses).
pub(crate) const PROCEDURES: [Code; 5] = [
    c("430193006", "Medication reconciliation (procedure)"),
    c(
        "710824005",
        "Assessment of health and social care needs (procedure)",
    ),
    c("171207006", "Depression screening (procedure)"),
    c("76601001", "Intramuscular injection (procedure)"),
    c("73761001", "Colonoscopy (procedure)"),
];

/// Vaccines of `synth --real-shapes` (source: CDC CVX, codes Synthea uses).
pub(crate) const VACCINES: [Code; 4] = [
    c("140", "Influenza, seasonal, injectable, preservative free"),
    c("113", "Td (adult) preservative free"),
    c("133", "Pneumococcal conjugate PCV 13"),
    c(
        "208",
        "SARS-COV-2 (COVID-19) vaccine, mRNA, spike protein, LNP, preservative free, 30 mcg/0.3mL dose",
    ),
];

/// Medicines of `synth --real-shapes`: ATC for Finnish data (source: WHO ATC index) and RxNorm
/// for international data (source: NLM RxNorm, codes Synthea uses).
pub(crate) const MEDICINES: [(Code, Code); 5] = [
    (
        c("A10BA02", "Metformiini"),
        c(
            "860975",
            "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet",
        ),
    ),
    (
        c("C09AA03", "Lisinopriili"),
        c("314076", "lisinopril 10 MG Oral Tablet"),
    ),
    (
        c("C10AA01", "Simvastatiini"),
        c("312961", "Simvastatin 20 MG Oral Tablet"),
    ),
    (
        c("C08CA01", "Amlodipiini"),
        c("197361", "Amlodipine 5 MG Oral Tablet"),
    ),
    (
        c("N02BE01", "Parasetamoli"),
        c("313782", "Acetaminophen 325 MG Oral Tablet"),
    ),
];

/// More specific SNOMED CT codes (descendants) of the tables' diagnoses, as Synthea codes them:
/// the table's code and its descendant (source: SNOMED CT International). Hypertension's table
/// code (38341003) is older Synthea's; newer Synthea writes essential hypertension.
pub(crate) const DESCENDANTS: [(&str, Code); 4] = [
    (
        "84114007",
        c("88805009", "Chronic congestive heart failure (disorder)"),
    ),
    (
        "709044004",
        c("431856006", "Chronic kidney disease stage 2 (disorder)"),
    ),
    (
        "13645005",
        c("185086009", "Chronic obstructive bronchitis (disorder)"),
    ),
    (
        "38341003",
        c("59621000", "Essential hypertension (disorder)"),
    ),
];

/// Every diagnosis of the tables.
pub(crate) fn diagnoses() -> impl Iterator<Item = Diagnosis> {
    CHRONIC
        .into_iter()
        .chain([HYPERTENSION, SUBSTANCE])
        .chain(MENTAL)
        .chain(ORAL)
        .chain(SOCIAL_RISK)
        .chain(ACUTE)
}
