//! A server that refuses one client's results (a scripted mock, since a real server accepts
//! what segmentti writes): the refusal is reported with the client id and the server's
//! OperationOutcome, the other clients are still written, and the exit code says so.

use serde_json::{Value, json};
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::support::{segmentti, text};

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
