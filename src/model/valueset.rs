//! Code lists from FHIR ValueSets (`valueset: valuesets/heart-failure.json` in a code list).
//! This module owns reading a ValueSet JSON file into plain code list entries (its
//! `compose.include[].concept[]` and its pinned `expansion.contains[]`), the checks on such a file
//! (not a ValueSet, no concepts, filters or imports without a pinned expansion, a pin made for
//! another version), finding the ValueSet files a model and its includes name, and writing a
//! terminology server's expansion into a file ([`pin`], [`write_pinned`]). It resolves ValueSets
//! when a model is loaded, so [`super::plan`] sees entries like any other. It must not talk to a
//! network: only `segmentti expand` asks a terminology server, so that runs read nothing but
//! files and stay deterministic.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::check::is_system_url;
use super::mapping::{CodeEntry, CodeList};
use super::package;
use super::yaml::{Diagnostic, MappingError, Reader, parse_yaml};

/// The `expansion.parameter` that records which version of the ValueSet was expanded.
const USED_VERSION: &str = "used-valueset-version";

/// The command that pins an expansion, for hints.
const EXPAND: &str = "segmentti expand MODEL --terminology URL";

/// A ValueSet file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}\n  hint: {}", .path.display(), .problem.hint())]
pub struct ValueSetError {
    /// The ValueSet file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: Problem,
}

/// What is wrong with a ValueSet file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The file is not JSON.
    #[error("not JSON ({0})")]
    NotJson(String),
    /// The file is JSON but no ValueSet.
    #[error("not a FHIR ValueSet (resourceType is {0})")]
    NotValueSet(String),
    /// A part of the ValueSet segmentti reads is malformed.
    #[error("{what} (at {pointer})")]
    Malformed {
        /// JSON pointer into the ValueSet.
        pointer: String,
        /// What is wrong there.
        what: String,
    },
    /// Neither compose concepts nor an expansion.
    #[error(
        "ValueSet {0} has no concepts: no compose.include[].concept and no codes in an expansion"
    )]
    NoConcepts(String),
    /// Filters, imports or whole code systems, which only a terminology server can expand.
    #[error("ValueSet {url} has {what} but no pinned expansion")]
    Unpinned {
        /// The ValueSet's url.
        url: String,
        /// What needs a terminology server (`filters`).
        what: String,
    },
    /// The pinned expansion was made for another version of the ValueSet.
    #[error(
        "the pinned expansion of ValueSet {url} was made for version {pinned}; the ValueSet is now {current}"
    )]
    Stale {
        /// The ValueSet's url.
        url: String,
        /// The version the expansion records (`used-valueset-version`).
        pinned: String,
        /// The ValueSet's `version` now.
        current: String,
    },
}

impl Problem {
    /// What to do about it.
    pub(crate) fn hint(&self) -> String {
        match self {
            Self::NotJson(_) => "save the ValueSet as FHIR JSON (`{\"resourceType\": \"ValueSet\", …}`), as a terminology server exports it".into(),
            Self::NotValueSet(_) => "name a file holding one ValueSet resource (`resourceType: ValueSet`)".into(),
            Self::Malformed { .. } => "fix the ValueSet: every include of concepts needs a code system URL, every concept a code".into(),
            Self::NoConcepts(_) => format!("list the concepts under compose.include[].concept, or pin an expansion: run `{EXPAND}`"),
            Self::Unpinned { .. } => format!("run `{EXPAND}` to pin the expansion into the file"),
            Self::Stale { pinned, .. } => format!("run `{EXPAND}` again to pin the expansion of the current version (or restore version {pinned})"),
        }
    }
}

/// One concept of a ValueSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concept {
    /// Code system URL.
    pub system: String,
    /// The code.
    pub code: String,
    /// Its display in the ValueSet, if any.
    pub display: Option<String>,
}

/// A ValueSet file, read: its identity and its concepts, de-duplicated by (system, code).
#[derive(Debug, Clone)]
pub struct ValueSet {
    /// `url`, when it has one.
    pub url: Option<String>,
    /// `version`, when it has one.
    pub version: Option<String>,
    /// The compose concepts (less the excluded ones), then the expansion's, each once.
    pub concepts: Vec<Concept>,
}

impl ValueSet {
    /// `ValueSet {url}|{version}`, the `source` of every entry it gives a code list.
    pub(crate) fn source(&self) -> String {
        let url = self.url.as_deref().unwrap_or("(no url)");
        match &self.version {
            Some(v) => format!("ValueSet {url}|{v}"),
            None => format!("ValueSet {url}"),
        }
    }

    /// The code list entries: each concept with its display (the code when it has none), no
    /// concept of its own, and [`Self::source`].
    pub(crate) fn entries(&self) -> Vec<CodeEntry> {
        let source = self.source();
        self.concepts
            .iter()
            .map(|c| CodeEntry {
                system: c.system.clone(),
                code: c.code.clone(),
                concept: None,
                display: c.display.clone().unwrap_or_else(|| c.code.clone()),
                source: source.clone(),
            })
            .collect()
    }
}

fn member<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Reads the ValueSet in `text` (from `path`, for messages).
pub fn parse(path: &Path, text: &str) -> Result<ValueSet, ValueSetError> {
    let fail = |problem| ValueSetError {
        path: path.to_owned(),
        problem,
    };
    let value: Value =
        serde_json::from_str(text).map_err(|e| fail(Problem::NotJson(e.to_string())))?;
    read(&value).map_err(fail)
}

fn read(value: &Value) -> Result<ValueSet, Problem> {
    match value.get("resourceType") {
        Some(Value::String(t)) if t == "ValueSet" => {}
        Some(Value::String(t)) => return Err(Problem::NotValueSet(format!("`{t}`"))),
        _ => return Err(Problem::NotValueSet("missing".into())),
    }
    let url = member(value, "url").map(str::to_owned);
    let version = member(value, "version").map(str::to_owned);
    let shown = url.clone().unwrap_or_else(|| "(no url)".into());
    let malformed = |pointer: String, what: String| Problem::Malformed { pointer, what };
    let concept = |pointer: String, system: &str, c: &Value| -> Result<Concept, Problem> {
        if !is_system_url(system) {
            return Err(malformed(
                pointer,
                format!("`{system}` is not a code system URL"),
            ));
        }
        let Some(code) = member(c, "code").filter(|c| !c.trim().is_empty()) else {
            return Err(malformed(pointer, "a concept without a code".into()));
        };
        Ok(Concept {
            system: system.to_owned(),
            code: code.to_owned(),
            display: member(c, "display").map(str::to_owned),
        })
    };
    let mut needs: Option<String> = None;
    let mut composed = Vec::new();
    let mut excluded = HashSet::new();
    let compose = value.get("compose").unwrap_or(&Value::Null);
    for (part, key) in [("include", true), ("exclude", false)] {
        for (i, inc) in items(compose, part).iter().enumerate() {
            let at = format!("/compose/{part}/{i}");
            let concepts = items(inc, "concept");
            if !items(inc, "filter").is_empty() {
                needs.get_or_insert_with(|| "filters".into());
            }
            if !items(inc, "valueSet").is_empty() {
                needs.get_or_insert_with(|| "a valueSet import".into());
            }
            let Some(system) = member(inc, "system") else {
                if !concepts.is_empty() {
                    return Err(malformed(
                        at,
                        format!("an {part} lists concepts but names no system"),
                    ));
                }
                if items(inc, "valueSet").is_empty() {
                    return Err(malformed(
                        at,
                        format!("an {part} with neither a system nor a valueSet"),
                    ));
                }
                continue;
            };
            if concepts.is_empty() && items(inc, "filter").is_empty() {
                needs.get_or_insert_with(|| format!("an {part} of all of {system}"));
            }
            for (j, c) in concepts.iter().enumerate() {
                let c = concept(format!("{at}/concept/{j}"), system, c)?;
                if key {
                    composed.push(c);
                } else {
                    excluded.insert((c.system, c.code));
                }
            }
        }
    }
    let mut expanded = Vec::new();
    let expansion = value.get("expansion");
    if let Some(e) = expansion {
        contains(e, "/expansion", &mut expanded, &concept)?;
    }
    let Some(expansion) = expansion else {
        if let Some(what) = needs {
            return Err(Problem::Unpinned { url: shown, what });
        }
        return finish(url, version, composed, excluded, Vec::new());
    };
    let pinned = items(expansion, "parameter")
        .iter()
        .find(|p| member(p, "name") == Some(USED_VERSION))
        .and_then(|p| member(p, "valueString"));
    if let Some(pinned) = pinned
        && Some(pinned) != version.as_deref()
    {
        return Err(Problem::Stale {
            url: shown,
            pinned: pinned.to_owned(),
            current: version.unwrap_or_else(|| "without a version".into()),
        });
    }
    finish(url, version, composed, excluded, expanded)
}

type ConceptReader<'a> = dyn Fn(String, &str, &Value) -> Result<Concept, Problem> + 'a;

/// The codes of `node.contains`, recursively.
fn contains(
    node: &Value,
    at: &str,
    out: &mut Vec<Concept>,
    concept: &ConceptReader<'_>,
) -> Result<(), Problem> {
    for (i, c) in items(node, "contains").iter().enumerate() {
        let here = format!("{at}/contains/{i}");
        match (member(c, "system"), member(c, "code")) {
            (Some(system), Some(_)) => out.push(concept(here.clone(), system, c)?),
            (None, Some(code)) => {
                return Err(Problem::Malformed {
                    pointer: here,
                    what: format!("the code `{code}` names no system"),
                });
            }
            _ => {}
        }
        contains(c, &here, out, concept)?;
    }
    Ok(())
}

fn finish(
    url: Option<String>,
    version: Option<String>,
    composed: Vec<Concept>,
    excluded: HashSet<(String, String)>,
    expanded: Vec<Concept>,
) -> Result<ValueSet, Problem> {
    let mut seen = HashSet::new();
    let concepts: Vec<Concept> = composed
        .into_iter()
        .filter(|c| !excluded.contains(&(c.system.clone(), c.code.clone())))
        .chain(expanded)
        .filter(|c| seen.insert((c.system.clone(), c.code.clone())))
        .collect();
    if concepts.is_empty() {
        return Err(Problem::NoConcepts(
            url.unwrap_or_else(|| "(no url)".into()),
        ));
    }
    Ok(ValueSet {
        url,
        version,
        concepts,
    })
}

/// Adds to each code list that names a ValueSet its concepts not already listed (by system URL
/// and code; a list's short system names are resolved with `systems`). `base` is the folder of
/// the file the lists are in, relative to the folder `read` reads from. Every problem is a
/// diagnostic at the list's `valueset`, naming the ValueSet file.
pub(super) fn resolve(
    lists: &mut [CodeList],
    systems: &BTreeMap<String, String>,
    base: &Path,
    read: Reader<'_>,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (i, list) in lists.iter_mut().enumerate() {
        let Some(name) = list.valueset.clone() else {
            continue;
        };
        let pointer = format!("/code_lists/{i}/valueset");
        let canonical = package::is_canonical(&name);
        let found = if canonical {
            read(&name)
        } else {
            read(&base.join(&name).to_string_lossy())
        };
        let (file, text) = match found {
            Ok(found) => found,
            Err(e) if canonical => {
                out.push(Diagnostic::new(
                    pointer,
                    format!("cannot find ValueSet {name} of code list `{}`: {e}", list.id),
                    "give the FHIR package that holds it with --package, or a ValueSet file beside the model",
                ));
                continue;
            }
            Err(e) => {
                out.push(Diagnostic::new(
                    pointer,
                    format!("cannot read the ValueSet file `{name}` of code list `{}`: {e}", list.id),
                    "give its path relative to the file that names it, such as valuesets/heart-failure.json",
                ));
                continue;
            }
        };
        let valueset = match parse(&file, &text) {
            Ok(v) => v,
            Err(e) => {
                out.push(Diagnostic::new(
                    pointer,
                    format!("{}: {}", e.path.display(), e.problem),
                    e.problem.hint(),
                ));
                continue;
            }
        };
        let url = |s: &str| systems.get(s).cloned().unwrap_or_else(|| s.to_owned());
        let mut seen: HashSet<(String, String)> = list
            .codes
            .iter()
            .map(|c| (url(&c.system), c.code.clone()))
            .collect();
        for entry in valueset.entries() {
            if seen.insert((entry.system.clone(), entry.code.clone())) {
                list.codes.push(entry);
            }
        }
    }
    out
}

/// The ValueSet files named by the code lists of the mapping file at `path` and of the files it
/// includes, each once, in order. Reads only what it needs of each file, so a model whose
/// ValueSets are not yet expanded (and so does not load) can be expanded.
pub fn named_files(path: &Path) -> Result<Vec<PathBuf>, MappingError> {
    let mut out = Vec::new();
    let dir = path.parent().unwrap_or(Path::new(""));
    let document = yaml(path)?;
    let mut files = Vec::new();
    for include in items(&document, "include").iter().filter_map(Value::as_str) {
        let file = dir.join(include);
        let included = yaml(&file)?;
        files.push((file, included));
    }
    files.insert(0, (path.to_owned(), document));
    for (file, document) in &files {
        let dir = file.parent().unwrap_or(Path::new(""));
        for list in items(document, "code_lists") {
            // A package's ValueSets are its publisher's to expand, not ours to rewrite.
            if let Some(name) = member(list, "valueset").filter(|n| !package::is_canonical(n)) {
                let named = dir.join(name);
                if !out.contains(&named) {
                    out.push(named);
                }
            }
        }
    }
    Ok(out)
}

fn yaml(path: &Path) -> Result<Value, MappingError> {
    let text = std::fs::read_to_string(path).map_err(|source| MappingError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_yaml(&text)
        .map(|s| s.value)
        .map_err(|d| MappingError::Invalid {
            path: path.to_owned(),
            diagnostics: vec![d],
        })
}

/// The body of `POST {terminology}/ValueSet/$expand` for the ValueSet in `text`: a Parameters
/// resource whose `valueSet` is the ValueSet without its old expansion.
pub fn expand_request(path: &Path, text: &str) -> Result<Value, ValueSetError> {
    let fail = |problem| ValueSetError {
        path: path.to_owned(),
        problem,
    };
    let mut value: Value =
        serde_json::from_str(text).map_err(|e| fail(Problem::NotJson(e.to_string())))?;
    if member(&value, "resourceType") != Some("ValueSet") {
        let found = member(&value, "resourceType").map_or("missing".into(), |t| format!("`{t}`"));
        return Err(fail(Problem::NotValueSet(found)));
    }
    if let Some(map) = value.as_object_mut() {
        map.remove("expansion");
    }
    Ok(json!({
        "resourceType": "Parameters",
        "parameter": [{"name": "valueSet", "resource": value}],
    }))
}

/// Why a terminology server's answer could not be pinned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// The answer was no ValueSet with an expansion.
    #[error("the answer is {0}, not a ValueSet with an expansion")]
    NoExpansion(String),
    /// The pinned file would not be usable.
    #[error("the expanded ValueSet would not be usable: {0}")]
    Unusable(Problem),
}

/// The ValueSet file `text` with its `expansion` replaced by the one in `answer` (a ValueSet
/// the terminology server returned), recording the version expanded as
/// `expansion.parameter` `used-valueset-version` (none when the ValueSet has no version). The
/// file's other members keep their order and their text.
pub fn pin(text: &str, answer: &Value) -> Result<String, PinError> {
    let kind = member(answer, "resourceType").unwrap_or("JSON without resourceType");
    let expansion = match answer.get("expansion") {
        Some(Value::Object(e)) if kind == "ValueSet" => e,
        _ => return Err(PinError::NoExpansion(format!("a {kind}"))),
    };
    let original: Value = serde_json::from_str(text)
        .map_err(|e| PinError::Unusable(Problem::NotJson(e.to_string())))?;
    let mut expansion = expansion.clone();
    let mut parameters: Vec<Value> = expansion
        .get("parameter")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    parameters.retain(|p| member(p, "name") != Some(USED_VERSION));
    if let Some(version) = member(&original, "version") {
        parameters.push(json!({"name": USED_VERSION, "valueString": version}));
    }
    if parameters.is_empty() {
        expansion.remove("parameter");
    } else {
        expansion.insert("parameter".into(), Value::Array(parameters));
    }
    let expansion = Value::Object(expansion);
    let mut checked = original;
    if let Some(map) = checked.as_object_mut() {
        map.insert("expansion".into(), expansion.clone());
    }
    read(&checked).map_err(PinError::Unusable)?;
    let members: Ordered = serde_json::from_str(text)
        .map_err(|e| PinError::Unusable(Problem::NotJson(e.to_string())))?;
    let pretty = serde_json::to_string_pretty(&expansion).unwrap_or_default();
    let mut out = String::from("{\n");
    let mut written = false;
    let mut lines = Vec::new();
    for (key, raw) in &members.0 {
        let key_json = serde_json::to_string(key).unwrap_or_default();
        if key == "expansion" {
            lines.push(format!("  {key_json}: {}", indent(&pretty)));
            written = true;
        } else {
            lines.push(format!("  {key_json}: {}", raw.get()));
        }
    }
    if !written {
        lines.push(format!("  \"expansion\": {}", indent(&pretty)));
    }
    out.push_str(&lines.join(",\n"));
    out.push_str("\n}\n");
    Ok(out)
}

/// Indents every line of `text` but the first by two spaces.
fn indent(text: &str) -> String {
    text.replace('\n', "\n  ")
}

/// A JSON object's members in file order, each value as written.
struct Ordered(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    out.push(entry);
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Writes `text` to `path` through a temporary file beside it, renamed over `path` only once
/// written in full: a failure leaves the earlier file as it was.
pub fn write_pinned(path: &Path, text: &str) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEART_FAILURE: &str = include_str!("../../tests/fixtures/valuesets/heart-failure.json");
    const FILTERED: &str = include_str!("../../tests/fixtures/valuesets/heart-failure-isa.json");
    const BROKEN: &str = include_str!("../../tests/fixtures/valuesets/broken.json");

    /// A model with one code list, `list` (YAML flow mapping), and `include`.
    fn model(list: &str, include: &str) -> String {
        crate::model::one_segment_model(&format!(
            r#"include: [{include}]
systems: {{snomed: http://snomed.info/sct}}
code_lists:
  - {list}
features:
  - id: f
    title: {{fi: k, sv: k, en: c}}
    count: {{resource: Condition, where: [{{field: code, in: hf}}]}}"#
        ))
    }

    const FRAGMENT: &str = "fragment: parts\nversion: \"1\"\ntitle: {fi: p, sv: p, en: p}\ncode_lists:\n  - {id: isa, valueset: hf.json}\n";

    /// Loads `text` with files read from `files` (name, text); the names asked for are kept.
    fn load_with(
        text: &str,
        files: &[(&str, &str)],
    ) -> (
        Result<super::super::include::Loaded, Vec<Diagnostic>>,
        Vec<String>,
    ) {
        let asked = std::cell::RefCell::new(Vec::new());
        let read = |name: &str| {
            asked.borrow_mut().push(name.to_owned());
            files
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(n, t)| (PathBuf::from("dir").join(n), (*t).to_owned()))
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "not found"))
        };
        let loaded = super::super::include::load(text, &read);
        (loaded, asked.into_inner())
    }

    #[test]
    fn a_list_reads_its_valueset_relative_to_the_file_that_names_it() {
        let list = "{id: hf, codes: [{system: snomed, code: \"84114007\", concept: heart-failure, display: HF, source: test}], valueset: vs/hf.json}";
        let pinned = pin(
            FILTERED,
            &json!({"resourceType": "ValueSet", "expansion": {"contains": [
                {"system": "http://snomed.info/sct", "code": "88805009"}]}}),
        )
        .expect("pins");
        let (loaded, asked) = load_with(
            &model(list, "frag/parts.yaml"),
            &[
                ("vs/hf.json", HEART_FAILURE),
                ("frag/parts.yaml", FRAGMENT),
                ("frag/hf.json", &pinned),
            ],
        );
        let Ok(super::super::include::Loaded::Model(m)) = loaded else {
            panic!("loads: {loaded:?}");
        };
        assert_eq!(asked, ["vs/hf.json", "frag/parts.yaml", "frag/hf.json"]);
        let hf = &m.code_lists[0];
        let codes: Vec<(&str, Option<&str>)> = hf
            .codes
            .iter()
            .map(|c| (c.code.as_str(), c.concept.as_deref()))
            .collect();
        assert_eq!(
            codes,
            [
                ("84114007", Some("heart-failure")),
                ("88805009", None),
                ("42343007", None),
                ("I50", None)
            ],
            "the listed code is kept with its concept, the ValueSet's 84114007 counts once"
        );
        assert_eq!(m.code_lists[1].codes[0].code, "88805009");
        assert!(super::super::plan::Plan::compile(m, crate::fhir::day::Day::EPOCH).is_ok());
    }

    #[test]
    fn a_bad_valueset_is_a_problem_at_the_list_naming_the_file() {
        let (loaded, _) = load_with(
            &model("{id: hf, valueset: broken.json}", ""),
            &[("broken.json", BROKEN)],
        );
        let Err(d) = loaded else { panic!("refused") };
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].pointer, "/code_lists/0/valueset");
        assert_eq!(d[0].pos.map(|p| p.line), Some(8));
        assert_eq!(
            d[0].message,
            "dir/broken.json: not a FHIR ValueSet (resourceType is `CodeSystem`)"
        );
        let (loaded, _) = load_with(
            &model("{id: hf, valueset: isa.json}", ""),
            &[("isa.json", FILTERED)],
        );
        let Err(d) = loaded else { panic!("refused") };
        assert!(
            d[0].message
                .ends_with("has filters but no pinned expansion"),
            "{d:?}"
        );
        assert!(
            d[0].hint
                .as_deref()
                .unwrap_or_default()
                .contains("segmentti expand")
        );
        let (loaded, _) = load_with(&model("{id: hf, valueset: gone.json}", ""), &[]);
        let Err(d) = loaded else { panic!("refused") };
        assert!(
            d[0].message
                .contains("cannot read the ValueSet file `gone.json`"),
            "{d:?}"
        );
    }

    #[test]
    fn a_problem_in_an_included_files_valueset_names_that_file() {
        let list = "{id: hf, valueset: hf.json}";
        let (loaded, _) = load_with(
            &model(list, "frag/parts.yaml"),
            &[
                ("hf.json", HEART_FAILURE),
                ("frag/parts.yaml", FRAGMENT),
                ("frag/hf.json", "nope"),
            ],
        );
        let Err(d) = loaded else { panic!("refused") };
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].file.as_deref(), Some(Path::new("dir/frag/parts.yaml")));
        assert!(
            d[0].message.starts_with("dir/frag/hf.json: not JSON"),
            "{d:?}"
        );
    }

    #[test]
    fn a_list_needs_codes_or_a_valueset() {
        let (loaded, _) = load_with(&model("{id: hf}", ""), &[]);
        let Err(d) = loaded else { panic!("refused") };
        assert!(
            d.iter()
                .any(|d| d.message == "code list `hf` has no codes and no valueset"),
            "{d:?}"
        );
    }

    fn problem(text: &str) -> Problem {
        parse(Path::new("vs.json"), text)
            .expect_err("refused")
            .problem
    }

    #[test]
    fn compose_concepts_become_entries_with_their_source() {
        let vs = parse(Path::new("hf.json"), HEART_FAILURE).expect("reads");
        let codes: Vec<&str> = vs.concepts.iter().map(|c| c.code.as_str()).collect();
        assert_eq!(codes, ["84114007", "88805009", "42343007", "I50"]);
        let entries = vs.entries();
        assert_eq!(entries[0].system, "http://snomed.info/sct");
        assert_eq!(entries[0].display, "Heart failure");
        assert_eq!(entries[3].display, "I50", "no display: the code");
        assert!(entries.iter().all(|e| e.concept.is_none()));
        assert_eq!(
            entries[0].source,
            "ValueSet https://example.org/fhir/ValueSet/heart-failure|1.0.0"
        );
    }

    #[test]
    fn expansion_contains_nest_and_duplicates_count_once() {
        let text = r#"{"resourceType": "ValueSet", "url": "https://x.org/vs", "version": "2",
          "compose": {"include": [{"system": "http://snomed.info/sct", "concept": [{"code": "1"}]}]},
          "expansion": {"contains": [{"system": "http://snomed.info/sct", "code": "1", "display": "One"},
            {"abstract": true, "contains": [{"system": "http://snomed.info/sct", "code": "2",
              "contains": [{"system": "http://loinc.org", "code": "3-4"}]}]}]}}"#;
        let vs = parse(Path::new("vs.json"), text).expect("reads");
        let codes: Vec<(&str, Option<&str>)> = vs
            .concepts
            .iter()
            .map(|c| (c.code.as_str(), c.display.as_deref()))
            .collect();
        assert_eq!(codes, [("1", None), ("2", None), ("3-4", None)]);
    }

    #[test]
    fn excluded_concepts_are_left_out() {
        let text = r#"{"resourceType": "ValueSet", "url": "https://x.org/vs",
          "compose": {"include": [{"system": "http://snomed.info/sct", "concept": [{"code": "1"}, {"code": "2"}]}],
                      "exclude": [{"system": "http://snomed.info/sct", "concept": [{"code": "2"}]}]}}"#;
        let vs = parse(Path::new("vs.json"), text).expect("reads");
        assert_eq!(vs.concepts.len(), 1);
    }

    #[test]
    fn a_file_that_is_not_json_or_not_a_valueset_is_refused() {
        assert!(matches!(problem("id: x\n"), Problem::NotJson(_)));
        assert_eq!(problem(BROKEN), Problem::NotValueSet("`CodeSystem`".into()));
        assert_eq!(problem("{}"), Problem::NotValueSet("missing".into()));
        let e = parse(Path::new("dir/vs.json"), "[").expect_err("refused");
        assert!(e.to_string().starts_with("dir/vs.json: not JSON"), "{e}");
        assert!(
            e.to_string()
                .contains("hint: save the ValueSet as FHIR JSON"),
            "{e}"
        );
    }

    #[test]
    fn a_valueset_without_concepts_is_refused() {
        let p = problem(r#"{"resourceType": "ValueSet", "url": "https://x.org/vs"}"#);
        assert_eq!(p, Problem::NoConcepts("https://x.org/vs".into()));
        assert!(p.hint().contains("segmentti expand"), "{}", p.hint());
        let p = problem(
            r#"{"resourceType": "ValueSet", "url": "https://x.org/vs", "expansion": {"contains": []}}"#,
        );
        assert!(matches!(p, Problem::NoConcepts(_)), "{p:?}");
    }

    #[test]
    fn filters_and_imports_need_a_pinned_expansion() {
        let p = problem(FILTERED);
        assert_eq!(
            p.to_string(),
            "ValueSet https://example.org/fhir/ValueSet/heart-failure-isa has filters but no pinned expansion"
        );
        assert_eq!(
            p.hint(),
            "run `segmentti expand MODEL --terminology URL` to pin the expansion into the file"
        );
        let import = r#"{"resourceType": "ValueSet", "url": "https://x.org/vs",
          "compose": {"include": [{"valueSet": ["https://x.org/other"]}]}}"#;
        assert!(
            problem(import)
                .to_string()
                .contains("has a valueSet import"),
            "{}",
            problem(import)
        );
        let whole = r#"{"resourceType": "ValueSet", "url": "https://x.org/vs",
          "compose": {"include": [{"system": "http://loinc.org"}]}}"#;
        assert!(
            problem(whole)
                .to_string()
                .contains("all of http://loinc.org")
        );
    }

    #[test]
    fn malformed_concepts_are_refused_where_they_are() {
        let text = r#"{"resourceType": "ValueSet", "compose": {"include": [{"system": "snomed", "concept": [{"code": "1"}]}]}}"#;
        assert_eq!(
            problem(text),
            Problem::Malformed {
                pointer: "/compose/include/0/concept/0".into(),
                what: "`snomed` is not a code system URL".into()
            }
        );
        let text = r#"{"resourceType": "ValueSet", "compose": {"include": [{"system": "http://loinc.org", "concept": [{"display": "x"}]}]}}"#;
        assert!(matches!(problem(text), Problem::Malformed { .. }));
    }

    #[test]
    fn a_pin_records_the_version_and_keeps_the_rest_of_the_file() {
        let answer = json!({"resourceType": "ValueSet", "expansion": {
            "identifier": "urn:uuid:1", "timestamp": "2026-01-01T00:00:00Z",
            "parameter": [{"name": "used-valueset-version", "valueString": "old"}],
            "contains": [{"system": "http://snomed.info/sct", "code": "88805009", "display": "Chronic congestive heart failure"}]}});
        let pinned = pin(FILTERED, &answer).expect("pins");
        let vs = parse(Path::new("vs.json"), &pinned).expect("the pinned file reads");
        assert_eq!(vs.concepts[0].code, "88805009");
        let value: Value = serde_json::from_str(&pinned).expect("json");
        assert_eq!(
            value["expansion"]["parameter"],
            json!([{"name": USED_VERSION, "valueString": "1.0.0"}])
        );
        let keys: Vec<&str> = pinned
            .lines()
            .filter(|l| l.starts_with("  \""))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert_eq!(keys.first(), Some(&"resourceType"), "{pinned}");
        assert_eq!(keys.last(), Some(&"expansion"), "{pinned}");
        // Pinned again: the expansion is replaced where it is.
        let again = pin(&pinned, &answer).expect("pins again");
        assert_eq!(again, pinned);
        assert!(matches!(
            pin(FILTERED, &json!({"resourceType": "OperationOutcome"})),
            Err(PinError::NoExpansion(_))
        ));
        let empty = json!({"resourceType": "ValueSet", "expansion": {"contains": []}});
        assert!(matches!(
            pin(FILTERED, &empty),
            Err(PinError::Unusable(Problem::NoConcepts(_)))
        ));
    }

    #[test]
    fn a_pin_made_for_another_version_is_stale() {
        let answer = json!({"resourceType": "ValueSet", "expansion": {
            "contains": [{"system": "http://snomed.info/sct", "code": "88805009"}]}});
        let pinned = pin(FILTERED, &answer).expect("pins");
        let bumped = pinned.replace("\"version\": \"1.0.0\"", "\"version\": \"1.1.0\"");
        assert_ne!(bumped, pinned);
        let p = problem(&bumped);
        assert_eq!(
            p.to_string(),
            "the pinned expansion of ValueSet https://example.org/fhir/ValueSet/heart-failure-isa was made for version 1.0.0; the ValueSet is now 1.1.0"
        );
        assert!(
            p.hint().starts_with("run `segmentti expand"),
            "{}",
            p.hint()
        );
    }

    #[test]
    fn the_request_holds_the_valueset_without_its_old_expansion() {
        let answer = json!({"resourceType": "ValueSet", "expansion": {
            "contains": [{"system": "http://snomed.info/sct", "code": "88805009"}]}});
        let pinned = pin(FILTERED, &answer).expect("pins");
        let body = expand_request(Path::new("vs.json"), &pinned).expect("request");
        assert_eq!(body["resourceType"], "Parameters");
        assert_eq!(body["parameter"][0]["name"], "valueSet");
        assert_eq!(body["parameter"][0]["resource"]["resourceType"], "ValueSet");
        assert!(body["parameter"][0]["resource"].get("expansion").is_none());
    }
}
