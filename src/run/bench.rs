//! Measurements, not tests: the parse-only floor that a run is compared with, and the peak
//! memory of this process. The `bench` command generates its own data, times the floor in this
//! process and a real `run` in a child process (so its peak memory is its own), and prints the
//! figures an issue's floors are judged by.

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
/// opened as a run opens them ([`files::open`]), so both read the disk alike.
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

/// The peak resident set size of this process in bytes (Linux `VmHWM`), when known.
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// Starts a new peak: the kernel sets `VmHWM` back to the present resident size (Linux 4.0 and
/// later, `/proc/self/clear_refs`), so the next [`peak_rss_bytes`] is the peak of what ran
/// since. `false` where that is not allowed; the peak is then the process's.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The resident set size of this process now, in bytes (Linux `VmRSS`), when known.
pub fn rss_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

/// The CPU time this process has used so far, user and system, over all its threads (Linux
/// `/proc/self/stat`), in seconds, when known. Beside wall time it shows what a run costs apart
/// from the machine it shares: a virtual machine's stolen time and the disk's waits add to the
/// wall time of one run and not another, the work done does not change with them.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    cpu_ticks(&stat).map(|ticks| ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// `utime + stime` of a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses
/// and may hold spaces and parentheses itself, so fields are counted from the last `)`: the
/// state (field 3) comes first there, `utime` and `stime` are fields 14 and 15.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// A `kB` field of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
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

    #[test]
    fn cpu_time_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (seg (x) y) R 1 4242 4242 0 -1 4194304 120 0 0 0 731 58 0 0 20 0 3 0";
        assert_eq!(cpu_ticks(stat), Some(789));
        assert_eq!(cpu_ticks("4242 (cut short) R 1 2"), None);
    }

    #[test]
    fn cpu_time_is_known_on_linux_and_grows_with_work() {
        // Reading the clock is itself work: spin on it until at least one more clock tick has
        // been counted.
        let before = cpu_seconds().expect("CPU time on Linux");
        let deadline = Instant::now() + Duration::from_secs(5);
        while cpu_seconds() <= Some(before) && Instant::now() < deadline {}
        assert!(
            cpu_seconds().is_some_and(|s| s > before),
            "stuck at {before} s"
        );
    }

    #[test]
    fn peak_rss_is_known_on_linux() {
        assert!(peak_rss_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn a_reset_peak_forgets_memory_given_back() {
        const BIG: u64 = 256 << 20;
        // Touched byte by byte, so it is resident; the system allocator maps a block this size
        // on its own and gives it back when it is dropped.
        let big = std::hint::black_box(vec![1u8; BIG as usize]);
        let with_big = peak_rss_bytes().expect("peak RSS on Linux");
        drop(big);
        assert!(reset_peak_rss(), "clear_refs refused");
        let after = peak_rss_bytes().expect("peak RSS on Linux");
        assert!(
            after + BIG / 2 < with_big,
            "peak {after} B after the reset, {with_big} B with the block"
        );
    }
}
