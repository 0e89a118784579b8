//! Where results go. A `Sink` takes one client's built resources at a time and the rejected
//! inputs, and commits at `Sink::finish`: a file sink writes the summary and renames its
//! files into place, a server sink sends the model's last transaction, a fan-out waits for
//! every target. Sinks know formats and destinations; they never decide what to write (that is
//! [`crate::writeback`]'s and the pipeline's job).
//!
//! - `files`: NDJSON ready for Bulk import, `summary.json`, `rejected.ndjson`.
//! - [`fhir`]: a FHIR server, by idempotent transactions with the Flag lifecycle.
//! - [`fanout`]: several FHIR servers, each client's resources to the one they were built for.

mod direct;
pub mod fanout;
pub mod fhir;
pub(crate) mod files;
mod ndjson;

use crate::model::plan::Plan;
use crate::record::{Rejected, Unassessed};
use crate::writeback::Parts;
use crate::writeback::{Built, ClientResources, Concepts};

/// Why a sink failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Writing a file failed.
    #[error(
        "cannot write {path}: {source}\nhint: check free disk space and that the output directory is writable"
    )]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A server refused the write as a whole (after retries).
    #[error("{0}")]
    Remote(String),
    /// A FHIR server could not be read or written, or refused segmentti's writes (boxed: it is
    /// large, and rare).
    #[error(transparent)]
    Server(Box<fhir::FhirSinkError>),
    /// A resource could not be serialised.
    #[error("cannot serialise a resource for Patient/{patient}: {cause}")]
    Serialize {
        /// The client.
        patient: String,
        /// The cause.
        cause: String,
    },
}

impl SinkError {
    /// Whether a server refused segmentti's writes for what they are (401, 403, 404, 405): no
    /// write does better until credentials, scopes or the base URL change.
    fn is_refusal(&self) -> bool {
        matches!(self, Self::Server(e) if e.is_refusal())
    }
}

/// A destination for results.
pub(crate) trait Sink {
    /// A client's resources as this sink takes them (serialised lines, JSON values).
    type Encoded: Send;
    /// Which of the assessment's elements the builders fill for this sink: [`Parts::Own`]
    /// for one that adds the shared ones itself.
    const PARTS: Parts = Parts::All;
    /// What the sink makes once per model to encode its clients with (the model's shared parts,
    /// serialised); shared by the threads that encode.
    type Prepared: Sync;
    /// Prepares the encoding of `plan`'s clients, whose shared parts are `concepts`.
    fn prepare(plan: &Plan, concepts: &Concepts) -> Result<Self::Prepared, SinkError>;
    /// Encodes one client's resources; pure, so the pipeline runs it on many clients at once.
    fn encode(
        prepared: &Self::Prepared,
        built: Built<'_>,
        resources: ClientResources,
    ) -> Result<Self::Encoded, SinkError>;
    /// Takes one client's encoded resources, in client order.
    fn client(&mut self, plan: &Plan, encoded: Self::Encoded) -> Result<(), SinkError>;
    /// Records a rejected input.
    fn rejected(&mut self, rejected: &Rejected) -> Result<(), SinkError>;
    /// What committing needs beside what was taken: the summary for files, the model for a
    /// server.
    type Closing<'a>;
    /// What committing returns: what was written, where a sink keeps count.
    type Written;
    /// Commits everything taken; nothing of a sink that fails here is published as complete.
    fn finish(self, closing: Self::Closing<'_>) -> Result<Self::Written, SinkError>;
    /// Takes a client who gets no assessment ([`Unassessed`]), as `patient` at `target`: a
    /// sink that holds earlier results of the model (a server's active Flags) ends them. Files
    /// hold none.
    fn unassessed(
        &mut self,
        _plan: &Plan,
        _target: usize,
        _patient: &str,
        _why: Unassessed,
    ) -> Result<(), SinkError> {
        Ok(())
    }
}
