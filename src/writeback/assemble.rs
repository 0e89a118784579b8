//! A client's resources, assembled: the Observation and Flags of one assessed client for each
//! write it gets ([`View`]), in the form every sink takes ([`ClientResources`]). Pure, as the
//! builders it calls.

use std::borrow::Cow;

use fhir_sdk::r4b::resources::{Flag, Observation};

use crate::assess::eval::Assessment;
use crate::model::plan::Plan;
use crate::record::ClientRecord;
use crate::writeback::{self, BuildError, Concepts, Parts};

/// One client's resources, as built.
#[derive(Debug, Clone)]
pub struct ClientResources {
    /// Which target of a sink writing to several gets them (0 when there is one).
    pub target: usize,
    /// The client's Patient id (at the target).
    pub patient: String,
    /// The assessment.
    pub observation: Observation,
    /// Which of the assessment's elements were built.
    pub parts: Parts,
    /// The segment Flag first, then overlay Flags.
    pub flags: Vec<Flag>,
    /// The assessment's fingerprint (see [`crate::writeback::lifecycle`]).
    pub fingerprint: String,
}

/// What a client's resources were built from, for a sink that encodes them from the model's
/// parts serialised once (the file sink's `ndjson`) rather than serialising each anew.
#[derive(Debug, Clone, Copy)]
pub struct Built<'a> {
    /// The model's codes and components.
    pub concepts: &'a Concepts,
    /// The assessment the resources say.
    pub assessment: &'a Assessment,
}

/// One write of an assessed client: the target it goes to, the client's Patient id there, the
/// record as that target may cite it, and what counted on other sources.
#[derive(Debug)]
pub struct View<'a> {
    /// The sink's target (0 when there is one).
    pub target: usize,
    /// The client's Patient id at the target.
    pub patient: &'a str,
    /// The record, its evidence limited to what the target holds.
    pub record: Cow<'a, ClientRecord>,
    /// Resources that counted on other sources, which the target cannot refer to.
    pub elsewhere: Vec<writeback::Elsewhere>,
}

/// Which writes each assessed client gets.
pub trait Views: Sync {
    /// The writes of client `id`, whose (whole) record is `record`; none is fine.
    fn views<'a>(&'a self, id: &'a str, record: &'a ClientRecord) -> Vec<View<'a>>;
}

/// One source, one sink: each client is written once, under its own id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Whole;

impl Views for Whole {
    fn views<'a>(&'a self, id: &'a str, record: &'a ClientRecord) -> Vec<View<'a>> {
        vec![View {
            target: 0,
            patient: id,
            record: Cow::Borrowed(record),
            elsewhere: Vec::new(),
        }]
    }
}

/// Builds one client's Observation and Flags.
pub(crate) fn build(
    plan: &Plan,
    concepts: &Concepts,
    id: &str,
    record: &ClientRecord,
    a: &Assessment,
) -> Result<ClientResources, BuildError> {
    build_view(plan, concepts, &Whole.views(id, record)[0], a, Parts::All)
}

/// Builds one write of a client: its Observation (with `parts` of its elements) and Flags for
/// the view's target.
pub(crate) fn build_view(
    plan: &Plan,
    concepts: &Concepts,
    view: &View<'_>,
    a: &Assessment,
    parts: Parts,
) -> Result<ClientResources, BuildError> {
    let (id, record) = (view.patient, view.record.as_ref());
    let observation =
        writeback::assessment(plan, concepts, (id, record), a, &view.elsewhere, parts)?;
    let obs_ref = format!(
        "Observation/{}",
        observation.id.as_deref().unwrap_or_default()
    );
    let fingerprint = writeback::lifecycle::fingerprint(plan, a);
    let of = writeback::flag::Assessed {
        patient: id,
        observation: &obs_ref,
        fingerprint: &fingerprint,
    };
    let mut flags = vec![writeback::segment_flag(plan, concepts, a, of)?];
    for o in 0..plan.overlays.len() {
        if a.overlay_holds(o) {
            flags.push(writeback::overlay_flag(plan, concepts, o, of)?);
        }
    }
    Ok(ClientResources {
        target: view.target,
        patient: id.to_owned(),
        observation,
        parts,
        flags,
        fingerprint,
    })
}
