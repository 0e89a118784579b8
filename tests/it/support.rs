//! Helpers shared by the integration tests: running the real binary, reading its NDJSON output,
//! and checking resources against the official FHIR R4 JSON Schema vendored in `vendor/fhir/`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fixture path below `tests/fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

/// Runs the `segmentti` binary with `args` in the repository root.
pub fn segmentti(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_segmentti"))
        .args(args)
        .current_dir(root())
        .env_remove("SEGMENTTI_LOG")
        .output()
        .expect("the segmentti binary runs")
}

/// Where `segmentti synth` puts the population it generates.
#[derive(Clone, Copy)]
pub enum Synth<'a> {
    /// Bulk Data NDJSON files (or Bundles, with `--format bundles`) in this directory.
    Files(&'a Path),
    /// The FHIR server at this base URL.
    Server(&'a str),
}

/// `segmentti synth --clients CLIENTS --seed SEED` into `to`, plus `extra`; its stdout, once it
/// has succeeded.
pub fn synth(clients: u64, seed: u64, to: Synth<'_>, extra: &[&str]) -> String {
    let (clients, seed) = (clients.to_string(), seed.to_string());
    let mut args = vec!["synth", "--clients", &clients, "--seed", &seed];
    match to {
        Synth::Files(dir) => args.extend(["--out", dir.to_str().expect("utf-8 path")]),
        Synth::Server(base) => args.extend(["--server", base]),
    }
    args.extend_from_slice(extra);
    let output = segmentti(&args);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{args:?}\n{stdout}\n{stderr}");
    stdout
}

/// `segmentti run --input INPUT --as-of 2026-01-01 --out OUT` plus `extra`.
pub fn run_files(input: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "--input",
        input.to_str().expect("utf-8 path"),
        "--as-of",
        "2026-01-01",
    ];
    args.extend_from_slice(&["--out", out.to_str().expect("utf-8 path")]);
    args.extend_from_slice(extra);
    segmentti(&args)
}

/// The numeric `key=value`s of the first `stats:` line of a `--stats` run's stdout.
pub fn stats_line(stdout: &str) -> BTreeMap<String, f64> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("stats: "))
        .unwrap_or_else(|| panic!("a stats: line in {stdout}"))
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}

/// The process's stdout and stderr as text, for assertions and failure messages.
pub fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// An assessment Observation's subject reference and segment code.
pub fn subject_and_segment(observation: &Value) -> (String, String) {
    let text = |v: &Value, what: &str| v.as_str().expect(what).to_owned();
    (
        text(&observation["subject"]["reference"], "subject"),
        text(
            &observation["valueCodeableConcept"]["coding"][0]["code"],
            "segment code",
        ),
    )
}

/// Every line of an NDJSON file as JSON.
pub fn ndjson(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

fn fhir_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let text = std::fs::read_to_string(root().join("vendor/fhir/fhir.schema.json"))
            .expect("vendored FHIR schema");
        serde_json::from_str(&text).expect("FHIR schema is JSON")
    })
}

/// Problems of `resource` against the FHIR R4 JSON Schema definition of its resourceType
/// (empty when it conforms). The schema is structural: it catches unknown elements and bad
/// enum values, not missing required elements.
pub fn fhir_schema_errors(resource: &Value) -> Vec<String> {
    static VALIDATORS: OnceLock<Mutex<HashMap<String, &'static jsonschema::Validator>>> =
        OnceLock::new();
    let kind = resource["resourceType"]
        .as_str()
        .expect("resourceType")
        .to_owned();
    let validator = {
        let mut cache = VALIDATORS
            .get_or_init(Default::default)
            .lock()
            .expect("lock");
        *cache.entry(kind.clone()).or_insert_with(|| {
            let mut schema = fhir_schema().clone();
            schema["oneOf"] = serde_json::json!([{ "$ref": format!("#/definitions/{kind}") }]);
            Box::leak(Box::new(
                jsonschema::validator_for(&schema).expect("FHIR schema compiles"),
            ))
        })
    };
    validator
        .iter_errors(resource)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}
