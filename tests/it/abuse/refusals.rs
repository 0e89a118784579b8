//! Abuse suite: refusals stop the run (issue 24, findings 6 and 12). A scripted mock stands in
//! for the server only to answer what a real one would not: 401, 403, 404 or 405 on the
//! write-back transaction or on the search, and 412 on a transaction. A refusal not about
//! content stops the run after one attempt with exit code 8 and a message naming the server,
//! the status and what to fix; nothing is written and the checkpoint stays. A 412 means read
//! the Flags again and resend, a bounded number of times. Credential files others can read are
//! warned about once, by name. Joined runs and Bulk Data runs stop on a refusal with the same
//! exit code: a source that refuses its read stops the run with nothing written, even when it
//! may be missing; a target that refuses its writes gets nothing more while the others are
//! written; a Bulk export refused at its kick-off, status poll or a file stops at once.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::bulk::{file, finished, group_run, kick_off, manifest};
use crate::harness::TestServer;
use crate::roundtrip::all;
use crate::support::{Synth, segmentti, synth, text};

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

        // `explain` of one client on the same server ends the same way.
        let base = server.uri();
        let explained = segmentti(&[
            "explain",
            "--server",
            &base,
            "--patient",
            "p1",
            "--as-of",
            "2026-01-01",
        ]);
        let (stdout, stderr) = text(&explained);
        assert_eq!(
            explained.status.code(),
            Some(EXIT_NOT_ALLOWED),
            "explain, {status}\n{stdout}\n{stderr}"
        );
        assert!(
            stderr.contains(&format!("answered {status} "))
                && stderr.contains(&format!("hint: {hint}")),
            "explain, {status}: {stderr}"
        );
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

/// The error lines of a run's stderr: from the first `error: ` to the end.
fn error_of(stderr: &str) -> String {
    stderr
        .lines()
        .skip_while(|l| !l.starts_with("error: "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `run --write-to each` over a test server loaded with 20 clients and `mock`, plus `extra`,
/// off the async runtime (the mock needs it): the output.
async fn joined_with(
    health: &TestServer,
    mock: &MockServer,
    extra: &[&str],
) -> std::process::Output {
    let mut args: Vec<String> = [
        "run",
        "--server",
        health.base_url().as_str(),
        "--server",
        &mock.uri(),
        "--write-to",
        "each",
        "--as-of",
        "2026-01-01",
        "--json",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    tokio::task::spawn_blocking(move || {
        segmentti(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("the child finished")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_of_a_joined_run_that_refuses_gets_nothing_more_and_the_others_are_written() {
    let health = TestServer::start().await;
    synth(
        20,
        3,
        Synth::Server(health.base_url().as_str()),
        &["--service-area", "health"],
    );
    let mock = three_clients().await;
    Mock::given(method("POST"))
        .respond_with(fhir_json(403, outcome("forbidden", "no write access")))
        .mount(&mock)
        .await;
    // One client per transaction: three would be sent if a refusal only failed its batch.
    let output = joined_with(&health, &mock, &["--batch", "1"]).await;
    let (stdout, stderr) = text(&output);
    assert_eq!(
        output.status.code(),
        Some(EXIT_NOT_ALLOWED),
        "a refusal, not a target down (7)\n{stderr}"
    );
    let error = error_of(&stderr);
    assert!(
        error.starts_with(&format!(
            "error: stopped writing to {0}/: {0}/ refused segmentti's write of Observation, Flag and Provenance: 403 ",
            mock.uri()
        )) && error.contains("hint: the token has no write scope"),
        "names the target, the status and what to fix:\n{error}"
    );
    assert_eq!(
        requests(&mock, "POST", "/").await,
        1,
        "nothing more sent to the refusing target"
    );
    let run: Value = serde_json::from_str(&stdout).expect("the report is JSON");
    let outcomes: Vec<&Value> = run["models"][0]["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .map(|t| &t["outcome"])
        .collect();
    assert_eq!(outcomes[0]["written"]["observations"], 20, "{run:#}");
    assert!(outcomes[1]["not_allowed"].is_string(), "{run:#}");
    assert_eq!(
        all(&health, "Observation").await.len(),
        20,
        "the other target is written in full"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_of_a_joined_run_that_refuses_its_read_stops_the_run_even_if_it_may_be_missing() {
    let health = TestServer::start().await;
    synth(
        20,
        3,
        Synth::Server(health.base_url().as_str()),
        &["--service-area", "health"],
    );
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(fhir_json(401, outcome("login", "token expired")))
        .mount(&mock)
        .await;
    let refusing = format!("{}/", mock.uri());
    let output = joined_with(&health, &mock, &["--allow-partial", &refusing]).await;
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(EXIT_NOT_ALLOWED), "{stderr}");
    let error = error_of(&stderr);
    assert!(
        error.starts_with(&format!(
            "error: {refusing} refused segmentti's read, so nothing was written: GET {}/Patient?_count=",
            mock.uri()
        )) && error.contains("answered 401 ")
            && error.contains("hint: the server did not accept the credentials"),
        "names the source, the status and what to fix:\n{error}"
    );
    assert!(
        all(&health, "Observation").await.is_empty() && all(&health, "Flag").await.is_empty(),
        "--allow-partial is for a source down, not one closed to segmentti: nothing written"
    );
    assert_eq!(requests(&mock, "POST", "/").await, 0);
}

/// Which request of a Bulk export the scripted server refuses.
#[derive(Debug, Clone, Copy)]
enum Refuses {
    KickOff,
    Status,
    File,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_export_refused_at_kick_off_poll_or_file_stops_with_exit_8() {
    // The status and the file carry a signature in their query: it never reaches a message.
    const SIGNATURE: &str = "s3cr3t-signature";
    for (step, status, hint) in [
        (
            Refuses::KickOff,
            401,
            "the server did not accept the credentials",
        ),
        (Refuses::KickOff, 403, "the credentials may not export"),
        (
            Refuses::KickOff,
            404,
            "the server has no Bulk Data $export by GET at this level",
        ),
        (
            Refuses::KickOff,
            405,
            "the server has no Bulk Data $export by GET at this level",
        ),
        (
            Refuses::Status,
            403,
            "the credentials may not read this export",
        ),
        (
            Refuses::Status,
            404,
            "the server no longer knows this export",
        ),
        (
            Refuses::File,
            401,
            "the server did not accept the credentials",
        ),
        (
            Refuses::File,
            403,
            "the credentials may not read this export",
        ),
        (
            Refuses::File,
            405,
            "the server does not allow GET on the export's URLs",
        ),
    ] {
        let server = MockServer::start().await;
        let refusal = fhir_json(status, outcome("forbidden", "not for you"));
        let (asked, shown) = match step {
            Refuses::KickOff => {
                Mock::given(method("GET"))
                    .and(path("/Group/county/$export"))
                    .respond_with(refusal)
                    .mount(&server)
                    .await;
                ("/Group/county/$export", "kick-off")
            }
            Refuses::Status => {
                Mock::given(method("GET"))
                    .and(path("/Group/county/$export"))
                    .respond_with(ResponseTemplate::new(202).insert_header(
                        "Content-Location",
                        format!("{}/status/1?sig={SIGNATURE}", server.uri()).as_str(),
                    ))
                    .mount(&server)
                    .await;
                Mock::given(method("GET"))
                    .and(path("/status/1"))
                    .respond_with(refusal)
                    .mount(&server)
                    .await;
                ("/status/1", "status URL")
            }
            Refuses::File => {
                kick_off(&server, 1).await;
                let signed = format!("/files/p.ndjson?sig={SIGNATURE}");
                finished(&server, manifest(&server, &[("Patient", &signed)], false)).await;
                file(&server, "/files/errors.ndjson", "").await;
                Mock::given(method("GET"))
                    .and(path("/files/p.ndjson"))
                    .respond_with(refusal)
                    .mount(&server)
                    .await;
                ("/files/p.ndjson", "Patient file")
            }
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("out");
        let output = group_run(&server.uri(), &out, &[]);
        let (stdout, stderr) = text(&output);
        let case = format!("{step:?} {status}");
        assert_eq!(
            output.status.code(),
            Some(EXIT_NOT_ALLOWED),
            "{case}\n{stdout}\n{stderr}"
        );
        let error = error_of(&stderr);
        assert!(
            error.starts_with(&format!(
                "error: the export's {shown} {}{asked}",
                server.uri()
            )) && error.contains(&format!(" answered {status} "))
                && error.contains(&format!("hint: {hint}")),
            "{case}: names the server, the status and what to fix:\n{error}"
        );
        assert!(!stderr.contains(SIGNATURE), "{case}: redacted: {stderr}");
        assert_eq!(
            requests(&server, "GET", asked).await,
            1,
            "{case}: refused once, not retried"
        );
        assert!(
            !out.join("summary.json").exists(),
            "{case}: no results of a run that stopped"
        );
        let job = out.join(".bulk/job.json");
        match (step, status) {
            (Refuses::Status, 404) => assert!(!job.exists(), "{case}: a forgotten job is dropped"),
            (Refuses::Status, _) => assert!(job.exists(), "{case}: the job is kept to resume"),
            _ => {}
        }
    }
}
