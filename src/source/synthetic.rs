//! The built-in synthetic population as a source: [`crate::source::synth`] generates each client's
//! resources as NDJSON lines on the fly, so the embedded default needs no files and no server.

use std::sync::Arc;

use super::files::SourceError;
use super::{BATCH, Batch, Item, Origin, Payload};
use crate::fhir::types::ResourceKind;
use crate::source::synth::{self, SynthOptions};

/// The as-of date of the embedded default, so that its output never changes.
pub const DEFAULT_AS_OF: &str = "2026-01-01";

/// Generates the population of `opts`, handing batches of items to `emit`. Like a server asked
/// for the types the models read (`kinds`), it gives those types only, with care records
/// (Observation, EpisodeOfCare) when a model reads them; otherwise the population is what it
/// always was.
pub(crate) fn read(
    opts: &SynthOptions,
    kinds: &[ResourceKind],
    mut emit: impl FnMut(Batch) -> Result<(), String>,
) -> Result<(), SourceError> {
    let wanted =
        |k: &ResourceKind| matches!(k, ResourceKind::Observation | ResourceKind::EpisodeOfCare);
    let opts = SynthOptions {
        records: opts.records || kinds.iter().any(wanted),
        ..opts.clone()
    };
    let name: Arc<str> = Arc::from("synthetic");
    let mut batch = Vec::with_capacity(BATCH);
    let lines = synth::lines(&opts).filter(|(kind, _)| kinds.contains(kind));
    for (n, (_, line)) in lines.enumerate() {
        let origin = Origin {
            file: name.clone(),
            line: n as u64 + 1,
            entry: false,
        };
        batch.push(Item {
            origin,
            payload: Payload::Line(line),
        });
        if batch.len() == BATCH {
            emit(Batch::Items(std::mem::replace(
                &mut batch,
                Vec::with_capacity(BATCH),
            )))
            .map_err(SourceError::Stopped)?;
        }
    }
    if !batch.is_empty() {
        emit(Batch::Items(batch)).map_err(SourceError::Stopped)?;
    }
    Ok(())
}
