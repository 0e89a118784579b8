//! Results as files in an output directory: `Observation.ndjson` and `Flag.ndjson` (one
//! resource per line, ready for Bulk Data import), `rejected.ndjson` and `summary.json`. Files
//! are written under temporary names, made durable and renamed at [`FileSink::finish`], so a
//! directory never holds a half-written result next to a complete one. A thread of its own
//! asks the disk to write what has been written so far every [`SYNC_EVERY`] bytes, so the
//! disk works while the run computes and the final sync has little left to do. The files go
//! around the page cache where the file system allows it (`direct`). Each line is joined from the
//! model's parts serialised once ([`super::ndjson`]) and the client's own elements.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use serde::Serialize;

use super::direct::DirectFile;
use super::ndjson::{self, Encoded};
use super::{Sink, SinkError};
use crate::model::plan::Plan;
use crate::record::Rejected;
use crate::writeback::{Built, ClientResources, Concepts, Parts};

const FILES: [&str; 3] = ["Observation.ndjson", "Flag.ndjson", "rejected.ndjson"];

/// Bytes written to one file between two requests to sync it.
const SYNC_EVERY: u64 = 64 << 20;

/// The output directory being written.
#[derive(Debug)]
pub(crate) struct FileSink {
    dir: PathBuf,
    writers: Vec<DirectFile>,
    /// Per file, bytes written since the last sync request.
    unsynced: [u64; 3],
    /// Sync requests (file numbers) to the thread that makes them; it gives back the first
    /// failure, which the final sync might not see again (a failed writeback is reported once
    /// per open file, and that thread holds the same one).
    syncs: mpsc::Sender<usize>,
    syncer: JoinHandle<Result<(), (usize, std::io::Error)>>,
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
    pub(crate) fn create(dir: &Path) -> Result<Self, SinkError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut writers = Vec::new();
        let mut clones = Vec::new();
        for name in FILES {
            let path = partial(dir, name);
            let file = DirectFile::create(&path).map_err(io(&path))?;
            clones.push(file.try_clone().map_err(io(&path))?);
            writers.push(file);
        }
        let (syncs, requests) = mpsc::channel::<usize>();
        let syncer = std::thread::spawn(move || {
            for file in requests {
                clones[file].sync_data().map_err(|e| (file, e))?;
            }
            Ok(())
        });
        Ok(Self {
            dir: dir.to_owned(),
            writers,
            unsynced: [0; 3],
            syncs,
            syncer,
        })
    }

    /// Writes `bytes` to file `file`, asking for a sync every [`SYNC_EVERY`] bytes.
    fn write(&mut self, file: usize, bytes: &[u8]) -> Result<(), SinkError> {
        self.writers[file]
            .write_all(bytes)
            .map_err(|source| SinkError::Io {
                path: partial(&self.dir, FILES[file]),
                source,
            })?;
        self.unsynced[file] += bytes.len() as u64;
        if self.unsynced[file] >= SYNC_EVERY {
            self.unsynced[file] = 0;
            // Only what reached the file is synced; the buffer's rest waits for the next one.
            // A syncer gone has failed, and finish reports why.
            let _ = self.syncs.send(file);
        }
        Ok(())
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
    fn commit(self, summary: &dyn SummaryJson) -> Result<(), SinkError> {
        drop(self.syncs);
        let synced = self.syncer.join().unwrap_or_else(|_| {
            Err((
                0,
                std::io::Error::other("the thread syncing the output panicked"),
            ))
        });
        if let Err((file, source)) = synced {
            return Err(SinkError::Io {
                path: partial(&self.dir, FILES[file]),
                source,
            });
        }
        for (writer, name) in self.writers.into_iter().zip(FILES) {
            let path = partial(&self.dir, name);
            let file = writer.finish().map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
            let target = self.dir.join(name);
            std::fs::rename(&path, &target).map_err(io(&target))?;
        }
        let target = self.dir.join("summary.json");
        let tmp = partial(&self.dir, "summary.json");
        let mut text = summary.pretty_json().map_err(|e| SinkError::Serialize {
            patient: "-".into(),
            cause: e.to_string(),
        })?;
        text.push('\n');
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &target).map_err(io(&target))
    }
}

/// What `summary.json` holds: the run's summary, whose type belongs to the run, a layer above.
pub(crate) trait SummaryJson {
    /// The summary as pretty-printed JSON.
    fn pretty_json(&self) -> serde_json::Result<String>;
}

impl<T: Serialize> SummaryJson for T {
    fn pretty_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }
}

/// A client's Observation line and Flag lines, serialised.
#[derive(Debug)]
pub(crate) struct Lines {
    observation: Vec<u8>,
    flags: Vec<u8>,
}

impl Sink for FileSink {
    type Encoded = Lines;
    const PARTS: Parts = Parts::Own;

    type Prepared = Encoded;

    fn prepare(plan: &Plan, concepts: &Concepts) -> Result<Encoded, SinkError> {
        Encoded::new(plan, concepts).map_err(|cause| SinkError::Serialize {
            patient: "-".into(),
            cause,
        })
    }

    fn encode(
        parts: &Encoded,
        built: Built<'_>,
        resources: ClientResources,
    ) -> Result<Lines, SinkError> {
        let fail = |e: serde_json::Error| SinkError::Serialize {
            patient: resources.patient.clone(),
            cause: e.to_string(),
        };
        let (concepts, a) = (built.concepts, built.assessment);
        let mut observation = Vec::with_capacity(8 << 10);
        ndjson::observation_line(parts, concepts, a, &resources.observation, &mut observation)
            .map_err(fail)?;
        let mut flags = Vec::with_capacity(2 << 10);
        for (n, flag) in resources.flags.iter().enumerate() {
            ndjson::flag_line(parts, a, n, flag, &mut flags).map_err(fail)?;
        }
        Ok(Lines { observation, flags })
    }

    fn client(&mut self, _plan: &Plan, lines: Lines) -> Result<(), SinkError> {
        self.write(0, &lines.observation)?;
        self.write(1, &lines.flags)
    }

    fn rejected(&mut self, rejected: &Rejected) -> Result<(), SinkError> {
        self.line(2, "-", rejected)
    }

    type Closing<'a> = &'a dyn SummaryJson;
    type Written = ();

    fn finish(self, summary: &dyn SummaryJson) -> Result<(), SinkError> {
        self.commit(summary)
    }
}
