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
use segmentti::run::bulk::BulkRun;
use segmentti::run::files::Output;
use segmentti::run::pipeline::OnInvalid;
use segmentti::run::progress;
use segmentti::source::bulk::{self, BulkError, BulkOptions, Level};
use segmentti::source::files::Limits;
use segmentti::source::search::SearchOptions;
use serde_json::json;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::harness::TestServer;
use crate::support::{Synth, run_files, segmentti, synth, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_from_the_test_server_segments_like_the_same_files() {
    let server = TestServer::start().await;
    let base = server.base_url().as_str().to_owned();
    synth(40, 5, Synth::Server(&base), &[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let files = dir.path().join("files");
    synth(40, 5, Synth::Files(&files), &[]);
    let offline = dir.path().join("offline");
    let ran = run_files(&files, &offline, &["--progress", "off"]);
    assert!(ran.status.success(), "{:?}", text(&ran));

    // Streamed into the fold (the default), and downloaded into a work directory first.
    let streamed = dir.path().join("streamed");
    let downloaded = dir.path().join("downloaded");
    let work = dir.path().join("work");
    for (out, extra) in [
        (&streamed, None),
        (&downloaded, Some(work.to_str().expect("utf-8"))),
    ] {
        let mut args = vec![
            "run",
            "--bulk",
            &base,
            "--as-of",
            "2026-01-01",
            "--out",
            out.to_str().expect("utf-8"),
            "--progress",
            "off",
            "--bulk-poll-max",
            "1",
        ];
        args.extend(extra.iter().flat_map(|w| ["--work-dir", w]));
        let output = segmentti(&args);
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("Export: "), "{stdout}");
        assert!(stdout.contains("40 clients"), "{stdout}");
        assert!(stdout.contains("Rejected inputs: 0"), "{stdout}");
        for file in ["Observation.ndjson", "Flag.ndjson"] {
            assert_eq!(
                lines(&out.join(file)),
                lines(&offline.join(file)),
                "{file} of the export ({extra:?}) differs from the run on the same files"
            );
        }
        assert!(
            !out.join(".bulk").exists(),
            "the default place of the job file is removed after a successful run"
        );
    }
    let kept = std::fs::read_dir(work.join("files"))
        .expect("--work-dir keeps the files")
        .count();
    assert!(kept >= 3, "one file per type at least, {kept} kept");
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

pub(crate) fn client(server: &MockServer, token: bool) -> FhirClient {
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

pub(crate) fn manifest(
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

pub(crate) async fn kick_off(server: &MockServer, times: u64) {
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

pub(crate) const PATIENT: &str = r#"{"resourceType":"Patient","id":"p1","birthDate":"1950-01-01"}"#;
const OUTCOME: &str = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"Condition/c9 could not be exported"}]}"#;

pub(crate) async fn file(server: &MockServer, at: &str, body: &str) {
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
    assert_eq!(exported.files.len(), 1);
    assert_eq!(exported.ignored.get("MedicationRequest"), Some(&1));
    assert_eq!(
        exported.errors.to_string(),
        format!(
            "1 issue(s) in 1 error file(s): error processing 1; first at {}/files/errors.ndjson:1 (error processing)",
            server.uri()
        ),
        "counted and located, the diagnostics left out"
    );
    let options = options(work.path(), Duration::from_secs(10));
    let dir = bulk::download(&client, &exported, &options)
        .await
        .expect("the files download");
    let downloaded = std::fs::read_to_string(dir.join("00000-Patient.ndjson")).expect("file");
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
    assert_eq!(second.files.len(), 1);
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
        m["error"] = json!([]);
        finished(&server, m).await;
        Mock::given(method("GET"))
            .and(path("/files/e.ndjson"))
            .respond_with(response)
            .mount(files_on)
            .await;
        let work = tempfile::tempdir().expect("temp dir");
        let client = client(&server, token);
        let options = options(work.path(), Duration::from_secs(5));
        let exported = bulk::export(&client, &options)
            .await
            .expect("the export completes");
        let downloaded = bulk::download(&client, &exported, &options).await;
        let streamed = bulk::stream(
            &client,
            &exported,
            options.download_timeout,
            Limits::DEFAULT,
            &mut |_| panic!("{case}: nothing is handed on"),
        )
        .await;
        for (how, result) in [("download", downloaded.err()), ("stream", streamed.err())] {
            let e = result
                .unwrap_or_else(|| panic!("{case}: the {how} fails"))
                .to_string();
            assert!(e.contains(expect), "{case}, {how}: {e}");
            assert!(
                e.contains("Encounter file"),
                "{case}, {how}: the message names the file: {e}"
            );
        }
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

/// A Bulk Data run of the Päijät-Sote model against `base`, through the library, with the
/// checkpoint `state`, into `out`.
async fn bulk_run(base: &str, state: &Path, out: &Path) -> segmentti::run::bulk::Outcome {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let plan = segmentti::model::plan_file(
        &root.join("mappings/paijat-sote.yaml"),
        "2026-01-01".parse().expect("a day"),
    )
    .expect("the shipped model");
    let base = Url::parse(base).expect("url");
    let run = BulkRun {
        client: FhirClient::new(base.clone(), ClientOptions::new("it-bulk")).expect("client"),
        server: base,
        level: Level::System,
        since: None,
        state: Some(state.to_owned()),
        work_dir: None,
        timeout: Duration::from_secs(300),
        max_poll_interval: Duration::from_secs(1),
        search: SearchOptions::default(),
        limits: Limits::default(),
        thresholds: None,
        output: Output {
            out: out.to_owned(),
            on_invalid: OnInvalid::Skip,
            shard: None,
            progress: progress::Display::Off,
            measure: false,
        },
    };
    tokio::task::spawn_blocking(move || segmentti::run::bulk::run(run, &[plan]))
        .await
        .expect("the run's thread")
        .expect("the run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_checkpoint_the_next_export_reads_only_the_changed_clients_again() {
    let server = TestServer::start().await;
    let base = server.base_url().as_str().to_owned();
    synth(30, 5, Synth::Server(&base), &[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state.json");

    let full = bulk_run(&base, &state, &dir.path().join("full")).await;
    assert_eq!((full.since.as_deref(), full.changed), (None, None));
    let summary = full.run.expect("a full run").summary;
    assert_eq!(summary.models[0].clients, 30);
    let checkpoint: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).expect("state")).expect("json");
    assert_eq!(
        checkpoint["since"].as_str(),
        full.exported.transaction_time.as_deref(),
        "the next export asks from this one's transaction time, on the server's clock"
    );
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

    let out = dir.path().join("changed");
    let changed = bulk_run(&base, &state, &out).await;
    assert_eq!(changed.since, full.exported.transaction_time);
    assert_eq!(changed.changed, Some(1));
    let summary = changed.run.expect("a run of the changed client").summary;
    assert_eq!(summary.models[0].clients, 1);
    let observations = std::fs::read_to_string(out.join("Observation.ndjson")).expect("written");
    assert_eq!(observations.lines().count(), 1, "{observations}");
    assert!(
        observations.contains("\"Patient/p0000003\""),
        "{observations}"
    );
    let checkpoint: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).expect("state")).expect("json");
    assert_eq!(
        checkpoint["since"].as_str(),
        changed.exported.transaction_time.as_deref()
    );

    let unchanged = bulk_run(&base, &state, &dir.path().join("unchanged")).await;
    assert_eq!(unchanged.changed, Some(0));
    assert!(
        unchanged.run.is_none(),
        "nothing changed, nothing to segment"
    );

    // The binary prints what the library returned.
    let output = segmentti(&[
        "run",
        "--bulk",
        &base,
        "--as-of",
        "2026-01-01",
        "--state",
        state.to_str().expect("utf-8"),
        "--out",
        dir.path().join("printed").to_str().expect("utf-8"),
        "--progress",
        "off",
        "--bulk-poll-max",
        "1",
    ]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("changes since") && stdout.contains("Changed clients: 0"),
        "{stdout}"
    );
}

/// `count` Patients of about a kilobyte each, one per line: enough lines that a file of them
/// is handed on in several blocks.
fn padded_patients(count: usize) -> Arc<Vec<u8>> {
    let div = format!("<div>{}</div>", "x".repeat(1000));
    let text: String = (0..count)
        .map(|i| {
            format!(
                "{}\n",
                json!({"resourceType": "Patient", "id": format!("p{i:05}"), "birthDate": "1950-01-01",
                    "text": {"status": "generated", "div": div}})
            )
        })
        .collect();
    Arc::new(text.into_bytes())
}

/// A raw HTTP server for a file whose body can break off, which wiremock cannot do: the n-th
/// connection gets the n-th of `cuts` (the last one after that): `Some(k)` announces the whole
/// body but sends its first k bytes and closes; `None` sends it all. Returns the file's URL and
/// a connection counter.
async fn cutting_server(
    body: Arc<Vec<u8>>,
    cuts: Vec<Option<usize>>,
) -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port can be bound");
    let address = listener.local_addr().expect("an address");
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let cut = cuts[n.min(cuts.len() - 1)].unwrap_or(body.len());
            let body = Arc::clone(&body);
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                // Enough to have the request; its content does not matter here.
                let _ = socket.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/fhir+ndjson\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body[..cut]).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (format!("http://{address}/files/p.ndjson"), count)
}

/// A scripted export (Group `county`) whose manifest lists `output` (type, absolute URL) and no
/// error files, deleted once at the end.
async fn scripted_export(output: &[(&str, String)]) -> MockServer {
    let server = MockServer::start().await;
    kick_off(&server, 1).await;
    let manifest = json!({
        "transactionTime": "2026-01-01T00:00:00Z",
        "request": format!("{}/Group/county/$export", server.uri()),
        "requiresAccessToken": false,
        "output": output.iter().map(|(t, url)| json!({"type": t, "url": url})).collect::<Vec<_>>(),
        "error": [],
    });
    finished(&server, manifest).await;
    Mock::given(method("DELETE"))
        .and(path("/status/1"))
        .respond_with(ResponseTemplate::new(202))
        .mount(&server)
        .await;
    server
}

/// Streams the export of `server` into a counter of the lines handed on.
async fn stream_lines(server: &MockServer) -> (Result<(), BulkError>, usize) {
    let work = tempfile::tempdir().expect("temp dir");
    let client = client(server, false);
    let options = options(work.path(), Duration::from_secs(10));
    let exported = bulk::export(&client, &options)
        .await
        .expect("the export completes");
    let mut lines = 0;
    let streamed = bulk::stream(
        &client,
        &exported,
        options.download_timeout,
        Limits::DEFAULT,
        &mut |batch| {
            lines += batch.resources().1.len();
            Ok(())
        },
    )
    .await;
    (streamed, lines)
}

#[tokio::test]
async fn a_file_that_breaks_off_before_a_line_is_read_is_fetched_again_and_read_once() {
    let body = padded_patients(50);
    let (url, connections) = cutting_server(Arc::clone(&body), vec![Some(3000), None]).await;
    let server = scripted_export(&[("Patient", url)]).await;
    let (streamed, lines) = stream_lines(&server).await;
    streamed.expect("the second attempt completes");
    assert_eq!(connections.load(Ordering::SeqCst), 2, "fetched again once");
    assert_eq!(lines, 50, "every line handed on once");
}

#[tokio::test]
async fn a_file_that_breaks_off_mid_stream_stops_the_run_naming_it_and_is_not_read_twice() {
    let body = padded_patients(6000);
    let cut = body.len() - 5000;
    let (url, connections) = cutting_server(Arc::clone(&body), vec![Some(cut)]).await;
    let server = scripted_export(&[("Patient", url.clone())]).await;
    let (streamed, lines) = stream_lines(&server).await;
    let e = streamed.expect_err("the file broke off");
    let BulkError::BrokeOff { lines: handed, .. } = &e else {
        panic!("expected BrokeOff, got {e:?}");
    };
    assert!(
        lines > 0 && lines < 6000,
        "{lines} lines went into the fold"
    );
    assert_eq!(*handed as usize, lines, "the error says how many");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "not fetched again once lines were handed on"
    );
    let message = e.to_string();
    for part in ["Patient file", url.as_str(), "broke off", "--work-dir"] {
        assert!(message.contains(part), "{part}: {message}");
    }
}

/// The export job's status answers that it is done, with `manifest`.
pub(crate) async fn finished(server: &MockServer, manifest: serde_json::Value) {
    Mock::given(method("GET"))
        .and(path("/status/1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(manifest))
        .mount(server)
        .await;
}

/// `run --bulk` of the Group `county` at `base`, streamed, into `out`, plus `extra`.
pub(crate) fn group_run(base: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "run",
        "--bulk",
        base,
        "--group",
        "county",
        "--as-of",
        "2026-01-01",
        "--out",
        out.to_str().expect("utf-8"),
        "--progress",
        "off",
    ];
    args.extend_from_slice(extra);
    segmentti(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_run_broken_off_fails_with_nothing_written_and_the_next_run_resumes_the_job() {
    let body = padded_patients(6000);
    let cut = body.len() - 5000;
    let (url, connections) = cutting_server(Arc::clone(&body), vec![Some(cut), None]).await;
    let server = scripted_export(&[("Patient", url)]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let run = || group_run(&server.uri(), &out, &[]);
    let failed = run();
    let (stdout, stderr) = text(&failed);
    assert!(!failed.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("broke off") && stderr.contains("--work-dir"),
        "{stderr}"
    );
    assert!(!out.join("Observation.ndjson").exists(), "nothing written");
    assert!(out.join(".bulk/job.json").exists(), "the job is kept");
    assert_eq!(connections.load(Ordering::SeqCst), 1);

    let resumed = run();
    let (stdout, stderr) = text(&resumed);
    assert!(resumed.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("(resumed)"), "{stdout}");
    assert!(
        stdout.contains("(6000 resources") && stdout.contains("6000 clients"),
        "every line folded once: {stdout}"
    );
    assert!(!out.join(".bulk").exists());
    // The kick-off mock expects one call: the second run resumed the job.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_of_types_not_asked_for_are_ignored_and_counted_not_rejected() {
    const OBSERVATION: &str = r#"{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}"#;
    const ENCOUNTER: &str = r#"{"resourceType":"Encounter","id":"e1","status":"finished","subject":{"reference":"Patient/p1"},"period":{"start":"2025-06-01"}}"#;
    const FOO: &str = r#"{"resourceType":"Foo","id":"f1"}"#;
    for (case, extra, code) in [("ignored only", "", 0), ("with an unknown type", FOO, 3)] {
        let server = MockServer::start().await;
        let uri = server.uri();
        file(
            &server,
            "/files/p.ndjson",
            &format!("{PATIENT}\n{OBSERVATION}\n{extra}\n"),
        )
        .await;
        file(&server, "/files/e.ndjson", &format!("{ENCOUNTER}\n")).await;
        Mock::given(method("GET"))
            .and(path("/files/m.ndjson"))
            .respond_with(ResponseTemplate::new(200))
            .expect(0)
            .mount(&server)
            .await;
        let exported = scripted_export(&[
            ("Patient", format!("{uri}/files/p.ndjson")),
            ("Encounter", format!("{uri}/files/e.ndjson")),
            ("MedicationRequest", format!("{uri}/files/m.ndjson")),
        ])
        .await;
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("out");
        let output = group_run(&exported.uri(), &out, &[]);
        let (stdout, stderr) = text(&output);
        assert_eq!(
            output.status.code(),
            Some(code),
            "{case}: {stdout}\n{stderr}"
        );
        assert!(
            stdout.contains(
                "Ignored (no model reads them): Observation 1, 1 file(s) of MedicationRequest, not downloaded"
            ),
            "{case}: {stdout}"
        );
        let summary: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("summary.json")).expect("summary"),
        )
        .expect("json");
        assert_eq!(summary["ignored"], json!({"Observation": 1}), "{case}");
        assert_eq!(
            summary["ignored_files"],
            json!({"MedicationRequest": 1}),
            "{case}"
        );
        let rejected = std::fs::read_to_string(out.join("rejected.ndjson")).expect("rejected");
        assert_eq!(summary["rejected"], json!(code / 3), "{case}: {rejected}");
        assert!(
            !rejected.contains(r#""resource":"Observation"#),
            "{case}: {rejected}"
        );
        if code == 3 {
            assert!(
                rejected.contains("is no FHIR R4 resource type")
                    && rejected.contains("/files/p.ndjson:3"),
                "{case}: the unknown type is rejected with its file and line: {rejected}"
            );
        }
    }
}

/// Issue 5: the export asks for the types the models read, and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_asks_for_the_types_the_models_read() {
    for (model, types) in [
        (
            "mappings/helsinki-oral-health.yaml",
            "Patient,Encounter,Condition,Observation",
        ),
        (
            "mappings/virta.yaml",
            "Patient,Encounter,Condition,Observation,EpisodeOfCare,Claim,ExplanationOfBenefit",
        ),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/Group/county/$export"))
            .and(query_param("_type", types))
            .respond_with(ResponseTemplate::new(202).insert_header(
                "Content-Location",
                format!("{}/status/1", server.uri()).as_str(),
            ))
            .expect(1)
            .mount(&server)
            .await;
        file(&server, "/files/p.ndjson", &format!("{PATIENT}\n")).await;
        finished(
            &server,
            json!({
                "transactionTime": "2026-01-01T00:00:00Z",
                "request": format!("{}/Group/county/$export", server.uri()),
                "requiresAccessToken": false,
                "output": [{"type": "Patient", "url": format!("{}/files/p.ndjson", server.uri())}],
                "error": [],
            }),
        )
        .await;
        Mock::given(method("DELETE"))
            .and(path("/status/1"))
            .respond_with(ResponseTemplate::new(202))
            .mount(&server)
            .await;
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("out");
        let output = segmentti(&[
            "run",
            "--bulk",
            &server.uri(),
            "--group",
            "county",
            "--model",
            model,
            "--as-of",
            "2026-01-01",
            "--out",
            out.to_str().expect("utf-8"),
            "--progress",
            "off",
        ]);
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "{model}: {stdout}\n{stderr}");
    }
}
