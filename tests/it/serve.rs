//! `segmentti serve` against the real test server, the service bound to `127.0.0.1:0`: a
//! scheduled run writes Flags; SIGTERM in the middle of a run lets it finish, so every client
//! ends with exactly one active segment Flag and a checkpoint; CDS Hooks discovery, a
//! `patient-view` call (the specification's example request, signed by a test issuer whose
//! JWKS a loopback server here serves) answers the segment the run wrote; unsigned, expired and
//! replayed calls get 401; bad calls get their 4xx; `/metrics` parses as Prometheus text.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::harness::TestServer;
use crate::support::{Synth, fixture, root, segmentti, synth, text};

const SERVICE: &str = "segmentti-patient-view";

/// A running `segmentti serve`, killed on drop unless it exited.
pub(crate) struct Serve {
    child: Child,
    /// The CDS Hooks listener's base, such as `http://127.0.0.1:4711`.
    pub(crate) cds: String,
    /// The health listener's base (the CDS Hooks one without `metrics_listen`).
    pub(crate) ops: String,
    /// What it said on stderr up to listening.
    said: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start(config: &Path) -> Serve {
    start_with(&["--config", config.to_str().expect("utf-8")])
}

fn start_with(args: &[&str]) -> Serve {
    start_with_env(args, &[])
}

/// `segmentti serve` with `args` and the environment variables `env`.
pub(crate) fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Serve {
    let mut child = Command::new(env!("CARGO_BIN_EXE_segmentti"))
        .arg("serve")
        .args(args)
        .current_dir(root())
        .env_remove("SEGMENTTI_LOG")
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("segmentti serve starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let (mut cds, mut ops) = (None, None);
    let mut seen = String::new();
    // The CDS Hooks line comes last; without metrics_listen there is no other.
    while cds.is_none() {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("serve exited before listening:\n{seen}"))
            .expect("stderr line");
        seen.push_str(&line);
        seen.push('\n');
        if let Some(rest) = line.strip_prefix("segmentti serve: CDS Hooks on ") {
            cds = Some(rest.trim_end_matches("/cds-services").to_owned());
        }
        if let Some(rest) = line.strip_prefix("segmentti serve: health and metrics on ") {
            ops = Some(rest.trim_end_matches('/').to_owned());
        }
    }
    // Keep draining stderr so the service never blocks on a full pipe; shown when a test fails.
    std::thread::spawn(move || {
        lines
            .map_while(Result::ok)
            .for_each(|l| eprintln!("serve: {l}"))
    });
    let cds = cds.expect("cds");
    Serve {
        child,
        ops: ops.unwrap_or_else(|| cds.clone()),
        cds,
        said: seen,
    }
}

pub(crate) fn config(
    dir: &Path,
    server: &TestServer,
    jwks: &str,
    schedule: &str,
) -> std::path::PathBuf {
    let path = dir.join("segmentti.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nserver = \"{}\"\nmodels = [\"mappings/paijat-sote.yaml\"]\n{schedule}\nstate = \"{}\"\nbatch = 10\n\n[cds]\nmax_body_bytes = 65536\n\n[[cds.issuers]]\niss = \"https://fhir-ehr.example.com/\"\njwks_url = \"{jwks}\"\ninsecure_http_jwks = true\n",
        server.base_url(),
        dir.join("state.json").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// Serves the test issuer's JWKS on loopback; returns its URL and the signing key.
async fn issuer() -> (String, EncodingKey) {
    let pem = std::fs::read(fixture("keys/test-es384.pem")).expect("key");
    let key = EncodingKey::from_ec_pem(&pem).expect("EC key");
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::ES384).expect("jwk");
    jwk.common.key_id = Some("example-kid".into());
    let set = json!({ "keys": [jwk] });
    let app = axum::Router::new().route(
        "/jwk_uri",
        axum::routing::get(move || {
            let set = set.clone();
            async move { axum::Json(set) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/jwk_uri"), key)
}

/// A token as in the specification's example, for `aud`, expiring in `exp_in` seconds.
fn token(key: &EncodingKey, aud: &str, exp_in: i64) -> String {
    let mut header = Header::new(Algorithm::ES384);
    header.kid = Some("example-kid".into());
    let now = jsonwebtoken::get_current_timestamp() as i64;
    let claims = json!({
        "iss": "https://fhir-ehr.example.com/",
        "sub": "client_id",
        "aud": aud,
        "exp": now + exp_in,
        "iat": now,
        "jti": uuid::Uuid::new_v4().to_string(),
        "tenant": "2ddd6c3a-8e9a-44c6-a305-52111ad302a2"
    });
    jsonwebtoken::encode(&header, &claims, key).expect("sign")
}

/// The specification's `patient-view` example request, about `patient` on `fhir_server`.
pub(crate) fn request(fhir_server: &str, patient: &str) -> Value {
    json!({
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "fhirServer": fhir_server,
        "hook": "patient-view",
        "fhirAuthorization": {
            "access_token": "some-opaque-fhir-access-token",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/Patient.read user/Observation.read",
            "subject": "cds-service4"
        },
        "context": {"userId": "Practitioner/example", "patientId": patient, "encounterId": "89284"}
    })
}

async fn metrics(http: &reqwest::Client, serve: &Serve) -> prometheus_parse::Scrape {
    let text = http
        .get(format!("{}/metrics", serve.ops))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text")
}

pub(crate) fn sample(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    label: Option<(&str, &str)>,
) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or(0.0)
}

/// Waits until `/metrics` satisfies `ok`.
pub(crate) async fn until(
    http: &reqwest::Client,
    serve: &Serve,
    what: &str,
    ok: impl Fn(&prometheus_parse::Scrape) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ok(&metrics(http, serve).await) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until a run is under way, sends SIGTERM, and checks the exit is clean.
async fn stop_during_a_run(http: &reqwest::Client, mut serve: Serve) {
    until(http, &serve, "a run to start", |m| {
        sample(m, "segmentti_run_in_progress", None) == 1.0
    })
    .await;
    let term = Command::new("kill")
        .args(["-TERM", &serve.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = serve.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit after SIGTERM: {status}");
}

/// Per patient, the codes of its active segment Flags.
pub(crate) async fn active_segments(server: &TestServer) -> BTreeMap<String, Vec<String>> {
    let mapping =
        segmentti::model::load_file(&root().join("mappings/paijat-sote.yaml")).expect("model");
    let codes: BTreeSet<String> = mapping
        .segments
        .iter()
        .map(|s| s.code.to_string())
        .collect();
    let client = server.client();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut pages = client.pages("Flag", &[("_count", "200")]).expect("url");
    while let Some(page) = pages.next_page().await {
        for flag in segmentti::fhir::matches(&page.expect("page")) {
            let code = flag["code"]["coding"][0]["code"]
                .as_str()
                .unwrap_or_default();
            if flag["status"] == "active" && codes.contains(code) {
                let patient = flag["subject"]["reference"].as_str().expect("subject");
                out.entry(patient.to_owned())
                    .or_default()
                    .push(code.to_owned());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_on_schedule_answers_cds_hooks_and_stops_cleanly() {
    let server = TestServer::start().await;
    synth(150, 3, Synth::Server(server.base_url().as_str()), &[]);
    let (jwks, key) = issuer().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let http = reqwest::Client::new();

    // 1. The first scheduled run is stopped by SIGTERM while it writes: it finishes, the
    //    checkpoint is saved, the exit is clean, and no client has two active segment Flags.
    let config_path = config(dir.path(), &server, &jwks, "schedule = \"*/2 * * * * *\"");
    let state = dir.path().join("state.json");
    stop_during_a_run(&http, start(&config_path)).await;
    let first: Value =
        serde_json::from_str(&std::fs::read_to_string(&state).expect("checkpoint saved"))
            .expect("json");
    assert!(first["since"].is_string(), "{first:#}");
    let before = active_segments(&server).await;
    assert_eq!(before.len(), 150, "every client has a segment Flag");
    assert!(
        before.values().all(|codes| codes.len() == 1),
        "no client has two active segment Flags: {before:?}"
    );

    // 1b. The same clients with other data: the next (incremental) run supersedes Flags, and
    //     SIGTERM in its middle still leaves exactly one active segment Flag per client.
    synth(150, 4, Synth::Server(server.base_url().as_str()), &[]);
    stop_during_a_run(&http, start(&config_path)).await;
    let second: Value =
        serde_json::from_str(&std::fs::read_to_string(&state).expect("checkpoint")).expect("json");
    assert_ne!(
        first["since"], second["since"],
        "the incremental run saved its checkpoint"
    );
    let segments = active_segments(&server).await;
    assert_eq!(segments.len(), 150);
    assert!(
        segments.values().all(|codes| codes.len() == 1),
        "no half-superseded Flags: {segments:?}"
    );
    let changed = segments
        .iter()
        .filter(|(p, codes)| before[*p] != **codes)
        .count();
    assert!(
        changed > 0,
        "the second run moved some clients to another segment"
    );

    // 2. Started again on the checkpoint: scheduled incremental runs succeed.
    let serve = start(&config(
        dir.path(),
        &server,
        &jwks,
        "schedule = \"*/2 * * * * *\"",
    ));
    until(&http, &serve, "a scheduled run", |m| {
        sample(m, "segmentti_runs_total", Some(("outcome", "success"))) >= 1.0
    })
    .await;

    // 3. Discovery lists the service with its prefetch templates.
    let discovery: Value = http
        .get(format!("{}/cds-services", serve.cds))
        .send()
        .await
        .expect("discovery")
        .json()
        .await
        .expect("json");
    let service = &discovery["services"][0];
    assert_eq!(service["id"], SERVICE);
    assert_eq!(service["hook"], "patient-view");
    assert_eq!(
        service["prefetch"]["encounters"],
        "Encounter?patient={{context.patientId}}"
    );

    // 4. A signed call without prefetch reads the client from the trusted server and answers
    //    the segment the run wrote, in the language asked for.
    let url = format!("{}/cds-services/{SERVICE}", serve.cds);
    let base = server.base_url().as_str().to_owned();
    let (patient, codes) = segments.iter().next().expect("a client");
    let patient_id = patient.trim_start_matches("Patient/");
    let body = request(&base, patient_id);
    let signed = token(&key, &url, 300);
    let call = |auth: Option<String>, body: Value, lang: &'static str| {
        let mut r = http.post(&url).header("accept-language", lang).json(&body);
        if let Some(t) = auth {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let answer = call(Some(signed.clone()), body.clone(), "sv-FI")
        .await
        .expect("call");
    assert_eq!(answer.status(), 200);
    let cards: Value = answer.json().await.expect("json");
    let card = &cards["cards"][0];
    assert_eq!(
        cards["cards"].as_array().map(Vec::len),
        Some(1),
        "{cards:#}"
    );
    assert_eq!(
        card["extension"]["segmentti"]["segment"],
        codes[0].as_str(),
        "{card:#}"
    );
    assert_eq!(card["links"][0]["label"], "Motivering");
    let explanation = http
        .get(card["links"][0]["url"].as_str().expect("link"))
        .send()
        .await
        .expect("link");
    assert_eq!(explanation.status(), 200);
    assert!(
        explanation
            .text()
            .await
            .expect("text")
            .contains(patient.as_str())
    );

    // 5. The same client from a prefetch gets the same segment.
    let client = server.client();
    let search = |kind: &'static str| {
        let client = client.clone();
        let id = patient_id.to_owned();
        async move {
            client
                .search(kind, &[("patient", id.as_str()), ("_count", "200")])
                .await
                .expect("search")
        }
    };
    let mut with_prefetch = body.clone();
    with_prefetch["prefetch"] = json!({
        "patient": client.get(&client.base().join(patient).expect("url")).await.expect("patient"),
        "encounters": search("Encounter").await,
        "conditions": search("Condition").await,
    });
    let answer = call(Some(token(&key, &url, 300)), with_prefetch, "en")
        .await
        .expect("call");
    assert_eq!(answer.status(), 200);
    let cards: Value = answer.json().await.expect("json");
    assert_eq!(
        cards["cards"][0]["extension"]["segmentti"]["segment"],
        codes[0].as_str()
    );

    // 6. Unsigned, expired and replayed: 401.
    for (what, auth) in [
        ("unsigned", None),
        ("expired", Some(token(&key, &url, -120))),
        ("replayed", Some(signed)),
        (
            "for another service",
            Some(token(&key, "https://elsewhere.example/cds-services/x", 300)),
        ),
    ] {
        let answer = call(auth, body.clone(), "fi").await.expect("call");
        assert_eq!(answer.status(), 401, "{what}: {:?}", answer.text().await);
    }

    // 7. Bad calls: a 4xx that says why, and the untrusted server is never called.
    let mut no_patient = body.clone();
    no_patient["context"]
        .as_object_mut()
        .expect("context")
        .remove("patientId");
    let mut other_hook = body.clone();
    other_hook["hook"] = json!("order-select");
    let mut elsewhere = body.clone();
    elsewhere["fhirServer"] = json!("http://127.0.0.1:9/fhir");
    let mut oversized = body.clone();
    oversized["padding"] = json!("x".repeat(70_000));
    for (what, body, status, says) in [
        ("no patientId", no_patient, 400, "context.patientId"),
        ("unknown hook", other_hook, 400, "order-select"),
        ("untrusted fhirServer", elsewhere, 403, "fhirServer"),
        ("oversized", oversized, 413, "larger than 65536"),
    ] {
        let answer = call(Some(token(&key, &url, 300)), body, "fi")
            .await
            .expect("call");
        assert_eq!(answer.status(), status, "{what}");
        let message = answer.text().await.expect("text");
        assert!(message.contains(says), "{what}: {message}");
    }
    let unknown = http
        .post(format!("{}/cds-services/nosuch", serve.cds))
        .bearer_auth(token(
            &key,
            &format!("{}/cds-services/nosuch", serve.cds),
            300,
        ))
        .json(&body)
        .send()
        .await
        .expect("call");
    assert_eq!(unknown.status(), 404);

    // 8. Feedback is counted, and /metrics parses.
    let feedback_url = format!("{url}/feedback");
    let feedback = http
        .post(&feedback_url)
        .bearer_auth(token(&key, &feedback_url, 300))
        .json(&json!({"feedback": [{"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": "2026-01-01T00:00:00Z"}]}))
        .send()
        .await
        .expect("feedback");
    assert_eq!(feedback.status(), 200);
    let scrape = metrics(&http, &serve).await;
    assert_eq!(
        sample(
            &scrape,
            "segmentti_cds_feedback_total",
            Some(("outcome", "accepted"))
        ),
        1.0
    );
    assert!(
        sample(
            &scrape,
            "segmentti_cds_requests_total",
            Some(("status", "401"))
        ) >= 4.0
    );
    assert!(sample(&scrape, "segmentti_last_success_timestamp_seconds", None) > 0.0);
    let ready = http
        .get(format!("{}/readyz", serve.ops))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
}

#[test]
fn serve_reports_every_configuration_problem_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "listen = \"nowhere\"\nschedule = \"often\"\nmodels = [\"no/such.yaml\"]\n",
    )
    .expect("write");
    let output = segmentti(&["serve", "--config", path.to_str().expect("utf-8")]);
    let (_, stderr) = text(&output);
    assert!(!output.status.success());
    for needle in [
        "listen `nowhere`",
        "server is not set",
        "schedule `often`",
        "no/such.yaml",
        "no [[cds.issuers]]",
    ] {
        assert!(stderr.contains(needle), "{needle} missing:\n{stderr}");
    }
}

#[test]
fn the_docker_example_configuration_is_valid() {
    // The same binary, the same file compose mounts: only the listener and paths differ here.
    let output = segmentti(&["serve", "--config", "docker/segmentti.toml", "--check"]);
    assert!(output.status.success(), "{:?}", text(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_without_a_file_warns_and_answers_unsigned_calls_from_prefetch() {
    // No server is called: the prefetch is complete, and there is no schedule.
    let serve = start_with(&[
        "--listen",
        "127.0.0.1:0",
        "--server",
        "http://127.0.0.1:9/fhir",
        "--model",
        "mappings/paijat-sote.yaml",
        "--insecure-no-auth",
    ]);
    assert!(
        serve.said.contains("WARNING: --insecure-no-auth"),
        "{}",
        serve.said
    );
    let body = with_prefetch("http://127.0.0.1:9/fhir");
    let http = reqwest::Client::new();
    let answer = http
        .post(format!("{}/cds-services/{SERVICE}", serve.cds))
        .header("accept-language", "en")
        .json(&body)
        .send()
        .await
        .expect("call");
    assert_eq!(answer.status(), 200);
    let cards: Value = answer.json().await.expect("json");
    let card = &cards["cards"][0];
    assert!(
        card["summary"]
            .as_str()
            .is_some_and(|s| s.chars().count() <= 140),
        "{card:#}"
    );
    // No full run yet: the card says the population criteria are not applied.
    assert!(
        card["detail"]
            .as_str()
            .expect("detail")
            .contains("No full run"),
        "{card:#}"
    );
    let health = http
        .get(format!("{}/healthz", serve.ops))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
}

/// A `patient-view` request about a synthetic client, with a complete prefetch.
pub(crate) fn with_prefetch(fhir_server: &str) -> Value {
    let opts = segmentti::source::synth::SynthOptions {
        clients: 1,
        seed: 3,
        flavor: segmentti::source::synth::CodeFlavor::Finnish,
        as_of: segmentti::fhir::day::Day::from_date(time::OffsetDateTime::now_utc().date()),
        area: None,
        bills: segmentti::source::synth::Bills::None,
        records: false,
        shapes: false,
    };
    let client = segmentti::source::synth::client(&opts, 0);
    let id = client.patient["id"].as_str().expect("id").to_owned();
    let bundle = |resources: Vec<Value>| {
        json!({"resourceType": "Bundle", "type": "searchset",
               "entry": resources.into_iter().map(|r| json!({"resource": r, "search": {"mode": "match"}})).collect::<Vec<_>>()})
    };
    let mut body = request(fhir_server, &id);
    body["prefetch"] = json!({
        "patient": client.patient,
        "encounters": bundle(client.encounters),
        "conditions": bundle(client.conditions),
    });
    body
}
