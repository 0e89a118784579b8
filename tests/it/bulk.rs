//! Bulk Data `$export`: against the real test server, `run --bulk` segments exactly what a run
//! on the same population's files does; against a scripted server, the faults the real one
//! will not produce on demand: a slow job with `X-Progress` and a 429 while polling, a job
//! that never completes (given up with its URL kept, then resumed without a new kick-off),
//! expired and corrupt files, a failed job, files on another origin that need the token, and
//! files of types not asked for.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::Url;
use segmentti::fhir::{BearerToken, ClientOptions, FhirClient, RetryPolicy};
use segmentti::source::bulk::{self, BulkError, BulkOptions, Level};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::harness::TestServer;
use crate::support::{run_files, segmentti, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_from_the_test_server_segments_like_the_same_files() {
    let server = TestServer::start().await;
    let base = server.base_url().as_str().to_owned();
    let loaded = segmentti(&["synth", "--clients", "40", "--seed", "5", "--server", &base]);
    assert!(loaded.status.success(), "{:?}", text(&loaded));
    let dir = tempfile::tempdir().expect("temp dir");
    let files = dir.path().join("files");
    let made = segmentti(&[
        "synth",
        "--clients",
        "40",
        "--seed",
        "5",
        "--out",
        files.to_str().expect("utf-8"),
    ]);
    assert!(made.status.success(), "{:?}", text(&made));
    let offline = dir.path().join("offline");
    let ran = run_files(&files, &offline, &["--progress", "off"]);
    assert!(ran.status.success(), "{:?}", text(&ran));

    let exported = dir.path().join("bulk");
    let output = segmentti(&[
        "run",
        "--bulk",
        &base,
        "--as-of",
        "2026-01-01",
        "--out",
        exported.to_str().expect("utf-8"),
        "--progress",
        "off",
        "--bulk-poll-max",
        "1",
    ]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("Export: "), "{stdout}");
    assert!(stdout.contains("40 clients"), "{stdout}");
    for file in ["Observation.ndjson", "Flag.ndjson"] {
        assert_eq!(
            lines(&exported.join(file)),
            lines(&offline.join(file)),
            "{file} of the export differs from the run on the same files"
        );
    }
    assert!(
        !exported.join(".bulk").exists(),
        "the default work directory is removed after a successful run"
    );
}

fn lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// A status endpoint that answers 202 (with progress) for its first `pending` polls, a 429
/// once in between, and the manifest after.
struct Status {
    polls: Arc<AtomicUsize>,
    pending: Arc<AtomicUsize>,
    manifest: serde_json::Value,
}

impl Respond for Status {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.polls.fetch_add(1, Ordering::SeqCst);
        if n == 1 {
            return ResponseTemplate::new(429).insert_header("Retry-After", "0");
        }
        if n < self.pending.load(Ordering::SeqCst) {
            return ResponseTemplate::new(202)
                .insert_header("X-Progress", format!("{}% done", n * 10).as_str())
                .insert_header("Retry-After", "0");
        }
        ResponseTemplate::new(200).set_body_json(self.manifest.clone())
    }
}

fn client(server: &MockServer, token: bool) -> FhirClient {
    let mut options = ClientOptions::new("it-bulk");
    options.timeout = Duration::from_secs(5);
    options.retry = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
        max_retry_after: Duration::from_secs(1),
    };
    if token {
        options.bearer = Some(BearerToken::new("it-bulk-token"));
    }
    FhirClient::new(Url::parse(&server.uri()).expect("uri"), options).expect("client")
}

fn options(work_dir: &Path, timeout: Duration) -> BulkOptions {
    BulkOptions {
        level: Level::Group("county".into()),
        types: vec!["Patient".into(), "Encounter".into(), "Condition".into()],
        since: None,
        work_dir: work_dir.to_owned(),
        timeout,
        max_poll_interval: Duration::from_millis(50),
        download_timeout: Duration::from_secs(5),
    }
}

fn manifest(
    server: &MockServer,
    output: &[(&str, &str)],
    requires_token: bool,
) -> serde_json::Value {
    json!({
        "transactionTime": "2026-01-01T00:00:00Z",
        "request": format!("{}/Group/county/$export", server.uri()),
        "requiresAccessToken": requires_token,
        "output": output.iter().map(|(t, p)| json!({"type": t, "url": format!("{}{p}", server.uri())})).collect::<Vec<_>>(),
        "error": [{"type": "OperationOutcome", "url": format!("{}/files/errors.ndjson", server.uri())}],
    })
}

async fn kick_off(server: &MockServer, times: u64) {
    Mock::given(method("GET"))
        .and(path("/Group/county/$export"))
        .respond_with(ResponseTemplate::new(202).insert_header(
            "Content-Location",
            format!("{}/status/1", server.uri()).as_str(),
        ))
        .expect(times)
        .mount(server)
        .await;
}

const PATIENT: &str = r#"{"resourceType":"Patient","id":"p1","birthDate":"1950-01-01"}"#;
const OUTCOME: &str = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"Condition/c9 could not be exported"}]}"#;

async fn file(server: &MockServer, at: &str, body: &str) {
    Mock::given(method("GET"))
        .and(path(at))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(body.to_owned(), "application/fhir+ndjson"),
        )
        .mount(server)
        .await;
}

#[tokio::test]
async fn a_slow_job_is_polled_through_progress_and_a_429_then_downloaded_and_deleted() {
    let server = MockServer::start().await;
    kick_off(&server, 1).await;
    let polls = Arc::new(AtomicUsize::new(0));
    Mock::given(method("GET"))
        .and(path("/status/1"))
        .respond_with(Status {
            polls: Arc::clone(&polls),
            pending: Arc::new(AtomicUsize::new(4)),
            manifest: manifest(
                &server,
                &[
                    ("Patient", "/files/p.ndjson"),
                    ("MedicationRequest", "/files/m.ndjson"),
                ],
                true,
            ),
        })
        .mount(&server)
        .await;
    file(&server, "/files/p.ndjson", &format!("{PATIENT}\n")).await;
    file(&server, "/files/errors.ndjson", &format!("{OUTCOME}\n")).await;
    Mock::given(method("DELETE"))
        .and(path("/status/1"))
        .respond_with(ResponseTemplate::new(202))
        .expect(1)
        .mount(&server)
        .await;
    let work = tempfile::tempdir().expect("temp dir");
    let client = client(&server, true);
    let exported = bulk::export(&client, &options(work.path(), Duration::from_secs(10)))
        .await
        .expect("the export completes");
    assert_eq!(
        polls.load(Ordering::SeqCst),
        5,
        "4 pending polls (one a 429), then the manifest"
    );
    assert_eq!(exported.files, 1);
    assert_eq!(exported.ignored.get("MedicationRequest"), Some(&1));
    assert_eq!(exported.errors.len(), 1);
    assert!(
        exported.errors[0].contains("Condition/c9"),
        "{:?}",
        exported.errors
    );
    let downloaded =
        std::fs::read_to_string(exported.dir.join("00000-Patient.ndjson")).expect("file");
    assert_eq!(downloaded.trim(), PATIENT);
    let requests = server.received_requests().await.expect("recorded");
    let file_request = requests
        .iter()
        .find(|r| r.url.path() == "/files/p.ndjson")
        .expect("the file was fetched");
    assert!(
        file_request.headers.get("authorization").is_some(),
        "a file on the server's origin that requires the token gets it"
    );
    bulk::finish(&client, &exported, work.path()).await;
    assert!(!work.path().join("job.json").exists());
}

#[tokio::test]
async fn a_job_given_up_is_resumed_by_the_next_run_without_a_new_kick_off() {
    let server = MockServer::start().await;
    kick_off(&server, 1).await;
    let polls = Arc::new(AtomicUsize::new(0));
    let pending = Arc::new(AtomicUsize::new(usize::MAX));
    Mock::given(method("GET"))
        .and(path("/status/1"))
        .respond_with(Status {
            polls: Arc::clone(&polls),
            pending: Arc::clone(&pending),
            manifest: manifest(&server, &[("Patient", "/files/p.ndjson")], false),
        })
        .mount(&server)
        .await;
    file(&server, "/files/p.ndjson", &format!("{PATIENT}\n")).await;
    file(&server, "/files/errors.ndjson", "").await;
    let work = tempfile::tempdir().expect("temp dir");
    let client = client(&server, false);
    let first = bulk::export(&client, &options(work.path(), Duration::from_millis(300))).await;
    let Err(BulkError::TimedOut { status_url, .. }) = &first else {
        panic!("expected a timeout, got {first:?}");
    };
    assert!(status_url.ends_with("/status/1"));
    let message = first.expect_err("timed out").to_string();
    assert!(
        message.contains("/status/1") && message.contains("run the same command again"),
        "{message}"
    );
    assert!(
        work.path().join("job.json").exists(),
        "the job is kept for the next run"
    );
    assert!(
        polls.load(Ordering::SeqCst) > 2,
        "it polled until the timeout"
    );
    pending.store(0, Ordering::SeqCst);
    let second = bulk::export(&client, &options(work.path(), Duration::from_secs(30)))
        .await
        .expect("the resumed export completes");
    assert!(second.resumed);
    assert_eq!(second.files, 1);
}

#[tokio::test]
async fn expired_corrupt_and_cross_origin_files_are_reported_by_name() {
    for (case, response, token, expect) in [
        ("expired", ResponseTemplate::new(404), false, "expired"),
        (
            "corrupt gzip",
            ResponseTemplate::new(200)
                .insert_header("Content-Encoding", "gzip")
                .set_body_raw(
                    b"\x1f\x8b\x08not gzip at all".to_vec(),
                    "application/fhir+ndjson",
                ),
            false,
            "after 3 attempt(s)",
        ),
        (
            "cross origin",
            ResponseTemplate::new(200),
            true,
            "not on the FHIR server's origin",
        ),
    ] {
        let server = MockServer::start().await;
        let other = MockServer::start().await;
        kick_off(&server, 1).await;
        let files_on = if case == "cross origin" {
            &other
        } else {
            &server
        };
        let mut m = manifest(&server, &[], token);
        m["output"] =
            json!([{"type": "Encounter", "url": format!("{}/files/e.ndjson", files_on.uri())}]);
        Mock::given(method("GET"))
            .and(path("/status/1"))
            .respond_with(ResponseTemplate::new(200).set_body_json(m))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/files/e.ndjson"))
            .respond_with(response)
            .mount(files_on)
            .await;
        let work = tempfile::tempdir().expect("temp dir");
        let e = bulk::export(
            &client(&server, token),
            &options(work.path(), Duration::from_secs(5)),
        )
        .await
        .expect_err(case)
        .to_string();
        assert!(e.contains(expect), "{case}: {e}");
        assert!(
            e.contains("Encounter file"),
            "{case}: the message names the file: {e}"
        );
        assert!(
            other
                .received_requests()
                .await
                .expect("recorded")
                .is_empty(),
            "{case}: nothing is sent to another origin when the token would be needed"
        );
    }
}

#[tokio::test]
async fn a_failed_job_reports_the_outcome_and_is_not_resumed() {
    let server = MockServer::start().await;
    kick_off(&server, 1).await;
    Mock::given(method("GET"))
        .and(path("/status/1"))
        .respond_with(ResponseTemplate::new(500).set_body_raw(OUTCOME, "application/fhir+json"))
        .mount(&server)
        .await;
    let work = tempfile::tempdir().expect("temp dir");
    let e = bulk::export(
        &client(&server, false),
        &options(work.path(), Duration::from_secs(5)),
    )
    .await
    .expect_err("the job failed")
    .to_string();
    assert!(e.contains("Condition/c9 could not be exported"), "{e}");
    assert!(!work.path().join("job.json").exists(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_checkpoint_the_next_export_reads_only_the_changed_clients_again() {
    let server = TestServer::start().await;
    let base = server.base_url().as_str().to_owned();
    let loaded = segmentti(&["synth", "--clients", "30", "--seed", "5", "--server", &base]);
    assert!(loaded.status.success(), "{:?}", text(&loaded));
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state.json");
    let run = |out: &str| {
        let out = dir.path().join(out);
        let output = segmentti(&[
            "run",
            "--bulk",
            &base,
            "--as-of",
            "2026-01-01",
            "--state",
            state.to_str().expect("utf-8"),
            "--out",
            out.to_str().expect("utf-8"),
            "--progress",
            "off",
            "--bulk-poll-max",
            "1",
        ]);
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        (stdout, out)
    };
    let (full, _) = run("full");
    assert!(
        full.contains("30 clients") && !full.contains("changes since"),
        "{full}"
    );
    let checkpoint: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).expect("state")).expect("json");
    assert!(checkpoint["since"].is_string(), "{checkpoint}");
    assert!(
        checkpoint["thresholds"]["paijat-sote"].is_array(),
        "{checkpoint}"
    );

    // One client gets a new contact after the export.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let encounter = json!({
        "resourceType": "Encounter", "id": "e-late", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
        "subject": {"reference": "Patient/p0000003"},
        "period": {"start": "2025-12-01T10:00:00Z", "end": "2025-12-01T12:00:00Z"},
    });
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": encounter, "request": {"method": "PUT", "url": "Encounter/e-late"}},
    ]});
    server
        .client()
        .transaction(&bundle)
        .await
        .expect("the new contact is stored");

    let (changed, out) = run("changed");
    assert!(
        changed.contains("changes since") && changed.contains("Changed clients: 1"),
        "{changed}"
    );
    let observations = std::fs::read_to_string(out.join("Observation.ndjson")).expect("written");
    assert_eq!(observations.lines().count(), 1, "{observations}");
    assert!(
        observations.contains("\"Patient/p0000003\""),
        "{observations}"
    );

    let (unchanged, _) = run("unchanged");
    assert!(unchanged.contains("Changed clients: 0"), "{unchanged}");
}
