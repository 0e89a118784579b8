//! profiles/: the committed package is what `profiles build` makes today, and an independent
//! validator (rh-validator, given R4 core, the Finnish base profiles and this package, offline)
//! accepts the package's examples and a whole run's output for every model, and rejects
//! resources broken on purpose, so the profiles say something a validator can hold a resource to.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rh_validator::{FhirValidator, FhirVersion, Severity};
use serde_json::{Value, json};

use segmentti::model::include::is_fragment;
use segmentti::profiles::Package;

use crate::support::{ndjson, root, segmentti, text};

fn packages() -> Vec<PathBuf> {
    ["hl7.fhir.r4.core-4.0.1.tgz", "hl7.fhir.fi.base-1.0.0.tgz"]
        .iter()
        .map(|p| root().join("vendor/fhir/packages").join(p))
        .collect()
}

/// The shipped models; files they include are part of them, not models of their own.
fn mappings() -> Vec<PathBuf> {
    files_ending(&root().join("mappings"), "yaml")
        .into_iter()
        .filter(|p| !is_fragment(&std::fs::read_to_string(p).expect("mapping file")))
        .collect()
}

#[test]
fn the_committed_package_is_what_a_build_makes() {
    let package = Package::build(&mappings(), &packages()).expect("the package builds");
    let stale = package
        .stale_files(&root().join("profiles"))
        .expect("profiles/ reads");
    assert!(
        stale.is_empty(),
        "profiles/ is stale; run `cargo run -- profiles build` and commit it: {stale:?}"
    );
    let index = &package.files[".index.json"]["files"];
    for kind in [
        "StructureDefinition",
        "CodeSystem",
        "ValueSet",
        "CapabilityStatement",
    ] {
        assert!(
            index
                .as_array()
                .expect("files")
                .iter()
                .any(|f| f["resourceType"] == kind),
            "the index lists a {kind}"
        );
    }
}

#[test]
fn every_profile_carries_a_snapshot_in_its_bases_order() {
    for (name, sd) in profile_files() {
        let elements = sd["snapshot"]["element"].as_array().expect(&name);
        let differential = sd["differential"]["element"].as_array().expect(&name);
        assert!(elements.len() > differential.len(), "{name}");
        for d in differential {
            assert!(
                elements.iter().any(|e| e["id"] == d["id"]),
                "{name}: {} is in the snapshot",
                d["id"]
            );
        }
        // Slices sit right after their root or the slices before them.
        for (i, e) in elements.iter().enumerate() {
            let id = e["id"].as_str().expect("id");
            if let Some((root, _)) = id.rsplit_once(':') {
                let before = elements[i - 1]["id"].as_str().expect("id");
                assert!(
                    before == root || before.starts_with(&format!("{root}:")),
                    "{name}: {id}"
                );
            }
        }
    }
}

fn profile_files() -> Vec<(String, Value)> {
    json_files(&root().join("profiles"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("StructureDefinition-"))
        })
        .map(|p| (p.display().to_string(), read_json(&p)))
        .collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("readable")).expect("JSON")
}

/// R4 core, fi-base and profiles/ unpacked into one folder the validator reads, once.
fn package_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        for tgz in packages() {
            let file = std::fs::File::open(&tgz).expect("vendored package");
            let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
            for entry in archive.entries().expect("a tar") {
                let mut entry = entry.expect("an entry");
                let path = entry.path().expect("a path").into_owned();
                let Some(name) = path
                    .file_name()
                    .filter(|_| path.parent() == Some(Path::new("package")))
                else {
                    continue;
                };
                if name.to_string_lossy().ends_with(".json") {
                    let mut text = String::new();
                    entry.read_to_string(&mut text).expect("text");
                    std::fs::write(dir.path().join(name), text).expect("written");
                }
            }
        }
        for path in json_files(&root().join("profiles")) {
            std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copied");
        }
        dir
    })
    .path()
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    files_ending(dir, "json")
}

/// The files of `dir` with extension `ext`, sorted.
fn files_ending(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("a folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    files
}

/// A validator over the package folder, with profiles/' code systems and value sets (it is not
/// `Sync`, so each test makes its own).
fn validator() -> FhirValidator {
    let v = FhirValidator::new(FhirVersion::R4, package_dir().to_str()).expect("validator");
    for path in json_files(&root().join("profiles")) {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if name.starts_with("CodeSystem-") {
            v.register_codesystem(&read_json(&path));
        } else if name.starts_with("ValueSet-") {
            v.register_valueset(&read_json(&path));
        }
    }
    v
}

/// The errors the validator finds in `resource` against the profile it claims.
fn errors(validator: &FhirValidator, resource: &Value) -> Vec<String> {
    let profile = resource["meta"]["profile"][0]
        .as_str()
        .expect("every resource segmentti writes claims its profile");
    validator
        .validate_with_profile(resource, profile)
        .expect("validation runs")
        .issues
        .into_iter()
        .filter(|i| matches!(i.severity, Severity::Error))
        .map(|i| format!("{} at {:?}", i.message, i.path))
        .collect()
}

fn examples() -> Vec<Value> {
    json_files(&root().join("profiles/example"))
        .iter()
        .map(|p| read_json(p))
        .collect()
}

/// The examples that claim the profile whose url ends with `profile`.
fn claiming<'a>(examples: &'a [Value], profile: &'a str) -> impl Iterator<Item = &'a Value> {
    examples.iter().filter(move |e| {
        e["meta"]["profile"][0]
            .as_str()
            .is_some_and(|x| x.ends_with(profile))
    })
}

#[test]
fn the_examples_are_valid_against_their_profiles() {
    let examples = examples();
    let claimed = |p: &str| claiming(&examples, p).count();
    assert_eq!(
        claimed("/segment-assessment"),
        5,
        "one assessment per model"
    );
    assert_eq!(claimed("/segment-flag"), 5, "one segment Flag per model");
    assert!(claimed("/key-client-flag") >= 1, "a key-client Flag");
    assert!(claimed("/overlay-flag") >= 1, "another overlay's Flag");
    let v = validator();
    for example in &examples {
        assert_eq!(
            errors(&v, example),
            Vec::<String>::new(),
            "{}",
            example["id"]
        );
    }
}

#[test]
fn a_whole_run_is_valid_against_the_profiles() {
    let out = tempfile::tempdir().expect("tempdir");
    let mut args = vec![
        "run",
        "--clients",
        "400",
        "--out",
        out.path().to_str().expect("utf-8"),
    ];
    let models: Vec<String> = mappings().iter().map(|m| m.display().to_string()).collect();
    for m in &models {
        args.extend(["--model", m]);
    }
    let output = segmentti(&args);
    assert!(output.status.success(), "{:?}", text(&output));
    let v = validator();
    let mut checked = 0;
    for file in ["Observation.ndjson", "Flag.ndjson"] {
        for resource in ndjson(&out.path().join(file)) {
            assert_eq!(
                errors(&v, &resource),
                Vec::<String>::new(),
                "{file}: {}",
                resource["id"]
            );
            checked += 1;
        }
    }
    assert!(checked > 2 * 5 * 400, "{checked} resources checked");
}

#[test]
fn the_package_resources_are_valid_r4() {
    let v = validator();
    let mut found = Vec::new();
    for path in json_files(&root().join("profiles")) {
        let resource = read_json(&path);
        if resource.get("resourceType").is_none() {
            continue;
        }
        let core = format!(
            "http://hl7.org/fhir/StructureDefinition/{}",
            resource["resourceType"].as_str().expect("a type")
        );
        let result = v
            .validate_with_profile(&resource, &core)
            .expect("validation runs");
        found.extend(
            result
                .issues
                .into_iter()
                .filter(|i| matches!(i.severity, Severity::Error))
                .map(|i| format!("{}: {} at {:?}", path.display(), i.message, i.path)),
        );
    }
    assert!(found.is_empty(), "{found:#?}");
    // The same check sees a broken one.
    let mut broken = read_json(&root().join("profiles/CodeSystem-segmentti.json"));
    broken.as_object_mut().expect("object").remove("status");
    let result = v
        .validate_with_profile(
            &broken,
            "http://hl7.org/fhir/StructureDefinition/CodeSystem",
        )
        .expect("validation runs");
    assert!(!result.valid, "a CodeSystem without status is refused");
}

/// A way to break an example, and the resource it applies to.
type Break = (&'static str, &'static str, fn(&mut Value));

#[test]
fn resources_broken_on_purpose_are_rejected() {
    let examples = examples();
    let of = |profile: &str| claiming(&examples, profile).next().cloned().expect(profile);
    let breaks: [Break; 14] = [
        ("/segment-assessment", "no status", |r| {
            r.as_object_mut().expect("object").remove("status");
        }),
        ("/segment-assessment", "status not final", |r| {
            r["status"] = json!("preliminary")
        }),
        ("/segment-assessment", "not the assessment code", |r| {
            r["code"]["coding"][0]["code"] = json!("something-else")
        }),
        ("/segment-assessment", "derivedFrom used", |r| {
            r["derivedFrom"] = json!([{"reference": "Condition/c1"}])
        }),
        ("/segment-assessment", "no identifier", |r| {
            r.as_object_mut().expect("object").remove("identifier");
        }),
        ("/segment-flag", "no subject", |r| {
            r.as_object_mut().expect("object").remove("subject");
        }),
        ("/segment-flag", "no period", |r| {
            r.as_object_mut().expect("object").remove("period");
        }),
        (
            "/segment-flag",
            "status outside its required ValueSet",
            |r| r["status"] = json!("final"),
        ),
        ("/key-client-flag", "not the key-client code", |r| {
            r["code"]["coding"][0]["code"] = json!("emergency")
        }),
        ("/segment-assessment", "no category", |r| {
            r.as_object_mut().expect("object").remove("category");
        }),
        ("/segment-assessment", "a category but not survey", |r| {
            r["category"][0]["coding"][0]["code"] = json!("laboratory")
        }),
        ("/segment-assessment", "no device", |r| {
            r.as_object_mut().expect("object").remove("device");
        }),
        ("/segment-flag", "no category", |r| {
            r.as_object_mut().expect("object").remove("category");
        }),
        (
            "/key-client-flag",
            "a category outside flag-category",
            |r| r["category"][0]["coding"][0]["code"] = json!("banner"),
        ),
    ];
    let v = validator();
    let mut missed = Vec::new();
    for (profile, what, break_it) in breaks {
        let mut resource = of(profile);
        assert_eq!(
            errors(&v, &resource),
            Vec::<String>::new(),
            "{profile} before: {what}"
        );
        break_it(&mut resource);
        if errors(&v, &resource).is_empty() {
            missed.push(format!("{profile}: {what}"));
        }
    }
    assert!(missed.is_empty(), "the validator accepted: {missed:?}");
}
