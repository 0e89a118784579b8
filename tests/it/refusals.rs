//! A server that refuses one client's results (a scripted mock, since a real server accepts
//! what segmentti writes): the refusal is reported with the client id and the server's
//! OperationOutcome, the other clients are still written, and the exit code says so.
//!
//! And write-back under retries and other writers, against the real test server (issue 24,
//! finding 12): a transaction sent twice leaves one Provenance; a Flag another writer changed
//! since it was read is not overwritten (412 on `If-Match`); kept and ended Flags keep other
//! writers' extensions.

use serde_json::{Value, json};
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::harness::TestServer;
use crate::roundtrip::all;
use crate::support::{Synth, segmentti, synth, text};

fn searchset(resources: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "searchset",
        "entry": resources.into_iter().map(|r| json!({"resource": r, "search": {"mode": "match"}})).collect::<Vec<_>>()})
}

fn fhir_json(body: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(body.to_string(), "application/fhir+json")
}

/// Answers a transaction with one `201 Created` per entry.
fn accepted(request: &Request) -> ResponseTemplate {
    let bundle: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let n = bundle["entry"].as_array().map_or(0, Vec::len);
    fhir_json(
        json!({"resourceType": "Bundle", "type": "transaction-response",
        "entry": (0..n).map(|_| json!({"response": {"status": "201 Created"}})).collect::<Vec<_>>()}),
    )
}

#[tokio::test]
async fn a_refused_client_is_reported_and_the_others_are_written() {
    let server = MockServer::start().await;
    let patients = vec![
        json!({"resourceType": "Patient", "id": "good", "birthDate": "1950-01-01"}),
        json!({"resourceType": "Patient", "id": "bad", "birthDate": "1960-01-01"}),
    ];
    Mock::given(method("GET"))
        .and(path("/Patient"))
        .respond_with(fhir_json(searchset(patients)))
        .mount(&server)
        .await;
    for empty in ["/Encounter", "/Condition", "/Flag"] {
        Mock::given(method("GET"))
            .and(path(empty))
            .respond_with(fhir_json(searchset(Vec::new())))
            .mount(&server)
            .await;
    }
    let outcome = json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "business-rule",
        "diagnostics": "Flag.subject refers to a Patient under a consent restriction"}]});
    Mock::given(method("POST"))
        .and(path("/"))
        .and(body_string_contains("Patient/bad"))
        .respond_with(
            ResponseTemplate::new(422).set_body_raw(outcome.to_string(), "application/fhir+json"),
        )
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/"))
        .respond_with(accepted)
        .with_priority(2)
        .mount(&server)
        .await;

    let output = segmentti(&["run", "--server", &server.uri(), "--as-of", "2026-01-01"]);
    let (stdout, stderr) = text(&output);
    assert_eq!(
        output.status.code(),
        Some(4),
        "refused writes have their own exit code\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("refused: Patient/bad") && stdout.contains("consent restriction"),
        "{stdout}"
    );
    assert!(
        stdout.contains("wrote: 1 Observation(s)"),
        "the good client is written: {stdout}"
    );
    let posts: Vec<String> = server
        .received_requests()
        .await
        .expect("recorded")
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(posts.len(), 3, "the batch, then each client alone");
    assert!(
        posts[1..]
            .iter()
            .any(|b| b.contains("Patient/good") && !b.contains("Patient/bad"))
    );
}

/// A Flag of segmentti's shape for `Patient/p1`, as the server would hold it.
fn flag(id: &str) -> Value {
    json!({"resourceType": "Flag", "id": id,
        "identifier": [{"system": "https://example.org/model/identifier/segment-flag", "value": id}],
        "status": "active", "code": {"coding": [{"system": "https://example.org/model/segment", "code": "1"}]},
        "subject": {"reference": "Patient/p1"}, "period": {"start": "2026-01-01"}})
}

fn model() -> (String, String) {
    ("https://example.org/model".into(), "1".into())
}

#[tokio::test]
async fn issue_24_a_transaction_sent_twice_leaves_one_provenance() {
    let server = TestServer::start().await;
    server
        .put(&[json!({"resourceType": "Patient", "id": "p1"})])
        .await;
    let changes = segmentti::writeback::lifecycle::Changes {
        observation: None,
        upsert: vec![flag("f1")],
        end: Vec::new(),
    };
    let bundle = segmentti::sink::fhir::transaction(&[("p1".into(), changes)], &model());
    let client = server.client();
    // The second is what a retry sends when the answer to the first was lost.
    for _ in 0..2 {
        client.transaction(&bundle).await.expect("accepted");
    }
    let provenances = all(&server, "Provenance").await;
    assert_eq!(provenances.len(), 1, "{provenances:#?}");
    assert_eq!(all(&server, "Flag").await.len(), 1);
    let again = segmentti::sink::fhir::transaction(
        &[(
            "p1".into(),
            segmentti::writeback::lifecycle::Changes {
                observation: None,
                upsert: vec![flag("f1")],
                end: Vec::new(),
            },
        )],
        &model(),
    );
    client.transaction(&again).await.expect("accepted");
    assert_eq!(
        all(&server, "Provenance").await.len(),
        2,
        "another write of the same Flag has its own Provenance"
    );
}

#[tokio::test]
async fn issue_24_a_flag_another_writer_changed_since_it_was_read_is_not_overwritten() {
    let server = TestServer::start().await;
    server
        .put(&[json!({"resourceType": "Patient", "id": "p1"}), flag("f1")])
        .await;
    let client = server.client();
    let url = client.base().join("Flag/f1").expect("url");
    let read = client.get(&url).await.expect("the Flag");
    let mut theirs = read.clone();
    theirs["extension"] = json!([{"url": "https://ehr.example/banner-colour", "valueCode": "red"}]);
    server.put(&[theirs]).await;

    let ended = segmentti::writeback::lifecycle::ended(&read, "2026-06-01".parse().expect("day"));
    let changes = segmentti::writeback::lifecycle::Changes {
        observation: None,
        upsert: Vec::new(),
        end: vec![ended],
    };
    let bundle = segmentti::sink::fhir::transaction(&[("p1".into(), changes)], &model());
    let err = client
        .transaction(&bundle)
        .await
        .expect_err("the version read is not the current one");
    // hfs reports the entry's 412 as the transaction's 400.
    assert!(err.is_conflict(), "{err}");
    let now = client.get(&url).await.expect("the Flag");
    assert_eq!(now["status"], "active", "nothing was ended on a stale read");
    assert_eq!(now["extension"][0]["valueCode"], "red");
    assert!(all(&server, "Provenance").await.is_empty());
}

#[tokio::test]
async fn issue_24_kept_and_ended_flags_keep_other_writers_extensions() {
    let server = TestServer::start().await;
    let base = server.base_url().as_str().to_owned();
    synth(60, 3, Synth::Server(&base), &[]);
    let run = |as_of: &str| {
        let output = segmentti(&["run", "--server", &base, "--batch", "25", "--as-of", as_of]);
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "{stdout}\n{stderr}");
    };
    run("2026-01-01");
    let theirs = json!({"url": "https://ehr.example/banner-colour", "valueCode": "red"});
    let before: Vec<Value> = all(&server, "Flag")
        .await
        .into_iter()
        .map(|mut f| {
            f["extension"]
                .as_array_mut()
                .expect("segmentti's extensions")
                .push(theirs.clone());
            f
        })
        .collect();
    server.put(&before).await;

    run("2026-09-01");
    let after = all(&server, "Flag").await;
    let (mut kept, mut ended) = (0, 0);
    for old in &before {
        let new = after
            .iter()
            .find(|f| f["id"] == old["id"])
            .expect("no Flag disappears");
        assert!(
            new["extension"]
                .as_array()
                .expect("extensions")
                .contains(&theirs),
            "Flag/{} lost another writer's extension: {new:#}",
            old["id"]
        );
        let version = |f: &Value| {
            f["meta"]["versionId"]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
                .expect("a numeric versionId")
        };
        // The other writer's PUT made one version; a kept Flag segmentti wrote again another.
        let rewritten = version(new) > version(old) + 1;
        match new["status"].as_str() {
            Some("active") if rewritten => kept += 1,
            Some("inactive") => ended += 1,
            _ => {}
        }
    }
    assert!(
        kept > 0 && ended > 0,
        "the later run keeps some Flags (rewritten) and ends others: kept {kept}, ended {ended}"
    );
}
