//! Data no one here wrote: eight Synthea patients as transaction Bundles
//! (`tests/fixtures/external/`, with their source and licence). A normal export from another
//! system must run clean: its Observations, Procedures and Organizations are ignored, not
//! rejected; its bills in dollars are counted, not rejected; the dead get no segment; and its
//! SNOMED CT-coded illnesses are recognised as the long-term illnesses they are.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::support::{fixture, ndjson, segmentti, text};

const AS_OF: &str = "2021-06-01";

/// Patient ids of the slice (`Patient.id`, not the Synthea person id in the file names).
const BEATRICE: &str = "9df87ee4-4ade-45c5-8601-910e8ff9db99";
const CHRISTOPHER: &str = "39234650-0229-4aee-975b-c8ee68bab40b";
const DIRK: &str = "948e608d-e408-4788-8cf2-8157c49c2940";
const FIDEL: &str = "3be268d8-ec01-471a-937d-267bf0ed0b5c";
const LIZ: &str = "ee9f8dd8-72d2-4769-8020-89e504b1504b";
const MARTINA: &str = "beaf0c3d-bcd4-4155-8a7b-f493bdc8f9fe";

fn input() -> String {
    fixture("external/synthea").display().to_string()
}

/// `explain` of `patient` by Päijät-Sote, plus `extra`: its stdout, once it has succeeded.
fn explain(patient: &str, extra: &[&str]) -> String {
    let input = input();
    let args = [
        &[
            "explain",
            "--input",
            &input,
            "--as-of",
            AS_OF,
            "--patient",
            patient,
        ][..],
        extra,
    ]
    .concat();
    let output = segmentti(&args);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    stdout
}

/// The value of `feature` in the explanation of `patient` by Päijät-Sote.
fn feature(patient: &str, feature: &str) -> f64 {
    let stdout = explain(patient, &["--json"]);
    let explanations: Value = serde_json::from_str(&stdout).expect("json");
    let explanation = explanations
        .as_array()
        .and_then(|a| a.first())
        .unwrap_or(&explanations);
    explanation["criteria"]
        .as_array()
        .expect("criteria")
        .iter()
        .flat_map(|c| c["features"].as_array().expect("features"))
        .find(|f| f["id"] == feature)
        .and_then(|f| f["value"].as_f64())
        .unwrap_or_else(|| panic!("{feature} in {explanation}"))
}

#[test]
fn a_synthea_export_runs_clean_and_counts_what_it_ignores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let input = input();
    let output = segmentti(&[
        "run",
        "--input",
        &input,
        "--as-of",
        AS_OF,
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(ndjson(&out.join("rejected.ndjson")).is_empty());
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).expect("summary"))
            .expect("json");
    let ignored: BTreeMap<String, u64> =
        serde_json::from_value(summary["ignored"].clone()).expect("ignored");
    // The slice's own counts (tests/fixtures/external/README.md).
    for (kind, n) in [
        ("Observation", 869),
        ("Immunization", 79),
        ("Procedure", 61),
        ("MedicationRequest", 38),
        ("Organization", 12),
        ("Practitioner", 12),
    ] {
        assert_eq!(ignored.get(kind), Some(&n), "{kind}: {ignored:?}");
    }
    assert!(
        stdout.contains("Ignored (no model reads them): Observation 869,"),
        "{stdout}"
    );
    // Synthea bills in dollars; Päijät-Sote prices in euros and has no rate for them.
    assert_eq!(summary["unpriced_bills"]["USD"], 172 + 134, "{summary}");
    let model = &summary["models"][0];
    assert_eq!(model["not_assessed"]["deceased"], 2, "{model}");
    assert_eq!(model["clients"], 6, "{model}");

    let observations = ndjson(&out.join("Observation.ndjson"));
    let flags = ndjson(&out.join("Flag.ndjson"));
    for dead in [BEATRICE, CHRISTOPHER] {
        let about = |r: &Value| r["subject"]["reference"] == format!("Patient/{dead}");
        assert!(!observations.iter().any(about), "{dead} was assessed");
        assert!(!flags.iter().any(about), "{dead} got a Flag");
    }
    // Synthea records the kind of visit in Encounter.type only: check-ups, visits for a
    // symptom and emergency admissions are health care.
    let health = model["service_areas"]
        .as_array()
        .expect("service areas")
        .iter()
        .find(|a| a["area"] == "health")
        .expect("health");
    let in_health: u64 = health["counts"]
        .as_array()
        .expect("counts")
        .iter()
        .filter_map(Value::as_u64)
        .sum();
    assert!(in_health >= 4, "{health}");
    // A plausible spread: six living clients, more than one segment.
    let segments: std::collections::BTreeSet<&str> = model["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .filter(|s| s["count"].as_u64() > Some(0))
        .map(|s| s["code"].as_str().expect("code"))
        .collect();
    assert!(segments.len() >= 2, "{segments:?}");
    // No top share holds for more than its percent of six clients (for 5 % and 10 %: none).
    for t in model["top_shares"].as_array().expect("top shares") {
        assert_eq!(t["clients"], 0, "{t}");
        assert!(
            t["note"].as_str().is_some_and(|n| n.contains("too few")),
            "{t}"
        );
    }
}

#[test]
fn snomed_ct_coded_long_term_illnesses_are_recognised_once_each() {
    // Stroke 230690007, chronic obstructive bronchitis 185086009, chronic congestive heart
    // failure 88805009.
    assert_eq!(feature(MARTINA, "chronic_conditions"), 3.0);
    // Hypertension 38341003 and nothing else long-term.
    assert_eq!(feature(LIZ, "chronic_conditions"), 1.0);
    // Asthma 195967001.
    assert_eq!(feature(FIDEL, "chronic_conditions"), 1.0);
    // Hypertension, type 2 diabetes (44054006, with its neuropathy 368581000119106 the same
    // illness) and chronic kidney disease stage 1 (431855005).
    assert!(feature(DIRK, "chronic_conditions") >= 3.0);
}

#[test]
fn explain_names_the_illnesses_a_count_counted_and_the_codes_they_came_as() {
    let line = |stdout: &str| {
        stdout
            .lines()
            .find(|l| l.contains("Pitkäaikaissairaudet ="))
            .unwrap_or_else(|| panic!("no long-term illness count in\n{stdout}"))
            .trim()
            .to_owned()
    };
    assert_eq!(
        line(&explain(MARTINA, &[])),
        "Pitkäaikaissairaudet = 3: stroke (snomed 230690007); copd (snomed 185086009); heart-failure (snomed 88805009)"
    );
    // Type 2 diabetes and its neuropathy are one illness, recorded in two Conditions.
    let dirk = line(&explain(DIRK, &[]));
    assert!(
        dirk.contains("diabetes-type-2 (snomed 44054006, snomed 368581000119106)"),
        "{dirk}"
    );
    let json: Value = serde_json::from_str(&explain(DIRK, &["--json"])).expect("json");
    let concepts = json[0]["criteria"]
        .as_array()
        .expect("criteria")
        .iter()
        .flat_map(|c| c["features"].as_array().expect("features"))
        .find(|f| f["id"] == "chronic_conditions")
        .map(|f| f["concepts"].clone())
        .expect("chronic_conditions");
    let diabetes = concepts
        .as_array()
        .expect("concepts")
        .iter()
        .find(|c| c["name"] == "diabetes-type-2")
        .expect("diabetes");
    assert_eq!(
        diabetes["resources"].as_array().map(Vec::len),
        Some(2),
        "{diabetes}"
    );
}

#[test]
fn the_dead_are_explained_as_not_assessed() {
    let stdout = explain(BEATRICE, &[]);
    assert!(stdout.contains("the client has died"), "{stdout}");
}
