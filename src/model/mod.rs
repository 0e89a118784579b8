//! Segmentation models: mapping files in, segments out. Pure: no I/O but reading the mapping
//! file itself (and the ValueSet files it names; [`valueset`] also writes a pinned expansion for
//! `segmentti expand`), no network, no clock (the as-of date is passed in).
//!
//! - [`mapping`]: the file format, as serde structs; their doc comments are the JSON Schema.
//! - [`load`]: a mapping file and what it includes read from disk (or the shipped text), every
//!   problem at once with line and column.
//! - [`yaml`]: YAML with every value's position, the schema check, the typed structs, and the
//!   problems as diagnostics.
//! - [`include`](mod@include): files a model includes (the key-client overlay), merged with clashes reported.
//! - [`check`]: what the schema cannot see (references, unreachable tree nodes).
//! - [`valueset`]: code lists from FHIR ValueSet files, and pinning a server's expansion.
//! - [`plan`]: a mapping compiled for one as-of date: indexes, code sets, windows.

pub mod check;
pub mod include;
pub mod load;
pub mod mapping;
pub mod package;
pub mod plan;
pub mod valueset;
pub mod yaml;

use std::path::Path;

pub use load::{MappingError, load_file};
pub use plan::Plan;

use crate::fhir::day::Day;

/// Loads the mapping at `path` and compiles it for `as_of`.
pub fn plan_file(path: &Path, as_of: Day) -> Result<Plan, MappingError> {
    let mapping = load_file(path)?;
    Plan::compile(mapping, as_of).map_err(|errors| MappingError::Invalid {
        path: path.to_owned(),
        diagnostics: errors
            .into_iter()
            .map(|e| yaml::Diagnostic::new(e.pointer, e.message, e.hint))
            .collect(),
    })
}

/// The smallest model the tests of other modules need: `head` (the YAML from `features:` or
/// `prices:` on, with any code lists) and one criterion, one segment and a tree that places
/// everyone there.
#[cfg(test)]
pub(crate) fn one_segment_model(head: &str) -> String {
    format!(
        r#"id: t
canonical: https://example.org/t
version: "1"
title: {{fi: t, sv: t, en: t}}
{head}
criteria:
  - id: c
    title: {{fi: c, sv: c, en: c}}
    levels: [{{code: low, display: {{fi: l, sv: l, en: l}}}}]
segments:
  - {{code: "1", order: 1, display: {{fi: s, sv: s, en: s}}, guidance: {{fi: g, sv: g, en: g}}}}
tree:
  - {{id: all, segment: "1", because: {{fi: b, sv: b, en: b}}}}
"#
    )
}
