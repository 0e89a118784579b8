//! How far a run has come, for the operator: process-wide counters that the pipeline bumps
//! (resources read, clients segmented, resources written) and a `Reporter` that shows them,
//! as progress bars with rate and ETA on a terminal, or as a log line every few seconds
//! elsewhere (a Kubernetes pod, a CI log). The counters are plain atomics bumped once per batch
//! or client, so a run pays nothing measurable for them; this module never decides anything a
//! run does.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The counters of the current run. Runs in one process add to the same counters; a
/// [`Reporter`] shows what was added since it started.
#[derive(Debug)]
pub(crate) struct Counters {
    /// Resources read from the input.
    pub read: AtomicU64,
    /// Clients to segment, once the fold knows (0 before).
    pub clients: AtomicU64,
    /// Clients assessed.
    pub segmented: AtomicU64,
    /// Resources built and handed to the sink.
    pub written: AtomicU64,
}

/// The process's counters.
pub(crate) static COUNTERS: Counters = Counters {
    read: AtomicU64::new(0),
    clients: AtomicU64::new(0),
    segmented: AtomicU64::new(0),
    written: AtomicU64::new(0),
};

impl Counters {
    fn snapshot(&self) -> [u64; 4] {
        [
            self.read.load(Relaxed),
            self.clients.load(Relaxed),
            self.segmented.load(Relaxed),
            self.written.load(Relaxed),
        ]
    }
}

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// Bars on stderr (only when stderr is a terminal).
    Bars,
    /// An `info` log line (target `segmentti::progress`) every `every`.
    Log {
        /// Time between lines.
        every: Duration,
    },
    /// Nothing.
    Off,
}

impl Display {
    /// Bars when stderr is a terminal, log lines every 10 s otherwise.
    pub fn auto() -> Self {
        if std::io::stderr().is_terminal() {
            Self::Bars
        } else {
            Self::Log {
                every: Duration::from_secs(10),
            }
        }
    }
}

/// Shows the counters until dropped (or [`Reporter::finish`]ed).
#[derive(Debug)]
pub(crate) struct Reporter {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Reporter {
    /// Starts showing progress on its own thread.
    pub(crate) fn start(display: Display) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let base = COUNTERS.snapshot();
        let thread = match display {
            Display::Off => None,
            Display::Bars => {
                let stop = Arc::clone(&stop);
                Some(std::thread::spawn(move || bars(base, &stop)))
            }
            Display::Log { every } => {
                let stop = Arc::clone(&stop);
                Some(std::thread::spawn(move || log_lines(base, every, &stop)))
            }
        };
        Self { stop, thread }
    }

    /// Stops showing progress and clears the bars, so that the summary printed next stands
    /// alone.
    pub(crate) fn finish(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        let (flag, wake) = &*self.stop;
        if let Ok(mut stopped) = flag.lock() {
            *stopped = true;
            wake.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            // A reporter that panicked has nothing left to clean up.
            let _ = thread.join();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// Sleeps `every` or until stopped; true when stopped.
fn wait(stop: &(Mutex<bool>, Condvar), every: Duration) -> bool {
    let (flag, wake) = stop;
    let Ok(guard) = flag.lock() else { return true };
    match wake.wait_timeout_while(guard, every, |stopped| !*stopped) {
        Ok((stopped, _)) => *stopped,
        Err(_) => true,
    }
}

fn since(base: [u64; 4]) -> [u64; 4] {
    let now = COUNTERS.snapshot();
    std::array::from_fn(|i| now[i].saturating_sub(base[i]))
}

fn bars(base: [u64; 4], stop: &(Mutex<bool>, Condvar)) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    let counter = |prefix: &'static str| {
        let bar = multi.add(ProgressBar::no_length());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>10} {spinner} {human_pos:>12} {per_sec:>14} {elapsed_precise}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(prefix);
        bar
    };
    let read = counter("read");
    let segmented = multi.add(ProgressBar::new(0));
    segmented.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {human_pos:>12}/{human_len} {per_sec:>10} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    segmented.set_prefix("segmented");
    let written = counter("written");
    loop {
        let stopped = wait(stop, Duration::from_millis(250));
        let [r, clients, s, w] = since(base);
        read.set_position(r);
        segmented.set_length(clients.max(s));
        segmented.set_position(s);
        written.set_position(w);
        if stopped {
            break;
        }
    }
    for bar in [&read, &segmented, &written] {
        bar.finish_and_clear();
    }
}

fn log_lines(base: [u64; 4], every: Duration, stop: &(Mutex<bool>, Condvar)) {
    let started = Instant::now();
    while !wait(stop, every) {
        let [read, clients, segmented, written] = since(base);
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        tracing::info!(
            target: "segmentti::progress",
            read,
            read_per_s = (read as f64 / seconds).round(),
            segmented,
            of = clients,
            written,
            elapsed_s = seconds.round(),
            "progress"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reporter_stops_promptly_and_counts_from_its_start() {
        COUNTERS.read.fetch_add(5, Relaxed);
        let base = COUNTERS.snapshot();
        COUNTERS.read.fetch_add(3, Relaxed);
        assert!(since(base)[0] >= 3);
        let started = Instant::now();
        let reporter = Reporter::start(Display::Log {
            every: Duration::from_secs(3600),
        });
        reporter.finish();
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
