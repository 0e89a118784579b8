//! Cases a county can run: small hand-written clients kept beside a model
//! (`mappings/{model}/cases/*.yaml`), each with the segment, criterion levels and overlays it
//! must get. A case is turned into real FHIR resources and goes through the same extraction,
//! fold and evaluation as production data, so a passing case says something about the whole
//! path. `segmentti test-mapping` runs them; a county that edits a threshold sees which cases
//! change and why. This module builds resources in memory; it reads only the case files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::assess::eval::{self, Lang};
use crate::fhir::day::Day;
use crate::model::plan::Plan;
use crate::model::yaml::{self, Diagnostic, DiagnosticAt};
use crate::model::{self, MappingError};
use crate::record::{Fold, extract};

/// One case as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Case {
    /// What the case shows.
    pub description: String,
    /// The assessment date.
    pub as_of: Day,
    /// The client.
    #[serde(default)]
    pub patient: CasePatient,
    /// Contacts.
    #[serde(default)]
    pub encounters: Vec<CaseEncounter>,
    /// Diagnoses.
    #[serde(default)]
    pub conditions: Vec<CaseCondition>,
    /// Findings (functional ability, oral status).
    #[serde(default)]
    pub observations: Vec<CaseObservation>,
    /// Periods of service (social-welfare service decisions).
    #[serde(default)]
    pub episodes: Vec<CaseEpisode>,
    /// Claims, each with its total in the model's currency.
    #[serde(default)]
    pub claims: Vec<CaseBill>,
    /// ExplanationOfBenefits, each with its `submitted` total in the model's currency.
    #[serde(default)]
    pub explanations: Vec<CaseBill>,
    /// Population thresholds of `top_percent` tests, by feature; without one such a test never holds.
    #[serde(default)]
    pub thresholds: BTreeMap<String, f64>,
    /// What the client must get.
    pub expect: Expect,
}

/// The case's Patient.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CasePatient {
    /// Birth date.
    pub birth_date: Option<Day>,
}

/// One contact, or `repeat` of them `every_days` apart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CaseEncounter {
    /// HL7 v3 ActCode class (AMB, HH, VR, EMER, IMP).
    pub class: String,
    /// Contact type as `system|code` (system may be a short name of the model's `systems`).
    #[serde(rename = "type")]
    pub contact_type: Option<String>,
    /// Service type as `system|code`.
    pub service: Option<String>,
    /// First day.
    pub start: Day,
    /// Length in days (inpatient stays).
    #[serde(default)]
    pub days: u32,
    /// How many such contacts.
    #[serde(default = "one")]
    pub repeat: u32,
    /// Days between repeats.
    #[serde(default = "seven")]
    pub every_days: u32,
    /// Encounter status (default `finished`; `entered-in-error`, `cancelled` and `planned` do not count).
    #[serde(default = "finished")]
    pub status: String,
}

fn finished() -> String {
    "finished".into()
}

fn one() -> u32 {
    1
}

fn seven() -> u32 {
    7
}

/// One diagnosis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CaseCondition {
    /// `system|code`.
    pub code: String,
    /// Clinical status (default `active`).
    #[serde(default = "active")]
    pub status: String,
    /// Verification status (`confirmed`, `refuted`, `entered-in-error`, …); none when absent.
    #[serde(default)]
    pub verification: Option<String>,
    /// Further codings of the same Condition, each `system|code` (one illness coded in several systems).
    #[serde(default)]
    pub also: Vec<String>,
    /// Onset day.
    pub onset: Option<Day>,
}

fn active() -> String {
    "active".into()
}

/// One finding.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CaseObservation {
    /// `system|code`.
    pub code: String,
    /// The day it was made.
    pub effective: Day,
    /// Status (default `final`).
    #[serde(default = "final_status")]
    pub status: String,
    /// A score, written as `valueQuantity` (a functional-ability score); none for a finding.
    #[serde(default)]
    pub value: Option<f64>,
}

fn final_status() -> String {
    "final".into()
}

/// One period of service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CaseEpisode {
    /// The service as `system|code`.
    #[serde(rename = "type")]
    pub service: String,
    /// First day.
    pub start: Day,
    /// Last day; open without one.
    pub end: Option<Day>,
}

/// One Claim or ExplanationOfBenefit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CaseBill {
    /// `billablePeriod.start`.
    pub start: Day,
    /// The total.
    pub total: f64,
    /// Status (default `active`).
    #[serde(default = "active")]
    pub status: String,
}

/// What a case expects.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Expect {
    /// Segment code.
    pub segment: String,
    /// Tree node id.
    pub node: Option<String>,
    /// Criterion levels (only those listed are checked).
    #[serde(default)]
    pub levels: BTreeMap<String, String>,
    /// Overlays that hold, with the rules that hold; an overlay not listed must not hold.
    pub overlays: Option<BTreeMap<String, Vec<String>>>,
    /// Feature values (only those listed are checked), such as the cost a Claim gives.
    #[serde(default)]
    pub features: BTreeMap<String, f64>,
}

/// One case's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The case file.
    pub file: PathBuf,
    /// Its description.
    pub description: String,
    /// Differences from what was expected; empty when the case passes.
    pub failures: Vec<String>,
    /// The tree node that placed the client, when it was reached.
    pub node: Option<String>,
    /// The overlay rules that held, as (overlay code, rule id).
    pub rules: Vec<(String, String)>,
    /// The explanation, for failures.
    pub explanation: Option<String>,
}

/// Why cases could not be run.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// The model is invalid.
    #[error(transparent)]
    Mapping(#[from] MappingError),
    /// A case file could not be read or is malformed.
    #[error("{0}")]
    Case(String),
}

/// The cases folder of a model file: `mappings/x.yaml` → `mappings/x/cases/`.
fn cases_dir(model: &Path) -> PathBuf {
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    model.with_file_name(stem).join("cases")
}

/// Runs every case of the model at `model`.
pub fn run_all(model: &Path) -> Result<Vec<Outcome>, CaseError> {
    let mapping = model::load_file(model)?;
    let dir = cases_dir(model);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| {
            CaseError::Case(format!(
                "cannot read {}: {e}\nhint: keep the model's cases in {}",
                dir.display(),
                dir.display()
            ))
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(CaseError::Case(format!(
            "no cases in {}\nhint: add at least one case per tree node",
            dir.display()
        )));
    }
    let mut out = Vec::new();
    for file in files {
        let case = read_case(&file)?;
        let plan = Plan::compile(mapping.clone(), case.as_of).map_err(|e| {
            CaseError::Case(format!(
                "{}: the model does not compile: {e:?}",
                file.display()
            ))
        })?;
        out.push(run_case(&plan, &file, &case)?);
    }
    Ok(out)
}

fn read_case(file: &Path) -> Result<Case, CaseError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CaseError::Case(format!("cannot read {}: {e}", file.display())))?;
    let fail = |d: Diagnostic| {
        CaseError::Case(
            DiagnosticAt {
                path: file,
                diagnostic: &d,
            }
            .to_string(),
        )
    };
    let spanned = yaml::parse_yaml(&text).map_err(fail)?;
    serde_json::from_value(spanned.value.clone()).map_err(|e| {
        fail(Diagnostic::new(
            "",
            format!("not a valid case: {e}"),
            "compare with the other cases of the model",
        ))
    })
}

fn coding(plan: &Plan, text: &str, file: &Path) -> Result<(String, String), CaseError> {
    let Some((system, code)) = text.split_once('|') else {
        return Err(CaseError::Case(format!(
            "{}: `{text}` is not `system|code`",
            file.display()
        )));
    };
    // A URL or URN has a colon; a name without one is a short name of the model's `systems`
    // (an included file's short names are its own, and are not visible here).
    let system = match plan.mapping.systems.get(system) {
        Some(url) => url.clone(),
        None if system.contains(':') => system.to_owned(),
        None => {
            return Err(CaseError::Case(format!(
                "{}: `{system}` in `{text}` is not a short name of model {}'s systems; write the system's URL (`http://loinc.org|96761-2`) or add the short name to the model's `systems`",
                file.display(),
                plan.mapping.id
            )));
        }
    };
    Ok((system, code.to_owned()))
}

/// The FHIR resources of a case, in the shape real data has.
pub(crate) fn resources(plan: &Plan, case: &Case, file: &Path) -> Result<Vec<Value>, CaseError> {
    let mut out = vec![
        json!({"resourceType": "Patient", "id": "case", "birthDate": case.patient.birth_date}),
    ];
    let subject = json!({"reference": "Patient/case"});
    for (i, e) in case.encounters.iter().enumerate() {
        for r in 0..e.repeat {
            let start = e
                .start
                .plus_days(i32::try_from(r * e.every_days).unwrap_or(0));
            let mut enc = json!({
                "resourceType": "Encounter", "id": format!("e{i}-{r}"), "status": e.status,
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": e.class},
                "subject": subject,
                "period": {"start": start.to_string(), "end": start.plus_days(i32::try_from(e.days).unwrap_or(0)).to_string()},
            });
            if let Some(t) = &e.contact_type {
                let (system, code) = coding(plan, t, file)?;
                enc["type"] = json!([{"coding": [{"system": system, "code": code}]}]);
            }
            if let Some(s) = &e.service {
                let (system, code) = coding(plan, s, file)?;
                enc["serviceType"] = json!({"coding": [{"system": system, "code": code}]});
            }
            out.push(enc);
        }
    }
    for (i, c) in case.conditions.iter().enumerate() {
        let mut codings = Vec::new();
        for text in std::iter::once(&c.code).chain(&c.also) {
            let (system, code) = coding(plan, text, file)?;
            codings.push(json!({"system": system, "code": code}));
        }
        let mut cond = json!({
            "resourceType": "Condition", "id": format!("c{i}"), "subject": subject,
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": c.status}]},
            "code": {"coding": codings},
        });
        if let Some(v) = &c.verification {
            cond["verificationStatus"] = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": v}]});
        }
        if let Some(onset) = c.onset {
            cond["onsetDateTime"] = json!(onset.to_string());
        }
        out.push(cond);
    }
    for (i, o) in case.observations.iter().enumerate() {
        let (system, code) = coding(plan, &o.code, file)?;
        let mut obs = json!({
            "resourceType": "Observation", "id": format!("o{i}"), "status": o.status,
            "subject": subject, "code": {"coding": [{"system": system, "code": code}]},
            "effectiveDateTime": o.effective.to_string(),
        });
        if let Some(value) = o.value {
            obs["valueQuantity"] = json!({"value": value});
        }
        out.push(obs);
    }
    let patient = json!({"reference": "Patient/case"});
    for (i, e) in case.episodes.iter().enumerate() {
        let (system, code) = coding(plan, &e.service, file)?;
        let mut period = json!({"start": e.start.to_string()});
        if let Some(end) = e.end {
            period["end"] = json!(end.to_string());
        }
        out.push(json!({
            "resourceType": "EpisodeOfCare", "id": format!("ep{i}"), "status": if e.end.is_some() { "finished" } else { "active" },
            "patient": patient, "type": [{"coding": [{"system": system, "code": code}]}], "period": period,
        }));
    }
    let currency = plan.mapping.prices.as_ref().map(|p| p.currency.clone());
    for (i, c) in case.claims.iter().enumerate() {
        out.push(json!({
            "resourceType": "Claim", "id": format!("cl{i}"), "status": c.status, "patient": patient,
            "billablePeriod": {"start": c.start.to_string()}, "created": c.start.to_string(),
            "total": {"value": c.total, "currency": currency},
        }));
    }
    for (i, x) in case.explanations.iter().enumerate() {
        out.push(json!({
            "resourceType": "ExplanationOfBenefit", "id": format!("x{i}"), "status": x.status, "patient": patient,
            "billablePeriod": {"start": x.start.to_string()}, "created": x.start.to_string(),
            "total": [{
                "category": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adjudication", "code": "submitted"}]},
                "amount": {"value": x.total, "currency": currency},
            }],
        }));
    }
    Ok(out)
}

/// Runs one case.
fn run_case(plan: &Plan, file: &Path, case: &Case) -> Result<Outcome, CaseError> {
    let mut fold = Fold::new(plan);
    for resource in resources(plan, case, file)? {
        let fact = extract::extract_value(plan, &resource)
            .map_err(|r| CaseError::Case(format!("{}: {r}", file.display())))?;
        fold.apply(fact)
            .map_err(|r| CaseError::Case(format!("{}: {r}", file.display())))?;
    }
    let (clients, _) = fold.into_clients();
    let record = clients
        .get("case")
        .ok_or_else(|| CaseError::Case(format!("{}: the case has no client", file.display())))?;
    let m = &plan.mapping;
    let mut failures = Vec::new();
    for name in case.thresholds.keys() {
        if !m.features.iter().any(|f| &f.id == name) {
            failures.push(format!("thresholds: unknown feature `{name}`"));
        }
    }
    let thresholds: Vec<Option<f64>> = plan
        .percentiles
        .iter()
        .map(|&(f, _)| case.thresholds.get(&plan.features[f].id).copied())
        .collect();
    let Some(a) = eval::assess(plan, record.values(plan), &thresholds) else {
        failures.push("the client reaches no tree node".into());
        return Ok(Outcome {
            file: file.to_owned(),
            description: case.description.clone(),
            failures,
            node: None,
            rules: Vec::new(),
            explanation: None,
        });
    };
    let segment = m.segments[a.segment].code.to_string();
    if segment != case.expect.segment {
        failures.push(format!(
            "segment: expected {}, got {segment}",
            case.expect.segment
        ));
    }
    for (name, expected) in &case.expect.features {
        match plan.features.iter().position(|f| &f.id == name) {
            None => failures.push(format!("features: unknown feature `{name}`")),
            Some(f) => match a.features[f] {
                Some(got) if (got - expected).abs() < 1e-6 => {}
                got => failures.push(format!("{name}: expected {expected}, got {got:?}")),
            },
        }
    }
    let node = m.tree[a.node].id.clone();
    if let Some(expected) = &case.expect.node
        && *expected != node
    {
        failures.push(format!("node: expected {expected}, got {node}"));
    }
    for (criterion, level) in &case.expect.levels {
        match m.criteria.iter().position(|c| &c.id == criterion) {
            None => failures.push(format!("levels: unknown criterion `{criterion}`")),
            Some(c) => {
                let got = &m.criteria[c].levels[a.levels[c]].code;
                if got != level {
                    failures.push(format!("{criterion}: expected {level}, got {got}"));
                }
            }
        }
    }
    let rules: Vec<(String, String)> = a
        .overlays
        .iter()
        .enumerate()
        .flat_map(|(o, held)| {
            held.iter().map(move |&r| {
                (
                    m.overlays[o].code.clone(),
                    m.overlays[o].rules[r].id.clone(),
                )
            })
        })
        .collect();
    if let Some(expected) = &case.expect.overlays {
        let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (overlay, rule) in &rules {
            got.entry(overlay.clone()).or_default().push(rule.clone());
        }
        if &got != expected {
            failures.push(format!("overlays: expected {expected:?}, got {got:?}"));
        }
    }
    let explanation = (!failures.is_empty())
        .then(|| eval::explain(plan, "case", record, &a, Lang::En, &[]).render());
    Ok(Outcome {
        file: file.to_owned(),
        description: case.description.clone(),
        failures,
        node: Some(node),
        rules,
        explanation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_gives_encounter_status_verification_and_several_codings() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/paijat-sote.yaml");
        let mapping = model::load_file(&path).expect("model loads");
        let plan = Plan::compile(mapping, "2026-01-01".parse().expect("day")).expect("compiles");
        let case: Case = serde_json::from_value(json!({
            "description": "fields", "as_of": "2026-01-01", "patient": {"birth_date": "1985-06-15"},
            "encounters": [
                {"class": "AMB", "start": "2025-06-01"},
                {"class": "AMB", "start": "2025-06-02", "status": "entered-in-error"},
            ],
            "conditions": [
                {"code": "icd10fi|I50", "also": ["snomed|84114007"], "verification": "refuted"},
                {"code": "icd10fi|E11"},
            ],
            "expect": {"segment": "x", "features": {"contacts_12m": 1, "chronic_conditions": 1}},
        }))
        .expect("case parses");
        let out = resources(&plan, &case, Path::new("t.yaml")).expect("resources");
        let encounters: Vec<&Value> = out
            .iter()
            .filter(|r| r["resourceType"] == "Encounter")
            .collect();
        assert_eq!(encounters[0]["status"], "finished");
        assert_eq!(encounters[1]["status"], "entered-in-error");
        let conditions: Vec<&Value> = out
            .iter()
            .filter(|r| r["resourceType"] == "Condition")
            .collect();
        let codings = conditions[0]["code"]["coding"].as_array().expect("codings");
        assert_eq!(codings.len(), 2);
        assert_eq!(codings[0]["code"], "I50");
        assert_eq!(codings[1]["system"], "http://snomed.info/sct");
        assert_eq!(codings[1]["code"], "84114007");
        assert_eq!(
            conditions[0]["verificationStatus"]["coding"][0]["code"],
            "refuted"
        );
        assert!(conditions[1].get("verificationStatus").is_none());
        assert_eq!(
            conditions[1]["code"]["coding"]
                .as_array()
                .expect("codings")
                .len(),
            1
        );
        // Through extraction: the erroneous contact and the refuted illness count for nothing.
        let outcome = run_case(&plan, Path::new("t.yaml"), &case).expect("runs");
        assert!(
            outcome
                .failures
                .iter()
                .all(|f| !f.starts_with("contacts_12m") && !f.starts_with("chronic_conditions")),
            "{:?}",
            outcome.failures
        );
    }
}
