//! Abuse suite: Bulk Data (finding 16), against the real binary and a scripted export server
//! (fault injection: a real server produces none of these on demand). A 50 MB error file is
//! read a block at a time and summarised without its diagnostics; a timed-out export shows its
//! status URL without the signed query; a file redirected to another origin is fetched there
//! without the token; the checkpoint's `since` is the server's time, never this machine's.

use std::path::Path;

use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::bulk::{PATIENT, file, finished, group_run, kick_off, manifest};
use crate::support::{stats_line, text};

/// Words of an error file's diagnostics that must not leave it: an identity code and a birth
/// date of the kind a server's message could carry.
const IDENTITY_CODE: &str = "131052-308T";
const BIRTH_DATE: &str = "1952-10-13";

/// The job is deleted at the end of a successful run.
async fn deletable(server: &MockServer) {
    Mock::given(method("DELETE"))
        .and(path("/status/1"))
        .respond_with(ResponseTemplate::new(202))
        .mount(server)
        .await;
}

/// Both outputs of a run, for searching.
fn all_output(output: &std::process::Output) -> String {
    let (stdout, stderr) = text(output);
    format!("{stdout}\n{stderr}")
}

/// `run --bulk --stats` of an export whose error file holds `lines` copies of `outcome`: its
/// output and the run's peak RSS.
async fn run_with_error_file(outcome: &str, lines: usize) -> (std::process::Output, f64) {
    let server = MockServer::start().await;
    kick_off(&server, 1).await;
    file(&server, "/files/p.ndjson", &format!("{PATIENT}\n")).await;
    file(
        &server,
        "/files/errors.ndjson",
        &format!("{outcome}\n").repeat(lines),
    )
    .await;
    finished(
        &server,
        manifest(&server, &[("Patient", "/files/p.ndjson")], false),
    )
    .await;
    deletable(&server).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let output = group_run(&server.uri(), &dir.path().join("out"), &["--stats"]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let summary = format!(
        "export errors: {lines} issue(s) in 1 error file(s): error processing {lines}; first at {}/files/errors.ndjson:1 (error processing)",
        server.uri()
    );
    assert!(stdout.contains(&summary), "{summary}\n{stdout}");
    let all = all_output(&output);
    assert!(
        !all.contains(IDENTITY_CODE) && !all.contains(BIRTH_DATE),
        "no diagnostics outside the debug log: {all}"
    );
    let peak = stats_line(&stdout)["peak_rss_bytes"];
    assert!(peak > 0.0, "the peak RSS is known on Linux: {stdout}");
    (output, peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_error_file_is_read_a_block_at_a_time_and_summarised_without_its_diagnostics() {
    let outcome = json!({"resourceType": "OperationOutcome", "issue": [{
        "severity": "error", "code": "processing",
        "diagnostics": format!("Patient {IDENTITY_CODE}, born {BIRTH_DATE}, could not be exported"),
    }]})
    .to_string();
    let size = 50 << 20;
    let (_, small) = run_with_error_file(&outcome, 1).await;
    let (_, large) = run_with_error_file(&outcome, size / (outcome.len() + 1) + 1).await;
    let mib = |bytes: f64| bytes / f64::from(1 << 20);
    assert!(
        large - small < f64::from(20 << 20),
        "a 50 MiB error file raised the run's peak RSS from {:.0} to {:.0} MiB: more than a few blocks of lines",
        mib(small),
        mib(large)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_that_times_out_shows_its_status_url_without_the_signed_query() {
    const SIGNATURE: &str = "s3cr3t-status-signature";
    let server = MockServer::start().await;
    let status = format!(
        "{}/status/1?X-Amz-Signature={SIGNATURE}&X-Amz-Expires=3600",
        server.uri()
    );
    Mock::given(method("GET"))
        .and(path("/Group/county/$export"))
        .respond_with(ResponseTemplate::new(202).insert_header("Content-Location", status.as_str()))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/status/1"))
        .respond_with(
            ResponseTemplate::new(202)
                .insert_header("X-Progress", "exporting")
                .insert_header("Retry-After", "1"),
        )
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let run = || {
        group_run(
            &server.uri(),
            &out,
            &["--bulk-timeout", "1", "--bulk-poll-max", "1", "-vv"],
        )
    };
    // The second run resumes the job the first kept (one kick-off), and logs that it does.
    for (n, shown) in [(1, "was not complete after"), (2, "resuming the export")] {
        let output = run();
        let all = all_output(&output);
        assert!(!output.status.success(), "run {n}: {all}");
        assert!(
            all.contains(&format!("{}/status/1?X-Amz-Signature=…", server.uri())),
            "run {n}: the status URL is shown, its query redacted: {all}"
        );
        assert!(all.contains(shown), "run {n}: {all}");
        assert!(
            !all.contains(SIGNATURE),
            "run {n}: the signature leaked: {all}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_redirected_to_another_origin_is_fetched_there_without_the_token() {
    const TOKEN: &str = "it-abuse-bulk-token";
    const SIGNATURE: &str = "s3cr3t-file-signature";
    const ENCOUNTER: &str = r#"{"resourceType":"Encounter","id":"e1","status":"finished","subject":{"reference":"Patient/p1"},"period":{"start":"2025-06-01"}}"#;
    const OUTCOME: &str = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"warning","code":"too-costly"}]}"#;
    let fhir = MockServer::start().await;
    // Another port on the same host is another origin.
    let storage = MockServer::start().await;
    kick_off(&fhir, 1).await;
    let mut m = manifest(
        &fhir,
        &[
            ("Patient", "/files/p.ndjson"),
            ("Encounter", "/files/e.ndjson"),
        ],
        true,
    );
    m["error"] =
        json!([{"type": "OperationOutcome", "url": format!("{}/files/errors.ndjson", fhir.uri())}]);
    finished(&fhir, m).await;
    deletable(&fhir).await;
    for (at, to) in [
        (
            "/files/p.ndjson",
            format!(
                "{}/bucket/p.ndjson?X-Amz-Signature={SIGNATURE}",
                storage.uri()
            ),
        ),
        (
            "/files/errors.ndjson",
            format!(
                "{}/bucket/errors.ndjson?X-Amz-Signature={SIGNATURE}",
                storage.uri()
            ),
        ),
        ("/files/e.ndjson", "/moved/e.ndjson".to_owned()),
    ] {
        Mock::given(method("GET"))
            .and(path(at))
            .respond_with(ResponseTemplate::new(307).insert_header("Location", to.as_str()))
            .expect(1)
            .mount(&fhir)
            .await;
    }
    file(&fhir, "/moved/e.ndjson", &format!("{ENCOUNTER}\n")).await;
    file(&storage, "/bucket/p.ndjson", &format!("{PATIENT}\n")).await;
    file(&storage, "/bucket/errors.ndjson", &format!("{OUTCOME}\n")).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).expect("token file");
    let output = group_run(
        &fhir.uri(),
        &dir.path().join("out"),
        &[
            "--auth",
            "bearer",
            "--token-file",
            token.to_str().expect("utf-8"),
            "-vv",
        ],
    );
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("(2 resources") && stdout.contains("1 clients"),
        "both files were read: {stdout}"
    );
    assert!(
        stdout.contains("export errors: 1 issue(s) in 1 error file(s): warning too-costly 1"),
        "{stdout}"
    );
    let stored = storage.received_requests().await.expect("recorded");
    assert_eq!(stored.len(), 2, "the file and the error file: {stored:?}");
    for request in &stored {
        assert!(
            request.headers.get("authorization").is_none(),
            "{} got the token",
            request.url
        );
    }
    let moved = fhir.received_requests().await.expect("recorded");
    let moved = moved
        .iter()
        .find(|r| r.url.path() == "/moved/e.ndjson")
        .expect("the same-origin redirect was followed");
    assert_eq!(
        moved
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some(format!("Bearer {TOKEN}").as_str()),
        "a redirect on the server's origin keeps the token"
    );
    let all = all_output(&output);
    assert!(
        !all.contains(SIGNATURE) && !all.contains(TOKEN),
        "no signature or token in any output: {all}"
    );
}

/// The `since` of the checkpoint at `state`.
fn checkpoint_since(state: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(state).expect("the checkpoint is written");
    serde_json::from_str::<serde_json::Value>(&text).expect("json")["since"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoints_since_is_the_servers_time_not_this_machines() {
    // A server clock five years ahead of this one, and an export with no transactionTime
    // whose kick-off answer's Date is five years behind.
    const AHEAD: &str = "2031-03-04T05:06:07.890+02:00";
    const DATE: &str = "Tue, 03 Mar 2020 10:00:00 GMT";
    for (case, transaction_time, since) in [
        ("transactionTime", Some(AHEAD), AHEAD),
        ("the kick-off's Date", None, "2020-03-03T10:00:00Z"),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/Group/county/$export"))
            .respond_with(
                ResponseTemplate::new(202)
                    .insert_header(
                        "Content-Location",
                        format!("{}/status/1", server.uri()).as_str(),
                    )
                    .insert_header("Date", DATE),
            )
            .expect(1)
            .mount(&server)
            .await;
        let mut m = manifest(&server, &[("Patient", "/files/p.ndjson")], false);
        m["error"] = json!([]);
        match transaction_time {
            Some(t) => m["transactionTime"] = json!(t),
            None => {
                m.as_object_mut()
                    .expect("an object")
                    .remove("transactionTime");
            }
        }
        finished(&server, m).await;
        deletable(&server).await;
        file(&server, "/files/p.ndjson", &format!("{PATIENT}\n")).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("state.json");
        let output = group_run(
            &server.uri(),
            &dir.path().join("out"),
            &["--state", state.to_str().expect("utf-8")],
        );
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "{case}: {stdout}\n{stderr}");
        assert_eq!(checkpoint_since(&state), json!(since), "{case}");
        assert_eq!(
            stderr.contains("no valid transactionTime"),
            transaction_time.is_none(),
            "{case}: a manifest without it is warned of: {stderr}"
        );
    }
}
