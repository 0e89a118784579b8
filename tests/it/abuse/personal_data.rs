//! Abuse suite: personal data and the operator's log (issue 24 findings 5 and 17). An identity
//! code, a name and a birth date are put in every bad place a resource has, and no reason,
//! error or log line (text or JSON, up to `-vv`) nor any output file may show them; the output
//! resources hold ids, codes and references only, so the data appear nowhere at all. Thousands
//! of rejects make one WARN line per fault, and logs to a pipe carry no colour.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{fixture, ndjson, root, run_files, segmentti, text};

/// A Finnish personal identity code, its identifier, a name and an impossible birth date.
const PERSONAL: [&str; 6] = [
    "010203A123B",
    "1.2.246.21|",
    "Virtanen",
    "Matti",
    "1950-13-45",
    "19500101",
];

/// The basic fixture (clients p1 to p3) with `extra` lines added to each file.
fn fixture_plus(dir: &Path, extra: &[(&str, String)]) {
    for name in ["Patient", "Encounter", "Condition"] {
        let file = format!("{name}.ndjson");
        let mut text =
            std::fs::read_to_string(fixture(&format!("offline/basic/{file}"))).expect("fixture");
        for (_, line) in extra.iter().filter(|(f, _)| *f == file) {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(dir.join(file), text).expect("write");
    }
}

/// Personal data in every bad place, and in the unread fields of one good client (p6).
fn hostile_input(dir: &Path) {
    let enc = |id: &str, rest: &str| {
        format!(r#"{{"resourceType":"Encounter","id":"{id}","status":"finished",{rest}}}"#)
    };
    let conditional = "Patient?identifier=urn:oid:1.2.246.21|010203A123B";
    fixture_plus(
        dir,
        &[
            ("Patient.ndjson", r#"{"resourceType":"Patient","id":"p4","name":[{"family":"Virtanen","given":["Matti"]}],"identifier":[{"system":"urn:oid:1.2.246.21","value":"010203A123B"}],"birthDate":"1950-13-45"}"#.to_owned()),
            ("Patient.ndjson", r#"{"resourceType":"Patient","id":"010203A123B Virtanen","birthDate":"1950-01-01"}"#.to_owned()),
            ("Patient.ndjson", r#"{"resourceType":"Patient","id":"p5","active":"Matti Virtanen 010203A123B"}"#.to_owned()),
            ("Patient.ndjson", r#"{"resourceType":"Patient","id":"p6","birthDate":"1944-04-04","gender":"Virtanen","name":[{"family":"Virtanen","given":["Matti"]}],"identifier":[{"system":"urn:oid:1.2.246.21","value":"010203A123B"}],"010203A123B":"Matti Virtanen"}"#.to_owned()),
            ("Patient.ndjson", r#""Matti Virtanen 010203A123B""#.to_owned()),
            ("Patient.ndjson", r#"{"resourceType":"Virtanen","id":"010203A123B"}"#.to_owned()),
            ("Encounter.ndjson", enc("e90", &format!(r#""subject":{{"reference":"{conditional}"}}"#))),
            ("Encounter.ndjson", enc("e91", r#""subject":{"reference":"Patient/Matti Virtanen"}"#)),
            ("Encounter.ndjson", enc("e92", r#""subject":{"reference":"Patient/p6"},"period":{"start":"010203A123B"}"#)),
            ("Encounter.ndjson", enc("e93", r#""subject":{"reference":"Patient/p6"},"period":{"start":19500101}"#)),
            ("Encounter.ndjson", enc("e94", r#""subject":{"reference":"Patient/p6"},"class":{"code":"Virtanen","display":"Matti"}"#)),
            ("Encounter.ndjson", r#"{010203A123B Matti Virtanen}"#.to_owned()),
            ("Encounter.ndjson", r#"{"resourceType":"Encounter","id":"e95","subject":{"reference":"010203A123B"#.to_owned()),
            ("Condition.ndjson", r#"{"resourceType":"Condition","id":"c90","subject":{"reference":"Patient/p6"},"onsetDateTime":"1950-13-45","note":[{"text":"Matti Virtanen 010203A123B"}]}"#.to_owned()),
        ],
    );
    // A Bundle with a good entry and two bad ones.
    let bundle = serde_json::json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:1b4f9a3e-0000-4000-8000-000000000001", "resource": {"resourceType": "Encounter", "id": "b1", "status": "finished", "subject": {"reference": "Patient/p6"}, "period": {"start": "2025-06-01"}}},
        {"resource": {"resourceType": "Encounter", "id": "b2", "subject": {"reference": conditional}}},
        {"resource": {"resourceType": "Condition", "id": "b3", "subject": {"reference": "Patient/p6"}, "recordedDate": "1950-13-45"}},
    ]});
    std::fs::write(dir.join("bundle.json"), bundle.to_string()).expect("write");
}

/// Every piece of personal data found in `text`.
fn leaks(text: &str) -> Vec<&'static str> {
    PERSONAL
        .iter()
        .copied()
        .filter(|p| text.contains(p))
        .collect()
}

fn assert_clean(what: &str, text: &str) {
    let found = leaks(text);
    assert!(found.is_empty(), "{what} shows {found:?}:\n{text}");
}

/// Asserts that no output file of `out` shows personal data.
fn assert_clean_dir(out: &Path) {
    let mut files = 0;
    for entry in std::fs::read_dir(out).expect("output directory") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("text output");
        assert_clean(&path.display().to_string(), &text);
        files += 1;
    }
    assert!(files >= 4, "Observation, Flag, rejected and summary");
}

#[test]
fn identity_codes_names_and_birth_dates_appear_in_no_reason_log_error_or_output() {
    let (input, text_out, json_out) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    hostile_input(input.path());
    for (out, extra) in [
        (text_out.path(), &["-vv"][..]),
        (json_out.path(), &["-vv", "--log-format", "json"][..]),
    ] {
        let output = run_files(input.path(), out, extra);
        let (stdout, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(3), "{stdout}\n{stderr}");
        assert_clean("stdout", &stdout);
        assert_clean("stderr", &stderr);
        assert!(
            stderr.contains("resource rejected"),
            "each reject is logged at debug: {stderr}"
        );
        assert_clean_dir(out);
        // Every bad place was reached: each fault the input holds is recorded, located.
        let rejected = ndjson(&out.join("rejected.ndjson"));
        let mut faults: BTreeMap<String, usize> = BTreeMap::new();
        for r in &rejected {
            *faults
                .entry(r["fault"].as_str().expect("fault").into())
                .or_default() += 1;
            assert!(
                r["origin"]
                    .as_str()
                    .is_some_and(|o| o.contains(':') || o.contains("entry[")),
                "{r}"
            );
        }
        let expected = [
            ("bad-date", 4),
            ("bad-id", 1),
            ("bad-reference", 3),
            ("not-r4", 2),
            ("unknown-type", 1),
            ("unreadable", 3),
        ];
        assert_eq!(
            faults,
            expected.map(|(f, n)| (f.to_owned(), n)).into(),
            "{rejected:#?}"
        );
        let reasons: Vec<&str> = rejected
            .iter()
            .filter_map(|r| r["reason"].as_str())
            .collect();
        for described in [
            "subject.reference is a conditional reference with an identifier, not Patient/id",
            "birthDate is not a FHIR date (10 characters, digits and '-')",
            "Patient with an id that is not a FHIR id (20 characters, digits, letters and spaces)",
        ] {
            assert!(
                reasons.iter().any(|r| r.contains(described)),
                "{described}: {reasons:#?}"
            );
        }
        // The good client with personal data in fields no model reads is assessed.
        assert!(
            ndjson(&out.join("Observation.ndjson"))
                .iter()
                .any(|o| o["subject"]["reference"] == "Patient/p6")
        );
    }

    // --on-invalid=fail: the run's error names the first bad resource without its data.
    let failed = run_files(
        input.path(),
        tempfile::tempdir().expect("tempdir").path(),
        &["-vv", "--on-invalid", "fail"],
    );
    let (stdout, stderr) = text(&failed);
    assert_eq!(failed.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("invalid input at"), "{stderr}");
    assert_clean("stderr of --on-invalid=fail", &stderr);

    // explain of the client whose Patient holds them, in text and JSON.
    let path = input.path().to_str().expect("utf-8");
    for json in [false, true] {
        let mut args = vec!["explain", "-vv", "--input", path, "--as-of", "2026-01-01"];
        args.extend(["--patient", "p6", "--lang", "en"]);
        if json {
            args.push("--json");
        }
        let output = segmentti(&args);
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("p6"), "{stdout}");
        assert_clean("explain's stdout", &stdout);
        assert_clean("explain's stderr", &stderr);
    }
}

/// The JSON log lines of `stderr`.
fn json_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn five_hundred_rejects_of_three_faults_make_three_warn_lines_with_count_and_first_place() {
    let (input, out) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let mut extra = Vec::new();
    for i in 0..500 {
        let line = match i % 5 {
            0 | 1 => format!(
                r#"{{"resourceType":"Encounter","id":"d{i}","subject":{{"reference":"Patient/p1"}},"period":{{"start":"yesterday"}}}}"#
            ),
            2 | 3 => format!(
                r#"{{"resourceType":"Encounter","id":"r{i}","subject":{{"reference":"Group/g{i}"}}}}"#
            ),
            _ => format!(r#"{{"resourceType":"Foo","id":"f{i}"}}"#),
        };
        extra.push(("Encounter.ndjson", line));
    }
    fixture_plus(input.path(), &extra);
    let good = std::fs::read_to_string(fixture("offline/basic/Encounter.ndjson"))
        .expect("fixture")
        .lines()
        .count();
    let line_of = |i: usize| format!("Encounter.ndjson:{}", good + 1 + i);

    let output = run_files(input.path(), out.path(), &["--log-format", "json"]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(3), "{stdout}\n{stderr}");
    let warnings: Vec<Value> = json_lines(&stderr)
        .into_iter()
        .filter(|l| l["level"] == "WARN")
        .collect();
    assert_eq!(warnings.len(), 3, "one line per fault: {warnings:#?}");
    let by_fault: BTreeMap<String, (u64, String)> = warnings
        .iter()
        .map(|w| {
            let f = &w["fields"];
            assert_eq!(f["message"], "resources rejected", "{w}");
            let fault = f["fault"].as_str().expect("fault").to_owned();
            let first = f["first"].as_str().expect("first location").to_owned();
            (fault, (f["count"].as_u64().expect("count"), first))
        })
        .collect();
    let expected: BTreeMap<String, (u64, String)> = [
        ("bad-date", (200, 0)),
        ("bad-reference", (200, 2)),
        ("unknown-type", (100, 4)),
    ]
    .into_iter()
    .map(|(f, (n, i))| (f.to_owned(), (n, line_of(i))))
    .collect();
    let located: BTreeMap<String, (u64, String)> = by_fault
        .into_iter()
        .map(|(f, (n, first))| {
            let at = first.rsplit('/').next().unwrap_or(&first).to_owned();
            (f, (n, at))
        })
        .collect();
    assert_eq!(located, expected);
    assert_eq!(ndjson(&out.path().join("rejected.ndjson")).len(), 500);

    // Each one is still there at debug.
    let verbose = run_files(
        input.path(),
        tempfile::tempdir().expect("tempdir").path(),
        &["-vv", "--log-format", "json"],
    );
    let debug = json_lines(&text(&verbose).1)
        .into_iter()
        .filter(|l| l["level"] == "DEBUG" && l["fields"]["message"] == "resource rejected")
        .count();
    assert_eq!(debug, 500);
}

/// `segmentti run` over the basic fixture with `args`, stderr a pipe, `NO_COLOR` unset.
fn run_piped(out: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_segmentti"))
        .args(["run", "--as-of", "2026-01-01", "--input"])
        .arg(fixture("offline/basic"))
        .arg("--out")
        .arg(out)
        .args(args)
        .current_dir(root())
        .env_remove("SEGMENTTI_LOG")
        .env_remove("NO_COLOR")
        .output()
        .expect("the segmentti binary runs")
}

#[test]
fn logs_to_a_pipe_carry_no_colour() {
    for args in [&["-v"][..], &["-vv"], &["-v", "--log-format", "json"]] {
        let out = tempfile::tempdir().expect("tempdir");
        let output = run_piped(out.path(), args);
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "{args:?}\n{stdout}\n{stderr}");
        assert!(stderr.contains("input folded"), "{args:?}: {stderr}");
        assert!(!stderr.contains('\u{1b}'), "{args:?}: {stderr:?}");
    }
}

#[test]
fn an_identity_code_given_to_explain_as_the_patient_is_not_repeated() {
    let input = fixture("offline/basic");
    let input = input.to_str().expect("utf-8");
    // As typed, the identity code is a valid FHIR id that no Patient has; with a pipe, it is
    // no FHIR id at all.
    for (typed, said) in [
        (
            PERSONAL[0].to_owned(),
            "the Patient given with --patient is not in",
        ),
        (format!("{}|x", PERSONAL[0]), "--patient is not a FHIR id"),
    ] {
        let output = segmentti(&["explain", "--input", input, "--patient", &typed]);
        let (stdout, stderr) = text(&output);
        assert!(!output.status.success());
        assert!(stderr.contains(said), "{stderr}");
        assert_clean("explain stdout", &stdout);
        assert_clean("explain stderr", &stderr);
    }
}
