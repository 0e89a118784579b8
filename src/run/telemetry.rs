//! What the process tells about itself: its logs (set up once, at start) and its own CPU time
//! and memory, which `run --stats`, the benchmark and the joined run's report quote. Linux
//! `/proc` is read where the figures come from; elsewhere they are unknown, never guessed.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Text for people, coloured only on a terminal.
    Text,
    /// One JSON object per line, for a log collector.
    Json,
}

/// Starts logging on stderr: `verbose` 0 shows warnings and the progress lines (for operators of
/// runs off a terminal), 1 adds `info`, more adds `debug`. `SEGMENTTI_LOG` (a `tracing` filter)
/// overrides the level.
pub fn init_logging(verbose: u8, format: LogFormat) {
    let default = match verbose {
        0 => "warn,segmentti::progress=info",
        1 => "info",
        _ => "debug",
    };
    let filter =
        EnvFilter::try_from_env("SEGMENTTI_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colour()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// Whether text logs may carry ANSI colour: only on a terminal, and not when `NO_COLOR` is set
/// to anything but the empty string (no-color.org). A file or pipe gets plain text.
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The process's CPU time and peak memory so far.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Seconds, user and system, over all threads (`NaN` when unknown).
    pub cpu: f64,
    /// Bytes (0 when unknown).
    pub peak_rss: u64,
}

impl Usage {
    /// The figures now.
    pub(crate) fn now() -> Self {
        Self {
            cpu: cpu_seconds().unwrap_or(f64::NAN),
            peak_rss: peak_rss_bytes().unwrap_or(0),
        }
    }
}

/// The peak resident set size of this process in bytes (Linux `VmHWM`), when known.
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// Starts a new peak: the kernel sets `VmHWM` back to the present resident size (Linux 4.0 and
/// later, `/proc/self/clear_refs`), so the next [`peak_rss_bytes`] is the peak of what ran
/// since. `false` where that is not allowed; the peak is then the process's.
pub(crate) fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The resident set size of this process now, in bytes (Linux `VmRSS`), when known.
pub(crate) fn rss_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

/// The CPU time this process has used so far, user and system, over all its threads (Linux
/// `/proc/self/stat`), in seconds, when known. Beside wall time it shows what a run costs apart
/// from the machine it shares: a virtual machine's stolen time and the disk's waits add to the
/// wall time of one run and not another, the work done does not change with them.
fn cpu_seconds() -> Option<f64> {
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
    use std::time::{Duration, Instant};

    use super::*;

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
