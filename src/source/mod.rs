//! Where FHIR resources come from. Every source yields [`Item`]s in batches: one resource's
//! JSON with the [`Origin`] it came from, so that any problem can name the file and line (or
//! Bundle entry). Sources stream: a batch is a few thousand resources, never a whole input.
//! They do not parse resources beyond what splitting a Bundle needs; extraction is
//! [`crate::record::extract`]'s job.
//!
//! - [`files`]: a file or directory of NDJSON (Bulk Data output, `.ndjson.gz` too) or Bundles.
//! - [`synthetic`]: the built-in synthetic population, generated on the fly.
//! - [`search`]: a live FHIR server, by paged search.

pub mod files;
pub mod search;
pub mod synthetic;

use std::fmt;
use std::sync::Arc;

/// How many resources a batch holds.
pub const BATCH: usize = 4096;

/// Where one resource came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file (or `synthetic`).
    pub file: Arc<str>,
    /// Line number in an NDJSON file, entry number (from 0) in a Bundle, index in a stream.
    pub line: u64,
    /// Whether `line` counts Bundle entries.
    pub entry: bool,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.entry {
            write!(f, "{} entry[{}]", self.file, self.line)
        } else {
            write!(f, "{}:{}", self.file, self.line)
        }
    }
}

/// One resource as it arrived.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A line of NDJSON.
    Line(String),
    /// A resource taken out of a Bundle, references already resolved.
    Value(serde_json::Value),
    /// Something that is not a resource at all, with the reason (a non-UTF-8 line).
    Unreadable(String),
}

/// One resource and where it came from.
#[derive(Debug, Clone)]
pub struct Item {
    /// Where.
    pub origin: Origin,
    /// What.
    pub payload: Payload,
}
