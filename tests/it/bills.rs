//! Costs from bills (issue 5): Claim and ExplanationOfBenefit totals decide a `billed` cost
//! feature per the rule in `mappings/README.md`, read from NDJSON, Bundles and a real FHIR
//! server alike, and a model that bills nothing reads none of them; a server without one of the
//! optional types is read as holding none of it.

use std::path::Path;

use segmentti::fhir::types::ResourceKind;
use segmentti::fhir::{ClientOptions, FhirClient};
use segmentti::source::search::{self, SearchOptions};
use segmentti::source::{Batch, Resource};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::harness::TestServer;
use crate::support::{Synth, ndjson, run_files, segmentti, synth, text};

/// The first model's total cost and segment counts after `run --input dir`, and the rejections
/// (which make the exit code 3).
fn run(dir: &Path, extra: &[&str]) -> (Option<f64>, Vec<u64>, Vec<Value>) {
    let out = dir.join("out");
    let output = run_files(dir, &out, extra);
    let rejected = ndjson(&out.join("rejected.ndjson"));
    let code = if rejected.is_empty() { 0 } else { 3 };
    assert_eq!(output.status.code(), Some(code), "{:?}", text(&output));
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).expect("summary"))
            .expect("json");
    let model = &summary["models"][0];
    let counts = model["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|s| s["count"].as_u64().expect("count"))
        .collect();
    std::fs::remove_dir_all(&out).expect("clean");
    (model["total_cost"].as_f64(), counts, rejected)
}

/// Multiplies the totals of every resource in `file` (Claim.total, or each
/// ExplanationOfBenefit total's amount) by `factor`.
fn scale_totals(file: &Path, factor: f64) {
    let lines: Vec<String> = ndjson(file)
        .into_iter()
        .map(|mut r| {
            let scale = |money: &mut Value| {
                money["value"] = json!(money["value"].as_f64().expect("value") * factor);
            };
            match r["total"].as_array_mut() {
                Some(totals) => totals.iter_mut().for_each(|t| scale(&mut t["amount"])),
                None => scale(&mut r["total"]),
            }
            r.to_string()
        })
        .collect();
    std::fs::write(file, lines.join("\n") + "\n").expect("write");
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6 * b.abs().max(1.0)
}

#[test]
fn claim_and_explanation_costed_populations_give_the_documented_cost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let at = |name: &str| dir.path().join(name);
    synth(300, 11, Synth::Files(&at("plain")), &[]);
    synth(300, 11, Synth::Files(&at("claims")), &["--claims"]);
    synth(
        300,
        11,
        Synth::Files(&at("both")),
        &["--claims", "--explanations"],
    );
    let (priced, segments, rejected) = run(&at("plain"), &[]);
    let priced = priced.expect("a cost");
    assert!(priced > 0.0 && rejected.is_empty());

    // Claims priced like the table give the table's cost; with the ExplanationOfBenefits that
    // restate them, still the same: only one source counts per client.
    for name in ["claims", "both"] {
        let (cost, counts, rejected) = run(&at(name), &[]);
        let cost = cost.expect("a cost");
        assert!(close(cost, priced), "{name}: {cost} vs {priced}");
        assert_eq!(counts, segments, "{name}");
        assert!(rejected.is_empty(), "{name}: {rejected:?}");
    }
    // Claims that say twice the price are the cost, whatever the table says.
    scale_totals(&at("claims/Claim.ndjson"), 2.0);
    let cost = run(&at("claims"), &[]).0.expect("a cost");
    assert!(close(cost, 2.0 * priced), "{cost} vs 2 × {priced}");
    // Claims win over ExplanationOfBenefits: tripled explanations change nothing beside them...
    scale_totals(&at("both/ExplanationOfBenefit.ndjson"), 3.0);
    let cost = run(&at("both"), &[]).0.expect("a cost");
    assert!(close(cost, priced), "{cost} vs {priced}");
    // ...and are the cost where there is no Claim.
    std::fs::remove_file(at("both/Claim.ndjson")).expect("remove");
    let cost = run(&at("both"), &[]).0.expect("a cost");
    assert!(close(cost, 3.0 * priced), "{cost} vs 3 × {priced}");
}

#[test]
fn bundles_with_claims_cost_as_ndjson_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (nd, bu) = (dir.path().join("nd"), dir.path().join("bu"));
    synth(300, 11, Synth::Files(&nd), &["--claims", "--explanations"]);
    synth(
        300,
        11,
        Synth::Files(&bu),
        &["--claims", "--explanations", "--format", "bundles"],
    );
    let (a, b) = (run(&nd, &[]), run(&bu, &[]));
    let (x, y) = (a.0.expect("a cost"), b.0.expect("a cost"));
    assert!(close(x, y), "{x} vs {y}");
    assert_eq!(a.1, b.1);
    assert!(b.2.is_empty(), "{:?}", b.2);
}

#[test]
fn a_model_that_bills_nothing_ignores_claims_and_counts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    synth(300, 11, Synth::Files(dir.path()), &["--claims"]);
    let claims = ndjson(&dir.path().join("Claim.ndjson")).len() as u64;
    let out = dir.path().join("out-oral");
    let output = run_files(
        dir.path(),
        &out,
        &["--model", "mappings/helsinki-oral-health.yaml"],
    );
    assert_eq!(output.status.code(), Some(0), "{:?}", text(&output));
    assert!(ndjson(&out.join("rejected.ndjson")).is_empty());
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).expect("summary"))
            .expect("json");
    assert_eq!(summary["ignored"]["Claim"], claims, "{summary}");
    assert!(
        text(&output)
            .0
            .contains("Ignored (no model reads them): Claim "),
        "{:?}",
        text(&output)
    );
    std::fs::remove_dir_all(&out).expect("clean");
    let both = [
        "--model",
        "mappings/paijat-sote.yaml",
        "--model",
        "mappings/helsinki-oral-health.yaml",
    ];
    let (_, _, rejected) = run(dir.path(), &both);
    assert!(rejected.is_empty(), "{rejected:?}");
}

/// `Type?patient=Patient/a,Patient/b` on the test server: the ids of what it answers.
async fn by_patient(server: &TestServer, kind: &str, patients: &str) -> Vec<String> {
    let client = server.client();
    let mut pages = client
        .pages(kind, &[("patient", patients), ("_count", "500")])
        .expect("search url");
    let mut out = Vec::new();
    while let Some(page) = pages.next_page().await {
        let page = page.unwrap_or_else(|e| panic!("{kind}?patient= on hfs: {e}"));
        out.extend(
            segmentti::fhir::matches(&page).filter_map(|r| r["id"].as_str().map(str::to_owned)),
        );
    }
    out.sort();
    out
}

#[tokio::test]
async fn the_test_server_finds_every_type_segmentti_reads_by_patient() {
    let server = TestServer::start().await;
    let patient = |id: &str| json!({"resourceType": "Patient", "id": id});
    let of = |id: &str| json!({"reference": format!("Patient/{id}")});
    let mut resources = vec![patient("a"), patient("b"), patient("c")];
    for p in ["a", "b", "c"] {
        resources.push(json!({"resourceType": "Observation", "id": format!("o-{p}"), "status": "final",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "109629007"}]}, "subject": of(p)}));
        resources.push(
            json!({"resourceType": "EpisodeOfCare", "id": format!("ep-{p}"), "status": "active",
            "patient": of(p), "period": {"start": "2025-01-01"}}),
        );
        resources.push(json!({"resourceType": "Claim", "id": format!("cl-{p}"), "status": "active",
            "type": {"coding": [{"code": "professional"}]}, "use": "claim", "patient": of(p),
            "created": "2025-01-01", "provider": {"display": "x"}, "priority": {"coding": [{"code": "normal"}]},
            "insurance": [{"sequence": 1, "focal": true, "coverage": {"display": "x"}}],
            "total": {"value": 10, "currency": "EUR"}}));
        resources.push(json!({"resourceType": "ExplanationOfBenefit", "id": format!("x-{p}"), "status": "active",
            "type": {"coding": [{"code": "professional"}]}, "use": "claim", "patient": of(p),
            "created": "2025-01-01", "insurer": {"display": "x"}, "provider": {"display": "x"}, "outcome": "complete",
            "insurance": [{"focal": true, "coverage": {"display": "x"}}]}));
    }
    server.put(&resources).await;
    for (kind, prefix) in [
        ("Observation", "o"),
        ("EpisodeOfCare", "ep"),
        ("Claim", "cl"),
        ("ExplanationOfBenefit", "x"),
    ] {
        assert_eq!(
            by_patient(&server, kind, "Patient/a,Patient/c").await,
            [format!("{prefix}-a"), format!("{prefix}-c")],
            "{kind}?patient= with typed references"
        );
    }
}

#[tokio::test]
async fn a_server_holding_claims_is_read_and_they_give_the_cost() {
    let server = TestServer::start().await;
    let base = server.base_url().as_str().to_owned();
    synth(40, 3, Synth::Server(&base), &["--claims"]);
    let cost = || {
        dry_run(&base, &[])["models"][0]["summary"]["total_cost"]
            .as_f64()
            .expect("cost")
    };
    let priced = cost();
    assert!(priced > 0.0);
    // Every Claim on the server now bills twice its price: the cost follows the Claims.
    let client = server.client();
    let mut claims = Vec::new();
    let mut pages = client.pages("Claim", &[("_count", "500")]).expect("url");
    while let Some(page) = pages.next_page().await {
        claims.extend(segmentti::fhir::matches(&page.expect("page")).cloned());
    }
    assert!(!claims.is_empty());
    let entries: Vec<Value> = claims
        .into_iter()
        .map(|mut c| {
            c["total"]["value"] = json!(c["total"]["value"].as_f64().expect("value") * 2.0);
            let url = format!("Claim/{}", c["id"].as_str().expect("id"));
            json!({"resource": c, "request": {"method": "PUT", "url": url}})
        })
        .collect();
    client
        .transaction(&json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}))
        .await
        .expect("claims updated");
    let billed = cost();
    assert!(close(billed, 2.0 * priced), "{billed} vs 2 × {priced}");
}

/// A searchset of `resources`.
fn searchset(resources: &[Value]) -> ResponseTemplate {
    let bundle = json!({"resourceType": "Bundle", "type": "searchset",
        "entry": resources.iter().map(|r| json!({"resource": r, "search": {"mode": "match"}})).collect::<Vec<_>>()});
    ResponseTemplate::new(200).set_body_raw(bundle.to_string(), "application/fhir+json")
}

/// What `search::read` hands on from `server`, for a model reading `kinds`.
async fn read(server: &MockServer, kinds: &[ResourceKind]) -> Result<Vec<String>, String> {
    let mut options = ClientOptions::new("it-bills");
    options.retry.max_attempts = 1;
    let client = FhirClient::new(server.uri().parse().expect("url"), options).expect("client");
    let mut seen = Vec::new();
    let mut emit = |batch: Batch| {
        for r in batch.resources().1 {
            if let Resource::Value(v) = r {
                seen.push(format!(
                    "{}/{}",
                    v["resourceType"].as_str().unwrap_or("?"),
                    v["id"].as_str().unwrap_or("?")
                ));
            }
        }
        Ok(())
    };
    search::read(&client, &SearchOptions::default(), kinds, &mut emit)
        .await
        .map_err(|e| e.to_string())?;
    Ok(seen)
}

#[tokio::test]
async fn a_server_without_claims_is_read_as_holding_none_and_a_model_without_bills_never_asks() {
    let server = MockServer::start().await;
    let patient = json!({"resourceType": "Patient", "id": "a"});
    let claim = json!({"resourceType": "Claim", "id": "c", "patient": {"reference": "Patient/a"}});
    let unknown = json!({"resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "not-supported", "diagnostics": "Unknown resource type"}]});
    for (at, answer) in [
        ("/Patient", searchset(&[patient])),
        ("/Encounter", searchset(&[])),
        ("/Condition", searchset(&[])),
        ("/Claim", searchset(&[claim])),
        (
            "/ExplanationOfBenefit",
            ResponseTemplate::new(404).set_body_json(&unknown),
        ),
    ] {
        Mock::given(method("GET"))
            .and(path(at))
            .respond_with(answer)
            .mount(&server)
            .await;
    }
    let core = ResourceKind::CORE;
    assert_eq!(read(&server, &core).await.expect("read"), ["Patient/a"]);
    let asked = |kind: &'static str| {
        let server = &server;
        async move {
            server
                .received_requests()
                .await
                .expect("recorded")
                .iter()
                .filter(|r| r.url.path() == format!("/{kind}"))
                .count()
        }
    };
    assert_eq!(
        asked("Claim").await,
        0,
        "a model that bills nothing asks for no Claim"
    );
    let billed = [
        core.as_slice(),
        &[ResourceKind::Claim, ResourceKind::ExplanationOfBenefit],
    ]
    .concat();
    assert_eq!(
        read(&server, &billed)
            .await
            .expect("a 404 on ExplanationOfBenefit is no failure"),
        ["Patient/a", "Claim/c"]
    );
    assert_eq!(asked("ExplanationOfBenefit").await, 1);
    // Encounters stay required: a server that cannot search them fails the read.
    server.reset().await;
    Mock::given(method("GET"))
        .and(path("/Patient"))
        .respond_with(searchset(&[json!({"resourceType": "Patient", "id": "a"})]))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/Encounter"))
        .respond_with(ResponseTemplate::new(404).set_body_json(&unknown))
        .mount(&server)
        .await;
    let failed = read(&server, &core)
        .await
        .expect_err("Encounter is required");
    assert!(failed.contains("404"), "{failed}");
}

/// The JSON report of `run --server BASE --dry-run` plus `extra`, which must succeed.
fn dry_run(base: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "run",
        "--server",
        base,
        "--as-of",
        "2026-01-01",
        "--dry-run",
        "--json",
    ];
    args.extend_from_slice(extra);
    let output = segmentti(&args);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    serde_json::from_str(&stdout).expect("json")
}

/// Segment codes per Patient in a run's `Observation.ndjson`.
fn segments_of(out: &Path) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = ndjson(&out.join("Observation.ndjson"))
        .iter()
        .map(crate::support::subject_and_segment)
        .collect();
    found.sort();
    found
}

/// Two clients with the same oral-health visit; `a` also has an oral-status finding, and two
/// with no contact at all; `c` has a home-care decision in effect.
fn observation_and_episode_clients() -> Vec<Value> {
    let of = |id: &str| json!({"reference": format!("Patient/{id}")});
    let mut out: Vec<Value> = ["a", "b", "c", "d"]
        .iter()
        .map(|id| json!({"resourceType": "Patient", "id": id, "birthDate": "1940-01-01"}))
        .collect();
    for p in ["a", "b"] {
        out.push(json!({"resourceType": "Encounter", "id": format!("e-{p}"), "status": "finished", "subject": of(p),
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "serviceType": {"coding": [{"system": "urn:oid:1.2.246.537.6.2015", "code": "T60"}]},
            "period": {"start": "2025-04-01", "end": "2025-04-01"}}));
    }
    out.push(
        json!({"resourceType": "Observation", "id": "o-a", "status": "final", "subject": of("a"),
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "109629007"}]},
        "effectiveDateTime": "2025-04-01"}),
    );
    out.push(json!({"resourceType": "EpisodeOfCare", "id": "ep-c", "status": "active", "patient": of("c"),
        "type": [{"coding": [{"system": "urn:oid:1.2.246.537.6.2015", "code": "T72"}]}],
        "period": {"start": "2023-03-01"}}));
    out
}

#[test]
fn observations_and_episodes_in_ndjson_and_bundles_decide_where_the_models_read_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let resources = observation_and_episode_clients();
    let (nd, bu) = (dir.path().join("nd"), dir.path().join("bu"));
    std::fs::create_dir_all(&nd).expect("dir");
    std::fs::create_dir_all(&bu).expect("dir");
    let lines: Vec<String> = resources.iter().map(Value::to_string).collect();
    std::fs::write(nd.join("all.ndjson"), lines.join("\n") + "\n").expect("write");
    let entries: Vec<Value> = resources
        .iter()
        .map(|r| json!({"fullUrl": format!("https://example.org/{}/{}", r["resourceType"].as_str().expect("type"), r["id"].as_str().expect("id")), "resource": r}))
        .collect();
    std::fs::write(
        bu.join("bundle.json"),
        json!({"resourceType": "Bundle", "type": "collection", "entry": entries}).to_string(),
    )
    .expect("write");
    let pair = |a: &str, b: &str| (format!("Patient/{a}"), b.to_owned());
    for (i, input) in [&nd, &bu].into_iter().enumerate() {
        let out = dir.path().join(format!("out-oral-{i}"));
        let output = run_files(
            input,
            &out,
            &["--model", "mappings/helsinki-oral-health.yaml"],
        );
        // The EpisodeOfCare is not the oral-health model's: ignored, not rejected.
        assert_eq!(output.status.code(), Some(0), "{:?}", text(&output));
        assert!(ndjson(&out.join("rejected.ndjson")).is_empty());
        let summary: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("summary.json")).expect("summary"),
        )
        .expect("json");
        assert_eq!(summary["ignored"], json!({"EpisodeOfCare": 1}));
        assert_eq!(
            segments_of(&out),
            [
                pair("a", "moderate"),
                pair("b", "light"),
                pair("c", "no-record"),
                pair("d", "no-record")
            ],
            "{}",
            input.display()
        );
        let out = dir.path().join(format!("out-virta-{i}"));
        let output = run_files(input, &out, &["--model", "mappings/virta.yaml"]);
        // Virta reads Observations (Barthel totals): the oral finding is read, and selected by
        // none of its features.
        assert_eq!(output.status.code(), Some(0), "{:?}", text(&output));
        assert!(ndjson(&out.join("rejected.ndjson")).is_empty());
        let virta = segments_of(&out);
        assert_eq!(virta[2], pair("c", "heavy"), "the home-care decision");
        assert_eq!(
            virta[3],
            pair("d", "early-support"),
            "no decision, no contact"
        );
    }
}

#[tokio::test]
async fn a_server_holding_episodes_of_care_is_read_for_the_model_that_needs_them() {
    let server = TestServer::start().await;
    server.put(&observation_and_episode_clients()).await;
    let base = server.base_url().as_str().to_owned();
    let report = dry_run(&base, &["--model", "mappings/virta.yaml"]);
    let heavy = report["models"][0]["summary"]["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .find(|s| s["code"] == "heavy")
        .expect("heavy")["count"]
        .clone();
    assert_eq!(heavy, 1, "{report:#}");
}
