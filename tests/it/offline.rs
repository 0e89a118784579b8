//! The offline slice end to end through the real binary: NDJSON and Bundles in, Observation and
//! Flag NDJSON out, checked against the FHIR R4 JSON Schema, snapshots, reproducibility, bad
//! input and exit codes.

use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};

use crate::support::{fhir_schema_errors, fixture, ndjson, run_files, segmentti, text};

fn segment_of(observations: &[Value], patient: &str) -> String {
    let obs = observations
        .iter()
        .find(|o| o["subject"]["reference"] == format!("Patient/{patient}"))
        .unwrap_or_else(|| panic!("an Observation for {patient}"));
    obs["valueCodeableConcept"]["coding"][0]["code"]
        .as_str()
        .expect("segment code")
        .to_owned()
}

#[test]
fn run_segments_the_fixture_and_writes_schema_valid_resources() {
    let out = tempfile::tempdir().expect("tempdir");
    let output = run_files(&fixture("offline/basic"), out.path(), &[]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("Model paijat-sote 1.3.0"), "{stdout}");
    let observations = ndjson(&out.path().join("Observation.ndjson"));
    let flags = ndjson(&out.path().join("Flag.ndjson"));
    assert_eq!(observations.len(), 3);
    assert_eq!(segment_of(&observations, "p1"), "4");
    assert_eq!(segment_of(&observations, "p2"), "1");
    assert_eq!(segment_of(&observations, "p3"), "3a");
    // p1 uses several different services: a key client, with a second Flag. Three clients are
    // too few for a top 5 % or 10 %, so no one is a key client by heavy use or high cost.
    let key_flags: Vec<&Value> = flags
        .iter()
        .filter(|f| f["code"]["coding"][0]["code"] == "key-client")
        .collect();
    assert_eq!(key_flags.len(), 1, "{flags:#?}");
    assert_eq!(key_flags[0]["subject"]["reference"], "Patient/p1");
    assert!(
        stdout.contains("not applied: 3 clients are too few"),
        "{stdout}"
    );
    assert_eq!(flags.len(), 4);
    for resource in observations.iter().chain(&flags) {
        let errors = fhir_schema_errors(resource);
        assert!(errors.is_empty(), "{}: {errors:#?}", resource["id"]);
    }
    for flag in &flags {
        let detail = flag["extension"][0]["valueReference"]["reference"]
            .as_str()
            .expect("flag-detail");
        let obs_id = detail
            .strip_prefix("Observation/")
            .expect("points to an Observation");
        assert!(
            observations
                .iter()
                .any(|o| o["id"] == obs_id && o["subject"] == flag["subject"]),
            "{detail}"
        );
    }
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("summary.json")).expect("summary"),
    )
    .expect("json");
    assert_eq!(summary["models"][0]["clients"], 3);
    assert_eq!(summary["rejected"], 0);
    assert_eq!(
        std::fs::read_to_string(out.path().join("rejected.ndjson")).expect("rejected"),
        ""
    );
}

#[test]
fn the_schema_check_catches_a_broken_resource() {
    let broken = json!({"resourceType": "Flag", "status": "waving", "colour": "red"});
    let errors = fhir_schema_errors(&broken);
    assert!(errors.iter().any(|e| e.contains("colour")), "{errors:#?}");
    assert!(errors.iter().any(|e| e.contains("waving")), "{errors:#?}");
}

#[test]
fn observation_and_flags_match_their_snapshots() {
    let out = tempfile::tempdir().expect("tempdir");
    let output = run_files(&fixture("offline/basic"), out.path(), &[]);
    assert!(output.status.success(), "{:?}", text(&output));
    let of = |file: &str| -> Vec<Value> {
        ndjson(&out.path().join(file))
            .into_iter()
            .filter(|r| r["subject"]["reference"] == "Patient/p3")
            .collect()
    };
    insta::assert_json_snapshot!("observation_p3", of("Observation.ndjson"));
    insta::assert_json_snapshot!("flags_p3", of("Flag.ndjson"));
}

#[test]
fn same_input_and_as_of_give_byte_identical_output() {
    let (a, b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    for dir in [&a, &b] {
        let output = run_files(&fixture("offline/basic"), dir.path(), &[]);
        assert!(output.status.success(), "{:?}", text(&output));
    }
    for file in [
        "Observation.ndjson",
        "Flag.ndjson",
        "summary.json",
        "rejected.ndjson",
    ] {
        let read = |d: &tempfile::TempDir| std::fs::read(d.path().join(file)).expect("output file");
        assert!(read(&a) == read(&b), "{file} differs between two runs");
    }
}

/// Turns the fixture's NDJSON into one collection Bundle per client, with `urn:uuid:` links.
fn write_bundles(dir: &Path) {
    let read = |name: &str| ndjson(&fixture(&format!("offline/basic/{name}.ndjson")));
    let patients = read("Patient");
    let others: Vec<Value> = read("Encounter")
        .into_iter()
        .chain(read("Condition"))
        .collect();
    for (i, patient) in patients.iter().enumerate() {
        let id = patient["id"].as_str().expect("id");
        let urn = format!("urn:uuid:00000000-0000-4000-8000-{i:012}");
        let mut entries = vec![json!({"fullUrl": urn, "resource": patient})];
        for (j, r) in others
            .iter()
            .filter(|r| r["subject"]["reference"] == format!("Patient/{id}"))
            .enumerate()
        {
            let mut r = r.clone();
            r["subject"]["reference"] = json!(urn);
            entries.push(json!({"fullUrl": format!("urn:uuid:10000000-0000-4000-8000-{i:06}{j:06}"), "resource": r}));
        }
        let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": entries});
        std::fs::write(dir.join(format!("{id}.json")), bundle.to_string()).expect("write bundle");
    }
}

#[test]
fn bundles_with_urn_uuid_references_give_the_same_result_as_ndjson() {
    let bundles = tempfile::tempdir().expect("tempdir");
    write_bundles(bundles.path());
    let (from_ndjson, from_bundles) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    assert!(
        run_files(&fixture("offline/basic"), from_ndjson.path(), &[])
            .status
            .success()
    );
    let output = run_files(bundles.path(), from_bundles.path(), &[]);
    assert_eq!(output.status.code(), Some(0), "{:?}", text(&output));
    let read = |d: &tempfile::TempDir| {
        std::fs::read_to_string(d.path().join("Observation.ndjson")).expect("observations")
    };
    assert_eq!(read(&from_ndjson), read(&from_bundles));
}

#[test]
fn gzipped_ndjson_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["Patient", "Encounter", "Condition"] {
        let raw = std::fs::read(fixture(&format!("offline/basic/{name}.ndjson"))).expect("fixture");
        let file =
            std::fs::File::create(dir.path().join(format!("{name}.ndjson.gz"))).expect("create");
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        gz.write_all(&raw).expect("compress");
        gz.finish().expect("finish");
    }
    let out = tempfile::tempdir().expect("tempdir");
    let output = run_files(dir.path(), out.path(), &[]);
    assert_eq!(output.status.code(), Some(0), "{:?}", text(&output));
    assert_eq!(ndjson(&out.path().join("Observation.ndjson")).len(), 3);
}

/// Writes the fixture plus `extra` lines appended to `file` (raw bytes, so not-UTF-8 works).
fn fixture_with(dir: &Path, file: &str, extra: &[u8]) {
    for name in ["Patient", "Encounter", "Condition"] {
        let mut raw =
            std::fs::read(fixture(&format!("offline/basic/{name}.ndjson"))).expect("fixture");
        if format!("{name}.ndjson") == file {
            raw.extend_from_slice(extra);
        }
        std::fs::write(dir.join(format!("{name}.ndjson")), raw).expect("write");
    }
}

#[test]
fn bad_resources_are_skipped_into_rejected_ndjson_with_file_line_and_reason() {
    let cases: [(&str, &[u8], &str, &str); 8] = [
        ("Condition.ndjson", b"{bad json\n", "Condition.ndjson:6", "malformed JSON"),
        ("Encounter.ndjson", b"{\"resourceType\":\"Encounter\",\"subject\":{\"reference\":\"Patient/p1\"}}\n", "Encounter.ndjson:27", "Encounter without id"),
        ("Encounter.ndjson", b"{\"resourceType\":\"Encounter\",\"id\":\"nosub\"}\n", "Encounter.ndjson:27", "without subject"),
        ("Condition.ndjson", b"{\"resourceType\":\"Foo\",\"id\":\"o1\"}\n", "Condition.ndjson:6", "is no FHIR R4 resource type and is not read by segmentti"),
        ("Encounter.ndjson", b"{\"resourceType\":\"Encounter\",\"id\":\"g1\",\"subject\":{\"reference\":\"Patient/ghost\"}}\n", "Patient/ghost", "not in the input"),
        ("Patient.ndjson", b"{\"resourceType\":\"Patient\",\"id\":\"caf\xe9\"}\n", "Patient.ndjson:4", "not UTF-8"),
        ("Condition.ndjson", b"{\"resourceType\":\"Condition\",\"id\":\"cut\",\"subject\":{\"refer", "Condition.ndjson:6", "truncated JSON"),
        ("Encounter.ndjson", b"{\"resourceType\":\"Encounter\",\"id\":\"d1\",\"subject\":{\"reference\":\"Patient/p1\"},\"period\":{\"start\":\"yesterday\"}}\n", "Encounter.ndjson:27", "not a FHIR date"),
    ];
    for (file, extra, origin, reason) in cases {
        let (input, out) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        fixture_with(input.path(), file, extra);
        let output = run_files(input.path(), out.path(), &[]);
        let (stdout, stderr) = text(&output);
        assert_eq!(
            output.status.code(),
            Some(3),
            "{reason}: done with rejects\n{stdout}\n{stderr}"
        );
        assert!(stdout.contains("Rejected inputs: 1"), "{reason}: {stdout}");
        let rejected = ndjson(&out.path().join("rejected.ndjson"));
        assert_eq!(rejected.len(), 1, "{reason}: {rejected:#?}");
        let line = rejected[0].to_string();
        assert!(
            line.contains(origin) && line.contains(reason),
            "expected {origin} and `{reason}` in {line}"
        );
        assert_eq!(
            ndjson(&out.path().join("Observation.ndjson")).len(),
            3,
            "{reason}: the good clients are still written"
        );
        let summary: Value = serde_json::from_str(
            &std::fs::read_to_string(out.path().join("summary.json")).expect("summary"),
        )
        .expect("json");
        assert_eq!(summary["rejected"], 1, "{reason}");
    }
}

#[test]
fn on_invalid_fail_stops_at_the_first_bad_resource_and_names_it() {
    let (input, out) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    fixture_with(input.path(), "Condition.ndjson", b"{bad json\n");
    let output = run_files(input.path(), out.path(), &["--on-invalid", "fail"]);
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Condition.ndjson:6") && stderr.contains("malformed JSON"),
        "{stderr}"
    );
    assert!(stderr.contains("hint:"), "{stderr}");
    assert!(
        !out.path().join("Observation.ndjson").exists(),
        "nothing is published from a failed run"
    );
}

#[test]
fn empty_and_missing_inputs_fail_with_a_hint() {
    let empty = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let output = run_files(empty.path(), out.path(), &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).1.contains("no input files"),
        "{:?}",
        text(&output)
    );

    std::fs::write(empty.path().join("Patient.ndjson"), "").expect("write");
    let output = run_files(empty.path(), out.path(), &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).1.contains("holds no resources"),
        "{:?}",
        text(&output)
    );

    let output = run_files(&empty.path().join("nowhere"), out.path(), &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).1.contains("cannot read"),
        "{:?}",
        text(&output)
    );
}

#[test]
fn explain_shows_the_tree_path_criteria_and_resources() {
    let input = fixture("offline/basic");
    let args = [
        "explain",
        "--input",
        input.to_str().expect("utf-8"),
        "--as-of",
        "2026-01-01",
        "--patient",
        "p3",
        "--lang",
        "en",
    ];
    let output = segmentti(&args);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains("Segment 3a: Planned care – long-term illness"),
        "{stdout}"
    );
    assert!(
        stdout.contains("no   multi-sector") && stdout.contains("→ yes  planned-high-risk"),
        "{stdout}"
    );
    assert!(stdout.contains("Long-term illnesses = 3"), "{stdout}");
    assert!(
        stdout.contains("Condition/c3") && stdout.contains("Encounter/p3-e1"),
        "{stdout}"
    );

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let output = segmentti(&json_args);
    let explained: Value =
        serde_json::from_slice(&output.stdout).expect("explain --json prints JSON");
    assert_eq!(explained[0]["segment"], "3a");
    assert_eq!(explained[0]["path"].as_array().expect("path").len(), 2);

    let output = segmentti(&[
        "explain",
        "--input",
        input.to_str().expect("utf-8"),
        "--patient",
        "nobody",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output)
            .1
            .contains("the Patient given with --patient is not in"),
        "{:?}",
        text(&output)
    );
}

#[test]
fn two_models_at_once_write_their_own_resources_with_distinct_identifiers() {
    let out = tempfile::tempdir().expect("tempdir");
    let output = run_files(
        &fixture("offline/basic"),
        out.path(),
        &[
            "--model",
            "mappings/paijat-sote.yaml",
            "--model",
            "mappings/nylander.yaml",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{:?}", text(&output));
    let observations = ndjson(&out.path().join("Observation.ndjson"));
    assert_eq!(observations.len(), 6, "one per client and model");
    let identifiers: std::collections::BTreeSet<String> = observations
        .iter()
        .map(|o| {
            format!(
                "{}|{}",
                o["identifier"][0]["system"], o["identifier"][0]["value"]
            )
        })
        .collect();
    assert_eq!(
        identifiers.len(),
        6,
        "no model overwrites another's results"
    );
    let p3: Vec<&str> = observations
        .iter()
        .filter(|o| o["subject"]["reference"] == "Patient/p3")
        .map(|o| {
            o["valueCodeableConcept"]["coding"][0]["code"]
                .as_str()
                .expect("segment")
        })
        .collect();
    assert_eq!(
        p3,
        ["3a", "occasional"],
        "Päijät-Sote tier 3, long-term illness; Nylander occasional help (two contacts, months ago)"
    );
    let output = run_files(
        &fixture("offline/basic"),
        out.path(),
        &[
            "--model",
            "mappings/nylander.yaml",
            "--model",
            "mappings/nylander.yaml",
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).1.contains("given twice"),
        "{:?}",
        text(&output)
    );
}
