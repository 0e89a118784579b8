//! A mapping file's text: YAML parsed with every value's line and column kept, checked against
//! the JSON Schema of mapping files and read as the typed structs, and the problems found as
//! [`Diagnostic`]s with file, line, column and hint. It reads text it is given; which files are
//! read, and how includes and ValueSets join a model, is [`super::load`]'s and
//! [`super::include`]'s.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::mapping::{Fragment, Mapping};

/// Reads the file a model includes by the name the model gives it: the path to show, the text.
pub(crate) type Reader<'a> = &'a dyn Fn(&str) -> std::io::Result<(PathBuf, String)>;

/// A line and column in a mapping file, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub col: usize,
}

impl Pos {
    fn from_marker(marker: Marker) -> Self {
        Self {
            line: marker.line(),
            col: marker.col() + 1,
        }
    }
}

/// One problem in a mapping file.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// The included file the problem is in; `None` for the file being loaded itself.
    pub file: Option<PathBuf>,
    /// Where in the document, as a JSON pointer (`/features/3/count/window`).
    pub pointer: String,
    /// Where in the file, when known.
    pub pos: Option<Pos>,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A problem at `pointer` with a hint.
    pub(crate) fn new(
        pointer: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self {
            file: None,
            pointer: pointer.into(),
            pos: None,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
}

/// Why a mapping file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// The file could not be read.
    #[error(
        "cannot read mapping file {path}: {source}\nhint: check the path; `mappings/` holds the shipped models"
    )]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file was read and has problems.
    #[error("{}", render(path, diagnostics))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        diagnostics: Vec<Diagnostic>,
    },
}

fn render(path: &Path, diagnostics: &[Diagnostic]) -> String {
    let mut out = format!(
        "mapping file {} has {} problem(s):",
        path.display(),
        diagnostics.len()
    );
    for d in diagnostics {
        out.push_str(&format!(
            "\n{}",
            DiagnosticAt {
                path,
                diagnostic: d
            }
        ));
    }
    out
}

/// A diagnostic rendered as `file:line:col: message` with its hint on the next line.
#[derive(Debug)]
pub(crate) struct DiagnosticAt<'a> {
    /// The file.
    pub path: &'a Path,
    /// The problem.
    pub diagnostic: &'a Diagnostic,
}

impl fmt::Display for DiagnosticAt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.diagnostic;
        let path = d.file.as_deref().unwrap_or(self.path);
        match d.pos {
            Some(pos) => write!(
                f,
                "{}:{}:{}: {}",
                path.display(),
                pos.line,
                pos.col,
                d.message
            )?,
            None => write!(f, "{}: {}", path.display(), d.message)?,
        }
        if !d.pointer.is_empty() {
            write!(f, " (at {})", d.pointer)?;
        }
        if let Some(hint) = &d.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// A mapping file's text parsed into JSON, with the position of every value.
#[derive(Debug)]
pub(crate) struct Spanned {
    /// The document as JSON.
    pub value: Value,
    spans: HashMap<String, Pos>,
}

impl Spanned {
    /// The position of `pointer`, or of its nearest ancestor that has one.
    pub(crate) fn pos(&self, pointer: &str) -> Option<Pos> {
        let mut p = pointer;
        loop {
            if let Some(pos) = self.spans.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind('/')?;
            p = &p[..cut];
        }
    }
}

/// Checks a parsed file against the schema and reads it as `T`; problems carry their position
/// in the file.
pub(super) fn typed<T: serde::de::DeserializeOwned>(
    spanned: Spanned,
) -> Result<(Spanned, T), Vec<Diagnostic>> {
    let diagnostics = schema_diagnostics(&spanned.value);
    if !diagnostics.is_empty() {
        return Err(spanned.place(diagnostics));
    }
    match serde_json::from_value::<T>(spanned.value.clone()) {
        Ok(value) => Ok((spanned, value)),
        Err(e) => Err(vec![Diagnostic::new(
            "",
            e.to_string(),
            "compare the file with mappings/schema.json",
        )]),
    }
}

impl Spanned {
    /// Gives each diagnostic of this file without a position the position of its pointer, and
    /// sorts them by file and line.
    pub(crate) fn place(&self, mut diagnostics: Vec<Diagnostic>) -> Vec<Diagnostic> {
        for d in &mut diagnostics {
            if d.file.is_none() {
                d.pos = d.pos.or_else(|| self.pos(&d.pointer));
            }
        }
        diagnostics.sort_by(|a, b| {
            (&a.file, a.pos.map(|p| (p.line, p.col)))
                .cmp(&(&b.file, b.pos.map(|p| (p.line, p.col))))
        });
        diagnostics
    }
}

/// The JSON Schema of mapping files, generated from the Rust types: a file with `fragment:` is
/// one to include ([`Fragment`]), any other a model ([`Mapping`]). `if`/`then`/`else` rather
/// than `oneOf`, so a problem is reported against the one shape the file claims to have.
pub fn schema() -> Value {
    let mut defs = Map::new();
    let mut root = |name: &str, schema: schemars::Schema| {
        let mut value = schema.to_value();
        if let Some(map) = value.as_object_mut() {
            if let Some(Value::Object(d)) = map.remove("$defs") {
                defs.extend(d);
            }
            map.remove("$schema");
        }
        defs.insert(name.to_owned(), value);
    };
    root("Mapping", schemars::schema_for!(Mapping));
    root("Fragment", schemars::schema_for!(Fragment));
    let mut schema = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "segmentti mapping file",
        "description": "A segmentation model, or (with `fragment:`) a file of code lists, features and overlays that models include.",
        "if": {"required": ["fragment"]},
        "then": {"$ref": "#/$defs/Fragment"},
        "else": {"$ref": "#/$defs/Mapping"},
        "$defs": defs,
    });
    drop_null_alternatives(&mut schema);
    schema
}

/// Turns `anyOf: [X, {type: null}]` (schemars' rendering of `Option<X>`) into `X`. Optional
/// fields are simply not required; with `null` allowed as well, every error inside an optional
/// section would surface as an opaque "not valid under any of the schemas listed in anyOf".
fn drop_null_alternatives(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let only =
                map.get("anyOf")
                    .and_then(Value::as_array)
                    .and_then(|alts| match alts.as_slice() {
                        [x, null] | [null, x]
                            if null.get("type").and_then(Value::as_str) == Some("null") =>
                        {
                            Some(x.clone())
                        }
                        _ => None,
                    });
            if let Some(Value::Object(inner)) = only {
                map.remove("anyOf");
                map.extend(inner);
            }
            map.values_mut().for_each(drop_null_alternatives);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_null_alternatives),
        _ => {}
    }
}

fn schema_diagnostics(value: &Value) -> Vec<Diagnostic> {
    static VALIDATOR: OnceLock<Result<jsonschema::Validator, String>> = OnceLock::new();
    let validator =
        VALIDATOR.get_or_init(|| jsonschema::validator_for(&schema()).map_err(|e| e.to_string()));
    let validator = match validator {
        Ok(v) => v,
        Err(e) => {
            return vec![Diagnostic::new(
                "",
                format!("the mapping schema itself is invalid: {e}"),
                "report this as a bug",
            )];
        }
    };
    validator
        .iter_errors(value)
        .map(|error| {
            let mut pointer = error.instance_path().to_string();
            // Point at the unexpected key itself, not at the mapping that holds it.
            if let jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } =
                error.kind()
                && let Some(key) = unexpected.first()
            {
                pointer = format!("{pointer}/{}", escape(key));
            }
            let message = error.to_string();
            let hint = schema_hint(&message, error.instance());
            Diagnostic {
                file: None,
                pointer,
                pos: None,
                message,
                hint: Some(hint),
            }
        })
        .collect()
}

fn schema_hint(message: &str, instance: &Value) -> String {
    if message.contains("is not of type \"string\"")
        && (instance.is_number() || instance.is_boolean())
    {
        "quote the value (\"...\") so YAML reads it as text".into()
    } else if message.contains("Additional properties") || message.contains("unevaluated") {
        "remove or rename the field; mappings/schema.json lists the allowed fields".into()
    } else if message.contains("is a required property") {
        "add the missing field; mappings/schema.json describes it".into()
    } else {
        "see mappings/schema.json for the allowed values".into()
    }
}

/// Parses YAML into JSON, recording the position of every value by JSON pointer.
pub(crate) fn parse_yaml(text: &str) -> Result<Spanned, Diagnostic> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut builder, false) {
        return Err(Diagnostic {
            file: None,
            pointer: String::new(),
            pos: Some(Pos::from_marker(*e.marker())),
            message: format!("not valid YAML: {}", e.info()),
            hint: Some("check indentation and quoting around this line".into()),
        });
    }
    if let Some(d) = builder.error {
        return Err(d);
    }
    let value = builder.root.ok_or_else(|| {
        Diagnostic::new(
            "",
            "the mapping file is empty",
            "start from a file in mappings/, such as paijat-sote.yaml",
        )
    })?;
    Ok(Spanned {
        value,
        spans: builder.spans,
    })
}

/// The most values aliases (`*name`) may add to a mapping, counting each copied value and
/// everything inside it. The shipped models have under 3 000 values in all; without a budget a
/// 370-byte file of aliases of aliases expanded to more than a gigabyte.
const ALIAS_BUDGET: usize = 250_000;

/// A list or mapping being read; `start` is [`Builder::values`] when it began, so its size
/// is known when it ends.
enum Frame {
    Seq {
        pointer: String,
        items: Vec<Value>,
        anchor: usize,
        start: usize,
    },
    Map {
        pointer: String,
        map: Map<String, Value>,
        key: Option<String>,
        anchor: usize,
        start: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    spans: HashMap<String, Pos>,
    /// Each anchored value, with how many values it holds (itself included).
    anchors: HashMap<usize, (Value, usize)>,
    /// The values read so far, aliases' copies included.
    values: usize,
    /// The values aliases have added so far, held to [`ALIAS_BUDGET`].
    aliased: usize,
    root: Option<Value>,
    error: Option<Diagnostic>,
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

impl Builder {
    /// The pointer of the value about to start, or `None` when the next scalar is a map key.
    fn next_pointer(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Seq { pointer, items, .. }) => Some(format!("{pointer}/{}", items.len())),
            Some(Frame::Map {
                pointer,
                key: Some(k),
                ..
            }) => Some(format!("{pointer}/{}", escape(k))),
            Some(Frame::Map { key: None, .. }) => None,
        }
    }

    /// Places a finished value that holds `size` values (itself included).
    fn push_value(&mut self, value: Value, anchor: usize, size: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, (value.clone(), size));
        }
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map { map, key, .. }) => {
                if let Some(k) = key.take() {
                    map.insert(k, value);
                }
            }
        }
    }

    fn fail(&mut self, pos: Pos, message: String, hint: &str) {
        if self.error.is_none() {
            self.error = Some(Diagnostic {
                file: None,
                pointer: String::new(),
                pos: Some(pos),
                message,
                hint: Some(hint.into()),
            });
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, marker: Marker) {
        let pos = Pos::from_marker(marker);
        match event {
            Event::Scalar(text, style, anchor, _tag) => match self.next_pointer() {
                Some(pointer) => {
                    self.spans.entry(pointer).or_insert(pos);
                    self.values += 1;
                    self.push_value(resolve_scalar(&text, style), anchor, 1);
                }
                None => {
                    let Some(Frame::Map {
                        pointer, map, key, ..
                    }) = self.stack.last_mut()
                    else {
                        return;
                    };
                    if map.contains_key(&text) {
                        let message = format!("the key `{text}` appears twice in the same mapping");
                        self.fail(
                            pos,
                            message,
                            "remove one of the two; YAML keeps only one of them",
                        );
                        return;
                    }
                    let child = format!("{pointer}/{}", escape(&text));
                    *key = Some(text);
                    self.spans.insert(child, pos);
                }
            },
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                let Some(pointer) = self.next_pointer() else {
                    self.fail(
                        pos,
                        "a list or mapping cannot be a key".into(),
                        "use a plain text key",
                    );
                    return;
                };
                self.spans.entry(pointer.clone()).or_insert(pos);
                let start = self.values;
                self.values += 1;
                self.stack
                    .push(if matches!(event, Event::SequenceStart(..)) {
                        Frame::Seq {
                            pointer,
                            items: Vec::new(),
                            anchor,
                            start,
                        }
                    } else {
                        Frame::Map {
                            pointer,
                            map: Map::new(),
                            key: None,
                            anchor,
                            start,
                        }
                    });
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq {
                    items,
                    anchor,
                    start,
                    ..
                }) => self.push_value(Value::Array(items), anchor, self.values - start),
                Some(Frame::Map {
                    map, anchor, start, ..
                }) => self.push_value(Value::Object(map), anchor, self.values - start),
                None => {}
            },
            Event::Alias(id) => match (self.next_pointer(), self.anchors.get(&id)) {
                (Some(_), Some(&(_, size))) if self.aliased + size > ALIAS_BUDGET => self.fail(
                    pos,
                    format!(
                        "aliases (*name) expand the mapping by more than {ALIAS_BUDGET} values by this one"
                    ),
                    "an alias copies its anchor's whole value; write the shared values out once, or move them into a file to `include:`",
                ),
                (Some(pointer), Some((value, size))) => {
                    let (value, size) = (value.clone(), *size);
                    self.spans.entry(pointer).or_insert(pos);
                    self.aliased += size;
                    self.values += size;
                    self.push_value(value, 0, size);
                }
                _ => self.fail(
                    pos,
                    "an alias (*name) here cannot be resolved".into(),
                    "define the anchor (&name) before using it, and not as a key",
                ),
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

/// YAML 1.2 core schema resolution of a scalar: quoted text stays text.
fn resolve_scalar(text: &str, style: TScalarStyle) -> Value {
    if style != TScalarStyle::Plain {
        return Value::String(text.to_owned());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let looks_numeric = text
        .bytes()
        .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
        && text.bytes().any(|b| b.is_ascii_digit());
    if looks_numeric {
        if let Ok(i) = text.parse::<i64>() {
            return Value::Number(i.into());
        }
        if let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_values_keep_their_positions() {
        let spanned = parse_yaml("id: x\nlist:\n  - a: 1\n    b: \"2\"\n  - 3.5\n").expect("yaml");
        assert_eq!(spanned.value["list"][0]["a"], Value::from(1));
        assert_eq!(spanned.value["list"][0]["b"], Value::from("2"));
        assert_eq!(spanned.value["list"][1], Value::from(3.5));
        assert_eq!(spanned.pos("/list/0/b"), Some(Pos { line: 4, col: 5 }));
        assert_eq!(spanned.pos("/list/1"), Some(Pos { line: 5, col: 5 }));
        assert_eq!(
            spanned.pos("/list/0/b/nothing/here"),
            Some(Pos { line: 4, col: 5 })
        );
    }

    #[test]
    fn duplicate_keys_and_bad_yaml_are_errors_with_lines() {
        let d = parse_yaml("a: 1\nb: 2\na: 3\n").expect_err("duplicate");
        assert_eq!(d.pos, Some(Pos { line: 3, col: 1 }));
        assert!(d.message.contains("`a` appears twice"), "{}", d.message);
        let d = parse_yaml("a: [1, 2\nb: 3\n").expect_err("unclosed");
        assert!(d.message.starts_with("not valid YAML"), "{}", d.message);
        assert!(d.pos.is_some());
        assert!(parse_yaml("").is_err());
    }

    #[test]
    fn aliases_of_aliases_stop_at_the_budget_where_they_pass_it() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (i, name) in ["b", "c", "d", "e", "f", "g", "h"].iter().enumerate() {
            let prev = ["a", "b", "c", "d", "e", "f", "g"][i];
            let row = vec![format!("*{prev}"); 10].join(", ");
            bomb.push_str(&format!("{name}: &{name} [{row}]\n"));
        }
        let started = std::time::Instant::now();
        let d = parse_yaml(&bomb).expect_err("ten million values");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert!(
            d.message.contains("more than 250000 values"),
            "{}",
            d.message
        );
        // Line 6 (`f:`) is the first whose aliases pass the budget: 10^5 values each.
        assert_eq!(d.pos.map(|p| p.line), Some(6));
        let shared = "a: &a [x, y]\nb: *a\nc: [*a, *a]\n";
        assert_eq!(parse_yaml(shared).expect("yaml").value["c"][1][1], "y");
    }

    #[test]
    fn anchors_are_copied_into_aliases() {
        let spanned = parse_yaml("a: &x {k: v}\nb: *x\n").expect("yaml");
        assert_eq!(spanned.value["b"]["k"], Value::from("v"));
    }
}
