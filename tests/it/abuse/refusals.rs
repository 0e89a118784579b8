//! Abuse suite: refusals stop the run (issue 24, findings 6 and 12). A scripted mock stands in
//! for the server only to answer what a real one would not: 401, 403, 404 or 405 on the
//! write-back transaction or on the search, and 412 on a transaction. A refusal not about
//! content stops the run after one attempt with exit code 8 and a message naming the server,
//! the status and what to fix; nothing is written and the checkpoint stays. A 412 means read
//! the Flags again and resend, a bounded number of times. Credential files others can read are
//! warned about once, by name.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::support::{segmentti, text};

/// The exit code of a run the server refused for what it is.
const EXIT_NOT_ALLOWED: i32 = 8;

fn searchset(resources: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "searchset",
        "entry": resources.into_iter().map(|r| json!({"resource": r, "search": {"mode": "match"}})).collect::<Vec<_>>()})
}

fn fhir_json(status: u16, body: Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.to_string(), "application/fhir+json")
}

/// Answers a transaction with one `201 Created` per entry.
fn accepted(request: &Request) -> ResponseTemplate {
    let bundle: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let n = bundle["entry"].as_array().map_or(0, Vec::len);
    fhir_json(
        200,
        json!({"resourceType": "Bundle", "type": "transaction-response",
        "entry": (0..n).map(|_| json!({"response": {"status": "201 Created"}})).collect::<Vec<_>>()}),
    )
}

fn outcome(code: &str, text: &str) -> Value {
    json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]})
}

/// A server with three clients and no other resources; every search answers 200.
async fn three_clients() -> MockServer {
    let server = MockServer::start().await;
    let patients = ["a", "b", "c"]
        .iter()
        .map(|id| json!({"resourceType": "Patient", "id": id, "birthDate": "1950-01-01"}))
        .collect();
    Mock::given(method("GET"))
        .and(path("/Patient"))
        .respond_with(fhir_json(200, searchset(patients)))
        .mount(&server)
        .await;
    for empty in ["/Encounter", "/Condition", "/Flag"] {
        Mock::given(method("GET"))
            .and(path(empty))
            .respond_with(fhir_json(200, searchset(Vec::new())))
            .mount(&server)
            .await;
    }
    server
}

async fn requests(server: &MockServer, verb: &str, at: &str) -> usize {
    server
        .received_requests()
        .await
        .expect("recorded")
        .iter()
        .filter(|r| r.method.as_str() == verb && r.url.path() == at)
        .count()
}

/// `run --server` with a checkpoint in `dir`; the output and whether the checkpoint exists.
fn run(server: &MockServer, dir: &Path, extra: &[&str]) -> (std::process::Output, bool) {
    let state = dir.join("state.json");
    let base = server.uri();
    let mut args = vec![
        "run",
        "--server",
        &base,
        "--as-of",
        "2026-01-01",
        "--state",
        state.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    let output = segmentti(&args);
    (output, state.exists())
}

#[tokio::test]
async fn a_refused_transaction_stops_the_run_after_one_attempt() {
    for (status, hint) in [
        (401, "the server did not accept the credentials"),
        (
            403,
            "the token has no write scope for Observation, Flag and Provenance: check the client's scopes",
        ),
        (404, "the server takes no transactions at this base"),
        (405, "the server takes no transactions at this base"),
    ] {
        let server = three_clients().await;
        Mock::given(method("POST"))
            .respond_with(fhir_json(status, outcome("forbidden", "no write access")))
            .mount(&server)
            .await;
        let dir = tempfile::tempdir().expect("temp dir");
        // One client per transaction: today's run went on to the next batch after a refusal.
        let (output, checkpoint) = run(&server, dir.path(), &["--batch", "1"]);
        let (stdout, stderr) = text(&output);
        assert_eq!(
            output.status.code(),
            Some(EXIT_NOT_ALLOWED),
            "{status}: a refusal has its own exit code\n{stdout}\n{stderr}"
        );
        let error = stderr
            .lines()
            .skip_while(|l| !l.starts_with("error: "))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            error.starts_with(&format!(
                "error: {}/ refused segmentti's write of Observation, Flag and Provenance: {status} ",
                server.uri()
            )) && error.contains("no write access")
                && error.contains(&format!("hint: {hint}")),
            "{status}: names the server, the status, what was written and what to do:\n{error}"
        );
        assert_eq!(
            requests(&server, "POST", "/").await,
            1,
            "{status}: one transaction attempted, none split or retried"
        );
        assert!(!checkpoint, "{status}: the checkpoint stays where it was");
        assert!(
            !stdout.contains("wrote:"),
            "{status}: no summary of a run that did not finish: {stdout}"
        );
    }
}

#[tokio::test]
async fn a_refused_search_stops_the_run_with_the_same_exit_code() {
    for (status, hint) in [
        (401, "the server did not accept the credentials"),
        (403, "the credentials may not read Patient"),
        (404, "the server has no endpoint to read Patient"),
        (405, "the server does not allow GET to read Patient"),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/Patient"))
            .respond_with(fhir_json(status, outcome("forbidden", "no read access")))
            .mount(&server)
            .await;
        let dir = tempfile::tempdir().expect("temp dir");
        let (output, checkpoint) = run(&server, dir.path(), &[]);
        let (stdout, stderr) = text(&output);
        assert_eq!(
            output.status.code(),
            Some(EXIT_NOT_ALLOWED),
            "{status}\n{stdout}\n{stderr}"
        );
        assert!(
            stderr.contains(&format!("error: GET {}/Patient?_count=", server.uri()))
                && stderr.contains(&format!("answered {status} "))
                && stderr.contains(&format!("hint: {hint}")),
            "{status}: {stderr}"
        );
        assert_eq!(requests(&server, "POST", "/").await, 0, "nothing written");
        assert!(!checkpoint);
    }
}

/// Answers 412 to the first `conflicts` transactions, then accepts.
struct ChangedMeanwhile {
    conflicts: usize,
    seen: std::sync::atomic::AtomicUsize,
}

impl Respond for ChangedMeanwhile {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let n = self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n < self.conflicts {
            fhir_json(
                412,
                outcome(
                    "conflict",
                    "If-Match precondition failed: supplied W/\"1\", current version 2",
                ),
            )
        } else {
            accepted(request)
        }
    }
}

#[tokio::test]
async fn a_stale_version_is_read_again_and_the_batch_resent() {
    let server = three_clients().await;
    Mock::given(method("POST"))
        .respond_with(ChangedMeanwhile {
            conflicts: 2,
            seen: 0.into(),
        })
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (output, checkpoint) = run(&server, dir.path(), &[]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(
        requests(&server, "POST", "/").await,
        3,
        "two conflicts, then the whole batch in one"
    );
    assert_eq!(
        requests(&server, "GET", "/Flag").await,
        3,
        "the Flags are read again before each resend"
    );
    assert!(stdout.contains("in 1 transaction(s)"), "{stdout}");
    assert!(checkpoint);
}

#[tokio::test]
async fn conflicts_that_do_not_end_are_bounded_and_reported() {
    let server = three_clients().await;
    Mock::given(method("POST"))
        .respond_with(ChangedMeanwhile {
            conflicts: usize::MAX,
            seen: 0.into(),
        })
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (output, checkpoint) = run(&server, dir.path(), &[]);
    let (stdout, stderr) = text(&output);
    assert_eq!(
        output.status.code(),
        Some(4),
        "each client reported as refused\n{stdout}\n{stderr}"
    );
    assert_eq!(
        requests(&server, "POST", "/").await,
        1 + 3 + 3,
        "the batch, three rereads, then each client once"
    );
    assert_eq!(stdout.matches("refused: Patient/").count(), 3, "{stdout}");
    assert!(!checkpoint);
}

#[tokio::test]
async fn a_token_file_others_can_read_is_warned_about_by_name_once() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(fhir_json(403, outcome("forbidden", "no access")))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cr3t-t0ken\n").expect("written");
    let run_with = |mode: u32| {
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let output = segmentti(&[
            "run",
            "--server",
            &server.uri(),
            "--auth",
            "bearer",
            "--token-file",
            token.to_str().expect("utf-8"),
        ]);
        text(&output).1
    };
    let stderr = run_with(0o644);
    let shown = token.display().to_string();
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("can be read by other users"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains(&shown), "{stderr}");
    assert!(
        stderr.contains(&format!("hint: chmod 600 {shown}")),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cr3t"), "never the contents: {stderr}");
    let stderr = run_with(0o600);
    assert!(
        !stderr.contains("can be read by other users"),
        "an owner-only file is fine: {stderr}"
    );
}
