//! `run --server` against the real test server: the segments match an offline run of the same
//! population, a rerun writes nothing, a later assessment supersedes Flags, `--dry-run` writes
//! nothing, incremental runs re-read only changed clients, and a run killed at any moment and
//! started again ends in the state of an uninterrupted run.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::TestServer;
use crate::support::{Synth, ndjson, root, segmentti, synth, text};

fn cli(args: &[&str]) -> Value {
    let output = segmentti(args);
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "segmentti {args:?} failed:\n{stdout}\n{stderr}"
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{args:?} prints JSON ({e}):\n{stdout}"))
}

fn load(server: &TestServer, clients: u64) {
    synth(clients, 3, Synth::Server(server.base_url().as_str()), &[]);
}

fn run(server: &TestServer, extra: &[&str]) -> Value {
    let mut args = vec![
        "run",
        "--server",
        server.base_url().as_str(),
        "--json",
        "--batch",
        "25",
    ];
    args.extend_from_slice(extra);
    cli(&args)
}

fn writes(run: &Value) -> &Value {
    &run["models"][0]["writes"]
}

/// Every resource of a type on the server, by paging through it.
pub async fn all(server: &TestServer, resource_type: &str) -> Vec<Value> {
    let client = server.client();
    let mut pages = client
        .pages(resource_type, &[("_count", "200")])
        .expect("search url");
    let mut out = Vec::new();
    while let Some(page) = pages.next_page().await {
        out.extend(segmentti::fhir::matches(&page.expect("page")).cloned());
    }
    out
}

/// Per patient: the code of each active Flag, and the identifiers of Observations and Flags.
async fn server_state(
    server: &TestServer,
) -> (BTreeMap<String, BTreeSet<String>>, Vec<String>, Vec<String>) {
    let mut active: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut flag_ids = Vec::new();
    for flag in all(server, "Flag").await {
        flag_ids.push(
            flag["identifier"][0]["value"]
                .as_str()
                .expect("identifier")
                .to_owned(),
        );
        if flag["status"] == "active" {
            let patient = flag["subject"]["reference"]
                .as_str()
                .expect("subject")
                .to_owned();
            active.entry(patient).or_default().insert(
                flag["code"]["coding"][0]["code"]
                    .as_str()
                    .expect("code")
                    .to_owned(),
            );
        }
    }
    let obs_ids = all(server, "Observation")
        .await
        .iter()
        .map(|o| {
            o["identifier"][0]["value"]
                .as_str()
                .expect("identifier")
                .to_owned()
        })
        .collect();
    flag_ids.sort();
    (active, obs_ids, flag_ids)
}

fn duplicates(ids: &[String]) -> usize {
    ids.len() - ids.iter().collect::<BTreeSet<_>>().len()
}

#[tokio::test]
async fn a_server_run_matches_the_offline_run_and_a_rerun_writes_nothing() {
    let server = TestServer::start().await;
    load(&server, 120);
    let first = run(&server, &["--as-of", "2026-01-01"]);
    assert_eq!(writes(&first)["observations"], 120, "{first:#}");
    assert!(writes(&first)["transactions"].as_u64().expect("count") >= 5);

    let offline = tempfile::tempdir().expect("tempdir");
    let out = offline.path().join("out");
    let output = segmentti(&[
        "run",
        "--clients",
        "120",
        "--seed",
        "3",
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert!(output.status.success(), "{:?}", text(&output));
    let expected: BTreeMap<String, String> = ndjson(&out.join("Observation.ndjson"))
        .iter()
        .map(crate::support::subject_and_segment)
        .collect();
    let observations = all(&server, "Observation").await;
    assert_eq!(observations.len(), 120);
    for o in &observations {
        let patient = o["subject"]["reference"].as_str().expect("subject");
        assert_eq!(
            o["valueCodeableConcept"]["coding"][0]["code"].as_str(),
            expected.get(patient).map(String::as_str),
            "{patient}"
        );
    }
    for flag in all(&server, "Flag").await {
        let detail = flag["extension"][0]["valueReference"]["reference"]
            .as_str()
            .expect("flag-detail");
        assert!(
            detail.starts_with("Observation/") && !detail.contains("urn:uuid"),
            "the server resolved {detail}"
        );
    }
    assert!(
        !all(&server, "Provenance").await.is_empty(),
        "each transaction carries a Provenance"
    );

    let before = server_state(&server).await;
    let again = run(&server, &["--as-of", "2026-01-01"]);
    let w = writes(&again);
    assert_wrote_nothing(w, &again);
    assert_eq!(w["unchanged"], 120);
    assert_eq!(server_state(&server).await, before);
}

#[tokio::test]
async fn a_later_assessment_ends_superseded_flags_and_dry_run_writes_nothing() {
    let server = TestServer::start().await;
    load(&server, 150);
    run(&server, &["--as-of", "2026-01-01"]);
    let (_, obs_before, flags_before) = server_state(&server).await;

    let dry = run(&server, &["--as-of", "2026-09-01", "--dry-run"]);
    let planned = writes(&dry)["plan"]
        .as_array()
        .expect("per-client plan")
        .clone();
    assert!(
        !planned.is_empty(),
        "some clients move between 2026-01-01 and 2026-09-01"
    );
    assert_eq!(writes(&dry)["transactions"], 0);
    let (_, obs_dry, flags_dry) = server_state(&server).await;
    assert_eq!(
        (obs_dry, flags_dry),
        (obs_before.clone(), flags_before.clone()),
        "a dry run writes nothing"
    );

    let later = run(&server, &["--as-of", "2026-09-01"]);
    assert_eq!(writes(&later)["flags_ended"], writes(&dry)["flags_ended"]);
    let (active, obs, flags) = server_state(&server).await;
    assert_eq!(duplicates(&obs) + duplicates(&flags), 0);
    assert!(
        obs.len() > obs_before.len(),
        "earlier assessments stay as history"
    );
    let segment_codes = ["1", "2", "3", "3a", "3b", "4"];
    for (patient, codes) in &active {
        assert_eq!(
            codes
                .iter()
                .filter(|c| segment_codes.contains(&c.as_str()))
                .count(),
            1,
            "{patient} has exactly one active segment Flag: {codes:?}"
        );
    }
    let moved = planned
        .iter()
        .find(|p| !p["end"].as_array().expect("end").is_empty())
        .expect("a client whose segment changed");
    let patient = format!("Patient/{}", moved["patient"].as_str().expect("patient"));
    let ended: Vec<Value> = all(&server, "Flag")
        .await
        .into_iter()
        .filter(|f| f["subject"]["reference"] == patient.as_str() && f["status"] == "inactive")
        .collect();
    assert!(!ended.is_empty(), "{patient}'s old Flag is ended");
    assert!(
        ended.iter().all(|f| f["period"]["end"] == "2026-09-01"),
        "{ended:#?}"
    );
}

#[tokio::test]
async fn an_incremental_run_reads_only_changed_clients() {
    let server = TestServer::start().await;
    load(&server, 60);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    let state_arg = state.to_str().expect("utf-8");
    run(&server, &["--as-of", "2026-01-01", "--state", state_arg]);
    let checkpoint: Value =
        serde_json::from_str(&std::fs::read_to_string(&state).expect("checkpoint written"))
            .expect("json");
    assert_eq!(
        checkpoint["thresholds"]["paijat-sote"]
            .as_array()
            .expect("thresholds")
            .len(),
        2
    );

    // Nothing changed since the checkpoint (set back 5 minutes, so this first rerun still sees
    // the load); move it to now to see only what changes next.
    let mut moved = checkpoint.clone();
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    moved["since"] = Value::String(now);
    std::fs::write(&state, moved.to_string()).expect("write state");
    let client = server.client();
    let encounter = serde_json::json!({"resourceType": "Encounter", "id": "late-1", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
        "subject": {"reference": "Patient/p0000007"}, "period": {"start": "2025-12-01T10:00:00+02:00"}});
    let bundle = serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": encounter, "request": {"method": "PUT", "url": "Encounter/late-1"}}]});
    client
        .transaction(&bundle)
        .await
        .expect("an encounter is added");
    let incremental = run(&server, &["--as-of", "2026-01-01", "--state", state_arg]);
    assert_eq!(
        incremental["models"][0]["summary"]["clients"], 1,
        "{incremental:#}"
    );
    assert_eq!(
        incremental["models"][0]["summary"]["thresholds"], checkpoint["thresholds"]["paijat-sote"],
        "percentiles come from the last full run"
    );
}

#[tokio::test]
async fn a_run_killed_at_any_moment_and_restarted_ends_like_an_uninterrupted_run() {
    let (reference, killed) = (TestServer::start().await, TestServer::start().await);
    for server in [&reference, &killed] {
        load(server, 200);
    }
    run(&reference, &["--as-of", "2026-01-01"]);
    let expected = server_state(&reference).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    // Kill once while it is still reading, then each time it has written something new: the
    // moments are found by watching the server, so they hold on a slow machine too.
    let mut partial = Vec::new();
    let mut written = 0;
    for attempt in 0..4 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_segmentti"))
            .args([
                "run",
                "--server",
                killed.base_url().as_str(),
                "--as-of",
                "2026-01-01",
                "--batch",
                "10",
                "--state",
            ])
            .arg(&state)
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("segmentti starts");
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            tokio::time::sleep(Duration::from_millis(if attempt == 0 { 100 } else { 40 })).await;
            if attempt == 0
                || child.try_wait().expect("status").is_some()
                || std::time::Instant::now() > deadline
            {
                break;
            }
            if all(&killed, "Observation").await.len() > written {
                break;
            }
        }
        // SIGKILL: no cleanup, no checkpoint.
        let _ = child.kill();
        child.wait().expect("reaped");
        written = all(&killed, "Observation").await.len();
        partial.push(written);
    }
    assert!(
        partial.iter().any(|&n| n > 0 && n < 200),
        "at least one kill hit the middle of the writes: {partial:?}"
    );
    run(
        &killed,
        &[
            "--as-of",
            "2026-01-01",
            "--state",
            state.to_str().expect("utf-8"),
        ],
    );
    let got = server_state(&killed).await;
    assert_eq!(duplicates(&got.1), 0, "no duplicate Observation");
    assert_eq!(duplicates(&got.2), 0, "no duplicate Flag");
    assert_eq!(got, expected);
}

#[tokio::test]
async fn explain_on_a_server_takes_the_population_thresholds_from_the_checkpoint() {
    let server = TestServer::start().await;
    load(&server, 40);
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state.json");
    let state_arg = state.to_str().expect("utf-8");
    run(&server, &["--as-of", "2026-01-01", "--state", state_arg]);
    // A client whose key-client marking rests on the population's top 10 % of cost.
    let high_cost = all(&server, "Observation")
        .await
        .into_iter()
        .find(|o| {
            o["component"].as_array().is_some_and(|cs| {
                cs.iter().any(|c| {
                    c["code"]["coding"][0]["code"] == "high-cost" && c["valueBoolean"] == true
                })
            })
        })
        .expect("some client is in the top 10 % of cost");
    let patient = high_cost["subject"]["reference"]
        .as_str()
        .and_then(|r| r.strip_prefix("Patient/"))
        .expect("subject")
        .to_owned();
    let explain = |extra: &[&str]| {
        let mut args = vec![
            "explain",
            "--server",
            server.base_url().as_str(),
            "--patient",
            &patient,
            "--as-of",
            "2026-01-01",
            "--json",
            "--lang",
            "en",
        ];
        args.extend_from_slice(extra);
        let output = segmentti(&args);
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        (stdout, stderr)
    };
    let (with_state, _) = explain(&["--state", state_arg]);
    assert!(with_state.contains("High cost (top 10 %)"), "{with_state}");
    let (without, warning) = explain(&[]);
    assert!(
        !without.contains("high-cost"),
        "one client is no population: {without}"
    );
    assert!(
        warning.contains("without --state or --thresholds"),
        "{warning}"
    );
}

/// A write report `w` (of the run `run`, shown when it fails) without a single write.
pub fn assert_wrote_nothing(w: &Value, run: &Value) {
    assert_eq!(
        (
            w["observations"].as_u64(),
            w["flags_written"].as_u64(),
            w["transactions"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{run:#}"
    );
}

#[tokio::test]
async fn a_client_who_dies_has_the_flags_ended_with_the_reason_and_no_new_assessment() {
    let server = TestServer::start().await;
    load(&server, 40);
    run(&server, &["--as-of", "2026-01-01"]);
    let patients = all(&server, "Patient").await;
    let mut dead = patients
        .iter()
        .min_by_key(|p| p["id"].as_str().map(str::to_owned))
        .expect("a patient")
        .clone();
    let id = dead["id"].as_str().expect("id").to_owned();
    let subject = format!("Patient/{id}");
    let active = |flags: &[Value]| {
        flags
            .iter()
            .filter(|f| f["subject"]["reference"] == subject.as_str() && f["status"] == "active")
            .count()
    };
    let before = all(&server, "Flag").await;
    assert!(active(&before) >= 1, "{id} has a segment Flag");
    let observations_before = all(&server, "Observation").await.len();

    dead["deceasedDateTime"] = Value::String("2026-03-01".into());
    if let Some(p) = dead.as_object_mut() {
        p.remove("meta");
    }
    server.put(&[dead]).await;
    let later = run(&server, &["--as-of", "2026-06-01"]);
    assert_eq!(
        later["models"][0]["summary"]["not_assessed"]["deceased"], 1,
        "{later:#}"
    );

    let flags = all(&server, "Flag").await;
    assert_eq!(active(&flags), 0, "{id}'s Flags are ended");
    let ended: Vec<&Value> = flags
        .iter()
        .filter(|f| f["subject"]["reference"] == subject.as_str())
        .collect();
    assert!(
        ended.iter().all(|f| f["period"]["end"] == "2026-06-01"
            && f["extension"].as_array().is_some_and(|e| e.iter().any(|x| {
                x["url"] == "https://segmentti.fi/fhir/StructureDefinition/end-reason"
                    && x["valueCode"] == "deceased"
            }))),
        "{ended:#?}"
    );
    let observations = all(&server, "Observation").await;
    assert!(
        !observations
            .iter()
            .any(|o| o["subject"]["reference"] == subject.as_str()
                && o["effectiveDateTime"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("2026-06-01"))),
        "no assessment of {id} at the later date"
    );
    assert!(
        observations.len() > observations_before,
        "the living are reassessed"
    );
}
