//! Mapping files: every shipped model checks and passes its cases, the committed JSON Schema is
//! what the code generates, broken models are refused with file, line, column and a hint, and
//! the key-client overlay is one included file whose problems name their own file and line.

use std::path::{Path, PathBuf};

use crate::support::{root, segmentti, text};

fn models() -> Vec<PathBuf> {
    let mut models: Vec<PathBuf> = std::fs::read_dir(root().join("mappings"))
        .expect("mappings/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    models.sort();
    assert!(!models.is_empty());
    models
}

/// Whether `path` is a file for models to include rather than a model.
fn included(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .expect("mapping file")
        .lines()
        .any(|l| l.starts_with("fragment:"))
}

#[test]
fn every_shipped_model_checks_and_passes_its_cases() {
    for model in models() {
        let path = model.to_str().expect("utf-8");
        let output = segmentti(&["check-mapping", path]);
        assert!(
            output.status.success(),
            "check-mapping {path}: {:?}",
            text(&output)
        );
        if included(&model) {
            continue;
        }
        let output = segmentti(&["test-mapping", path]);
        let (stdout, stderr) = text(&output);
        assert!(
            output.status.success(),
            "test-mapping {path}:\n{stdout}\n{stderr}"
        );
        assert!(stdout.contains(" 0 failed"), "{stdout}");
    }
}

#[test]
fn the_key_client_overlay_is_one_file_that_models_include() {
    let key_client = root().join("mappings/key-client.yaml");
    let output = segmentti(&["check-mapping", key_client.to_str().expect("utf-8")]);
    assert!(output.status.success(), "{:?}", text(&output));
    assert!(text(&output).0.contains("included file key-client"));
    let output = segmentti(&["test-mapping", key_client.to_str().expect("utf-8")]);
    assert!(!output.status.success());
    assert!(
        text(&output)
            .1
            .contains("is a file for models to include, not a model")
    );
    for model in ["paijat-sote", "nylander", "suuntima", "virta"] {
        let path = root().join(format!("mappings/{model}.yaml"));
        let text = std::fs::read_to_string(&path).expect("model");
        assert!(
            text.contains("\n  - key-client.yaml\n"),
            "{model} includes it"
        );
        // test-mapping (above) fails a model whose cases leave a key-client rule unheld.
        let cases = std::fs::read_dir(root().join(format!("mappings/{model}/cases")))
            .expect("cases")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains("-key-"))
            .count();
        assert!(cases >= 5, "{model} has a case per key-client rule");
    }
}

#[test]
fn a_name_in_both_a_model_and_its_included_file_names_both_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, text) = broken(
        &dir,
        &[(
            "features:\n",
            "features:\n  - id: cost_12m\n    title: {fi: K, sv: K, en: Cost}\n    cost: {resource: Encounter}\n",
        )],
    );
    let stderr = check(&path);
    let included = std::fs::read_to_string(root().join("mappings/key-client.yaml")).expect("file");
    let here = format!("broken.yaml:{}:", line_of(&text, "id: cost_12m"));
    let there = format!("key-client.yaml:{}:", line_of(&included, "id: cost_12m"));
    assert!(stderr.contains(&here), "expected {here} in:\n{stderr}");
    assert!(stderr.contains(&there), "expected {there} in:\n{stderr}");
    assert!(
        stderr.contains("feature `cost_12m` is also defined in"),
        "{stderr}"
    );
}

#[test]
fn a_problem_in_an_included_file_names_that_file_and_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = broken(&dir, &[]);
    let included = std::fs::read_to_string(root().join("mappings/key-client.yaml"))
        .expect("file")
        .replacen("top_percent: 10", "top_percent: 110", 1);
    std::fs::write(dir.path().join("key-client.yaml"), &included).expect("write");
    let stderr = check(&path);
    let at = format!(
        "key-client.yaml:{}:",
        line_of(&included, "top_percent: 110")
    );
    assert!(stderr.contains(&at), "expected {at} in:\n{stderr}");
    assert!(
        stderr.contains("top_percent 110 is outside 0–100"),
        "{stderr}"
    );
}

#[test]
fn committed_schema_is_the_generated_one() {
    let output = segmentti(&["schema"]);
    assert!(output.status.success());
    let committed =
        std::fs::read_to_string(root().join("mappings/schema.json")).expect("mappings/schema.json");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        committed,
        "mappings/schema.json is stale: run `cargo run -- schema > mappings/schema.json`"
    );
}

/// Writes the Päijät-Sote model with `edits` applied and returns its path and text.
fn broken(dir: &tempfile::TempDir, edits: &[(&str, &str)]) -> (PathBuf, String) {
    let mut text =
        std::fs::read_to_string(root().join("mappings/paijat-sote.yaml")).expect("model");
    for (from, to) in edits {
        assert!(
            text.contains(from),
            "the edit target `{from}` is in the model"
        );
        text = text.replacen(from, to, 1);
    }
    (write_model(dir, &text), text)
}

/// Writes `text` as `broken.yaml` beside copies of the files models include.
fn write_model(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    for fragment in models().into_iter().filter(|m| included(m)) {
        let name = fragment.file_name().expect("file name");
        std::fs::copy(&fragment, dir.path().join(name)).expect("copy the included file");
    }
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, text).expect("write");
    path
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle in text")
        + 1
}

fn check(path: &Path) -> String {
    let output = segmentti(&["check-mapping", path.to_str().expect("utf-8")]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "a broken model fails: {:?}",
        text(&output)
    );
    text(&output).1
}

#[test]
fn broken_models_are_refused_with_line_column_and_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    // (edits, a text on the offending line, the message)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case<'_>; 6] = [
        (
            &[("    order: 2\n", "    order: second\n")],
            "order: second",
            "is not of type \"integer\"",
        ),
        (
            &[(
                "  icd10fi: urn:oid:1.2.246.537.6.1",
                "  icd10fi: urn:oid:1.2..537",
            )],
            "icd10fi: urn:oid",
            "is not a code system URL",
        ),
        (
            &[(
                "{feature: contacts_12m, gte: 6}",
                "{feature: contact_12m, gte: 6}",
            )],
            "contact_12m",
            "unknown feature `contact_12m`",
        ),
        (
            &[(
                "      - {system: actcode, code: EMER, display: emergency, source: HL7 v3 ActCode}\n",
                "      - {system: actcode, code: EMER, display: emergency, source: HL7 v3 ActCode}\n      - {system: actcode, code: EMER, display: emergency again, source: HL7 v3 ActCode}\n",
            )],
            "emergency again",
            "code `actcode|EMER` is defined twice",
        ),
        (
            &[("    segment: \"4\"\n", "    segment: \"3\"\n")],
            "  - code: \"4\"",
            "no reachable tree node places a client in segment `4`",
        ),
        (
            &[("id: paijat-sote\n", "id: paijat-sote\ncolour: red\n")],
            "colour: red",
            "Additional properties are not allowed",
        ),
    ];
    for (edits, needle, message) in cases {
        let (path, text) = broken(&dir, edits);
        let stderr = check(&path);
        let at = format!("broken.yaml:{}:", line_of(&text, needle));
        assert!(stderr.contains(&at), "expected {at} in:\n{stderr}");
        assert!(
            stderr.contains(message),
            "expected `{message}` in:\n{stderr}"
        );
        assert!(stderr.contains("hint:"), "{stderr}");
    }
}

#[test]
fn an_unreachable_tree_node_is_named_with_the_node_that_shadows_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, text) = broken(
        &dir,
        &[(
            "  - id: planned-high-support\n    when: {criterion: support_need, at_least: high}",
            "  - id: planned-high-support\n    when: {criterion: health_risks, at_least: high}",
        )],
    );
    let stderr = check(&path);
    assert!(
        stderr.contains(&format!(
            "broken.yaml:{}:",
            line_of(&text, "id: planned-high-support")
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("tree node `planned-high-support` can never be reached"),
        "{stderr}"
    );
    assert!(
        stderr.contains("placed earlier by node `planned-high-risk`"),
        "{stderr}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = broken(
        &dir,
        &[
            (
                "{feature: contacts_12m, gte: 6}",
                "{feature: contact_12m, gte: 6}",
            ),
            (
                "{feature: contacts_12m, gte: 15}",
                "{feature: visits_12m, gte: 15}",
            ),
            ("  icd10fi: urn:oid:1.2.246.537.6.1", "  icd10fi: not a url"),
        ],
    );
    let stderr = check(&path);
    assert!(stderr.contains("has 3 problem(s)"), "{stderr}");
    for message in ["contact_12m", "visits_12m", "not a code system URL"] {
        assert!(stderr.contains(message), "{message} in {stderr}");
    }
}

#[test]
fn yaml_syntax_errors_and_non_utf8_files_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "id: x\nfeatures: [\n  - a\n").expect("write");
    let stderr = check(&path);
    assert!(
        stderr.contains("bad.yaml:") && stderr.contains("not valid YAML"),
        "{stderr}"
    );
    std::fs::write(&path, b"id: caf\xe9\n").expect("write");
    let stderr = check(&path);
    assert!(stderr.contains("not UTF-8"), "{stderr}");
}

#[test]
fn a_sub_segment_of_an_unknown_segment_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(root().join("mappings/virta.yaml"))
        .expect("model")
        .replacen("parent: continuous", "parent: continuos", 1);
    let path = write_model(&dir, &text);
    let stderr = check(&path);
    assert!(
        stderr.contains(&format!(
            "broken.yaml:{}:",
            line_of(&text, "parent: continuos")
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("sub-segment of `continuos`, which is no segment of this model"),
        "{stderr}"
    );
}

#[test]
fn a_case_code_with_a_system_the_model_does_not_name_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let virta = std::fs::read_to_string(root().join("mappings/virta.yaml")).expect("model");
    let path = write_model(&dir, &virta);
    let cases = dir.path().join("broken/cases");
    std::fs::create_dir_all(&cases).expect("cases dir");
    // `loinc` is a short name of functional-ability.yaml, which virta includes, not of virta.
    std::fs::write(
        cases.join("01.yaml"),
        "description: a score\nas_of: \"2026-01-01\"\npatient: {birth_date: \"1950-01-01\"}\nobservations:\n  - {code: \"loinc|96761-2\", effective: \"2025-06-01\", value: 50}\nexpect: {segment: heavy}\n",
    )
    .expect("case");
    let output = segmentti(&["test-mapping", path.to_str().expect("utf-8")]);
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        format!("{stdout}{stderr}").contains("`loinc` in `loinc|96761-2` is not a short name of model virta's systems; write the system's URL"),
        "{stdout}\n{stderr}"
    );
}
