//! Results of a joined run written to several FHIR servers: each client's resources go to the
//! [`FhirSink`] of the target they were built for ([`ClientResources::target`]), so every
//! server keeps its own batches, idempotence and Flag lifecycle. A target that fails (down
//! after retries) fails alone: its writes stop, the error is kept for the report and the exit
//! code, and the other targets go on; the next run completes it, since nothing written
//! is written again. It decides nothing about what to write.

use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::error;

use super::fhir::{FhirSink, WriteReport};
use super::{ClientResources, Sink, SinkError};
use crate::model::plan::Plan;
use crate::pipeline::Rejected;

/// One target's outcome.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetOutcome {
    /// Every write was sent (the server may still have refused some clients).
    Written(WriteReport),
    /// The target failed; what it said. Writes sent before the failure stay.
    Failed(String),
}

/// Several FHIR servers, by target number.
#[derive(Debug)]
pub struct FanOut {
    targets: Vec<Target>,
}

#[derive(Debug)]
struct Target {
    label: String,
    sink: Option<FhirSink>,
    failure: Option<String>,
    spent: Duration,
}

impl Target {
    fn fail(&mut self, message: String) {
        error!(target_server = %self.label, error = %message, "writing to this target failed; its remaining writes are skipped");
        self.sink = None;
        self.failure = Some(message);
    }
}

impl FanOut {
    /// One sink per target, with the target's name for logs and reports.
    pub fn new(targets: Vec<(String, FhirSink)>) -> Self {
        Self {
            targets: targets
                .into_iter()
                .map(|(label, sink)| Target {
                    label,
                    sink: Some(sink),
                    failure: None,
                    spent: Duration::ZERO,
                })
                .collect(),
        }
    }

    /// Writes what is pending at every target; per target, its name, the seconds spent
    /// writing to it, and the outcome.
    pub fn finish(self, plan: &Plan) -> Vec<(String, f64, TargetOutcome)> {
        self.targets
            .into_iter()
            .map(|mut t| {
                let started = Instant::now();
                let finished = t.sink.take().map(|sink| sink.finish(plan));
                t.spent += started.elapsed();
                let outcome = match (finished, t.failure.take()) {
                    (Some(finished), _) => match finished {
                        Ok(report) => TargetOutcome::Written(report),
                        Err(e) => {
                            let message = e.to_string();
                            t.fail(message.clone());
                            TargetOutcome::Failed(message)
                        }
                    },
                    (None, failure) => TargetOutcome::Failed(failure.unwrap_or_default()),
                };
                (t.label, t.spent.as_secs_f64(), outcome)
            })
            .collect()
    }
}

impl Sink for FanOut {
    type Encoded = ClientResources;

    fn encode(_plan: &Plan, resources: ClientResources) -> Result<ClientResources, SinkError> {
        Ok(resources)
    }

    fn client(&mut self, plan: &Plan, resources: ClientResources) -> Result<(), SinkError> {
        let Some(target) = self.targets.get_mut(resources.target) else {
            return Err(SinkError::Remote(format!(
                "no write target {} (a bug in segmentti)",
                resources.target
            )));
        };
        if let Some(sink) = &mut target.sink {
            let started = Instant::now();
            let sent = sink.client(plan, resources);
            target.spent += started.elapsed();
            if let Err(e) = sent {
                target.fail(e.to_string());
            }
        }
        Ok(())
    }

    fn rejected(&mut self, _rejected: &Rejected) -> Result<(), SinkError> {
        Ok(())
    }
}
