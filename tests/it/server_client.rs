//! The FHIR client against the real test server (see `harness`): transactions with
//! `urn:uuid:` references, paging, searches by several patients, conditional updates and
//! `If-None-Exist`. Every test starts its own server, so the tests run in parallel and their
//! data never meet; all data are synthetic (ids `it-…`, identifiers `it-…-fake-…`).
//!
//! Timings go to stderr as `[timing] …` lines (`cargo test --test it -- --nocapture`).

use std::collections::{BTreeSet, HashSet};
use std::time::Instant;

use reqwest::{StatusCode, Url};
use segmentti::fhir::{FhirClient, FhirError, entry_outcomes, matches, next_link};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::TestServer;

/// The Finnish personal identity code's system; the values used with it here are fake.
const HETU: &str = "urn:oid:1.2.246.21";
const OBSERVATION_IDS: &str = "urn:segmentti:it:observation";

fn patient_id(prefix: &str, n: usize) -> String {
    format!("{prefix}-{n:04}")
}

fn urn(id: &str) -> String {
    format!(
        "urn:uuid:{}",
        Uuid::new_v5(&Uuid::NAMESPACE_URL, id.as_bytes())
    )
}

/// A transaction creating `patients` Patients `{prefix}-0001`… (by `PUT`, ids chosen here)
/// and `encounters_each` Encounters for each (by `POST`, subject given as the Patient's
/// `urn:uuid:` full URL, which the server must resolve).
fn population(prefix: &str, patients: usize, encounters_each: usize) -> Value {
    let mut entries = Vec::new();
    for n in 1..=patients {
        let id = patient_id(prefix, n);
        entries.push(json!({
            "fullUrl": urn(&id),
            "resource": {
                "resourceType": "Patient",
                "id": id,
                "identifier": [{"system": HETU, "value": format!("{prefix}-fake-{n:04}")}],
            },
            "request": {"method": "PUT", "url": format!("Patient/{id}")},
        }));
        for e in 1..=encounters_each {
            let encounter = format!("{id}-e{e}");
            entries.push(json!({
                "fullUrl": urn(&encounter),
                "resource": {
                    "resourceType": "Encounter",
                    "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "subject": {"reference": urn(&id)},
                },
                "request": {"method": "POST", "url": "Encounter"},
            }));
        }
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// Posts `bundle` and checks that every entry succeeded; returns the entries' statuses.
async fn commit(client: &FhirClient, bundle: &Value) -> Vec<u16> {
    let response = client
        .transaction(bundle)
        .await
        .expect("the transaction is accepted");
    let outcomes = entry_outcomes(&response).expect("a well-formed transaction-response");
    assert_eq!(
        outcomes.len(),
        bundle["entry"].as_array().map_or(0, Vec::len)
    );
    for outcome in &outcomes {
        assert!(
            outcome.is_success(),
            "entry {} answered {}",
            outcome.index,
            outcome.status
        );
    }
    outcomes.iter().map(|o| o.status).collect()
}

/// Every match of a search, across all its pages, and how many pages there were.
async fn all_matches(
    client: &FhirClient,
    resource_type: &str,
    params: &[(&str, &str)],
) -> (Vec<Value>, usize) {
    let mut pages = client
        .pages(resource_type, params)
        .expect("a valid resource type");
    let (mut found, mut count) = (Vec::new(), 0);
    while let Some(page) = pages.next_page().await {
        let page = page.expect("every page arrives");
        count += 1;
        found.extend(matches(&page).cloned());
    }
    (found, count)
}

fn id_of(resource: &Value) -> String {
    resource["id"]
        .as_str()
        .expect("a stored resource has an id")
        .to_owned()
}

fn subject_of(resource: &Value) -> String {
    resource["subject"]["reference"]
        .as_str()
        .expect("an Encounter has a subject")
        .to_owned()
}

#[tokio::test]
async fn a_transaction_of_250_patients_pages_back_each_exactly_once() {
    let server = TestServer::start().await;
    let client = server.client();
    eprintln!("[timing] hfs started in {:?}", server.started_in());

    let bundle = population("it-p", 250, 1);
    let started = Instant::now();
    let statuses = commit(&client, &bundle).await;
    eprintln!(
        "[timing] transaction of 250 Patients + 250 Encounters: {:?}",
        started.elapsed()
    );
    assert!(
        statuses.iter().all(|s| *s == 201),
        "all created: {statuses:?}"
    );

    // The urn:uuid subject became the Patient's id chosen by the PUT.
    let first = client
        .search("Encounter", &[("patient", "it-p-0001")])
        .await
        .expect("a search by patient");
    let subjects: Vec<_> = matches(&first).map(subject_of).collect();
    assert_eq!(subjects, ["Patient/it-p-0001"]);

    let started = Instant::now();
    let mut pages = client
        .pages("Patient", &[("_count", "50")])
        .expect("a valid resource type");
    let (mut ids, mut page_count) = (Vec::new(), 0);
    while let Some(page) = pages.next_page().await {
        let page = page.expect("every page arrives");
        page_count += 1;
        if let Some(next) = next_link(&page) {
            let next = server.base_url().join(next).expect("a next link is a URL");
            assert_eq!(
                next.origin(),
                server.base_url().origin(),
                "next link {next} left the origin"
            );
        }
        ids.extend(matches(&page).map(id_of));
    }
    eprintln!(
        "[timing] paging 250 Patients by 50: {page_count} pages in {:?}",
        started.elapsed()
    );

    let unique: BTreeSet<_> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), 250, "every Patient arrives once, none twice");
    let expected: BTreeSet<_> = (1..=250).map(|n| patient_id("it-p", n)).collect();
    assert_eq!(unique, expected);
    assert!(
        (5..=6).contains(&page_count),
        "{page_count} pages of 50 for 250"
    );
}

#[tokio::test]
async fn encounters_searched_for_several_patients_belong_to_those_patients_only() {
    let server = TestServer::start().await;
    let client = server.client();
    commit(&client, &population("it-e", 30, 2)).await;

    let started = Instant::now();
    let (encounters, _) = all_matches(
        &client,
        "Encounter",
        &[
            ("patient", "it-e-0003,it-e-0011,it-e-0027"),
            ("_count", "100"),
        ],
    )
    .await;
    eprintln!("[timing] Encounter?patient=a,b,c: {:?}", started.elapsed());

    let subjects: Vec<_> = encounters.iter().map(subject_of).collect();
    assert_eq!(subjects.len(), 6, "two Encounters each: {subjects:?}");
    let asked: HashSet<_> = [
        "Patient/it-e-0003",
        "Patient/it-e-0011",
        "Patient/it-e-0027",
    ]
    .into();
    assert!(
        subjects.iter().all(|s| asked.contains(s.as_str())),
        "{subjects:?}"
    );
    assert_eq!(subjects.iter().collect::<HashSet<_>>().len(), 3);
}

fn observation(value: &str, text: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "identifier": [{"system": OBSERVATION_IDS, "value": value}],
        "code": {"text": text},
        "subject": {"reference": "Patient/it-c-0001"},
    })
}

#[tokio::test]
async fn a_conditional_update_sent_twice_leaves_one_observation() {
    let server = TestServer::start().await;
    let client = server.client();
    commit(&client, &population("it-c", 1, 0)).await;

    // As a REST interaction: PUT Observation?identifier=system|value.
    let criteria = format!("{OBSERVATION_IDS}|it-obs-0001");
    let params = [("identifier", criteria.as_str())];
    let first = client
        .update_conditional("Observation", &params, &observation("it-obs-0001", "first"))
        .await
        .expect("the first conditional update creates");
    let second = client
        .update_conditional(
            "Observation",
            &params,
            &observation("it-obs-0001", "second"),
        )
        .await
        .expect("the second conditional update updates");
    assert_eq!(
        (first.status, second.status),
        (StatusCode::CREATED, StatusCode::OK)
    );
    let (found, _) = all_matches(&client, "Observation", &params).await;
    assert_eq!(
        found.len(),
        1,
        "one Observation after two conditional updates"
    );
    assert_eq!(found[0]["code"]["text"], "second");
    assert_eq!(found[0]["meta"]["versionId"], "2");

    // As transaction entries, the way the sink writes: the same twice.
    let criteria = format!("{OBSERVATION_IDS}|it-obs-0002");
    let entry = json!({
        "resource": observation("it-obs-0002", "in a transaction"),
        "request": {"method": "PUT", "url": format!("Observation?identifier={criteria}")},
    });
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [entry]});
    let statuses = [
        commit(&client, &bundle).await,
        commit(&client, &bundle).await,
    ];
    assert_eq!(statuses, [[201], [200]]);
    let (found, _) =
        all_matches(&client, "Observation", &[("identifier", criteria.as_str())]).await;
    assert_eq!(found.len(), 1);
}

#[tokio::test]
async fn if_none_exist_in_a_transaction_entry_creates_only_once() {
    let server = TestServer::start().await;
    let client = server.client();
    let criteria = format!("identifier={HETU}|it-n-fake-0001");
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "fullUrl": urn("it-n-0001"),
        "resource": {"resourceType": "Patient", "identifier": [{"system": HETU, "value": "it-n-fake-0001"}]},
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": criteria},
    }]});

    let first = client
        .transaction(&bundle)
        .await
        .expect("the first transaction");
    let second = client
        .transaction(&bundle)
        .await
        .expect("the second transaction");
    let first = &entry_outcomes(&first).expect("well-formed")[0];
    let second = &entry_outcomes(&second).expect("well-formed")[0];
    // Observed with hfs 0.2.7: If-None-Exist is honoured; the second answer is 200 and points
    // at the Patient the first created.
    assert_eq!((first.status, second.status), (201, 200));
    assert_eq!(first.location, second.location);
    let (found, _) = all_matches(
        &client,
        "Patient",
        &[("identifier", &criteria["identifier=".len()..])],
    )
    .await;
    assert_eq!(
        found.len(),
        1,
        "If-None-Exist kept the second POST from creating"
    );
}

#[tokio::test]
async fn a_transaction_the_server_refuses_carries_its_operation_outcome() {
    let server = TestServer::start().await;
    let client = server.client();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": observation("it-obs-bad", "unknown criteria"),
        "request": {"method": "PUT", "url": "Observation?it-no-such-parameter=1"},
    }]});

    let err = client
        .transaction(&bundle)
        .await
        .expect_err("an unknown search parameter is refused");
    assert!(matches!(err, FhirError::Status { .. }), "{err}");
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    assert!(!err.is_retryable());
    let outcome = err.outcome().expect("hfs sends an OperationOutcome");
    assert!(outcome.has_errors());
    // hfs puts its text in `details.text`, not `diagnostics`; the summary reads either.
    let text = err.to_string();
    assert!(text.contains("it-no-such-parameter"), "{text}");
    let (found, _) = all_matches(&client, "Observation", &[("_count", "10")]).await;
    assert!(found.is_empty(), "nothing was written");
}

#[tokio::test]
async fn the_test_server_starts_and_states_fhir_r4() {
    let started = Instant::now();
    let server = TestServer::start().await;
    eprintln!(
        "[timing] hfs ready in {:?} (spawn to first 200 on /metadata)",
        server.started_in()
    );
    assert!(started.elapsed().as_secs() < 60);
    let statement = server
        .client()
        .capabilities()
        .await
        .expect("a CapabilityStatement");
    assert_eq!(statement["fhirVersion"], "4.0.1");
    // The base the server announces is the one the harness gave it, so its links stay here.
    let announced = statement["implementation"]["url"]
        .as_str()
        .expect("implementation.url");
    assert_eq!(
        Url::parse(announced).expect("a URL").origin(),
        server.base_url().origin()
    );
}
