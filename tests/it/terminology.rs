//! Code lists from FHIR ValueSets: `segmentti expand` asks a (fake) terminology server's
//! `$expand`, pins the expansion into the ValueSet file, and `check-mapping` and `run` then use
//! the expanded codes without calling out; a server that is down or refuses leaves the file as
//! it was and fails naming the server (without its credentials); a pin made for another version
//! of the ValueSet is refused as stale.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{fixture, segmentti, text};

/// A model whose one criterion is `high` for a client with a Condition in code list `hf`, which
/// reads `hf.json`; segment "2" for them, "1" for everyone else.
const MODEL: &str = r#"id: t
canonical: https://example.org/t
version: "1"
title: {fi: t, sv: t, en: t}
code_lists:
  - {id: hf, title: heart failure and its descendants, valueset: hf.json}
features:
  - id: f
    title: {fi: k, sv: k, en: c}
    count: {resource: Condition, where: [{field: code, in: hf}]}
criteria:
  - id: c
    title: {fi: c, sv: c, en: c}
    levels:
      - {code: low, display: {fi: l, sv: l, en: l}}
      - {code: high, display: {fi: h, sv: h, en: h}, when: {feature: f, gte: 1}}
segments:
  - {code: "1", order: 1, display: {fi: s, sv: s, en: s}, guidance: {fi: g, sv: g, en: g}}
  - {code: "2", order: 2, display: {fi: s, sv: s, en: s}, guidance: {fi: g, sv: g, en: g}}
tree:
  - {id: hf, when: {criterion: c, at_least: high}, segment: "2", because: {fi: b, sv: b, en: b}}
  - {id: all, segment: "1", because: {fi: b, sv: b, en: b}}
"#;

/// A temp dir with the model (`model.yaml`), the filter-based ValueSet (`hf.json`, not yet
/// expanded) and two clients: one with 88805009 (a descendant of 84114007 that only the
/// expansion lists), one with another code.
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = dir.path().join("model.yaml");
    std::fs::write(&model, MODEL).expect("model");
    let valueset = dir.path().join("hf.json");
    std::fs::copy(fixture("valuesets/heart-failure-isa.json"), &valueset).expect("valueset");
    let input = dir.path().join("input");
    std::fs::create_dir(&input).expect("input");
    let patients = ["p1", "p2"].map(|id| {
        json!({"resourceType": "Patient", "id": id, "birthDate": "1950-01-01"}).to_string()
    });
    std::fs::write(input.join("Patient.ndjson"), patients.join("\n") + "\n").expect("patients");
    let condition = |id: &str, patient: &str, code: &str| {
        json!({"resourceType": "Condition", "id": id, "subject": {"reference": format!("Patient/{patient}")},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
            "onsetDateTime": "2025-06-01"})
        .to_string()
    };
    std::fs::write(
        input.join("Condition.ndjson"),
        [
            condition("c1", "p1", "88805009"),
            condition("c2", "p2", "38341003"),
        ]
        .join("\n")
            + "\n",
    )
    .expect("conditions");
    (dir, model, valueset)
}

/// The server's answer: the ValueSet with an expansion of 84114007 and two descendants.
fn expanded() -> Value {
    let mut vs: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("valuesets/heart-failure-isa.json")).expect("fixture"),
    )
    .expect("json");
    vs["expansion"] = json!({
        "identifier": "urn:uuid:4f0d7a1e-2b7c-4c55-9a51-2f1c4f1d0b11",
        "timestamp": "2026-01-01T00:00:00Z",
        "total": 3,
        "parameter": [{"name": "version", "valueUri": "http://snomed.info/sct|http://snomed.info/sct/900000000000207008/version/20250101"}],
        "contains": [
            {"system": "http://snomed.info/sct", "code": "84114007", "display": "Heart failure",
             "contains": [
                {"system": "http://snomed.info/sct", "code": "88805009", "display": "Chronic congestive heart failure"},
                {"system": "http://snomed.info/sct", "code": "42343007", "display": "Congestive heart failure"}]}]
    });
    vs
}

/// A fake terminology server at `{uri}/fhir` answering `$expand` with `response`.
async fn terminology(response: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/fhir/ValueSet/$expand"))
        .and(header("content-type", "application/fhir+json"))
        .and(body_partial_json(json!({"resourceType": "Parameters",
            "parameter": [{"name": "valueSet", "resource": {"resourceType": "ValueSet"}}]})))
        .respond_with(response)
        .mount(&server)
        .await;
    server
}

fn expand(model: &Path, url: &str) -> std::process::Output {
    segmentti(&[
        "expand",
        model.to_str().expect("utf-8"),
        "--terminology",
        url,
        "--timeout",
        "5",
    ])
}

/// Segment counts ("1", "2") of a run of `model` on the setup's input, plus `extra`.
fn run(dir: &Path, model: &Path, extra: &[&str]) -> Vec<u64> {
    let out = dir.join("out");
    let args = [
        &[
            "--model",
            model.to_str().expect("utf-8"),
            "--progress",
            "off",
        ][..],
        extra,
    ]
    .concat();
    let output = crate::support::run_files(&dir.join("input"), &out, &args);
    assert!(output.status.success(), "{:?}", text(&output));
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).expect("summary"))
            .expect("json");
    summary["models"][0]["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|s| s["count"].as_u64().expect("count"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expansion_is_pinned_and_runs_use_its_codes() {
    let (dir, model, valueset) = setup();
    let m = model.to_str().expect("utf-8");
    let before = segmentti(&["check-mapping", m]);
    let (_, stderr) = text(&before);
    assert_eq!(before.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("has filters but no pinned expansion"),
        "{stderr}"
    );
    assert!(stderr.contains("hf.json"), "{stderr}");
    assert!(
        stderr.contains("segmentti expand MODEL --terminology URL"),
        "{stderr}"
    );

    let server = terminology(ResponseTemplate::new(200).set_body_json(expanded())).await;
    let output = expand(&model, &format!("{}/fhir", server.uri()));
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("(3 codes)"), "{stdout}");
    let pinned: Value =
        serde_json::from_str(&std::fs::read_to_string(&valueset).expect("file")).expect("json");
    assert_eq!(
        pinned["compose"],
        expanded()["compose"],
        "the rest of the file is kept"
    );
    assert_eq!(
        pinned["expansion"]["identifier"],
        "urn:uuid:4f0d7a1e-2b7c-4c55-9a51-2f1c4f1d0b11"
    );
    let parameters = pinned["expansion"]["parameter"]
        .as_array()
        .expect("parameters");
    assert!(
        parameters.contains(&json!({"name": "used-valueset-version", "valueString": "1.0.0"})),
        "{parameters:?}"
    );

    let checked = segmentti(&["check-mapping", m]);
    assert!(checked.status.success(), "{:?}", text(&checked));
    assert_eq!(
        run(dir.path(), &model, &[]),
        [1, 1],
        "88805009 counts through the expansion"
    );

    // The ValueSet moves on without a new expansion: the pin is stale.
    let text_now = std::fs::read_to_string(&valueset).expect("file");
    std::fs::write(
        &valueset,
        text_now.replace("\"version\": \"1.0.0\"", "\"version\": \"1.1.0\""),
    )
    .expect("bumped");
    let stale = segmentti(&["check-mapping", m]);
    let (_, stderr) = text(&stale);
    assert_eq!(stale.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("was made for version 1.0.0; the ValueSet is now 1.1.0"),
        "{stderr}"
    );
    let again = expand(&model, &format!("{}/fhir", server.uri()));
    assert!(again.status.success(), "{:?}", text(&again));
    assert!(segmentti(&["check-mapping", m]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_or_refusing_leaves_the_pinned_file_as_it_was() {
    let (_dir, model, valueset) = setup();
    let good = terminology(ResponseTemplate::new(200).set_body_json(expanded())).await;
    assert!(
        expand(&model, &format!("{}/fhir", good.uri()))
            .status
            .success()
    );
    let pinned = std::fs::read(&valueset).expect("pinned");

    let outcome = json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error",
        "code": "not-supported", "diagnostics": "unknown code system version"}]});
    let refusing = terminology(ResponseTemplate::new(422).set_body_json(outcome.clone())).await;
    let outcome_ok = terminology(ResponseTemplate::new(200).set_body_json(outcome)).await;
    // Wiremock keeps a dropped server listening for reuse: a port just released is down.
    let down = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        format!("http://{}", listener.local_addr().expect("address"))
    };
    for (base, says) in [
        (refusing.uri(), "422"),
        (outcome_ok.uri(), "OperationOutcome"),
        (down, "cannot reach it"),
    ] {
        let with_credentials = base.replacen("http://", "http://analyst:s3cret@", 1);
        let output = expand(&model, &format!("{with_credentials}/fhir"));
        let (stdout, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
        let shown = format!("{}/fhir", base);
        assert!(
            stderr.contains(&shown),
            "names the server {shown}: {stderr}"
        );
        assert!(
            !stderr.contains("s3cret") && !stderr.contains("analyst"),
            "{stderr}"
        );
        assert!(stderr.contains(says), "{stderr}");
        assert!(stderr.contains("hf.json"), "names the ValueSet: {stderr}");
        assert!(stderr.contains("left as it was"), "{stderr}");
        assert_eq!(
            std::fs::read(&valueset).expect("file"),
            pinned,
            "{base}: unchanged"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(valueset.parent().expect("dir"))
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn expand_without_valuesets_has_nothing_to_do() {
    let output = segmentti(&[
        "expand",
        "mappings/key-client.yaml",
        "--terminology",
        "http://127.0.0.1:9/fhir",
    ]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("nothing to expand"), "{stdout}");
}

#[test]
fn a_valueset_named_by_canonical_comes_from_the_package_given() {
    let (dir, model, _) = setup();
    std::fs::write(
        &model,
        MODEL.replace(
            "valueset: hf.json",
            "valueset: \"https://example.org/fhir/ValueSet/heart-failure|1.0.0\"",
        ),
    )
    .expect("model");
    let package = dir.path().join("example.hf");
    std::fs::create_dir_all(package.join("package")).expect("package/");
    std::fs::write(
        package.join("package/package.json"),
        r#"{"name": "example.hf", "version": "1.0.0"}"#,
    )
    .expect("package.json");
    std::fs::copy(
        fixture("valuesets/heart-failure.json"),
        package.join("package/ValueSet-heart-failure.json"),
    )
    .expect("valueset");
    let model_arg = model.to_str().expect("utf-8");

    let without = segmentti(&["check-mapping", model_arg]);
    let (stdout, stderr) = text(&without);
    assert!(!without.status.success(), "{stdout}");
    assert!(
        stderr
            .contains("cannot find ValueSet https://example.org/fhir/ValueSet/heart-failure|1.0.0")
            && stderr.contains("--package"),
        "{stderr}"
    );

    let package_arg = package.to_str().expect("utf-8");
    let checked = segmentti(&["check-mapping", model_arg, "--package", package_arg]);
    assert!(checked.status.success(), "{:?}", text(&checked));
    // 88805009 is enumerated in the package's ValueSet: the first client has heart failure.
    assert_eq!(run(dir.path(), &model, &["--package", package_arg]), [1, 1]);

    std::fs::write(
        &model,
        MODEL.replace(
            "valueset: hf.json",
            "valueset: \"https://example.org/fhir/ValueSet/heart-failure|2.0.0\"",
        ),
    )
    .expect("model");
    let other_version = segmentti(&["check-mapping", model_arg, "--package", package_arg]);
    let (_, stderr) = text(&other_version);
    assert!(!other_version.status.success());
    assert!(stderr.contains("not in the packages given"), "{stderr}");
}
