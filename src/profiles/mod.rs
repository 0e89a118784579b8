//! The FHIR package that defines what segmentti writes (`profiles/`): StructureDefinitions with
//! snapshots, every model's CodeSystems and ValueSets, a CapabilityStatement of what segmentti
//! needs of a server, and example instances made by the real builders. All of it is generated,
//! by `segmentti profiles build`, from three inputs: the authored definitions beside this
//! module (`definitions/`, differentials only), the mapping files, and the base packages (R4
//! core, the Finnish base profiles) as published `.tgz` files. The same inputs give the same
//! bytes, so a test can tell when the committed package is stale. This module reads and writes
//! files; it never talks to a server and never changes what the builders make.

pub mod snapshot;
mod terminology;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::fhir::day::Day;
use crate::model::Plan;
use crate::run::pipeline::{self, Input, RunOptions};
use crate::source::synth::{CodeFlavor, SynthOptions};
use crate::writeback::Concepts;

/// The package's canonical base: every StructureDefinition, CodeSystem and ValueSet of
/// segmentti's own lives below it. Models have their own canonical (in their mapping file).
const CANONICAL: &str = "https://segmentti.fi/fhir";
/// The package's name in the FHIR package registry's sense.
const PACKAGE_NAME: &str = "segmentti.fhir.r4";

/// The authored definitions, embedded so the binary can build the package anywhere.
const DEFINITIONS: [&str; 10] = [
    include_str!("definitions/StructureDefinition-assessment-fingerprint.json"),
    include_str!("definitions/StructureDefinition-end-reason.json"),
    include_str!("definitions/StructureDefinition-supporting-info-count.json"),
    include_str!("definitions/StructureDefinition-supporting-info-elsewhere.json"),
    include_str!("definitions/StructureDefinition-segment-assessment.json"),
    include_str!("definitions/StructureDefinition-segmentti-flag.json"),
    include_str!("definitions/StructureDefinition-segment-flag.json"),
    include_str!("definitions/StructureDefinition-overlay-flag.json"),
    include_str!("definitions/StructureDefinition-key-client-flag.json"),
    include_str!("definitions/CapabilityStatement-segmentti-client.json"),
];

/// What segmentti needs of a FHIR server: the package's `kind: requirements` CapabilityStatement
/// (interactions, search parameters, conditional update, transaction), which `conformance`
/// holds a server's own statement to.
pub(crate) fn requirements() -> Value {
    let text = DEFINITIONS
        .iter()
        .find(|d| d.contains("\"resourceType\": \"CapabilityStatement\""))
        .expect("the requirements CapabilityStatement is embedded");
    serde_json::from_str(text).expect("embedded JSON")
}

/// The day the examples are assessed on, fixed so the package does not change with the clock.
const EXAMPLE_DAY: &str = "2026-01-01";

/// Why the package could not be built, written or compared.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// A file could not be read or written.
    #[error(
        "{path}: {source}\nhint: check that the path exists and is readable (writable for --out)"
    )]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A base package is not a FHIR package.
    #[error("{path}: {what}\nhint: pass the published .tgz of the package (vendor/fhir/packages/)")]
    BadPackage {
        /// The package file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A profile's base is in none of the base packages.
    #[error(
        "{profile} derives from {base}, which none of the base packages holds\nhint: pass the package that defines it with --package"
    )]
    MissingBase {
        /// The profile.
        profile: String,
        /// Its base.
        base: String,
    },
    /// A snapshot could not be generated.
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    /// A model's codes do not make a code system.
    #[error("{model}: {what}\nhint: give each code one display in the mapping file")]
    Terminology {
        /// The model.
        model: String,
        /// What clashes.
        what: String,
    },
    /// A mapping file is invalid.
    #[error(transparent)]
    Mapping(#[from] crate::model::MappingError),
    /// The examples could not be made.
    #[error("making the examples: {0}\nhint: this is a bug in segmentti; report it")]
    Examples(String),
}

/// The package: file name (relative to the package folder) → resource.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Package {
    /// Every file, `package.json` and `.index.json` among them.
    pub files: BTreeMap<String, Value>,
}

impl Package {
    /// Builds the package from `mappings` and the base `packages` (`.tgz`).
    pub fn build(mappings: &[PathBuf], packages: &[PathBuf]) -> Result<Self, ProfileError> {
        let as_of: Day = EXAMPLE_DAY.parse().expect("a valid day");
        let plans = mappings
            .iter()
            .map(|m| crate::model::plan_file(m, as_of))
            .collect::<Result<Vec<_>, _>>()?;
        let mut resources = structure_definitions(packages)?;
        resources.extend(
            DEFINITIONS
                .iter()
                .map(|d| serde_json::from_str::<Value>(d).expect("embedded JSON"))
                .filter(|d| d["resourceType"] != "StructureDefinition"),
        );
        resources.extend(terminology::resources(&plans)?);
        let mut files = BTreeMap::new();
        for r in &mut resources {
            if r.get("version").is_none() {
                r["version"] = json!(env!("CARGO_PKG_VERSION"));
            }
            files.insert(file_name(r), r.clone());
        }
        files.insert(".index.json".into(), index(&resources));
        files.insert("package.json".into(), manifest());
        for example in examples(&plans, as_of)? {
            files.insert(format!("example/{}", file_name(&example)), example);
        }
        Ok(Self { files })
    }

    /// Writes every file below `dir` and removes the package files a build no longer makes;
    /// what is not a package file (the README) stays.
    pub fn write(&self, dir: &Path) -> Result<(), ProfileError> {
        if dir.exists() {
            for name in list_files(dir, dir)? {
                if !self.files.contains_key(&name) && !name.ends_with(".md") {
                    let path = dir.join(name);
                    std::fs::remove_file(&path).map_err(|source| io(&path, source))?;
                }
            }
        }
        for (name, value) in &self.files {
            let path = dir.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| io(parent, source))?;
            }
            std::fs::write(&path, render(value)).map_err(|source| io(&path, source))?;
        }
        Ok(())
    }

    /// The files of `dir` that differ from this package: changed, missing or extra. Empty when
    /// the committed package is what a build makes today.
    pub fn stale_files(&self, dir: &Path) -> Result<Vec<String>, ProfileError> {
        let mut stale = Vec::new();
        for (name, value) in &self.files {
            match std::fs::read_to_string(dir.join(name)) {
                Ok(text) if text == render(value) => {}
                _ => stale.push(name.clone()),
            }
        }
        for name in list_files(dir, dir)? {
            if !self.files.contains_key(&name) && !name.ends_with(".md") {
                stale.push(name);
            }
        }
        Ok(stale)
    }
}

/// The pretty JSON a package file holds.
fn render(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("JSON values serialise");
    text.push('\n');
    text
}

fn io(path: &Path, source: std::io::Error) -> ProfileError {
    ProfileError::Io {
        path: path.to_owned(),
        source,
    }
}

fn list_files(root: &Path, dir: &Path) -> Result<Vec<String>, ProfileError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|source| io(dir, source))? {
        let path = entry.map_err(|source| io(dir, source))?.path();
        if path.is_dir() {
            names.extend(list_files(root, &path)?);
        } else if let Ok(rel) = path.strip_prefix(root) {
            names.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(names)
}

fn file_name(resource: &Value) -> String {
    format!(
        "{}-{}.json",
        resource["resourceType"].as_str().unwrap_or_default(),
        resource["id"].as_str().unwrap_or_default()
    )
}

/// segmentti's StructureDefinitions, each with its snapshot over its base.
fn structure_definitions(packages: &[PathBuf]) -> Result<Vec<Value>, ProfileError> {
    let authored: Vec<Value> = DEFINITIONS
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).expect("embedded JSON"))
        .filter(|d| d["resourceType"] == "StructureDefinition")
        .collect();
    let wanted: Vec<&str> = authored
        .iter()
        .filter_map(|d| d["baseDefinition"].as_str())
        .collect();
    let mut known = base_definitions(packages, &wanted)?;
    let mut done = Vec::new();
    // Authored in dependency order: a profile's base is either a package's or one made above.
    for mut sd in authored {
        let url = sd["url"].as_str().unwrap_or_default().to_owned();
        let base_url = sd["baseDefinition"].as_str().unwrap_or_default();
        let base = known
            .get(base_url)
            .ok_or_else(|| ProfileError::MissingBase {
                profile: url.clone(),
                base: base_url.to_owned(),
            })?;
        let elements = snapshot::generate(&sd, base)?;
        sd["snapshot"] = json!({ "element": elements });
        known.insert(url, sd.clone());
        done.push(sd);
    }
    Ok(done)
}

/// The StructureDefinitions with these urls from the base packages, by url.
fn base_definitions(
    packages: &[PathBuf],
    urls: &[&str],
) -> Result<BTreeMap<String, Value>, ProfileError> {
    // Package files are named after the resource: `package/StructureDefinition-{id}.json`,
    // and the id is the url's last segment in both base packages.
    let names: Vec<String> = urls
        .iter()
        .filter_map(|u| u.rsplit('/').next())
        .map(|id| format!("package/StructureDefinition-{id}.json"))
        .collect();
    let mut found = BTreeMap::new();
    for path in packages {
        let bad = |what: String| ProfileError::BadPackage {
            path: path.clone(),
            what,
        };
        let file = std::fs::File::open(path).map_err(|source| io(path, source))?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
            let mut entry = entry.map_err(|e| bad(e.to_string()))?;
            let name = entry.path().map_err(|e| bad(e.to_string()))?;
            if !names.iter().any(|n| Path::new(n) == name) {
                continue;
            }
            let mut text = String::new();
            entry
                .read_to_string(&mut text)
                .map_err(|e| bad(e.to_string()))?;
            let sd: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            if let Some(url) = sd["url"].as_str() {
                found.insert(url.to_owned(), sd);
            }
        }
    }
    Ok(found)
}

/// The package index (`.index.json`) of the conformance resources.
fn index(resources: &[Value]) -> Value {
    let files: Vec<Value> = resources
        .iter()
        .map(|r| {
            let mut entry = json!({
                "filename": file_name(r),
                "resourceType": r["resourceType"],
                "id": r["id"],
                "url": r["url"],
            });
            for key in ["version", "kind", "type"] {
                if let Some(v) = r.get(key) {
                    entry[key] = v.clone();
                }
            }
            entry
        })
        .collect();
    json!({ "index-version": 1, "files": files })
}

/// `package.json`.
fn manifest() -> Value {
    json!({
        "name": PACKAGE_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "canonical": CANONICAL,
        "url": CANONICAL,
        "title": "segmentti: what it writes into a client's record",
        "description": "Profiles of the client-segment assessment Observation and the segment, overlay and key-client Flags that segmentti writes; the segmentation models' CodeSystems and ValueSets; what segmentti needs of a FHIR server.",
        "fhirVersions": ["4.0.1"],
        "type": "fhir.ig",
        "license": "(MIT OR Apache-2.0)",
        "author": "segmentti",
        "dependencies": {
            "hl7.fhir.r4.core": "4.0.1",
            "hl7.fhir.fi.base": "1.0.0"
        },
        "directories": { "example": "example" }
    })
}

/// Per model, one client of a small synthetic population, built by the real builders: the one
/// with the most Flags, then the most components, so the examples show overlays and attributes.
fn examples(plans: &[Plan], as_of: Day) -> Result<Vec<Value>, ProfileError> {
    let fail = |e: &dyn std::fmt::Display| ProfileError::Examples(e.to_string());
    let opts = SynthOptions {
        clients: 300,
        seed: 7,
        flavor: CodeFlavor::Finnish,
        as_of,
        area: None,
        bills: crate::source::synth::Bills::None,
        records: false,
        shapes: false,
    };
    let folded = pipeline::fold(
        &Input::Synthetic(opts),
        plans,
        &RunOptions::default(),
        &mut |_| Ok(()),
    )
    .map_err(|e| fail(&e))?;
    let mut out = Vec::new();
    for (plan, clients) in plans.iter().zip(&folded.clients) {
        let concepts = Concepts::new(plan).map_err(|e| fail(&e))?;
        let thresholds = crate::assess::thresholds::population_thresholds(plan, clients);
        let mut ids: Vec<_> = clients.iter().filter(|(_, r)| r.has_patient).collect();
        ids.sort_by(|a, b| a.0.cmp(b.0));
        let mut best: Option<crate::writeback::ClientResources> = None;
        for (id, record) in ids {
            let a = pipeline::assess(plan, id, record, &thresholds).map_err(|e| fail(&e))?;
            let built =
                crate::writeback::build(plan, &concepts, id, record, &a).map_err(|e| fail(&e))?;
            let weight = |r: &crate::writeback::ClientResources| {
                (r.flags.len(), r.observation.component.len())
            };
            if best.as_ref().is_none_or(|b| weight(&built) > weight(b)) {
                best = Some(built);
            }
        }
        let Some(best) = best else { continue };
        out.push(serde_json::to_value(&best.observation).map_err(|e| fail(&e))?);
        for flag in &best.flags {
            out.push(serde_json::to_value(flag).map_err(|e| fail(&e))?);
        }
    }
    Ok(out)
}
