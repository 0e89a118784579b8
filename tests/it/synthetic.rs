//! The built-in synthetic population: the embedded default run, `synth` in both formats and
//! both code flavours, and that the same population gives the same segments however it is read.

use serde_json::Value;

use crate::support::{Synth, ndjson, run_files, segmentti, synth, text};

fn segments(out: &std::path::Path) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = ndjson(&out.join("Observation.ndjson"))
        .iter()
        .map(|o| {
            let patient = o["subject"]["reference"]
                .as_str()
                .expect("subject")
                .to_owned();
            (
                patient,
                o["valueCodeableConcept"]["coding"][0]["code"]
                    .as_str()
                    .expect("segment")
                    .to_owned(),
            )
        })
        .collect();
    found.sort();
    found
}

fn summary(out: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).expect("summary"))
        .expect("json")
}

#[test]
fn the_embedded_default_segments_every_client_into_every_segment() {
    let out = tempfile::tempdir().expect("tempdir");
    let output = segmentti(&[
        "run",
        "--clients",
        "2000",
        "--out",
        out.path().to_str().expect("utf-8"),
    ]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("synthetic population (2000 clients, seed 7)"),
        "{stdout}"
    );
    let s = summary(out.path());
    let model = &s["models"][0];
    assert_eq!(model["clients"], 2000);
    for segment in model["segments"].as_array().expect("segments") {
        assert!(
            segment["count"].as_u64().expect("count") > 0,
            "every segment has clients: {segment}"
        );
    }
    // The brief: about a tenth of the clients hold about four fifths of the cost.
    let share = model["top_decile_cost_share"].as_f64().expect("share");
    assert!((0.7..0.9).contains(&share), "top-decile cost share {share}");
    let key = &model["overlays"][0];
    assert!(
        key["cost_share"].as_f64().expect("cost share") > 0.6,
        "key clients hold most of the cost: {key}"
    );
}

#[test]
fn ndjson_and_bundles_of_the_same_population_give_the_same_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (nd, bu) = (dir.path().join("nd"), dir.path().join("bu"));
    for (path, format) in [(&nd, "ndjson"), (&bu, "bundles")] {
        let stdout = synth(300, 11, Synth::Files(path), &["--format", format]);
        assert!(stdout.contains("Wrote 300 clients"), "{stdout}");
    }
    assert_eq!(
        std::fs::read_dir(bu.join("bundles"))
            .expect("bundles")
            .count(),
        300
    );
    let (a, b) = (dir.path().join("out-nd"), dir.path().join("out-bu"));
    for (input, out) in [(&nd, &a), (&bu, &b)] {
        let output = run_files(input, out, &[]);
        assert_eq!(output.status.code(), Some(0), "{:?}", text(&output));
    }
    assert_eq!(segments(&a), segments(&b));
    let synthetic = dir.path().join("out-embedded");
    let output = segmentti(&[
        "run",
        "--clients",
        "300",
        "--seed",
        "11",
        "--out",
        synthetic.to_str().expect("utf-8"),
    ]);
    assert!(output.status.success());
    assert_eq!(
        segments(&a),
        segments(&synthetic),
        "files and the embedded stream are the same population"
    );
}

#[test]
fn international_codes_segment_alike() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fi, intl) = (dir.path().join("fi"), dir.path().join("intl"));
    for (path, codes) in [(&fi, "finnish"), (&intl, "international")] {
        synth(1000, 7, Synth::Files(path), &["--codes", codes]);
        let out = path.join("out");
        let output = run_files(path, &out, &[]);
        assert_eq!(output.status.code(), Some(0), "{:?}", text(&output));
    }
    let encounter = &ndjson(&intl.join("Encounter.ndjson"))[0];
    assert_eq!(
        encounter["serviceType"]["coding"][0]["system"],
        "http://snomed.info/sct"
    );
    let counts = |path: &std::path::Path| -> Vec<u64> {
        summary(&path.join("out"))["models"][0]["segments"]
            .as_array()
            .expect("segments")
            .iter()
            .map(|s| s["count"].as_u64().expect("count"))
            .collect()
    };
    let (a, b) = (counts(&fi), counts(&intl));
    // ICPC-2 and ICD-10 map to the same SNOMED concepts, so the spread is close, not equal:
    // the Finnish data code 30 % of diagnoses in ICPC-2, some of which (hypertension) differ.
    for (x, y) in a.iter().zip(&b) {
        assert!(x.abs_diff(*y) <= 60, "Finnish {a:?} vs international {b:?}");
    }
}

#[test]
fn explain_works_on_a_synthetic_client() {
    let output = segmentti(&[
        "explain",
        "--clients",
        "200",
        "--patient",
        "p0000042",
        "--json",
    ]);
    assert!(output.status.success(), "{:?}", text(&output));
    let explained: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(explained[0]["patient"], "p0000042");
    assert!(
        !explained[0]["criteria"]
            .as_array()
            .expect("criteria")
            .is_empty()
    );
}

#[test]
fn a_sub_segment_names_its_parent_segment() {
    let out = tempfile::tempdir().expect("tempdir");
    let output = segmentti(&[
        "run",
        "--clients",
        "2000",
        "--model",
        "mappings/virta.yaml",
        "--out",
        out.path().to_str().expect("utf-8"),
    ]);
    assert!(output.status.success(), "{:?}", text(&output));
    let observations = ndjson(&out.path().join("Observation.ndjson"));
    let heavy = observations
        .iter()
        .find(|o| o["valueCodeableConcept"]["coding"][0]["code"] == "heavy")
        .expect("the synthetic county has clients in heavy services");
    let parent = heavy["component"]
        .as_array()
        .expect("components")
        .iter()
        .find(|c| c["code"]["coding"][0]["code"] == "parent-segment")
        .expect("a parent-segment component");
    assert_eq!(
        parent["valueCodeableConcept"]["coding"][0]["code"],
        "continuous"
    );
    let light = observations
        .iter()
        .find(|o| o["valueCodeableConcept"]["coding"][0]["code"] == "temporary")
        .expect("temporary");
    assert!(
        !light["component"]
            .as_array()
            .expect("components")
            .iter()
            .any(|c| c["code"]["coding"][0]["code"] == "parent-segment")
    );
}

#[test]
fn the_shapes_of_real_exports_run_clean_and_top_shares_hold_for_no_more_than_their_percent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, out) = (dir.path().join("in"), dir.path().join("out"));
    synth(2000, 5, Synth::Files(&input), &["--real-shapes"]);
    let output = run_files(&input, &out, &[]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(ndjson(&out.join("rejected.ndjson")).is_empty());
    let summary = summary(&out);
    for kind in [
        "Procedure",
        "Immunization",
        "MedicationRequest",
        "Organization",
    ] {
        assert!(
            summary["ignored"][kind].as_u64() > Some(0),
            "{kind}: {summary}"
        );
    }
    let model = &summary["models"][0];
    assert!(
        model["not_assessed"]["deceased"].as_u64() > Some(0),
        "{model}"
    );
    assert!(
        model["not_assessed"]["inactive"].as_u64() > Some(0),
        "{model}"
    );
    let shares = model["top_shares"].as_array().expect("top shares");
    assert!(!shares.is_empty());
    for t in shares {
        let (share, percent) = (t["share"].as_f64(), t["percent"].as_f64());
        assert!(
            share
                .zip(percent)
                .is_some_and(|(s, p)| s > 0.0 && s <= p / 100.0),
            "{t}"
        );
    }
}

#[test]
fn explain_lists_what_was_left_out_and_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines = [
        r#"{"resourceType":"Patient","id":"p","birthDate":"1950-01-01"}"#,
        r#"{"resourceType":"Encounter","id":"e1","status":"finished","subject":{"reference":"Patient/p"},"class":{"code":"AMB"},"period":{"start":"2025-06-01"}}"#,
        r#"{"resourceType":"Encounter","id":"e2","status":"entered-in-error","subject":{"reference":"Patient/p"},"class":{"code":"AMB"},"period":{"start":"2025-06-02"}}"#,
        r#"{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p"},"code":{"coding":[{"system":"http://snomed.info/sct","code":"38341003"}]},"verificationStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-ver-status","code":"refuted"}]}}"#,
    ];
    std::fs::write(dir.path().join("all.ndjson"), lines.join("\n") + "\n").expect("write");
    let input = dir.path().to_str().expect("utf-8");
    let output = segmentti(&[
        "explain",
        "--input",
        input,
        "--as-of",
        "2026-01-01",
        "--patient",
        "p",
        "--lang",
        "en",
    ]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Left out (read, counted for nothing):"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Encounter/e2: status `entered-in-error` is not counted"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Condition/c1: status `refuted` is not counted"),
        "{stdout}"
    );
    assert!(!stdout.contains("Encounter/e1:"), "{stdout}");
}
