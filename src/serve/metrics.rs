//! The service's counters and their Prometheus text exposition (format 0.0.4), written by hand:
//! a dozen series do not need a registry crate. It owns the numbers and their rendering; it
//! does not decide when anything is counted (the schedule and the CDS handlers do). Label
//! values are model ids, segment codes and fixed words, never personal data.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `segmentti_runs_total{outcome}` | counter | scheduled runs, `success` or `failure` |
//! | `segmentti_run_in_progress` | gauge | 1 while a run is under way |
//! | `segmentti_run_duration_seconds` | summary | run durations (`_sum`, `_count`) |
//! | `segmentti_last_success_timestamp_seconds` | gauge | end of the last successful run (Unix time) |
//! | `segmentti_resources_read_total` | counter | FHIR resources read by runs |
//! | `segmentti_resources_rejected_total` | counter | resources not used |
//! | `segmentti_resources_written_total{kind}` | counter | `observation`, `flag`, `flag_ended` |
//! | `segmentti_clients_refused_total` | counter | clients whose results the server refused |
//! | `segmentti_retries_total` | counter | HTTP retries of the FHIR client (process-wide) |
//! | `segmentti_last_run_clients{model,segment}` | gauge | clients evaluated in the last run, per segment |
//! | `segmentti_cds_requests_total{status}` | counter | CDS Hooks service calls by HTTP status |
//! | `segmentti_cds_feedback_total{outcome}` | counter | card feedback: `accepted`, `overridden` |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::run::job::JobReport;

/// Every number `/metrics` shows.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    runs_ok: AtomicU64,
    runs_failed: AtomicU64,
    in_progress: AtomicU64,
    /// Milliseconds, summed, so that an atomic holds them.
    duration_ms: AtomicU64,
    last_success: AtomicU64,
    read: AtomicU64,
    rejected: AtomicU64,
    observations: AtomicU64,
    flags: AtomicU64,
    flags_ended: AtomicU64,
    refused: AtomicU64,
    clients: Mutex<BTreeMap<(String, String), u64>>,
    cds: Mutex<BTreeMap<u16, u64>>,
    accepted: AtomicU64,
    overridden: AtomicU64,
}

impl Metrics {
    /// A run started.
    pub(crate) fn run_started(&self) {
        self.in_progress.store(1, Relaxed);
    }

    /// A run ended after `elapsed`, with its report or not.
    pub(crate) fn run_ended(
        &self,
        elapsed: std::time::Duration,
        report: Option<&JobReport>,
        now_unix: u64,
    ) {
        self.in_progress.store(0, Relaxed);
        self.duration_ms
            .fetch_add(elapsed.as_millis() as u64, Relaxed);
        let Some(report) = report else {
            self.runs_failed.fetch_add(1, Relaxed);
            return;
        };
        self.runs_ok.fetch_add(1, Relaxed);
        self.last_success.store(now_unix, Relaxed);
        self.read.fetch_add(report.read, Relaxed);
        self.rejected.fetch_add(report.rejected_count, Relaxed);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.clear();
        for (summary, writes) in &report.models {
            self.observations.fetch_add(writes.observations, Relaxed);
            self.flags.fetch_add(writes.flags_written, Relaxed);
            self.flags_ended.fetch_add(writes.flags_ended, Relaxed);
            self.refused.fetch_add(writes.refused.len() as u64, Relaxed);
            for share in &summary.segments {
                clients.insert((summary.model.clone(), share.code.clone()), share.count);
            }
        }
    }

    /// A CDS Hooks call answered with `status`.
    pub(crate) fn cds_answered(&self, status: u16) {
        *self
            .cds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(status)
            .or_default() += 1;
    }

    /// Feedback on a card.
    pub(crate) fn feedback(&self, accepted: bool) {
        if accepted {
            &self.accepted
        } else {
            &self.overridden
        }
        .fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let plain = |v: &AtomicU64| vec![(String::new(), v.load(Relaxed))];
        family(
            "segmentti_runs_total",
            "counter",
            "Scheduled runs by outcome.",
            &[
                (label(&[("outcome", "success")]), self.runs_ok.load(Relaxed)),
                (
                    label(&[("outcome", "failure")]),
                    self.runs_failed.load(Relaxed),
                ),
            ],
        );
        family(
            "segmentti_run_in_progress",
            "gauge",
            "1 while a run is under way.",
            &plain(&self.in_progress),
        );
        let runs = self.runs_ok.load(Relaxed) + self.runs_failed.load(Relaxed);
        let _ = writeln!(
            out,
            "# HELP segmentti_run_duration_seconds Durations of runs.\n# TYPE segmentti_run_duration_seconds summary\nsegmentti_run_duration_seconds_sum {:.3}\nsegmentti_run_duration_seconds_count {runs}",
            self.duration_ms.load(Relaxed) as f64 / 1000.0
        );
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        family(
            "segmentti_last_success_timestamp_seconds",
            "gauge",
            "End of the last successful run, Unix time; 0 before the first.",
            &plain(&self.last_success),
        );
        family(
            "segmentti_resources_read_total",
            "counter",
            "FHIR resources read by runs.",
            &plain(&self.read),
        );
        family(
            "segmentti_resources_rejected_total",
            "counter",
            "Resources runs could not use.",
            &plain(&self.rejected),
        );
        family(
            "segmentti_resources_written_total",
            "counter",
            "Resources written back, by kind.",
            &[
                (
                    label(&[("kind", "observation")]),
                    self.observations.load(Relaxed),
                ),
                (label(&[("kind", "flag")]), self.flags.load(Relaxed)),
                (
                    label(&[("kind", "flag_ended")]),
                    self.flags_ended.load(Relaxed),
                ),
            ],
        );
        family(
            "segmentti_clients_refused_total",
            "counter",
            "Clients whose results the server refused.",
            &plain(&self.refused),
        );
        family(
            "segmentti_retries_total",
            "counter",
            "HTTP retries of the FHIR client.",
            &[(String::new(), crate::fhir::retry::RETRIES.load(Relaxed))],
        );
        let clients: Vec<(String, u64)> = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((m, s), n)| (label(&[("model", m), ("segment", s)]), *n))
            .collect();
        family(
            "segmentti_last_run_clients",
            "gauge",
            "Clients evaluated in the last successful run, per segment.",
            &clients,
        );
        let cds: Vec<(String, u64)> = self
            .cds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(s, n)| (label(&[("status", &s.to_string())]), *n))
            .collect();
        family(
            "segmentti_cds_requests_total",
            "counter",
            "CDS Hooks service calls by HTTP status.",
            &cds,
        );
        family(
            "segmentti_cds_feedback_total",
            "counter",
            "Feedback on cards by outcome.",
            &[
                (
                    label(&[("outcome", "accepted")]),
                    self.accepted.load(Relaxed),
                ),
                (
                    label(&[("outcome", "overridden")]),
                    self.overridden.load(Relaxed),
                ),
            ],
        );
        out
    }
}

/// `{a="x",b="y"}` with the exposition format's escapes.
fn label(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_line_is_well_formed_and_labels_are_escaped() {
        let m = Metrics::default();
        m.cds_answered(200);
        m.feedback(true);
        m.clients
            .lock()
            .expect("lock")
            .insert(("a\"b".into(), "x\\y".into()), 3);
        let text = m.render();
        assert!(
            text.contains("segmentti_last_run_clients{model=\"a\\\"b\",segment=\"x\\\\y\"} 3"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("name and value");
            value
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }
}
