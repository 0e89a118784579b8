//! Where FHIR resources come from. Every source yields [`Item`]s in batches: one resource's
//! JSON with the [`Origin`] it came from, so that any problem can name the file and line (or
//! Bundle entry). Sources stream: a batch is a few thousand resources, never a whole input.
//! They do not parse resources beyond what splitting a Bundle needs; extraction is
//! [`crate::record::extract`]'s job.
//!
//! - [`files`]: a file or directory of NDJSON (Bulk Data output, `.ndjson.gz` too) or Bundles.
//! - [`synthetic`]: the built-in synthetic population, generated on the fly by [`synth`].
//! - [`synth`]: the deterministic synthetic population itself, also written out by `synth`.
//! - [`search`]: a live FHIR server, by paged search.
//! - [`bulk`]: a Bulk Data `$export`, its files streamed as they download (cut into lines as
//!   [`files`] cuts a file), or downloaded into a work directory that [`files`] reads.

pub mod bulk;
pub mod files;
pub mod search;
pub mod synth;
pub mod synthetic;

use std::fmt;
use std::sync::Arc;

/// How many resources a batch holds.
pub(crate) const BATCH: usize = 4096;

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

/// What a source hands on at a time.
#[derive(Debug, Clone)]
pub enum Batch {
    /// Complete NDJSON lines of one file, as one block of text: no allocation per line.
    Lines {
        /// The file.
        file: Arc<str>,
        /// The number of the block's first line.
        first_line: u64,
        /// How many lines it holds, blank ones included.
        lines: usize,
        /// The lines, each ending in `\n` (the last may not, at the end of the file).
        text: String,
    },
    /// Resources one by one (Bundle entries, search results, unreadable lines).
    Items(Vec<Item>),
}

impl Batch {
    /// Every resource of the batch and where each came from, blank lines left out.
    pub fn resources(&self) -> (Origins, Vec<Resource<'_>>) {
        match self {
            Self::Items(items) => {
                let origins = items.iter().map(|i| i.origin.clone()).collect();
                let resources = items
                    .iter()
                    .map(|i| match &i.payload {
                        Payload::Line(text) => Resource::Text(text),
                        Payload::Value(v) => Resource::Value(v),
                        Payload::Unreadable(reason) => Resource::Unreadable(reason),
                    })
                    .collect();
                (Origins::Items(origins), resources)
            }
            Self::Lines {
                file,
                first_line,
                lines: count,
                text,
            } => {
                // memchr's vector search, not `str::split`'s word-at-a-time one: this runs on
                // the extraction stage before its workers can start on the batch. The lists are
                // made at their size once, rather than grown through a dozen copies.
                let mut lines = Vec::with_capacity(*count);
                let mut resources = Vec::with_capacity(*count);
                let mut start = 0;
                let ends = memchr::memchr_iter(b'\n', text.as_bytes()).chain([text.len()]);
                for (i, end) in ends.enumerate() {
                    let line = &text[start..end];
                    start = end + 1;
                    let line = line.strip_suffix('\r').unwrap_or(line);
                    if !line.trim().is_empty() {
                        lines.push(first_line + i as u64);
                        resources.push(Resource::Text(line));
                    }
                }
                let file = file.clone();
                (Origins::Lines { file, lines }, resources)
            }
        }
    }
}

/// Where the resources of a batch came from. An [`Origin`] is made only when one is asked for
/// (to name a rejected resource): one per line would clone the file name's reference count
/// for each of millions of lines, on one thread, and drop it on another.
#[derive(Debug, Clone)]
pub enum Origins {
    /// Lines of one file, by number.
    Lines {
        /// The file.
        file: Arc<str>,
        /// Each resource's line.
        lines: Vec<u64>,
    },
    /// Each resource's own origin.
    Items(Vec<Origin>),
}

impl Origins {
    /// How many resources.
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Lines { lines, .. } => lines.len(),
            Self::Items(origins) => origins.len(),
        }
    }

    /// Where resource `i` came from.
    pub(crate) fn get(&self, i: usize) -> Origin {
        match self {
            Self::Lines { file, lines } => Origin {
                file: file.clone(),
                line: lines[i],
                entry: false,
            },
            Self::Items(origins) => origins[i].clone(),
        }
    }
}

/// One resource of a batch, borrowed.
#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    /// JSON text.
    Text(&'a str),
    /// Parsed JSON.
    Value(&'a serde_json::Value),
    /// Not a resource, with the reason.
    Unreadable(&'a str),
}

/// One resource and where it came from.
#[derive(Debug, Clone)]
pub struct Item {
    /// Where.
    pub origin: Origin,
    /// What.
    pub payload: Payload,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<(u64, String)> {
        let batch = Batch::Lines {
            file: Arc::from("f.ndjson"),
            first_line: 10,
            lines: text.matches('\n').count() + usize::from(!text.ends_with('\n')),
            text: text.to_owned(),
        };
        let (origins, resources) = batch.resources();
        resources
            .iter()
            .enumerate()
            .map(|(i, r)| match r {
                Resource::Text(t) => (origins.get(i).line, (*t).to_owned()),
                other => panic!("a line batch gave {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_line_batch_numbers_its_lines_and_leaves_out_blank_ones_and_carriage_returns() {
        let want = |pairs: &[(u64, &str)]| {
            pairs
                .iter()
                .map(|&(n, t)| (n, t.to_owned()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            lines("a\r\n\n  \r\nb\nc"),
            want(&[(10, "a"), (13, "b"), (14, "c")])
        );
        assert_eq!(lines("a\nb\n"), want(&[(10, "a"), (11, "b")]));
        assert_eq!(lines("\n\nä\n"), want(&[(12, "ä")]));
        assert!(lines("").is_empty());
    }
}
