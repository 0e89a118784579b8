//! The checks themselves, run in order by [`Kit::run`]. Each returns a [`Verdict`]; the
//! exchanges it made are collected by [`Http`] and go into its [`Check`]. What a later check
//! needs (the test Patients, the Flag written) is kept on the [`Kit`]; when it is missing the
//! later check is skipped, naming the check that failed.

use std::collections::HashSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::http::{Answer, Http, Problem, reference};
use super::{Check, CheckId, ConformanceError, Outcome, Report};
use crate::assess::eval::{Assessment, assess};
use crate::fhir::bundle::{resource_type, search_outcomes};
use crate::fhir::day::Day;
use crate::fhir::{FhirClient, entry_outcomes, matches, next_link, redact};
use crate::model::mapping::{DEFAULT_FLAG_CATEGORY, FLAG_CATEGORIES, Mapping};
use crate::model::plan::Plan;
use crate::record::ClientRecord;
use crate::sink::fhir::{conditional, transaction};
use crate::writeback::ClientResources;
use crate::writeback::lifecycle::{Existing, decide};
use crate::writeback::{
    Concepts, FLAG_CATEGORY_SYSTEM, OBSERVATION_CATEGORY_SYSTEM, SEGMENTTI_SYSTEM,
};

/// The identifier system of everything the kit creates itself (test Patients, the transaction
/// check's Observation); values start with the run id.
pub const TEST_SYSTEM: &str = "https://segmentti.fi/fhir/identifier/conformance-test";
/// The `meta.tag` code (in [`SEGMENTTI_SYSTEM`]) on the kit's own test data, and on whatever it
/// wrote where the server refuses to delete it.
pub(crate) const TEST_TAG: &str = "conformance-test";
/// How many test Patients are created: enough for three pages of one.
const PATIENTS: usize = 3;
/// The `If-Match` of the transaction check's bad entry: a version no test Patient has.
const STALE_VERSION: &str = "W/\"999999\"";
/// Paging stops here: a server whose links go on is reported, not followed forever.
const MAX_PAGES: usize = 10;

/// Pass with what was seen, or fail or skip with why.
type Verdict = Result<String, NotPassed>;

/// A check that did not pass.
#[derive(Debug)]
enum NotPassed {
    Fail(String),
    Skip(String),
}

impl From<Problem> for NotPassed {
    fn from(problem: Problem) -> Self {
        Self::Fail(problem.to_string())
    }
}

fn fail<T>(reason: impl Into<String>) -> Result<T, NotPassed> {
    Err(NotPassed::Fail(reason.into()))
}

fn skip<T>(reason: impl Into<String>) -> Result<T, NotPassed> {
    Err(NotPassed::Skip(reason.into()))
}

/// How a server answered a client's resources searched by `category`, once with the category
/// of the resource written and once with another.
#[derive(Debug)]
enum ByCategory {
    /// The resource came back for its category and not for the other.
    Filters,
    /// It came back for the other category too: the parameter was ignored (what the server said
    /// about it, if anything, in words).
    Ignored(String),
    /// The search was refused (4xx), with the server's words.
    Refused(String),
    /// It did not come back for its own category; how many resources did.
    Missing(usize),
}

/// A test Patient the kit created.
#[derive(Debug, Clone)]
struct TestPatient {
    id: String,
    last_updated: Option<OffsetDateTime>,
}

/// One model compiled for a day, with its codes: what a run on that day writes.
#[derive(Debug)]
struct Run {
    plan: Plan,
    concepts: Concepts,
}

impl Run {
    fn new(mapping: &Mapping, as_of: Day) -> Result<Self, ConformanceError> {
        let model = |reason: String| ConformanceError::Model {
            model: mapping.id.to_string(),
            reason,
        };
        let plan = Plan::compile(mapping.clone(), as_of).map_err(|errors| {
            model(
                errors
                    .iter()
                    .map(|e| e.message.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        let concepts = Concepts::new(&plan).map_err(|e| model(e.to_string()))?;
        Ok(Self { plan, concepts })
    }

    /// The resources a run writes for `patient` with assessment `a`.
    fn build(&self, patient: &str, a: &Assessment) -> Result<ClientResources, NotPassed> {
        let record = ClientRecord::empty(&self.plan);
        crate::writeback::build(&self.plan, &self.concepts, patient, &record, a)
            .map_err(|e| NotPassed::Fail(e.to_string()))
    }

    /// The transaction a run sends for `patient`, given the server's active Flags.
    fn transaction(
        &self,
        resources: &ClientResources,
        existing: &[Existing],
    ) -> Result<Value, NotPassed> {
        let changes = decide(resources, &resources.fingerprint, existing, self.plan.as_of)
            .map_err(|e| NotPassed::Fail(e.to_string()))?;
        let model = (
            self.plan.mapping.canonical.to_string(),
            self.plan.mapping.version.clone(),
        );
        Ok(transaction(&[(resources.patient.clone(), changes)], &model))
    }
}

/// The state of one run of the kit.
#[derive(Debug)]
pub(super) struct Kit<'c> {
    http: Http<'c>,
    /// Unique per run, in every identifier the kit makes.
    run: String,
    /// Yesterday's run, whose results are written and read back.
    first: Run,
    /// Today's run, which supersedes them.
    second: Run,
    /// The assessment of yesterday's run.
    assessment: Assessment,
    statement: Option<Value>,
    patients: Vec<TestPatient>,
    /// `Type/id` of everything written, in order.
    written: Vec<String>,
    /// The Patient whose segmentti results were written, and the segment Flag's identifier.
    results: Option<(String, String)>,
    /// The identifier value of the assessment Observation written with them.
    written_assessment: Option<String>,
    /// The active segmentti Flags read back for that Patient.
    read: Vec<Existing>,
}

impl<'c> Kit<'c> {
    pub(crate) fn new(
        client: &'c FhirClient,
        mapping: &Mapping,
        today: Day,
    ) -> Result<Self, ConformanceError> {
        let first = Run::new(mapping, today.plus_days(-1))?;
        let second = Run::new(mapping, today)?;
        // A client with no data: where the model puts it does not matter, only that it is a
        // real assessment of this model.
        let record = ClientRecord::empty(&first.plan);
        let thresholds = vec![None; first.plan.percentiles.len()];
        let assessment =
            assess(&first.plan, record.values(&first.plan), &thresholds).ok_or_else(|| {
                ConformanceError::Model {
                    model: mapping.id.to_string(),
                    reason: "no node of its question tree holds for a client without data".into(),
                }
            })?;
        let run = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        Ok(Self {
            http: Http::new(client),
            run,
            first,
            second,
            assessment,
            statement: None,
            patients: Vec::new(),
            written: Vec::new(),
            results: None,
            written_assessment: None,
            read: Vec::new(),
        })
    }

    pub(crate) async fn run(mut self) -> Result<Report, ConformanceError> {
        let mut checks = Vec::new();
        for id in CheckId::ALL {
            let verdict = match id {
                CheckId::Metadata => self.metadata().await,
                CheckId::Declared => self.declared(),
                CheckId::Setup => self.setup().await,
                CheckId::PagedSearch => self.paged_search().await,
                CheckId::LastUpdated => self.last_updated().await,
                CheckId::ConditionalUpdate => self.conditional_update().await,
                CheckId::Transaction => self.transaction().await,
                CheckId::Write => self.write().await,
                CheckId::ReadBack => self.read_back().await,
                CheckId::Category => self.category().await,
                CheckId::Supersede => self.supersede().await,
                CheckId::Cleanup => self.cleanup().await,
            };
            let (outcome, reason) = match verdict {
                Ok(reason) => (Outcome::Pass, reason),
                Err(NotPassed::Fail(reason)) => (Outcome::Fail, reason),
                Err(NotPassed::Skip(reason)) => (Outcome::Skip, reason),
            };
            tracing::info!(check = id.as_str(), outcome = ?outcome, "conformance check done");
            checks.push(Check {
                id,
                title: id.title(),
                required: id.required(),
                outcome,
                reason,
                exchanges: std::mem::take(&mut self.http.exchanges),
            });
        }
        Ok(Report {
            server: redact(self.http.client.base()).to_string(),
            run: self.run,
            checks,
        })
    }

    async fn metadata(&mut self) -> Verdict {
        let url = self.http.url("metadata", &[])?;
        let answer = self.http.get(&url).await?;
        if resource_type(&answer.body) != Some("CapabilityStatement") {
            return Err(Problem::Unexpected {
                request: answer.request,
                expected: "a CapabilityStatement",
                found: super::http::describe(&answer.body),
            }
            .into());
        }
        let version = answer.body["fhirVersion"].as_str().unwrap_or("(none)");
        if !version.starts_with("4.0.") {
            return fail(format!(
                "the CapabilityStatement declares FHIR version {version}; segmentti speaks R4 (4.0.1)"
            ));
        }
        let reason = format!("a CapabilityStatement of FHIR {version}");
        self.statement = Some(answer.body);
        Ok(reason)
    }

    fn declared(&mut self) -> Verdict {
        let Some(statement) = &self.statement else {
            return skip("needs the CapabilityStatement (see metadata)");
        };
        let missing = undeclared(statement);
        if missing.is_empty() {
            Ok("every interaction and search parameter segmentti uses is declared".into())
        } else {
            fail(format!("not declared: {}", missing.join(", ")))
        }
    }

    async fn setup(&mut self) -> Verdict {
        let url = self.http.url("Patient", &[])?;
        for n in 1..=PATIENTS {
            let patient = json!({
                "resourceType": "Patient",
                "meta": {"tag": [test_tag()]},
                "identifier": [{"system": TEST_SYSTEM, "value": format!("{}-patient-{n}", self.run)}],
                "name": [{"family": "Conformance Test", "given": [format!("Patient {n}")]}],
            });
            let answer = self
                .http
                .send(Method::POST, &url, Some(&patient))
                .await?
                .ok()?;
            let Some(written) = answer.written().filter(|w| w.starts_with("Patient/")) else {
                return fail(format!(
                    "{} answered {} without the new Patient's id (no body, no Location)",
                    answer.request, answer.status
                ));
            };
            self.written.push(written.clone());
            let last_updated = answer
                .body
                .pointer("/meta/lastUpdated")
                .and_then(Value::as_str)
                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
            self.patients.push(TestPatient {
                id: written["Patient/".len()..].to_owned(),
                last_updated,
            });
        }
        Ok(format!(
            "created {}",
            self.patients
                .iter()
                .map(|p| format!("Patient/{}", p.id))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    /// The test Patients, or a skip when setup failed.
    fn patients(&self) -> Result<Vec<TestPatient>, NotPassed> {
        if self.patients.len() == PATIENTS {
            Ok(self.patients.clone())
        } else {
            skip("needs the test Patients (see setup)")
        }
    }

    async fn paged_search(&mut self) -> Verdict {
        let patients = self.patients()?;
        let ids = patients
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let mut url = self
            .http
            .url("Patient", &[("_id", ids.as_str()), ("_count", "1")])?;
        let base = self.http.client.base().clone();
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        let mut pages = 0;
        loop {
            let page = self.http.search(&url).await?;
            pages += 1;
            found.extend(matches(&page).filter_map(|r| r.get("id")?.as_str().map(str::to_owned)));
            let Some(link) = next_link(&page) else { break };
            let Ok(next) = url.join(link) else {
                return fail(format!("page {pages}'s next link is not a URL"));
            };
            if next.origin() != base.origin() {
                return fail(format!(
                    "page {pages}'s next link goes to another origin, {}; segmentti does not follow it (nor send credentials there): set the server's base URL",
                    next.origin().ascii_serialization()
                ));
            }
            if !seen.insert(next.clone()) || pages >= MAX_PAGES {
                return fail(format!(
                    "the next links loop or do not end ({pages} pages read)"
                ));
            }
            url = next;
        }
        let distinct: HashSet<&String> = found.iter().collect();
        if distinct.len() != found.len() {
            return fail(format!(
                "paging returned a Patient twice: {}",
                found.join(", ")
            ));
        }
        if found.len() > 1 && pages == 1 {
            return fail(format!(
                "all {} matches came on one page for _count=1, without a next link",
                found.len()
            ));
        }
        let missing: Vec<&str> = patients
            .iter()
            .filter(|p| !distinct.contains(&p.id))
            .map(|p| p.id.as_str())
            .collect();
        if !missing.is_empty() || found.len() != patients.len() {
            return fail(format!(
                "paging found {} of the {} Patients searched by _id (missing: {})",
                found.len(),
                patients.len(),
                missing.join(", ")
            ));
        }
        Ok(format!(
            "{} Patients over {pages} pages of _count=1",
            found.len()
        ))
    }

    async fn last_updated(&mut self) -> Verdict {
        let patients = self.patients()?;
        let Some(earliest) = patients.iter().filter_map(|p| p.last_updated).min() else {
            return fail(
                "the created Patients came back without meta.lastUpdated, which incremental runs need",
            );
        };
        // A second before the first write, at whole seconds: no server's precision can put
        // a test Patient on the wrong side of it.
        let cut = (earliest - time::Duration::seconds(1))
            .to_offset(time::UtcOffset::UTC)
            .replace_nanosecond(0)
            .unwrap_or(earliest)
            .format(&Rfc3339)
            .unwrap_or_default();
        let ids = patients
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let mut counts = Vec::new();
        for prefix in ["ge", "lt"] {
            let value = format!("{prefix}{cut}");
            let url = self.http.url(
                "Patient",
                &[
                    ("_id", ids.as_str()),
                    ("_lastUpdated", value.as_str()),
                    ("_count", "50"),
                ],
            )?;
            let page = self.http.search(&url).await?;
            let ours = matches(&page)
                .filter(|r| patients.iter().any(|p| r["id"] == p.id.as_str()))
                .count();
            counts.push(ours);
        }
        let (ge, lt) = (counts[0], counts[1]);
        if ge == patients.len() && lt == 0 {
            Ok(format!(
                "_lastUpdated=ge{cut} found the {ge} Patients, _lastUpdated=lt{cut} none"
            ))
        } else {
            fail(format!(
                "_lastUpdated=ge{cut} found {ge} of {} Patients (all expected), _lastUpdated=lt{cut} found {lt} (none expected)",
                patients.len()
            ))
        }
    }

    async fn conditional_update(&mut self) -> Verdict {
        let patients = self.patients()?;
        let resources = self.first.build(&patients[0].id, &self.assessment)?;
        let mut observation = serde_json::to_value(&resources.observation)
            .map_err(|e| NotPassed::Fail(format!("cannot serialise the Observation: {e}")))?;
        if let Some(o) = observation.as_object_mut() {
            o.remove("id");
        }
        let Some(condition) = conditional("Observation", &observation) else {
            return fail("the built Observation has no identifier");
        };
        let url = self.http.join(&condition)?;
        let mut ids = Vec::new();
        let mut statuses = Vec::new();
        for _ in 0..2 {
            let answer = self
                .http
                .send(Method::PUT, &url, Some(&observation))
                .await?
                .ok()?;
            let Some(written) = answer.written() else {
                return fail(format!(
                    "{} answered without the Observation's id",
                    answer.request
                ));
            };
            if !self.written.contains(&written) {
                self.written.push(written.clone());
            }
            statuses.push(answer.status.as_u16());
            ids.push(written);
        }
        if ids[0] != ids[1] {
            return fail(format!(
                "the second conditional update created {} instead of updating {}",
                ids[1], ids[0]
            ));
        }
        let identifier = &observation["identifier"][0];
        let found = self.by_identifier("Observation", identifier).await?;
        if found.len() != 1 {
            return fail(format!(
                "Observation?identifier= finds {} Observations after two conditional updates: {}",
                found.len(),
                found.join(", ")
            ));
        }
        Ok(format!(
            "created {} ({}), updated it ({}); one match by identifier",
            ids[0], statuses[0], statuses[1]
        ))
    }

    /// `Type/id` of every match of `resource_type?identifier=system|value` that carries that
    /// identifier (checked here too: a server ignoring the parameter would answer everything).
    async fn by_identifier(
        &mut self,
        resource_type: &str,
        identifier: &Value,
    ) -> Result<Vec<String>, NotPassed> {
        let (Some(system), Some(value)) =
            (identifier["system"].as_str(), identifier["value"].as_str())
        else {
            return fail("an identifier without system or value");
        };
        let token = format!("{system}|{value}");
        let url = self
            .http
            .url(resource_type, &[("identifier", token.as_str())])?;
        let page = self.http.search(&url).await?;
        Ok(matches(&page)
            .filter(|r| {
                r["identifier"].as_array().is_some_and(|ids| {
                    ids.iter()
                        .any(|i| i["system"] == system && i["value"] == value)
                })
            })
            .map(|r| format!("{resource_type}/{}", r["id"].as_str().unwrap_or("?")))
            .collect())
    }

    async fn transaction(&mut self) -> Verdict {
        let patients = self.patients()?;
        let identifier =
            json!({"system": TEST_SYSTEM, "value": format!("{}-transaction", self.run)});
        let good = json!({
            "resourceType": "Observation",
            "meta": {"tag": [test_tag()]},
            "identifier": [identifier],
            "status": "final",
            "code": {"coding": [{"system": SEGMENTTI_SYSTEM, "code": TEST_TAG}]},
            "subject": {"reference": format!("Patient/{}", patients[1].id)},
        });
        // An update of a test Patient on a version it does not have: the server can only find
        // the conflict while processing the entry, after the good one. (A body whose id differs
        // from the URL would do too by the specification, but hfs 0.2.7 takes the URL's id.)
        let target = format!("Patient/{}", patients[1].id);
        let bad = json!({
            "resourceType": "Patient",
            "id": patients[1].id,
            "meta": {"tag": [test_tag()]},
            "name": [{"family": "Conformance Test"}],
        });
        let bundle = json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()), "resource": good,
                 "request": {"method": "POST", "url": "Observation"}},
                {"resource": bad,
                 "request": {"method": "PUT", "url": target, "ifMatch": STALE_VERSION}},
            ],
        });
        let root = self.http.client.service_root();
        let answer = self.http.send(Method::POST, &root, Some(&bundle)).await?;
        let stored = self.by_identifier("Observation", &identifier).await?;
        self.written.extend(stored.iter().cloned());
        let status = answer.status;
        if status.is_success() {
            return fail(format!(
                "the server accepted ({status}) a transaction whose second entry updates {target} on a version it does not have (If-Match {STALE_VERSION}){}",
                if stored.is_empty() {
                    String::new()
                } else {
                    format!("; it stored {}", stored.join(", "))
                }
            ));
        }
        if !stored.is_empty() {
            return fail(format!(
                "the transaction was refused ({status}) but its other entry was stored: {}",
                stored.join(", ")
            ));
        }
        if !status.is_client_error() {
            return fail(format!(
                "{} answered {status} where a refusal of the bad entry (4xx) was expected",
                answer.request
            ));
        }
        Ok(format!("refused ({status}); nothing of it was stored"))
    }

    /// Posts a transaction a run would send; every entry must succeed.
    async fn post(&mut self, bundle: &Value) -> Result<Vec<String>, NotPassed> {
        let root = self.http.client.service_root();
        let answer = self
            .http
            .send(Method::POST, &root, Some(bundle))
            .await?
            .ok()?;
        let request = answer.request.clone();
        let response = answer.bundle("transaction-response")?;
        let outcomes = entry_outcomes(&response).map_err(|e| NotPassed::Fail(e.to_string()))?;
        let sent = bundle["entry"].as_array().map_or(0, Vec::len);
        if outcomes.len() != sent || outcomes.iter().any(|o| !o.is_success()) {
            return fail(format!(
                "{request}: the transaction-response does not report every entry as done"
            ));
        }
        let written: Vec<String> = outcomes
            .iter()
            .filter_map(|o| o.location.as_deref().and_then(reference))
            .collect();
        for w in &written {
            if !self.written.contains(w) {
                self.written.push(w.clone());
            }
        }
        Ok(written)
    }

    async fn write(&mut self) -> Verdict {
        let patients = self.patients()?;
        let patient = patients[2].id.clone();
        let resources = self.first.build(&patient, &self.assessment)?;
        let bundle = self.first.transaction(&resources, &[])?;
        let identifier_of = |kind: &str| {
            bundle["entry"]
                .as_array()
                .and_then(|entries| {
                    entries
                        .iter()
                        .find(|e| resource_type(&e["resource"]) == Some(kind))
                })
                .and_then(|e| e["resource"].pointer("/identifier/0/value")?.as_str())
                .map(str::to_owned)
        };
        let Some(flag_identifier) = identifier_of("Flag") else {
            return fail("segmentti built no Flag for the test client");
        };
        let assessment = identifier_of("Observation");
        let written = self.post(&bundle).await?;
        self.results = Some((patient, flag_identifier));
        self.written_assessment = assessment;
        Ok(format!("wrote {}", written.join(", ")))
    }

    /// `Flag?patient=id`: the Flags of `patient`, failing when others come back too.
    async fn flags_of(&mut self, patient: &str) -> Result<Vec<Value>, NotPassed> {
        let url = self
            .http
            .url("Flag", &[("patient", patient), ("_count", "50")])?;
        let page = self.http.search(&url).await?;
        let subject = format!("Patient/{patient}");
        let flags: Vec<Value> = matches(&page).cloned().collect();
        if flags.iter().any(|f| {
            f.pointer("/subject/reference")
                .and_then(Value::as_str)
                .is_none_or(|r| !r.ends_with(&subject))
        }) {
            return fail(
                "Flag?patient= answered Flags of other clients: the patient parameter was ignored",
            );
        }
        Ok(flags)
    }

    async fn read_back(&mut self) -> Verdict {
        let Some((patient, identifier)) = self.results.clone() else {
            return skip("needs the Flag written (see write)");
        };
        let flags = self.flags_of(&patient).await?;
        let Some(flag) = flags.iter().find(|f| has_identifier(f, &identifier)) else {
            return fail(format!(
                "Flag?patient= did not find the Flag written ({} Flag(s) came back)",
                flags.len()
            ));
        };
        let status = flag["status"].as_str().unwrap_or("(none)");
        if status != "active" {
            return fail(format!(
                "the Flag came back with status {status}, not active"
            ));
        }
        let Some(existing) = Existing::from_server(&self.first.plan, flag) else {
            return fail(
                "the Flag came back without what segmentti reads from it (identifier, code)",
            );
        };
        self.read = flags
            .iter()
            .filter_map(|f| Existing::from_server(&self.first.plan, f))
            .collect();
        Ok(format!(
            "Flag/{} found by Flag?patient=, status active (checked here: R4 has no Flag status search parameter)",
            existing.resource["id"].as_str().unwrap_or("?")
        ))
    }

    /// `kind?patient=…&category=system|code`, then the same with `other` for the code: whether
    /// the resource whose identifier value is `identifier` comes back for its category only.
    async fn by_category(
        &mut self,
        kind: &str,
        patient: &str,
        (system, code, other): (&str, &str, &str),
        identifier: &str,
    ) -> Result<ByCategory, NotPassed> {
        let mut found = Vec::new();
        let mut said = Vec::new();
        for c in [code, other] {
            let token = format!("{system}|{c}");
            let url = self.http.url(
                kind,
                &[
                    ("patient", patient),
                    ("category", token.as_str()),
                    ("_count", "50"),
                ],
            )?;
            let page = match self.http.search(&url).await {
                Ok(page) => page,
                Err(problem @ Problem::Status { status, .. }) if (400..500).contains(&status) => {
                    return Ok(ByCategory::Refused(problem.to_string()));
                }
                Err(problem) => return Err(problem.into()),
            };
            for o in search_outcomes(&page).map(|o| o.to_string()) {
                if o.contains("category") && !said.contains(&o) {
                    said.push(o);
                }
            }
            let matched: Vec<&Value> = matches(&page).collect();
            found.push((
                matched.iter().any(|r| has_identifier(r, identifier)),
                matched.len(),
            ));
        }
        let said = if said.is_empty() {
            String::new()
        } else {
            format!(" (it said: {})", said.join("; "))
        };
        Ok(match (found[0], found[1]) {
            ((false, n), _) => ByCategory::Missing(n),
            (_, (true, _)) => ByCategory::Ignored(said),
            _ => ByCategory::Filters,
        })
    }

    /// What an EHR reads of the results by category: the assessment in its view of survey
    /// Observations, the Flags by the model's Flag category.
    async fn category(&mut self) -> Verdict {
        let (Some((patient, flag_identifier)), Some(assessment)) =
            (self.results.clone(), self.written_assessment.clone())
        else {
            return skip("needs the Observation and Flag written (see write)");
        };
        let mut seen = Vec::new();
        let observations = (OBSERVATION_CATEGORY_SYSTEM, "survey", "laboratory");
        match self
            .by_category("Observation", &patient, observations, &assessment)
            .await?
        {
            ByCategory::Filters => seen.push(
                "Observation?patient=&category=survey finds the assessment, category=laboratory does not"
                    .to_owned(),
            ),
            ByCategory::Missing(n) => {
                return fail(format!(
                    "Observation?patient=&category=survey did not find the assessment written ({n} Observation(s) came back): an EHR listing the client's survey Observations would not show it"
                ));
            }
            ByCategory::Ignored(said) => {
                return fail(format!(
                    "the server does not support Observation's category search parameter{said}: Observation?patient=&category=laboratory found the survey assessment too, so an EHR's view by category would show everything"
                ));
            }
            ByCategory::Refused(why) => {
                return fail(format!(
                    "the server does not support Observation's category search parameter: {why}"
                ));
            }
        }
        let code = self
            .first
            .plan
            .mapping
            .flag_category
            .clone()
            .unwrap_or_else(|| DEFAULT_FLAG_CATEGORY.to_owned());
        let flags = self.flags_of(&patient).await?;
        let Some(flag) = flags.iter().find(|f| has_identifier(f, &flag_identifier)) else {
            return fail(format!(
                "Flag?patient= did not find the Flag written ({} Flag(s) came back)",
                flags.len()
            ));
        };
        let id = flag["id"].as_str().unwrap_or("?").to_owned();
        let carried = flag["category"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["coding"].as_array().is_some_and(|codings| {
                    codings
                        .iter()
                        .any(|x| x["system"] == FLAG_CATEGORY_SYSTEM && x["code"] == code.as_str())
                })
            })
        });
        if !carried {
            return fail(format!(
                "Flag/{id} came back without its category {FLAG_CATEGORY_SYSTEM}|{code}: an EHR choosing the Flags of its banner by category would not show it"
            ));
        }
        seen.push(format!("Flag/{id} carries category {code}"));
        let other = FLAG_CATEGORIES
            .iter()
            .map(|(c, _)| *c)
            .find(|c| *c != code)
            .unwrap_or("safety");
        let flags = (FLAG_CATEGORY_SYSTEM, code.as_str(), other);
        let beyond_r4 = "R4 defines no category search parameter for Flag, so an EHR filters a client's Flags on category itself";
        match self
            .by_category("Flag", &patient, flags, &flag_identifier)
            .await?
        {
            ByCategory::Filters => seen.push(format!(
                "Flag?patient=&category={code} finds it and category={other} does not (a search parameter beyond R4)"
            )),
            ByCategory::Ignored(said) => seen.push(format!(
                "the server ignores category on Flag{said}; tolerated: {beyond_r4}"
            )),
            ByCategory::Refused(why) => seen.push(format!(
                "the server refuses category on Flag ({why}); tolerated: {beyond_r4}"
            )),
            ByCategory::Missing(n) => {
                return fail(format!(
                    "Flag?patient=&category={code} did not find the Flag written ({n} Flag(s) came back), though it carries that category"
                ));
            }
        }
        Ok(seen.join("; "))
    }

    async fn supersede(&mut self) -> Verdict {
        let Some((patient, _)) = self.results.clone() else {
            return skip("needs the Flag written (see write)");
        };
        let Some(old) = self.read.iter().find(|e| e.segment).cloned() else {
            return skip("needs the Flag read back (see read-back)");
        };
        let segments = self.second.plan.mapping.segments.len();
        if segments < 2 {
            return skip("the model has one segment: nothing can supersede it");
        }
        // Today's run finds the client in another segment, as after a change in their care.
        let moved = Assessment {
            segment: (self.assessment.segment + 1) % segments,
            ..self.assessment.clone()
        };
        let resources = self.second.build(&patient, &moved)?;
        let bundle = self.second.transaction(&resources, &self.read)?;
        self.post(&bundle).await?;
        let old_id = old.resource["id"].as_str().unwrap_or_default().to_owned();
        let new_identifier = resources.flags[0]
            .identifier
            .first()
            .and_then(|i| i.as_ref()?.value.clone())
            .unwrap_or_default();
        let flags = self.flags_of(&patient).await?;
        let Some(ended) = flags.iter().find(|f| f["id"] == old_id.as_str()) else {
            return fail(format!("Flag/{old_id} is gone after being ended"));
        };
        if ended["status"] != "inactive" || ended.pointer("/period/end").is_none() {
            return fail(format!(
                "Flag/{old_id} has status {} and period.end {} after being ended (inactive with an end expected)",
                ended["status"],
                ended.pointer("/period/end").unwrap_or(&Value::Null)
            ));
        }
        let active: Vec<&Value> = flags
            .iter()
            .filter(|f| Existing::from_server(&self.second.plan, f).is_some_and(|e| e.segment))
            .collect();
        match active[..] {
            [new] if has_identifier(new, &new_identifier) => Ok(format!(
                "Flag/{old_id} is inactive, Flag/{} is the one active segment Flag",
                new["id"].as_str().unwrap_or("?")
            )),
            _ => fail(format!(
                "{} active segment Flag(s) after superseding, one (the new) expected",
                active.len()
            )),
        }
    }

    async fn cleanup(&mut self) -> Verdict {
        if self.written.is_empty() {
            return skip("nothing was written");
        }
        let (mut deleted, mut tagged, mut left) = (Vec::new(), Vec::new(), Vec::new());
        // Newest first: what refers to the Patients goes before them.
        for reference in self.written.clone().iter().rev() {
            let url = self.http.join(reference)?;
            let answer = self.http.send(Method::DELETE, &url, None).await;
            match answer {
                Ok(a)
                    if a.status.is_success()
                        || a.status == StatusCode::NOT_FOUND
                        || a.status == StatusCode::GONE =>
                {
                    deleted.push(reference.clone());
                }
                _ => match self.tag(&url).await {
                    Ok(()) => tagged.push(reference.clone()),
                    Err(problem) => left.push(format!("{reference} ({problem})")),
                },
            }
        }
        if !left.is_empty() {
            return fail(format!("could neither delete nor tag {}", left.join("; ")));
        }
        let mut reason = format!("deleted {}", deleted.len());
        if !tagged.is_empty() {
            reason.push_str(&format!(
                "; deletes refused, so tagged {} with {SEGMENTTI_SYSTEM}|{TEST_TAG}: {}",
                tagged.len(),
                tagged.join(", ")
            ));
        }
        Ok(reason)
    }

    /// Adds the test tag to the resource at `url` (read, tag, update).
    async fn tag(&mut self, url: &reqwest::Url) -> Result<(), Problem> {
        let mut resource = self.http.get(url).await?.body;
        let tag = test_tag();
        let tags = &mut resource["meta"]["tag"];
        if !tags.is_array() {
            *tags = json!([]);
        }
        if let Some(tags) = tags.as_array_mut()
            && !tags.contains(&tag)
        {
            tags.push(tag);
        }
        self.http
            .send(Method::PUT, url, Some(&resource))
            .await?
            .ok()
            .map(|_: Answer| ())
    }
}

/// The `meta.tag` on test data.
fn test_tag() -> Value {
    json!({"system": SEGMENTTI_SYSTEM, "code": TEST_TAG, "display": "segmentti conformance kit test data"})
}

fn has_identifier(resource: &Value, value: &str) -> bool {
    resource["identifier"]
        .as_array()
        .is_some_and(|ids| ids.iter().any(|i| i["value"] == value))
}

/// What segmentti needs (the requirements CapabilityStatement of `profiles/`) that the
/// server's CapabilityStatement does not declare, such as `Flag search parameter patient`. Search parameters declared for the whole server
/// (`rest.searchParam`, where `_lastUpdated` often is) count for every type.
fn undeclared(statement: &Value) -> Vec<String> {
    let empty = Vec::new();
    let rests = statement["rest"].as_array().unwrap_or(&empty);
    let Some(rest) = rests
        .iter()
        .find(|r| r["mode"] == "server")
        .or_else(|| rests.first())
    else {
        return vec!["a rest entry for the server".into()];
    };
    let names = |list: &Value, field: &str| -> Vec<String> {
        list.as_array()
            .unwrap_or(&empty)
            .iter()
            .filter_map(|x| x[field].as_str().map(str::to_owned))
            .collect()
    };
    // What `need` lists under `field` of `list` that `have` does not declare (nor `also`).
    let lacking = |need: &Value, have: &Value, list: &str, field: &str, also: &[String]| {
        let declared = names(&have[list], field);
        names(&need[list], field)
            .into_iter()
            .filter(|n| !declared.iter().chain(also).any(|d| d == n))
            .collect::<Vec<_>>()
    };
    let global_params = names(&rest["searchParam"], "name");
    let required = crate::profiles::requirements();
    let needs = &required["rest"][0];
    let mut missing: Vec<String> = lacking(needs, rest, "interaction", "code", &[])
        .into_iter()
        .map(|i| format!("the {i} interaction"))
        .collect();
    let resources = rest["resource"].as_array().unwrap_or(&empty);
    for need in needs["resource"].as_array().unwrap_or(&empty) {
        let kind = need["type"].as_str().unwrap_or_default();
        let Some(resource) = resources.iter().find(|r| r["type"] == kind) else {
            missing.push(format!("{kind} (not listed)"));
            continue;
        };
        missing.extend(
            lacking(need, resource, "interaction", "code", &[])
                .into_iter()
                .map(|i| format!("{kind} {i}")),
        );
        missing.extend(
            lacking(need, resource, "searchParam", "name", &global_params)
                .into_iter()
                .map(|p| format!("{kind} search parameter {p}")),
        );
        if need["conditionalUpdate"] == true && resource["conditionalUpdate"] != true {
            missing.push(format!("{kind} conditionalUpdate"));
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undeclared_lists_what_is_missing_and_accepts_server_wide_parameters() {
        let resource = |kind: &str, interactions: &[&str], params: &[&str]| {
            json!({
                "type": kind,
                "interaction": interactions.iter().map(|c| json!({"code": c})).collect::<Vec<_>>(),
                "searchParam": params.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
                "conditionalUpdate": true,
            })
        };
        let full = |flag_params: &[&str]| {
            json!({"resourceType": "CapabilityStatement", "rest": [{
                "mode": "server",
                "interaction": [{"code": "transaction"}],
                "searchParam": [{"name": "_lastUpdated"}, {"name": "_id"}],
                "resource": [
                    resource("Patient", &["search-type"], &[]),
                    resource("Encounter", &["search-type"], &["patient"]),
                    resource("Condition", &["search-type"], &["patient"]),
                    resource("Observation", &["create", "read", "update"], &["identifier"]),
                    resource("Flag", &["create", "read", "update", "search-type"], flag_params),
                    resource("Provenance", &["create"], &[]),
                ],
            }]})
        };
        assert!(undeclared(&full(&["identifier", "patient"])).is_empty());
        assert_eq!(
            undeclared(&full(&["identifier"])),
            ["Flag search parameter patient"]
        );
        let mut statement = full(&["identifier", "patient"]);
        statement["rest"][0]["interaction"] = json!([]);
        statement["rest"][0]["resource"][3]["conditionalUpdate"] = json!(false);
        assert_eq!(
            undeclared(&statement),
            [
                "the transaction interaction",
                "Observation conditionalUpdate"
            ]
        );
    }
}
