//! Measurements, not tests: the parse-only floor that a run is compared with, and asking the
//! kernel to forget an input it cached. The `bench` command generates its own data, times the
//! floor in this process and a real `run` in a child process (so its peak memory is its own), and
//! prints the figures the floors in `docs/benchmarks.md` are judged by. The process's own CPU time
//! and memory are [`super::telemetry`]'s.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::de::IgnoredAny;

use crate::source::files::{self, SourceError};

/// What the floor measured.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    /// Resources parsed.
    pub resources: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Reads every line of every input file under `path` and parses it with `serde_json` into
/// `IgnoredAny`, on one thread: the least any tool must do to read the same data. The files are
/// opened as a run opens them (`files::open`), so both read the disk alike.
pub fn parse_floor(path: &Path) -> Result<Floor, SourceError> {
    let started = Instant::now();
    let (mut resources, mut bytes) = (0u64, 0u64);
    for file in files::list(path)? {
        let io = |source| SourceError::Io {
            path: file.clone(),
            source,
        };
        let mut reader = BufReader::with_capacity(1 << 20, files::open(&file).map_err(io)?);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).map_err(io)?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
            if serde_json::from_str::<IgnoredAny>(&line).is_ok() {
                resources += 1;
            }
        }
    }
    Ok(Floor {
        resources,
        bytes,
        elapsed: started.elapsed(),
    })
}

/// Asks the kernel to drop the input files under `path` from the page cache. The populations
/// of one benchmark together can outgrow the page cache, so each size is measured with the
/// others dropped: otherwise the largest reads part of its input from disk while the smaller ones do
/// not. Only a hint: pages in use stay.
pub fn evict(path: &Path) -> Result<(), SourceError> {
    for file in files::list(path)? {
        let io = |source| SourceError::Io {
            path: file.clone(),
            source,
        };
        let opened = File::open(&file).map_err(io)?;
        rustix::fs::fadvise(&opened, 0, None, rustix::fs::Advice::DontNeed)
            .map_err(|e| io(e.into()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_counts_every_parsable_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("Patient.ndjson"),
            "{\"resourceType\":\"Patient\"}\n{\"a\":[1,2]}\nnot json\n",
        )
        .expect("write");
        let floor = parse_floor(dir.path()).expect("floor");
        assert_eq!(floor.resources, 2);
        assert_eq!(floor.bytes, 48);
    }

    #[test]
    fn eviction_is_asked_per_file_and_a_missing_input_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("Patient.ndjson"), "{}\n").expect("write");
        evict(dir.path()).expect("evict");
        let missing = dir.path().join("nowhere");
        let error = evict(&missing).expect_err("a missing input");
        assert!(error.to_string().contains("nowhere"), "{error}");
    }
}
