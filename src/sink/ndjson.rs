//! A client's resources as JSON lines, joined from parts serialised once per run. Most of an
//! assessment Observation is the same for every client of a segment: the codes, the model, each
//! criterion's level and the displays in three languages, about nine tenths of its bytes.
//! Serialising the typed resource again for every client would cost more than reading the
//! input, so `Encoded::new` serialises each of the model's parts ([`Concepts`]) once, with
//! fhir-sdk's own serialiser, and `observation` and `flag` write a client's ids and
//! references around them in the order fhir-sdk writes the elements.
//!
//! The bytes are those of `serde_json::to_vec` of the typed resource: debug builds (every test)
//! compare the two for every line written, and a test here compares them for every model. The
//! builders make the client's own elements (`Parts::Own`) and `writeback::validate` checks them
//! per client and the shared parts once per run; this module only writes them, for the file
//! sink ([`super::files`]), which prepares the [`Encoded`] parts once per model.

use fhir_sdk::r4b::resources::{Flag, Observation};
use serde::Serialize;

use crate::assess::eval::Assessment;
use crate::model::plan::Plan;
use crate::writeback::{Components, Concepts, Written, fhir_date, flag, meta, observation};

/// The parts of one model's resources, serialised.
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    /// The Observation's `meta`, `category`, `code`, `effectiveDateTime`, `method` and
    /// `device` values.
    observation_meta: Vec<u8>,
    observation_category: Vec<u8>,
    code: Vec<u8>,
    effective: Vec<u8>,
    method: Vec<u8>,
    device: Vec<u8>,
    /// Per segment, its concept (the Observation's value, the segment Flag's code).
    segments: Vec<Vec<u8>>,
    /// Every component an assessment can have.
    components: Components<Vec<u8>>,
    /// Per overlay, its Flag's code.
    overlay_flags: Vec<Vec<u8>>,
    /// `meta` of the segment Flag, then of each overlay's Flag.
    flag_meta: Vec<Vec<u8>>,
    /// The Flags' `category` and `period`.
    flag_category: Vec<u8>,
    period: Vec<u8>,
}

fn json(value: &impl Serialize) -> Result<Vec<u8>, String> {
    serde_json::to_vec(value).map_err(|e| e.to_string())
}

fn all<T: Serialize>(values: &[T]) -> Result<Vec<Vec<u8>>, String> {
    values.iter().map(json).collect()
}

impl Encoded {
    /// Serialises the parts of `concepts`, the codes of `plan`'s model.
    pub(crate) fn new(plan: &Plan, concepts: &Concepts) -> Result<Self, String> {
        let as_of = fhir_sdk::DateTime::Date(fhir_date(plan.as_of));
        let period = fhir_sdk::r4b::types::Period::builder()
            .start(as_of.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let written = |o: usize| {
            let part = Some(plan.mapping.overlays[o].code.as_str());
            flag::profile(Written::OverlayFlag, part)
        };
        let flag_profiles = std::iter::once(flag::profile(Written::SegmentFlag, None))
            .chain((0..plan.mapping.overlays.len()).map(written));
        Ok(Self {
            observation_meta: json(&meta("segment-assessment")?)?,
            observation_category: json(&[&concepts.observation_category])?,
            code: json(&concepts.assessment)?,
            effective: json(&as_of)?,
            method: json(&concepts.method)?,
            device: json(&concepts.device)?,
            segments: all(&concepts.segments)?,
            components: concepts.components.try_map(json)?,
            overlay_flags: all(&concepts.overlay_flags)?,
            flag_meta: flag_profiles
                .map(|p| json(&meta(p)?))
                .collect::<Result<_, _>>()?,
            flag_category: json(&[&concepts.flag_category])?,
            period: json(&period)?,
        })
    }
}

/// Appends `value` as JSON; the values written here (strings, references, identifiers,
/// extensions of strings and integers) always serialise.
fn push(out: &mut Vec<u8>, value: &impl Serialize) -> Result<(), serde_json::Error> {
    serde_json::to_writer(out, value)
}

/// Appends the line of `obs`, built for assessment `a` with `concepts` (with `Parts::All` or
/// `Parts::Own`: the shared elements are written from `parts`, their serialised form, either
/// way): the same bytes as `serde_json::to_vec` of the whole Observation, then a newline.
pub(crate) fn observation_line(
    parts: &Encoded,
    concepts: &Concepts,
    a: &Assessment,
    obs: &Observation,
    out: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    let start = out.len();
    out.extend_from_slice(br#"{"resourceType":"Observation","id":"#);
    push(out, &obs.id)?;
    out.extend_from_slice(br#","meta":"#);
    out.extend_from_slice(&parts.observation_meta);
    if !obs.extension.is_empty() {
        out.extend_from_slice(br#","extension":"#);
        push(out, &obs.extension)?;
    }
    out.extend_from_slice(br#","identifier":"#);
    push(out, &obs.identifier)?;
    out.extend_from_slice(br#","status":"final","category":"#);
    out.extend_from_slice(&parts.observation_category);
    out.extend_from_slice(br#","code":"#);
    out.extend_from_slice(&parts.code);
    out.extend_from_slice(br#","subject":"#);
    push(out, &obs.subject)?;
    out.extend_from_slice(br#","effectiveDateTime":"#);
    out.extend_from_slice(&parts.effective);
    out.extend_from_slice(br#","valueCodeableConcept":"#);
    out.extend_from_slice(&parts.segments[a.segment]);
    out.extend_from_slice(br#","method":"#);
    out.extend_from_slice(&parts.method);
    out.extend_from_slice(br#","device":"#);
    out.extend_from_slice(&parts.device);
    let mut components = parts.components.of(a);
    if let Some(first) = components.next() {
        out.extend_from_slice(br#","component":["#);
        out.extend_from_slice(first);
        for c in components {
            out.push(b',');
            out.extend_from_slice(c);
        }
        out.push(b']');
    }
    out.push(b'}');
    if cfg!(debug_assertions) {
        let mut full = obs.clone();
        observation::share(&mut full, concepts, a);
        debug_assert_same(&out[start..], &full);
    }
    out.push(b'\n');
    Ok(())
}

/// Appends the line of `flag`, the `n`th Flag built for assessment `a` (0: the segment Flag,
/// then one per overlay that holds, in the model's order): the same bytes as
/// `serde_json::to_vec(flag)`, then a newline; the shared elements are written from `parts`.
pub(crate) fn flag_line(
    parts: &Encoded,
    a: &Assessment,
    n: usize,
    flag: &Flag,
    out: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    let overlay = n
        .checked_sub(1)
        .and_then(|k| (0..a.overlays.len()).filter(|&o| a.overlay_holds(o)).nth(k));
    let (meta, code) = match overlay {
        Some(o) => (&parts.flag_meta[o + 1], &parts.overlay_flags[o]),
        None => (&parts.flag_meta[0], &parts.segments[a.segment]),
    };
    let start = out.len();
    out.extend_from_slice(br#"{"resourceType":"Flag","id":"#);
    push(out, &flag.id)?;
    out.extend_from_slice(br#","meta":"#);
    out.extend_from_slice(meta);
    out.extend_from_slice(br#","extension":"#);
    push(out, &flag.extension)?;
    out.extend_from_slice(br#","identifier":"#);
    push(out, &flag.identifier)?;
    out.extend_from_slice(br#","status":"active","category":"#);
    out.extend_from_slice(&parts.flag_category);
    out.extend_from_slice(br#","code":"#);
    out.extend_from_slice(code);
    out.extend_from_slice(br#","subject":"#);
    push(out, &flag.subject)?;
    out.extend_from_slice(br#","period":"#);
    out.extend_from_slice(&parts.period);
    out.push(b'}');
    debug_assert_same(&out[start..], flag);
    out.push(b'\n');
    Ok(())
}

/// In debug builds, that `line` is what serde writes for `typed`.
fn debug_assert_same(line: &[u8], typed: &impl Serialize) {
    if cfg!(debug_assertions) {
        let expected = serde_json::to_vec(typed).unwrap_or_default();
        assert!(
            line == expected.as_slice(),
            "the joined line differs from the typed resource's serialisation:\n{}\n{}",
            String::from_utf8_lossy(line),
            String::from_utf8_lossy(&expected)
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::model::load::load_str;
    use crate::run::pipeline::{self, Input, RunOptions};
    use crate::source::synth::{Bills, CodeFlavor, SynthOptions};
    use crate::writeback::Parts::Own;

    const MODELS: [&str; 5] = [
        include_str!("../../mappings/paijat-sote.yaml"),
        include_str!("../../mappings/suuntima.yaml"),
        include_str!("../../mappings/nylander.yaml"),
        include_str!("../../mappings/virta.yaml"),
        include_str!("../../mappings/helsinki-oral-health.yaml"),
    ];

    fn typed(value: &impl Serialize) -> String {
        let mut line = serde_json::to_string(value).expect("serialises");
        line.push('\n');
        line
    }

    /// Every model's lines, for a population that reaches several segments and overlays, are
    /// byte for byte what serde writes for the typed resources.
    #[test]
    fn joined_lines_are_the_typed_resources_serialised() {
        let as_of = "2026-01-01".parse().expect("day");
        for text in MODELS {
            let plan = Plan::compile(load_str(text).expect("model"), as_of).expect("plan");
            let input = Input::Synthetic(SynthOptions {
                clients: 400,
                seed: 11,
                flavor: CodeFlavor::Finnish,
                as_of,
                area: None,
                bills: Bills::Claims,
                records: false,
                shapes: false,
            });
            let folded = pipeline::fold(
                &input,
                std::slice::from_ref(&plan),
                &RunOptions::default(),
                &mut |_| Ok(()),
            )
            .expect("folded");
            let clients = &folded.clients[0];
            let thresholds = crate::assess::thresholds::population_thresholds(&plan, clients);
            let concepts = Concepts::new(&plan).expect("concepts");
            let parts = Encoded::new(&plan, &concepts).expect("serialised parts");
            let (mut segments, mut overlay_flags) = (BTreeSet::new(), 0);
            for (id, record) in clients {
                let a = pipeline::assess(&plan, id, record, &thresholds).expect("placed");
                let built =
                    crate::writeback::build(&plan, &concepts, id, record, &a).expect("built");
                let mut line = Vec::new();
                observation_line(&parts, &concepts, &a, &built.observation, &mut line)
                    .expect("line");
                assert_eq!(
                    String::from_utf8(line).expect("utf-8"),
                    typed(&built.observation)
                );
                let own =
                    crate::writeback::assessment(&plan, &concepts, (id, record), &a, &[], Own)
                        .expect("built");
                assert!(own.component.is_empty() && own.value.is_none());
                let mut line = Vec::new();
                observation_line(&parts, &concepts, &a, &own, &mut line).expect("line");
                assert_eq!(
                    String::from_utf8(line).expect("utf-8"),
                    typed(&built.observation)
                );
                for (n, f) in built.flags.iter().enumerate() {
                    let mut line = Vec::new();
                    flag_line(&parts, &a, n, f, &mut line).expect("line");
                    assert_eq!(String::from_utf8(line).expect("utf-8"), typed(f));
                }
                segments.insert(a.segment);
                overlay_flags += built.flags.len() - 1;
            }
            let model = &plan.mapping.id;
            assert!(segments.len() > 1, "{model}: one segment only");
            if !plan.overlays.is_empty() {
                assert!(overlay_flags > 0, "{model}: no overlay held");
            }
        }
    }
}
