//! Results as files in an output directory: `Observation.ndjson` and `Flag.ndjson` (one
//! resource per line, ready for Bulk Data import), `rejected.ndjson` and `summary.json`. Files
//! are written under temporary names and renamed at [`FileSink::finish`], so a directory never
//! holds a half-written result next to a complete one.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{ClientResources, Sink, SinkError};
use crate::model::plan::Plan;
use crate::pipeline::Rejected;

const FILES: [&str; 3] = ["Observation.ndjson", "Flag.ndjson", "rejected.ndjson"];

/// The output directory being written.
#[derive(Debug)]
pub struct FileSink {
    dir: PathBuf,
    writers: Vec<BufWriter<File>>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.to_owned(),
        source,
    }
}

fn partial(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.partial"))
}

impl FileSink {
    /// Creates `dir` if needed and opens the temporary files.
    pub fn create(dir: &Path) -> Result<Self, SinkError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let writers = FILES
            .iter()
            .map(|name| {
                let path = partial(dir, name);
                File::create(&path)
                    .map(|f| BufWriter::with_capacity(1 << 20, f))
                    .map_err(io(&path))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            dir: dir.to_owned(),
            writers,
        })
    }

    fn line(
        &mut self,
        file: usize,
        patient: &str,
        value: &impl Serialize,
    ) -> Result<(), SinkError> {
        let path = partial(&self.dir, FILES[file]);
        let writer = &mut self.writers[file];
        serde_json::to_writer(&mut *writer, value).map_err(|e| SinkError::Serialize {
            patient: patient.to_owned(),
            cause: e.to_string(),
        })?;
        writer.write_all(b"\n").map_err(io(&path))
    }

    /// Writes `summary.json`, flushes everything and moves the files into place.
    pub fn finish(self, summary: &impl Serialize) -> Result<(), SinkError> {
        for (writer, name) in self.writers.into_iter().zip(FILES) {
            let path = partial(&self.dir, name);
            let file = writer.into_inner().map_err(|e| SinkError::Io {
                path: path.clone(),
                source: e.into_error(),
            })?;
            file.sync_all().map_err(io(&path))?;
            let target = self.dir.join(name);
            std::fs::rename(&path, &target).map_err(io(&target))?;
        }
        let target = self.dir.join("summary.json");
        let tmp = partial(&self.dir, "summary.json");
        let mut text = serde_json::to_string_pretty(summary).map_err(|e| SinkError::Serialize {
            patient: "-".into(),
            cause: e.to_string(),
        })?;
        text.push('\n');
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &target).map_err(io(&target))
    }
}

/// A client's Observation line and Flag lines, serialised.
#[derive(Debug)]
pub struct Lines {
    observation: Vec<u8>,
    flags: Vec<u8>,
}

impl Sink for FileSink {
    type Encoded = Lines;

    fn encode(_plan: &Plan, resources: ClientResources) -> Result<Lines, SinkError> {
        let fail = |e: serde_json::Error| SinkError::Serialize {
            patient: resources.patient.clone(),
            cause: e.to_string(),
        };
        let mut observation = serde_json::to_vec(&resources.observation).map_err(fail)?;
        observation.push(b'\n');
        let mut flags = Vec::new();
        for flag in &resources.flags {
            serde_json::to_writer(&mut flags, flag).map_err(fail)?;
            flags.push(b'\n');
        }
        Ok(Lines { observation, flags })
    }

    fn client(&mut self, _plan: &Plan, lines: Lines) -> Result<(), SinkError> {
        for (file, bytes) in [(0, &lines.observation), (1, &lines.flags)] {
            let path = partial(&self.dir, FILES[file]);
            self.writers[file].write_all(bytes).map_err(io(&path))?;
        }
        Ok(())
    }

    fn rejected(&mut self, rejected: &Rejected) -> Result<(), SinkError> {
        self.line(2, "-", rejected)
    }
}
