//! Results of a joined run written to several FHIR servers: each client's resources go to the
//! `FhirSink` of the target they were built for ([`ClientResources::target`]), so every
//! server keeps its own batches, idempotence and Flag lifecycle. Each target is written from
//! its own thread, fed through a bounded channel: the servers work at once, and a slow one
//! holds the others back only when its queue is full. A target that fails (down after
//! retries) fails alone: its writes stop, the error is kept for the report and the exit
//! code, and the other targets go on; the next run completes it, since nothing written is
//! written again. A target that refuses a write for what it is (401, 403, 404, 405) stops
//! alike at once, nothing more is sent to it, and its outcome says it was refused, not down:
//! running again does not help until its credentials, scopes or base URL are fixed. It
//! decides nothing about what to write.

use std::sync::mpsc;
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::error;

use super::fhir::{FhirSink, WriteReport};
use super::{Sink, SinkError};
use crate::model::plan::Plan;
use crate::record::Rejected;
use crate::record::Unassessed;
use crate::writeback::{Built, ClientResources, Concepts};

/// Clients queued per target before the assessment waits for that target.
const QUEUE: usize = 1024;

/// What a target's writer is given.
#[derive(Debug)]
enum Write {
    /// An assessed client's resources.
    Client(ClientResources),
    /// A client who gets no assessment, by their Patient id at the target.
    Gone(String, Unassessed),
}

/// One target's outcome.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetOutcome {
    /// Every write was sent (the server may still have refused some clients).
    Written(WriteReport),
    /// The target failed; what it said. Writes sent before the failure stay.
    Failed(String),
    /// The target refused a read or write for what it is (401, 403, 404, 405; see
    /// `crate::fhir::FhirError::is_refusal`); what it said. Nothing more was sent to it.
    NotAllowed(String),
}

/// Several FHIR servers, by target number, each written from its own thread of `scope`.
#[derive(Debug)]
pub(crate) struct FanOut<'scope> {
    targets: Vec<Target<'scope>>,
}

#[derive(Debug)]
struct Target<'scope> {
    label: String,
    queue: mpsc::SyncSender<Write>,
    writer: ScopedJoinHandle<'scope, (Duration, TargetOutcome)>,
}

impl<'scope> FanOut<'scope> {
    /// One writer per target (with the target's name for logs and reports), writing `plan`'s
    /// results until [`Sink::finish`].
    pub(crate) fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        plan: &'scope Plan,
        targets: Vec<(String, FhirSink)>,
    ) -> Self {
        let targets = targets
            .into_iter()
            .map(|(label, sink)| {
                let (queue, clients) = mpsc::sync_channel(QUEUE);
                let name = label.clone();
                let writer = scope.spawn(move || write(&name, plan, sink, clients));
                Target {
                    label,
                    queue,
                    writer,
                }
            })
            .collect();
        Self { targets }
    }

    /// Queues `write` for `target`'s writer.
    fn send(&self, target: usize, write: Write) -> Result<(), SinkError> {
        let Some(t) = self.targets.get(target) else {
            return Err(SinkError::Remote(format!(
                "no write target {target} (a bug in segmentti)"
            )));
        };
        // The writer drains its queue to the end, failed or not, so a send fails only when
        // its thread is gone.
        t.queue.send(write).map_err(|_| {
            SinkError::Remote(format!(
                "the writer of {} stopped (a bug in segmentti)",
                t.label
            ))
        })
    }

    /// Writes what is pending at every target; per target, its name, the seconds spent
    /// writing to it, and the outcome.
    fn wait(self) -> Vec<(String, f64, TargetOutcome)> {
        self.targets
            .into_iter()
            .map(|t| {
                drop(t.queue);
                let (spent, outcome) = t
                    .writer
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (t.label, spent.as_secs_f64(), outcome)
            })
            .collect()
    }
}

/// One target's writer: every client from `clients` into `sink` until the queue closes, then
/// what is pending; the time spent writing and the outcome. After a failure the rest of the
/// queue is drained unwritten, so the assessment never waits on a dead target.
fn write(
    label: &str,
    plan: &Plan,
    sink: FhirSink,
    clients: mpsc::Receiver<Write>,
) -> (Duration, TargetOutcome) {
    let mut spent = Duration::ZERO;
    // The sink while it works; its outcome once it failed.
    let mut sink = Ok(sink);
    let fail = |refused: bool, message: String| {
        error!(target_server = %label, refused, error = %message, "writing to this target failed; its remaining writes are skipped");
        if refused {
            TargetOutcome::NotAllowed(message)
        } else {
            TargetOutcome::Failed(message)
        }
    };
    for write in clients {
        let Ok(s) = &mut sink else { continue };
        let started = Instant::now();
        let sent = match write {
            Write::Client(resources) => s.client(plan, resources),
            Write::Gone(patient, why) => s.unassessed(plan, 0, &patient, why),
        };
        spent += started.elapsed();
        if let Err(e) = sent {
            sink = Err(fail(e.is_refusal(), e.to_string()));
        }
    }
    let sink = match sink {
        Ok(sink) => sink,
        Err(outcome) => return (spent, outcome),
    };
    let started = Instant::now();
    let finished = sink.finish(plan);
    spent += started.elapsed();
    let outcome = match finished {
        Ok(report) => TargetOutcome::Written(report),
        Err(e) => fail(e.is_refusal(), e.to_string()),
    };
    (spent, outcome)
}

impl Sink for FanOut<'_> {
    type Encoded = ClientResources;

    type Prepared = ();

    fn prepare(_: &Plan, _: &Concepts) -> Result<(), SinkError> {
        Ok(())
    }

    fn encode(
        (): &(),
        _: Built<'_>,
        resources: ClientResources,
    ) -> Result<ClientResources, SinkError> {
        Ok(resources)
    }

    fn client(&mut self, _plan: &Plan, resources: ClientResources) -> Result<(), SinkError> {
        let target = resources.target;
        self.send(target, Write::Client(resources))
    }

    fn unassessed(
        &mut self,
        _plan: &Plan,
        target: usize,
        patient: &str,
        why: Unassessed,
    ) -> Result<(), SinkError> {
        self.send(target, Write::Gone(patient.to_owned(), why))
    }

    fn rejected(&mut self, _rejected: &Rejected) -> Result<(), SinkError> {
        Ok(())
    }

    type Closing<'a> = ();
    /// Per target, its name, the seconds spent writing to it, and the outcome: a target that
    /// fails fails alone.
    type Written = Vec<(String, f64, TargetOutcome)>;

    fn finish(self, (): ()) -> Result<Self::Written, SinkError> {
        Ok(self.wait())
    }
}
