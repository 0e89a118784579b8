//! `segmentti conformance` (issue 6): against the real test server, with the result of every
//! check written down and the reason where hfs falls short; against a scripted fake FHIR server
//! (wiremock) that breaks each check once, so every check is shown able to fail; and against
//! bad input (HTML, an OperationOutcome, 401, a redirect to another origin, a hang).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Url;
use segmentti::conformance::{self, CheckId, Outcome, Report, TEST_SYSTEM};
use segmentti::fhir::day::Day;
use segmentti::fhir::{BearerToken, ClientOptions, FhirClient, RetryPolicy, matches};
use segmentti::model::mapping::Mapping;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wiremock::matchers::{any, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::harness::{Setup, TestServer};
use crate::support;

const TOKEN: &str = "it-conformance-token";

fn mapping() -> Mapping {
    segmentti::model::load_file(&support::root().join("mappings/paijat-sote.yaml"))
        .expect("the built-in model loads")
}

fn today() -> Day {
    Day::from_date(OffsetDateTime::now_utc().date())
}

/// A client with a bearer token (so that where it goes can be checked) and `timeout`.
fn client(base: &str, timeout: Duration) -> FhirClient {
    let mut options = ClientOptions::new("it-conformance");
    options.timeout = timeout;
    options.bearer = Some(BearerToken::new(TOKEN));
    options.retry = RetryPolicy::never();
    FhirClient::new(Url::parse(base).expect("a URL"), options).expect("a valid base")
}

/// Every check's outcome, for assertion messages.
fn summary(report: &Report) -> String {
    report
        .checks
        .iter()
        .map(|c| {
            let exchanges: Vec<String> = c
                .exchanges
                .iter()
                .map(|e| format!("    {} {} {:?} {}", e.method, e.url, e.status, e.answer))
                .collect();
            format!(
                "{:?} {}: {}\n{}",
                c.outcome,
                c.id.as_str(),
                c.reason,
                exchanges.join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn outcome(report: &Report, id: CheckId) -> Outcome {
    report.check(id).expect("every check runs").outcome
}

fn reason(report: &Report, id: CheckId) -> &str {
    &report.check(id).expect("every check runs").reason
}

// ---------------------------------------------------------------------------------------------
// The real test server.

/// What hfs 0.2.7 (started by the harness, with the spec's search parameters) does, check by
/// check.
const HFS_EXPECTED: [(CheckId, Outcome); 12] = [
    (CheckId::Metadata, Outcome::Pass),
    (CheckId::Declared, Outcome::Pass),
    (CheckId::Setup, Outcome::Pass),
    (CheckId::PagedSearch, Outcome::Pass),
    (CheckId::LastUpdated, Outcome::Pass),
    (CheckId::ConditionalUpdate, Outcome::Pass),
    (CheckId::Transaction, Outcome::Pass),
    (CheckId::Write, Outcome::Pass),
    (CheckId::ReadBack, Outcome::Pass),
    (CheckId::Category, Outcome::Pass),
    (CheckId::Supersede, Outcome::Pass),
    (CheckId::Cleanup, Outcome::Pass),
];

#[tokio::test]
async fn hfs_gets_the_expected_result_of_every_check_and_keeps_its_own_clients() {
    let server = TestServer::start().await;
    let fhir = server.client();
    // A client that was there before: the kit must leave it as it was.
    let existing = json!({"resourceType": "Patient", "id": "existing-1",
        "name": [{"family": "Existing"}]});
    let patient_url = server.base_url().join("Patient/existing-1").expect("joins");
    let load = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": existing, "request": {"method": "PUT", "url": "Patient/existing-1"}}]});
    fhir.transaction(&load)
        .await
        .expect("the existing client is stored");
    let before = fhir.get(&patient_url).await.expect("readable");

    let report = conformance::run(&fhir, &mapping(), today())
        .await
        .expect("the kit runs");
    for (id, expected) in HFS_EXPECTED {
        assert_eq!(
            outcome(&report, id),
            expected,
            "{}:\n{}",
            id.as_str(),
            summary(&report)
        );
    }

    // Observation has a category search parameter in R4 and hfs filters by it; Flag has none,
    // and hfs says it ignores it, which the kit reports and tolerates.
    let category = reason(&report, CheckId::Category);
    assert!(
        category.contains("category=survey finds the assessment")
            && category.contains("carries category admin")
            && category.contains("ignores category on Flag"),
        "{category}"
    );

    let after = fhir.get(&patient_url).await.expect("still readable");
    assert_eq!(
        before["meta"]["versionId"], after["meta"]["versionId"],
        "{after}"
    );
    for kind in ["Patient", "Observation", "Flag", "Provenance"] {
        let page = fhir
            .search(kind, &[("_count", "100")])
            .await
            .expect("searchable");
        let left: Vec<&Value> = matches(&page).filter(|r| r["id"] != "existing-1").collect();
        assert!(left.is_empty(), "cleanup left {kind}s: {left:?}");
    }
}

#[tokio::test]
async fn the_command_writes_a_table_json_and_junit_that_parse() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (json_path, junit_path) = (dir.path().join("report.json"), dir.path().join("junit.xml"));
    let output = support::segmentti(&[
        "conformance",
        "--server",
        server.base_url().as_str(),
        "--json",
        json_path.to_str().expect("utf-8"),
        "--junit",
        junit_path.to_str().expect("utf-8"),
    ]);
    let (stdout, stderr) = support::text(&output);
    let required_fail = HFS_EXPECTED
        .iter()
        .any(|(id, o)| id.required() && *o == Outcome::Fail);
    assert_eq!(
        output.status.code(),
        Some(if required_fail { 6 } else { 0 }),
        "{stdout}\n{stderr}"
    );
    for (id, _) in HFS_EXPECTED {
        assert!(stdout.contains(id.as_str()), "{stdout}");
    }

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).expect("JSON"))
        .expect("the JSON report parses");
    let checks = report["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), HFS_EXPECTED.len());
    for ((id, expected), check) in HFS_EXPECTED.iter().zip(checks) {
        assert_eq!(check["id"], id.as_str());
        assert_eq!(check["outcome"], json!(expected), "{check}");
        assert!(check["exchanges"].as_array().is_some(), "{check}");
    }

    let xml = std::fs::read_to_string(&junit_path).expect("JUnit XML");
    let junit = quick_junit::Report::deserialize_from_str(&xml).expect("the JUnit XML parses");
    assert_eq!(junit.tests, HFS_EXPECTED.len());
    let failures = HFS_EXPECTED
        .iter()
        .filter(|(_, o)| *o == Outcome::Fail)
        .count();
    assert_eq!(junit.failures, failures, "{xml}");
    let cases: Vec<String> = junit.test_suites[0]
        .test_cases
        .iter()
        .map(|c| c.name.to_string())
        .collect();
    let ids: Vec<&str> = HFS_EXPECTED.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(cases, ids);
}

/// What hfs 0.2.7 does when started without `--base-url` and without the spec's search
/// parameters, as an operator might: the kit finds what a run would trip over.
const HFS_BARE_EXPECTED: [(CheckId, Outcome); 12] = [
    (CheckId::Metadata, Outcome::Pass),
    // It declares only the parameters it knows: no `patient`, no `identifier`.
    (CheckId::Declared, Outcome::Fail),
    (CheckId::Setup, Outcome::Pass),
    // Its `next` links point to http://localhost:8080, which the kit does not follow.
    (CheckId::PagedSearch, Outcome::Fail),
    // `_lastUpdated` is one of the parameters it knows without the file.
    (CheckId::LastUpdated, Outcome::Pass),
    // `identifier` is unknown: a conditional update on it is refused (400).
    (CheckId::ConditionalUpdate, Outcome::Fail),
    // The stale If-Match still rolls it back; the search for what might have been stored
    // ignores `identifier` and answers every Observation, which the kit filters itself.
    (CheckId::Transaction, Outcome::Pass),
    // segmentti's transaction is conditional on `identifier`: refused.
    (CheckId::Write, Outcome::Fail),
    (CheckId::ReadBack, Outcome::Skip),
    (CheckId::Category, Outcome::Skip),
    (CheckId::Supersede, Outcome::Skip),
    (CheckId::Cleanup, Outcome::Pass),
];

#[tokio::test]
async fn hfs_without_base_url_or_search_parameters_fails_what_a_run_would_trip_over() {
    let server = TestServer::start_with(Setup::Bare).await;
    let report = conformance::run(&server.client(), &mapping(), today())
        .await
        .expect("the kit runs");
    for (id, expected) in HFS_BARE_EXPECTED {
        assert_eq!(
            outcome(&report, id),
            expected,
            "{}:\n{}",
            id.as_str(),
            summary(&report)
        );
    }
    assert!(reason(&report, CheckId::PagedSearch).contains("http://localhost:8080"));
    assert!(reason(&report, CheckId::ConditionalUpdate).contains("identifier"));
}

// ---------------------------------------------------------------------------------------------
// A scripted fake: just enough FHIR for every check to pass, and one fault at a time.

/// What the fake gets wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Nothing: every check passes.
    None,
    /// Breaks the check named.
    Break(CheckId),
    /// Refuses deletes, accepts updates: cleanup tags.
    RefuseDeletes,
}

#[derive(Debug, Default)]
struct Store {
    resources: Vec<Value>,
    next_id: u64,
    /// A DELETE came (cleanup has begun).
    cleaning: bool,
}

/// An in-memory FHIR server for the kit's requests only.
struct Fake {
    fault: Fault,
    /// Where a broken paging's next link points.
    elsewhere: String,
    store: Mutex<Store>,
}

fn fhir(status: u16, body: &Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.to_string(), "application/fhir+json")
}

fn outcome_body(diagnostics: &str) -> Value {
    json!({"resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": diagnostics}]})
}

fn searchset(resources: Vec<Value>, next: Option<String>) -> Value {
    let mut bundle = json!({"resourceType": "Bundle", "type": "searchset",
        "entry": resources.into_iter().map(|r| json!({"resource": r, "search": {"mode": "match"}})).collect::<Vec<_>>()});
    if let Some(next) = next {
        bundle["link"] = json!([{"relation": "next", "url": next}]);
    }
    bundle
}

/// Whether `resource` has a category coding `system|code`.
fn has_category(resource: &Value, token: &str) -> bool {
    let (system, code) = token.split_once('|').unwrap_or(("", token));
    resource["category"].as_array().is_some_and(|concepts| {
        concepts.iter().any(|c| {
            c["coding"].as_array().is_some_and(|codings| {
                codings
                    .iter()
                    .any(|x| x["system"] == system && x["code"] == code)
            })
        })
    })
}

fn has_identifier(resource: &Value, token: &str) -> bool {
    let (system, value) = token.split_once('|').unwrap_or(("", token));
    resource["identifier"].as_array().is_some_and(|ids| {
        ids.iter()
            .any(|i| i["system"] == system && i["value"] == value)
    })
}

impl Fake {
    fn broken(&self, id: CheckId) -> bool {
        self.fault == Fault::Break(id)
    }

    fn statement(&self) -> Value {
        let conditional = !self.broken(CheckId::Declared);
        let resource = |kind: &str, interactions: &[&str], params: &[&str]| {
            json!({"type": kind,
                "interaction": interactions.iter().map(|c| json!({"code": c})).collect::<Vec<_>>(),
                "searchParam": params.iter().map(|n| json!({"name": n, "type": "token"})).collect::<Vec<_>>(),
                "conditionalUpdate": conditional})
        };
        json!({"resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
        "fhirVersion": if self.broken(CheckId::Metadata) { "3.0.2" } else { "4.0.1" },
        "software": {"name": "fake", "version": "1"},
        "rest": [{"mode": "server", "interaction": [{"code": "transaction"}],
            "searchParam": [{"name": "_lastUpdated", "type": "date"}],
            "resource": [
                resource("Patient", &["search-type", "create"], &["_id"]),
                resource("Encounter", &["search-type"], &["patient"]),
                resource("Condition", &["search-type"], &["patient"]),
                resource("Observation", &["create", "read", "update"], &["identifier"]),
                resource("Flag", &["create", "read", "update", "search-type"], &["identifier", "patient"]),
                resource("Provenance", &["create"], &[]),
            ]}]})
    }

    /// Stores `resource` as `kind` (a new id unless `id` is given): the stored copy.
    fn store(store: &mut Store, kind: &str, id: Option<&str>, mut resource: Value) -> Value {
        let id = id.map_or_else(
            || {
                store.next_id += 1;
                format!("{}{}", kind.to_lowercase(), store.next_id)
            },
            str::to_owned,
        );
        resource["id"] = json!(id);
        resource["meta"]["lastUpdated"] =
            json!(OffsetDateTime::now_utc().format(&Rfc3339).expect("formats"));
        store
            .resources
            .retain(|r| !(r["resourceType"] == kind && r["id"] == id.as_str()));
        store.resources.push(resource.clone());
        resource
    }

    fn find(store: &Store, kind: &str, id: &str) -> Option<Value> {
        store
            .resources
            .iter()
            .find(|r| r["resourceType"] == kind && r["id"] == id)
            .cloned()
    }

    /// A conditional update on `identifier`: (status, stored).
    fn conditional(&self, store: &mut Store, kind: &str, token: &str, body: Value) -> (u16, Value) {
        let found: Vec<String> = store
            .resources
            .iter()
            .filter(|r| r["resourceType"] == kind && has_identifier(r, token))
            .filter_map(|r| r["id"].as_str().map(str::to_owned))
            .collect();
        match found.first() {
            Some(id) if !self.broken(CheckId::ConditionalUpdate) => {
                (200, Self::store(store, kind, Some(id), body))
            }
            _ => (201, Self::store(store, kind, None, body)),
        }
    }

    fn search(&self, store: &Store, kind: &str, query: &HashMap<String, String>) -> Value {
        let mut found: Vec<Value> = store
            .resources
            .iter()
            .filter(|r| r["resourceType"] == kind)
            .cloned()
            .collect();
        if let Some(ids) = query.get("_id") {
            let ids: Vec<&str> = ids.split(',').collect();
            found.retain(|r| ids.iter().any(|id| r["id"] == *id));
        }
        if let Some(token) = query.get("identifier") {
            found.retain(|r| has_identifier(r, token));
        }
        if let Some(patient) = query.get("patient") {
            if self.broken(CheckId::ReadBack) {
                found.clear();
            }
            let subject = format!("Patient/{}", patient.trim_start_matches("Patient/"));
            found.retain(|r| r["subject"]["reference"] == subject.as_str());
        }
        // Broken, it ignores category on Observation, as a server without the parameter would.
        if let Some(token) = query.get("category")
            && !(kind == "Observation" && self.broken(CheckId::Category))
        {
            found.retain(|r| has_category(r, token));
        }
        if let Some(when) = query.get("_lastUpdated")
            && !self.broken(CheckId::LastUpdated)
        {
            let (prefix, instant) = when.split_at(2);
            let cut = OffsetDateTime::parse(instant, &Rfc3339).expect("an instant");
            found.retain(|r| {
                let at = OffsetDateTime::parse(
                    r["meta"]["lastUpdated"].as_str().expect("stored"),
                    &Rfc3339,
                )
                .expect("an instant");
                if prefix == "ge" { at >= cut } else { at < cut }
            });
        }
        let count: usize = query
            .get("_count")
            .map_or(50, |c| c.parse().expect("a number"));
        let offset: usize = query
            .get("_offset")
            .map_or(0, |o| o.parse().expect("a number"));
        let next = (offset + count < found.len()).then(|| {
            let mut params: Vec<(String, String)> = query
                .iter()
                .filter(|(k, _)| *k != "_offset")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            params.push(("_offset".into(), (offset + count).to_string()));
            let mut url = Url::parse(&format!("http://fake/{kind}")).expect("a URL");
            url.query_pairs_mut().extend_pairs(params);
            let relative = format!("{kind}?{}", url.query().unwrap_or_default());
            if self.broken(CheckId::PagedSearch) {
                format!("{}/{relative}", self.elsewhere)
            } else {
                relative
            }
        });
        let page = found.into_iter().skip(offset).take(count).collect();
        searchset(page, next)
    }

    /// A transaction, all or nothing (unless transactions are what is broken).
    fn transaction(&self, store: &mut Store, bundle: &Value) -> ResponseTemplate {
        let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
        if self.broken(CheckId::Write)
            && entries
                .iter()
                .any(|e| e["resource"]["resourceType"] == "Flag")
        {
            return fhir(422, &outcome_body("Flag is not supported"));
        }
        let mut work = Store {
            resources: store.resources.clone(),
            next_id: store.next_id,
            cleaning: store.cleaning,
        };
        let mut responses = Vec::new();
        for entry in &entries {
            let resource = entry["resource"].clone();
            let url = entry["request"]["url"].as_str().unwrap_or_default();
            let verb = entry["request"]["method"].as_str().unwrap_or_default();
            let (path, query) = url.split_once('?').unwrap_or((url, ""));
            let parts: Vec<&str> = path.split('/').collect();
            let (status, stored) = match (verb, parts.as_slice()) {
                ("POST", [kind]) => (201, Self::store(&mut work, kind, None, resource)),
                ("PUT", [kind]) => {
                    let token = query.strip_prefix("identifier=").unwrap_or_default();
                    let token = url::form_urlencoded::parse(format!("t={token}").as_bytes())
                        .next()
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default();
                    self.conditional(&mut work, kind, &token, resource)
                }
                ("PUT", [kind, id]) => {
                    // The fake keeps no versions: any If-Match is a conflict.
                    if entry["request"].get("ifMatch").is_some() {
                        if self.broken(CheckId::Transaction) {
                            *store = work;
                        }
                        return fhir(400, &outcome_body("entry failed with status 412"));
                    }
                    if kind == &"Flag" && self.broken(CheckId::Supersede) {
                        (200, Self::find(&work, kind, id).unwrap_or(resource))
                    } else {
                        (200, Self::store(&mut work, kind, Some(id), resource))
                    }
                }
                _ => return fhir(400, &outcome_body("unsupported entry")),
            };
            let location = format!(
                "{}/{}/_history/1",
                stored["resourceType"].as_str().unwrap_or_default(),
                stored["id"].as_str().unwrap_or_default()
            );
            responses
                .push(json!({"response": {"status": format!("{status}"), "location": location}}));
        }
        *store = work;
        fhir(
            200,
            &json!({"resourceType": "Bundle", "type": "transaction-response", "entry": responses}),
        )
    }
}

impl Respond for Fake {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut store = self.store.lock().expect("not poisoned");
        let query: HashMap<String, String> = request.url.query_pairs().into_owned().collect();
        let parts: Vec<&str> = request
            .url
            .path()
            .split('/')
            .filter(|p| !p.is_empty())
            .collect();
        let body = || serde_json::from_slice::<Value>(&request.body).expect("a JSON body");
        match (request.method.as_str(), parts.as_slice()) {
            ("GET", ["metadata"]) => fhir(200, &self.statement()),
            ("POST", []) => self.transaction(&mut store, &body()),
            ("POST", ["Patient"]) if self.broken(CheckId::Setup) => {
                fhir(403, &outcome_body("creating Patients is not allowed"))
            }
            ("POST", [kind]) => fhir(201, &Self::store(&mut store, kind, None, body())),
            ("GET", [kind]) => fhir(200, &self.search(&store, kind, &query)),
            ("PUT", [kind]) => {
                let token = query.get("identifier").cloned().unwrap_or_default();
                let (status, stored) = self.conditional(&mut store, kind, &token, body());
                fhir(status, &stored)
            }
            ("GET", [kind, id]) => match Self::find(&store, kind, id) {
                Some(found) => fhir(200, &found),
                None => fhir(404, &outcome_body("not found")),
            },
            ("PUT", [_, _]) if store.cleaning && self.broken(CheckId::Cleanup) => {
                fhir(405, &outcome_body("updates are not allowed"))
            }
            ("PUT", [kind, id]) => fhir(200, &Self::store(&mut store, kind, Some(id), body())),
            ("DELETE", [kind, id]) => {
                store.cleaning = true;
                if self.broken(CheckId::Cleanup) || self.fault == Fault::RefuseDeletes {
                    return fhir(405, &outcome_body("deletes are not allowed"));
                }
                store
                    .resources
                    .retain(|r| !(r["resourceType"] == *kind && r["id"] == *id));
                ResponseTemplate::new(204)
            }
            _ => fhir(400, &outcome_body("the fake does not do this")),
        }
    }
}

/// A fake with `fault` and, beside it, another origin that records what reaches it.
async fn fake(fault: Fault) -> (MockServer, MockServer) {
    let (server, elsewhere) = (MockServer::start().await, MockServer::start().await);
    Mock::given(any())
        .respond_with(Fake {
            fault,
            elsewhere: elsewhere.uri(),
            store: Mutex::new(Store::default()),
        })
        .with_priority(10)
        .mount(&server)
        .await;
    Mock::given(any())
        .respond_with(fhir(200, &json!({"resourceType": "CapabilityStatement"})))
        .mount(&elsewhere)
        .await;
    (server, elsewhere)
}

async fn run_against(server: &MockServer, timeout: Duration) -> Report {
    let fhir = client(&server.uri(), timeout);
    conformance::run(&fhir, &mapping(), today())
        .await
        .expect("the kit runs")
}

async fn received(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.expect("recording is on")
}

#[tokio::test]
async fn the_fake_passes_every_check_when_nothing_is_broken() {
    let (server, _elsewhere) = fake(Fault::None).await;
    let report = run_against(&server, Duration::from_secs(5)).await;
    for id in CheckId::ALL {
        assert_eq!(outcome(&report, id), Outcome::Pass, "{}", summary(&report));
    }
    let json = serde_json::to_string(&report).expect("serialises");
    assert!(!json.contains(TOKEN), "the report carries the token");
    assert!(
        received(&server)
            .await
            .iter()
            .all(|r| r.headers.get("authorization").is_some()),
        "credentials go to the base's origin"
    );
}

#[tokio::test]
async fn every_check_can_fail() {
    for id in CheckId::ALL {
        let (server, elsewhere) = fake(Fault::Break(id)).await;
        let report = run_against(&server, Duration::from_secs(5)).await;
        assert_eq!(
            outcome(&report, id),
            Outcome::Fail,
            "breaking {} did not fail it:\n{}",
            id.as_str(),
            summary(&report)
        );
        assert!(
            !report.check(id).expect("ran").exchanges.is_empty() || id == CheckId::Declared,
            "{}: a failure shows the exchange that decided it",
            id.as_str()
        );
        assert!(
            received(&elsewhere).await.is_empty(),
            "nothing went to the other origin"
        );
        if id == CheckId::PagedSearch {
            assert!(
                reason(&report, id).contains("another origin"),
                "{}",
                summary(&report)
            );
        }
    }
}

#[tokio::test]
async fn refused_deletes_are_tagged_instead() {
    let (server, _elsewhere) = fake(Fault::RefuseDeletes).await;
    let report = run_against(&server, Duration::from_secs(5)).await;
    assert_eq!(
        outcome(&report, CheckId::Cleanup),
        Outcome::Pass,
        "{}",
        summary(&report)
    );
    assert!(
        reason(&report, CheckId::Cleanup).contains("tagged"),
        "{}",
        summary(&report)
    );
    let tagged = received(&server)
        .await
        .into_iter()
        .filter(|r| r.method.as_str() == "PUT" && r.url.path().starts_with("/Patient/"))
        .count();
    assert_eq!(tagged, 3, "the three test Patients are tagged");
}

// ---------------------------------------------------------------------------------------------
// Bad input: the check that meets it fails saying so, and the kit goes on.

/// Every check after `metadata` passes (`declared` is skipped: it has no statement to read).
fn rest_passes(report: &Report) {
    for id in &CheckId::ALL[2..] {
        assert_eq!(outcome(report, *id), Outcome::Pass, "{}", summary(report));
    }
    assert_eq!(outcome(report, CheckId::Declared), Outcome::Skip);
}

#[tokio::test]
async fn an_html_page_fails_its_check_and_the_kit_goes_on() {
    let (server, _elsewhere) = fake(Fault::None).await;
    Mock::given(method("GET"))
        .and(path("/metadata"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw("<html><body>Please log in</body></html>", "text/html"),
        )
        .with_priority(1)
        .mount(&server)
        .await;
    let report = run_against(&server, Duration::from_secs(5)).await;
    assert_eq!(outcome(&report, CheckId::Metadata), Outcome::Fail);
    assert!(
        reason(&report, CheckId::Metadata).contains("HTML"),
        "{}",
        summary(&report)
    );
    let exchange = &report.check(CheckId::Metadata).expect("ran").exchanges[0];
    assert!(exchange.answer.contains("Please log in"), "{exchange:?}");
    rest_passes(&report);
}

#[tokio::test]
async fn an_operation_outcome_fails_its_check_with_the_servers_words() {
    let (server, _elsewhere) = fake(Fault::None).await;
    Mock::given(method("GET"))
        .and(path("/Patient"))
        .and(|r: &Request| r.url.query_pairs().any(|(k, _)| k == "_lastUpdated"))
        .respond_with(fhir(
            400,
            &outcome_body("unknown search parameter _lastUpdated"),
        ))
        .with_priority(1)
        .mount(&server)
        .await;
    let report = run_against(&server, Duration::from_secs(5)).await;
    assert_eq!(outcome(&report, CheckId::LastUpdated), Outcome::Fail);
    let why = reason(&report, CheckId::LastUpdated);
    assert!(
        why.contains("400") && why.contains("unknown search parameter _lastUpdated"),
        "{why}"
    );
    for id in CheckId::ALL
        .into_iter()
        .filter(|id| *id != CheckId::LastUpdated)
    {
        assert_eq!(outcome(&report, id), Outcome::Pass, "{}", summary(&report));
    }
}

#[tokio::test]
async fn a_401_everywhere_fails_or_skips_every_check_and_the_kit_finishes() {
    let (server, _elsewhere) = fake(Fault::None).await;
    Mock::given(any())
        .respond_with(fhir(401, &outcome_body("invalid token")))
        .with_priority(1)
        .mount(&server)
        .await;
    let report = run_against(&server, Duration::from_secs(5)).await;
    assert_eq!(report.checks.len(), CheckId::ALL.len());
    assert!(
        reason(&report, CheckId::Metadata).contains("401"),
        "{}",
        summary(&report)
    );
    assert!(reason(&report, CheckId::Metadata).contains("credentials"));
    assert_eq!(outcome(&report, CheckId::Setup), Outcome::Fail);
    assert!(
        report.checks.iter().all(|c| c.outcome != Outcome::Pass),
        "{}",
        summary(&report)
    );
    assert!(report.required_failures().count() >= 2);
}

#[tokio::test]
async fn a_redirect_to_another_origin_is_not_followed_and_gets_no_credentials() {
    let (server, elsewhere) = fake(Fault::None).await;
    Mock::given(method("GET"))
        .and(path("/metadata"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("Location", format!("{}/metadata", elsewhere.uri()).as_str()),
        )
        .with_priority(1)
        .mount(&server)
        .await;
    let report = run_against(&server, Duration::from_secs(5)).await;
    assert_eq!(outcome(&report, CheckId::Metadata), Outcome::Fail);
    assert!(
        reason(&report, CheckId::Metadata).contains("another origin"),
        "{}",
        summary(&report)
    );
    let there = received(&elsewhere).await;
    assert!(
        there
            .iter()
            .all(|r| r.headers.get("authorization").is_none()),
        "credentials reached the other origin"
    );
    assert!(there.is_empty(), "the redirect was followed: {there:?}");
    rest_passes(&report);
}

#[tokio::test]
async fn a_hanging_answer_times_out_its_check_and_the_kit_goes_on() {
    let (server, _elsewhere) = fake(Fault::None).await;
    Mock::given(method("GET"))
        .and(path("/metadata"))
        .respond_with(
            fhir(200, &json!({"resourceType": "CapabilityStatement"}))
                .set_delay(Duration::from_secs(10)),
        )
        .with_priority(1)
        .mount(&server)
        .await;
    let started = std::time::Instant::now();
    let report = run_against(&server, Duration::from_secs(1)).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the kit waited for the hang"
    );
    assert_eq!(outcome(&report, CheckId::Metadata), Outcome::Fail);
    assert!(
        reason(&report, CheckId::Metadata).contains("within 1 s"),
        "{}",
        summary(&report)
    );
    assert_eq!(
        report.check(CheckId::Metadata).expect("ran").exchanges[0].status,
        None
    );
    rest_passes(&report);
}

#[tokio::test]
async fn test_data_is_synthetic_and_run_unique() {
    let (server, _elsewhere) = fake(Fault::None).await;
    let first = run_against(&server, Duration::from_secs(5)).await;
    let second = run_against(&server, Duration::from_secs(5)).await;
    assert_ne!(first.run, second.run);
    let patients: Vec<Value> = received(&server)
        .await
        .iter()
        .filter(|r| r.method.as_str() == "POST" && r.url.path() == "/Patient")
        .map(|r| serde_json::from_slice(&r.body).expect("JSON"))
        .collect();
    assert_eq!(patients.len(), 6);
    for p in &patients {
        assert_eq!(p["name"][0]["family"], "Conformance Test", "{p}");
        assert_eq!(p["identifier"][0]["system"], TEST_SYSTEM, "{p}");
        assert_eq!(p["meta"]["tag"][0]["code"], "conformance-test", "{p}");
        assert!(p.get("birthDate").is_none(), "{p}");
    }
}
