//! The bodies of the fuzz targets, one function per target over arbitrary bytes, shared by the
//! libFuzzer binaries in `fuzz_targets/` and by the stable regression test that runs every
//! committed input in `corpus/` through them (`tests/it/fuzz_regressions.rs`, which includes
//! this file as a module). Each reads input the way the product does, through its public
//! functions, and carries it as far on as a valid input would go (a fact folds, a client is
//! assessed and explained), so a panic, hang or unbounded allocation anywhere on that path is
//! found. Nothing here checks results: the product's own `debug_assert!`s (the scanner and
//! serde must agree) are the oracles, and fuzz builds keep them on.

use std::sync::{Arc, OnceLock};

use segmentti::assess::eval::{self, Lang};
use segmentti::fhir::day::Day;
use segmentti::model::load::load_str;
use segmentti::model::plan::Plan;
use segmentti::record::Fold;
use segmentti::record::extract::{extract_str, extract_value};
use segmentti::serve::cds::{Resources, parse_call};
use segmentti::source::Resource;
use segmentti::source::files::{Limits, LineBlocks, bundle_entries};
use serde_json::Value;

/// A target's body: one input, any bytes.
pub type Target = fn(&[u8]);

/// Every target by the name of its binary and of its corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("lines", lines),
    ("bundle", bundle),
    ("mapping", mapping),
    ("cds_request", cds_request),
];

/// NDJSON as it arrives from a file or a Bulk Data download: cut into lines, each line through
/// the scanner (or serde) into a fact, folded, assessed and explained under every shipped model.
pub fn lines(data: &[u8]) {
    // Limits a fuzzer's inputs reach, so that skipping over-long lines and the cap are fuzzed too.
    let limits = Limits {
        max_line_bytes: 1 << 10,
        max_decompressed_bytes: 1 << 20,
    };
    let mut reader = LineBlocks::new(Arc::from("fuzz.ndjson"), limits);
    let Ok(first) = reader.push(data) else {
        return;
    };
    let batches: Vec<_> = first.into_iter().chain(reader.finish()).collect();
    for plan in plans() {
        let mut fold = Fold::new(plan);
        for batch in &batches {
            for resource in batch.resources().1 {
                let fact = match resource {
                    Resource::Text(text) => extract_str(plan, text),
                    Resource::Value(value) => extract_value(plan, value),
                    Resource::Unreadable(_) => continue,
                };
                // A rejected resource is the expected answer to most inputs.
                let _ = fact.and_then(|f| fold.apply(f));
            }
        }
        assess_all(plan, fold);
    }
}

/// A `.json` file or a server's answer: the searchset and transaction-response readers, then the
/// entries of a Bundle file, references resolved, through extraction and the fold.
pub fn bundle(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let _ = segmentti::fhir::next_link(&value);
    let _ = segmentti::fhir::matches(&value).count();
    let _ = segmentti::fhir::bundle::search_outcomes(&value).count();
    let _ = segmentti::fhir::entry_outcomes(&value);
    let Ok(entries) = bundle_entries(value) else {
        return;
    };
    for plan in plans() {
        let mut fold = Fold::new(plan);
        for (_, resource) in &entries {
            let _ = extract_value(plan, resource).and_then(|f| fold.apply(f));
        }
        assess_all(plan, fold);
    }
}

/// A mapping file's text: YAML, includes, schema, checks, and the compiled plan.
pub fn mapping(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(mapping) = load_str(text) {
        let _ = Plan::compile(mapping, as_of());
    }
}

/// The server the CDS target trusts: the one the corpus's calls name.
const TRUSTED_SERVER: &str = "http://127.0.0.1:1/fhir";

/// The JSON body of a CDS Hooks `patient-view` call: every check the service makes of it (hook,
/// `context.patientId`, `fhirServer`, prefetch), and the client a complete prefetch brings
/// folded, assessed and explained under every shipped model.
pub fn cds_request(data: &[u8]) {
    let Ok(request) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    // Parsed here, with its type from `parse_call`'s, since this crate has no `url` of its own.
    let trusted = TRUSTED_SERVER.parse().expect("a URL");
    let Ok(call) = parse_call(&request, &trusted) else {
        return;
    };
    let Resources::Prefetched(resources) = call.resources else {
        return;
    };
    let patient = call.patient.as_str();
    let refs: Vec<&Value> = resources.iter().collect();
    for plan in plans() {
        if let (Some(record), _) = segmentti::run::pipeline::fold_client(plan, patient, &refs) {
            explain(plan, patient, &record);
        }
    }
}

fn assess_all(plan: &Plan, fold: Fold<'_>) {
    for (patient, record) in fold.into_clients().0 {
        explain(plan, &patient, &record);
    }
}

fn explain(plan: &Plan, patient: &str, record: &segmentti::record::ClientRecord) {
    let thresholds = vec![None; plan.percentiles.len()];
    if let Ok(a) = segmentti::run::pipeline::assess(plan, patient, record, &thresholds) {
        let _ = eval::explain(plan, patient, record, &a, Lang::En, &[]).render();
    }
}

/// A fixed day, so that an input does the same on every run.
fn as_of() -> Day {
    Day::parse_fhir("2025-12-31").expect("a FHIR date")
}

/// Every model that ships in `mappings/`, compiled once.
fn plans() -> &'static [Plan] {
    static PLANS: OnceLock<Vec<Plan>> = OnceLock::new();
    PLANS.get_or_init(|| {
        [
            include_str!("../../mappings/paijat-sote.yaml"),
            include_str!("../../mappings/helsinki-oral-health.yaml"),
            include_str!("../../mappings/nylander.yaml"),
            include_str!("../../mappings/suuntima.yaml"),
            include_str!("../../mappings/virta.yaml"),
        ]
        .into_iter()
        .map(|text| {
            let mapping = load_str(text).expect("a shipped model loads");
            Plan::compile(mapping, as_of()).expect("a shipped model compiles")
        })
        .collect()
    })
}
