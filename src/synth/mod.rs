//! A deterministic synthetic population of a Finnish wellbeing county: the embedded default
//! input and `segmentti synth`. Each client has a latent need drawn from a lognormal
//! distribution (correlated with age), and their contacts, service areas and diagnoses follow
//! from it, so that service use is heavy-tailed as the brief says: about a tenth of the clients
//! carry about four fifths of the cost. Client `k` depends only on the seed and `k` (its own
//! random stream), never on how many clients are generated. With a service area
//! (`--service-area`) the same people are spread over the county's systems: each system holds
//! only its own area's contacts and diagnoses under local Patient ids of its own, while the
//! identity codes stay the same, so the systems can be joined again on them. Identity codes are
//! in the official test range (individual numbers 900–999), names are made up. With
//! [`Bills::Claims`] (`--claims`) every Encounter also gets a Claim whose total is its price
//! ([`cost_eur`]), and with [`Bills::ClaimsAndExplanations`] a payer's ExplanationOfBenefit
//! restating it, as Synthea writes them; without bills the output is what it always was. With
//! care records ([`SynthOptions::records`], `--care-records`) the data also hold what a model
//! reads beyond contacts and diagnoses ([`records`]): social-welfare service decisions
//! (EpisodeOfCare), Barthel Index totals and oral-status findings (Observation). This module
//! writes files only in [`write_dir`]; it knows nothing of models.

pub mod codes;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

pub use self::codes::Area;
use self::codes::{ContactKind, Diagnosis, Service};
use crate::day::Day;
use crate::types::ResourceKind;

/// Which code systems the data use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeFlavor {
    /// ICD-10 Finnish edition and ICPC-2 diagnoses, AvoHILMO contact and service types.
    Finnish,
    /// SNOMED CT throughout (like Synthea output).
    International,
}

/// How the population is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthFormat {
    /// Bulk Data NDJSON: `Patient.ndjson`, `Encounter.ndjson`, `Condition.ndjson`.
    Ndjson,
    /// One collection Bundle per client in `bundles/`, like Synthea.
    Bundles,
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthOptions {
    /// Number of clients.
    pub clients: u64,
    /// Seed; the same seed gives the same population.
    pub seed: u64,
    /// Code systems.
    pub flavor: CodeFlavor,
    /// Data end on this day: every contact is in the three years before it.
    pub as_of: Day,
    /// Only what this area's system holds (see [`clients`]); `None`: every area in one.
    pub area: Option<Area>,
    /// Which bills go with each Encounter.
    pub bills: Bills,
    /// Whether to write care records ([`records`]) too.
    pub records: bool,
}

/// Which bills [`bills`] writes for each Encounter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Bills {
    /// None: the population as it always was.
    #[default]
    None,
    /// A Claim.
    Claims,
    /// A Claim and the ExplanationOfBenefit that answers it.
    ClaimsAndExplanations,
}

/// One client's resources.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthClient {
    /// The Patient.
    pub patient: Value,
    /// Their contacts.
    pub encounters: Vec<Value>,
    /// Their diagnoses.
    pub conditions: Vec<Value>,
    /// What their contacts cost by [`cost_eur`].
    pub cost_eur: f64,
}

/// What [`write_dir`] wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SynthReport {
    /// Clients.
    pub clients: u64,
    /// Patient resources.
    pub patients: u64,
    /// Encounter resources.
    pub encounters: u64,
    /// Condition resources.
    pub conditions: u64,
    /// Claim and ExplanationOfBenefit resources.
    pub bills: u64,
    /// Observation and EpisodeOfCare resources.
    pub records: u64,
    /// Cost of all contacts, EUR.
    pub total_cost_eur: f64,
    /// Share of the cost held by the 10 % most costly clients.
    pub top_decile_cost_share: f64,
}

/// Why the population could not be written.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot write the synthetic population to {path}: {source}\nhint: check that the directory is writable and the disk has room"
)]
pub struct SynthError {
    /// The file.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// The price of one generated Encounter in EUR: illustrative unit costs rounded from THL's
/// unit-cost reports, the same table as `mappings/paijat-sote.yaml`.
pub fn cost_eur(encounter: &Value) -> f64 {
    let class = encounter
        .pointer("/class/code")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let service = encounter
        .pointer("/serviceType/coding/0/code")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let day = |p: &str| {
        encounter
            .pointer(p)
            .and_then(Value::as_str)
            .and_then(Day::parse_fhir)
    };
    match class {
        "IMP" => {
            let days = match (day("/period/start"), day("/period/end")) {
                (Some(s), Some(e)) => s.days_until(e).max(1),
                _ => 1,
            };
            650.0 * f64::from(days)
        }
        "EMER" => 420.0,
        "VR" => 35.0,
        "HH" => 70.0,
        _ => match service {
            "T60" | "722163006" => 110.0,
            "T71" | "T72" | "T73" | "410001006" => 90.0,
            "T30" | "T40" | "394587001" => 130.0,
            _ => 120.0,
        },
    }
}

fn rng_for(seed: u64, index: u64) -> ChaCha8Rng {
    // SplitMix64 of (seed, index): neighbouring clients get unrelated streams.
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ChaCha8Rng::seed_from_u64(z ^ (z >> 31))
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller; 1 - u keeps the logarithm finite.
    let (u, v): (f64, f64) = (rng.random(), rng.random());
    (-2.0 * (1.0 - u).ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

fn poisson(rng: &mut ChaCha8Rng, lambda: f64) -> u32 {
    if lambda > 30.0 {
        return (lambda + lambda.sqrt() * normal(rng)).round().max(0.0) as u32;
    }
    let limit = (-lambda).exp();
    let (mut k, mut p) = (0u32, 1.0f64);
    loop {
        p *= rng.random::<f64>();
        if p <= limit {
            return k;
        }
        k += 1;
    }
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

/// The Finnish personal identity code of a birth date, in the test range (900–999).
pub fn identity_code(birth: Day, individual: u32) -> String {
    const CHECK: &[u8] = b"0123456789ABCDEFHJKLMNPRSTUVWXY";
    let date = birth.to_date();
    let (dd, mm, yy) = (
        u32::from(date.day()),
        date.month() as u32,
        date.year().rem_euclid(100) as u32,
    );
    let century = match date.year() {
        y if y < 1900 => '+',
        y if y < 2000 => '-',
        _ => 'A',
    };
    let number = u64::from(dd * 10000 + mm * 100 + yy) * 1000 + u64::from(individual);
    format!(
        "{dd:02}{mm:02}{yy:02}{century}{individual:03}{}",
        CHECK[(number % 31) as usize] as char
    )
}

fn coding(system: &str, code: codes::Code) -> Value {
    json!({"system": system, "code": code.code, "display": code.display})
}

fn datetime(day: Day, minutes: u32) -> String {
    let month = day.to_date().month() as u8;
    // Finnish summer time: close enough for synthetic data (April to October).
    let offset = if (4..=10).contains(&month) {
        "+03:00"
    } else {
        "+02:00"
    };
    format!("{day}T{:02}:{:02}:00{offset}", minutes / 60, minutes % 60)
}

/// Client `index` of the population as a whole, in every service area whatever `opts.area`
/// says; [`clients`] gives one area's view.
pub fn client(opts: &SynthOptions, index: u64) -> SynthClient {
    let mut rng = rng_for(opts.seed, index);
    let intl = opts.flavor == CodeFlavor::International;
    let id = format!("p{index:07}");
    let subject = json!({"reference": format!("Patient/{id}")});

    let age: u32 = (rng.random::<f64>().powf(0.85) * 96.0) as u32;
    let z = 0.55 * ((f64::from(age) - 45.0) / 25.0) + 0.85 * normal(&mut rng);
    let need = (2.3 * z - 0.4).exp();
    let h = (need.ln() / 30f64.ln()).clamp(0.0, 1.0);

    let birth = opts
        .as_of
        .plus_days(-(i32::try_from(age).unwrap_or(0) * 365 + rng.random_range(1..365)));
    let individual = rng.random_range(900..1000);
    let male = individual % 2 == 1;
    let (municipality, _) = {
        let total: u32 = codes::MUNICIPALITIES.iter().map(|m| m.1).sum();
        let mut at = rng.random_range(0..total);
        *codes::MUNICIPALITIES
            .iter()
            .find(|m| {
                let hit = at < m.1;
                at = at.saturating_sub(m.1);
                hit
            })
            .unwrap_or(&codes::MUNICIPALITIES[0])
    };
    let given = if male {
        pick(&mut rng, &codes::GIVEN_M)
    } else {
        pick(&mut rng, &codes::GIVEN_F)
    };
    let patient = json!({
        "resourceType": "Patient",
        "id": id,
        "identifier": [{"use": "official", "system": codes::HETU, "value": identity_code(birth, individual)}],
        "name": [{"family": pick(&mut rng, &codes::FAMILY), "given": [given]}],
        "gender": if male { "male" } else { "female" },
        "birthDate": birth.to_string(),
        "address": [{
            "extension": [{"url": codes::MUNICIPALITY_EXTENSION, "valueCoding": coding(codes::MUNICIPALITY, municipality)}],
            "city": municipality.display, "country": "FI"
        }],
    });

    // Traits that decide which services and diagnoses a client has at all.
    let social = rng.random_bool((0.03 + 0.3 * h * h).min(1.0));
    let mental = rng.random_bool((0.06 + 0.2 * h).min(1.0));
    let substance = rng.random_bool((0.02 + 0.12 * h).min(1.0));
    let oral = rng.random_bool(0.3);
    let home_care = age >= 65 && rng.random_bool((0.05 + 0.6 * h).min(1.0));
    let disability = rng.random_bool(0.01);

    let mut encounters = Vec::new();
    let mut cost = 0.0;
    let yearly = (need * 1.6).min(100.0);
    for year in 0..3 {
        let lambda = yearly * if year == 0 { 1.0 } else { 0.8 };
        for _ in 0..poisson(&mut rng, lambda) {
            let (kind, service) = contact(
                &mut rng, h, social, mental, substance, oral, home_care, disability,
            );
            let start = opts
                .as_of
                .plus_days(-(year * 365 + rng.random_range(0..365)));
            let (minutes, days) = if kind.class.code == "IMP" {
                (
                    rng.random_range(480..960),
                    poisson(&mut rng, 2.0 + 12.0 * h) as i32 + 1,
                )
            } else {
                (rng.random_range(480..960), 0)
            };
            let end_minutes = if days == 0 {
                minutes + 30
            } else {
                rng.random_range(480..960)
            };
            let enc_type = if intl {
                coding(codes::SNOMED, kind.snomed)
            } else {
                coding(codes::YHTEYSTAPA, kind.yhteystapa)
            };
            let svc = if intl {
                coding(codes::SNOMED, service.snomed)
            } else {
                coding(codes::PALVELUMUOTO, service.palvelumuoto)
            };
            let encounter = json!({
                "resourceType": "Encounter",
                "id": format!("e{index:07}-{:04}", encounters.len()),
                "status": "finished",
                "class": {"system": codes::ACTCODE, "code": kind.class.code, "display": kind.class.display},
                "type": [{"coding": [enc_type]}],
                "serviceType": {"coding": [svc]},
                "subject": subject,
                "period": {"start": datetime(start, minutes), "end": datetime(start.plus_days(days), end_minutes.min(23 * 60 + 59))},
            });
            cost += cost_eur(&encounter);
            encounters.push(encounter);
        }
    }

    let mut diagnoses: Vec<(Diagnosis, bool)> = Vec::new();
    let chronic = poisson(
        &mut rng,
        0.15 + 2.6 * h * h + f64::from(age.saturating_sub(50)) / 60.0,
    )
    .min(codes::CHRONIC.len() as u32);
    let mut pool = codes::CHRONIC.to_vec();
    for _ in 0..chronic {
        // Earlier entries are more common: take from the front half more often.
        let at = (rng.random::<f64>().powi(2) * pool.len() as f64) as usize;
        diagnoses.push((pool.remove(at.min(pool.len() - 1)), true));
    }
    if age >= 40 && rng.random_bool(0.25) {
        diagnoses.push((codes::HYPERTENSION, true));
    }
    if mental {
        diagnoses.push((pick(&mut rng, &codes::MENTAL), true));
    }
    if substance {
        diagnoses.push((codes::SUBSTANCE, true));
    }
    if social && rng.random_bool(0.6) {
        diagnoses.push((pick(&mut rng, &codes::SOCIAL_RISK), true));
    }
    for _ in 0..poisson(&mut rng, 0.8) {
        diagnoses.push((pick(&mut rng, &codes::ACUTE), false));
    }
    if oral {
        diagnoses.extend(oral_diagnoses(opts.seed, index, age, h));
    }
    let conditions = diagnoses
        .into_iter()
        .enumerate()
        .map(|(n, (dx, long_term))| {
            let code = match (intl, dx.icpc2) {
                (true, _) => coding(codes::SNOMED, dx.snomed),
                (false, Some(icpc2)) if rng.random_bool(0.3) => coding(codes::ICPC2, icpc2),
                (false, _) => coding(codes::ICD10FI, dx.icd10),
            };
            let back = if long_term { rng.random_range(200..5000) } else { rng.random_range(1..1000) };
            let mut condition = json!({
                "resourceType": "Condition",
                "id": format!("c{index:07}-{n:03}"),
                "clinicalStatus": {"coding": [{"system": codes::CLINICAL, "code": if long_term { "active" } else { "resolved" }}]},
                "verificationStatus": {"coding": [{"system": codes::VERIFICATION, "code": "confirmed"}]},
                "code": {"coding": [code]},
                "subject": subject,
                "onsetDateTime": opts.as_of.plus_days(-back).to_string(),
            });
            if let Some(e) = encounters.get(n % encounters.len().max(1)) {
                condition["encounter"] = json!({"reference": format!("Encounter/{}", e["id"].as_str().unwrap_or_default())});
            }
            condition
        })
        .collect();
    SynthClient {
        patient,
        encounters,
        conditions,
        cost_eur: cost,
    }
}

/// The oral-health diagnoses of a client with oral-health contacts, more with need and age.
/// They come from a stream of their own and are appended last, so every other resource of the
/// population is what it was before they were added.
fn oral_diagnoses(seed: u64, index: u64, age: u32, h: f64) -> Vec<(Diagnosis, bool)> {
    let mut rng = rng_for(seed, index);
    rng.set_stream(1);
    let [caries, gingivitis, periodontitis, abscess, tooth_loss] = codes::ORAL;
    let mut out = Vec::new();
    if rng.random_bool((0.35 + 0.3 * h).min(0.9)) {
        out.push((caries, false));
    }
    if rng.random_bool(0.25) {
        out.push((gingivitis, false));
    }
    if age >= 30 && rng.random_bool((0.05 + f64::from(age) / 250.0 + 0.2 * h).min(0.8)) {
        out.push((periodontitis, true));
    }
    if rng.random_bool(0.05) {
        out.push((abscess, false));
    }
    if age >= 60 && rng.random_bool(0.3) {
        out.push((tooth_loss, true));
    }
    out
}

/// One contact's kind and service, by the client's need and traits.
#[expect(
    clippy::too_many_arguments,
    reason = "one flag per client trait reads clearer than a struct used once"
)]
fn contact(
    rng: &mut ChaCha8Rng,
    h: f64,
    social: bool,
    mental: bool,
    substance: bool,
    oral: bool,
    home_care: bool,
    disability: bool,
) -> (ContactKind, Service) {
    let x: f64 = rng.random();
    let mut at = 0.0;
    let mut take = |p: f64| {
        at += p;
        x < at
    };
    if take(0.004 + 0.04 * h) {
        (codes::IMP, codes::T80)
    } else if take(0.02 + 0.05 * h) {
        (codes::EMER, codes::T80)
    } else if home_care && take(0.45) {
        (
            codes::HH,
            if rng.random_bool(0.7) {
                codes::T72
            } else {
                codes::T22
            },
        )
    } else if social && take(0.25) {
        (codes::AMB, codes::T71)
    } else if disability && take(0.2) {
        (codes::AMB, codes::T73)
    } else if mental && take(0.2) {
        (codes::AMB, codes::T30)
    } else if substance && take(0.15) {
        (codes::AMB, codes::T40)
    } else if oral && take(0.15) {
        (codes::AMB, codes::T60)
    } else if take(0.3) {
        (codes::VR, codes::T11)
    } else {
        (codes::AMB, codes::T11)
    }
}

/// The clients of the population with their index, as `opts.area`'s system holds them: the
/// health-care system holds every Patient (it is the county's register of residents), the
/// social-welfare and oral-health systems only those with a contact or diagnosis of their own.
pub fn clients(opts: &SynthOptions) -> impl Iterator<Item = (u64, SynthClient)> + '_ {
    (0..opts.clients).filter_map(move |i| {
        let c = client(opts, i);
        match opts.area {
            None => Some((i, c)),
            Some(area) => in_area(opts.seed, i, area, c).map(|c| (i, c)),
        }
    })
}

/// What `area`'s system holds of client `index`: that area's resources only, under a local
/// Patient id of its own (a UUID of the seed, area and index, as opaque as a real system's).
fn in_area(seed: u64, index: u64, area: Area, mut c: SynthClient) -> Option<SynthClient> {
    c.encounters.retain(|e| area_of(e) == area);
    c.conditions.retain(|r| area_of(r) == area);
    if area != Area::Health && c.encounters.is_empty() && c.conditions.is_empty() {
        return None;
    }
    let id = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("segmentti-synth:{seed}:{}:{index}", area.as_str()).as_bytes(),
    )
    .to_string();
    let subject = json!({"reference": format!("Patient/{id}")});
    c.patient["id"] = json!(id);
    let kept: Vec<Value> = c.encounters.iter().map(|e| e["id"].clone()).collect();
    for r in c.encounters.iter_mut().chain(&mut c.conditions) {
        r["subject"] = subject.clone();
    }
    for r in &mut c.conditions {
        // A diagnosis made at a contact of another area's system cannot refer to it here.
        let local = r
            .pointer("/encounter/reference")
            .and_then(Value::as_str)
            .and_then(|e| e.strip_prefix("Encounter/"))
            .is_some_and(|e| kept.iter().any(|k| k == e));
        if !local && let Some(o) = r.as_object_mut() {
            o.remove("encounter");
        }
    }
    c.cost_eur = c.encounters.iter().map(cost_eur).sum();
    Some(c)
}

/// The Claims (and ExplanationOfBenefits) of `c`'s Encounters per `opts.bills`: one per
/// Encounter, billed for its period, with its price by [`cost_eur`] as the total, so a run
/// costed by bills gives the same cost as the price table. Made from the client as its system
/// holds it, so the bills refer to that system's Patient and Encounters.
pub fn bills(opts: &SynthOptions, c: &SynthClient) -> Vec<Value> {
    if opts.bills == Bills::None {
        return Vec::new();
    }
    let mut out = Vec::new();
    for e in &c.encounters {
        let id = e["id"].as_str().unwrap_or_default();
        let total = json!({"value": cost_eur(e), "currency": "EUR"});
        let created = e.pointer("/period/end").unwrap_or(&e["period"]["start"]);
        let common = json!({
            "status": "active",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
            "use": "claim",
            "patient": e["subject"],
            "billablePeriod": e["period"],
            "created": created,
            "provider": {"display": "Hyvinvointialue"},
            "insurance": [{"sequence": 1, "focal": true, "coverage": {"display": "Julkinen sosiaali- ja terveydenhuolto"}}],
            "item": [{"sequence": 1, "encounter": [{"reference": format!("Encounter/{id}")}],
                      "productOrService": e["serviceType"], "net": total}],
        });
        let mut claim = common.clone();
        claim["resourceType"] = json!("Claim");
        claim["id"] = json!(format!("c{id}"));
        claim["priority"] = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/processpriority", "code": "normal"}]});
        claim["total"] = total.clone();
        out.push(claim);
        if opts.bills == Bills::ClaimsAndExplanations {
            let mut eob = common;
            eob["resourceType"] = json!("ExplanationOfBenefit");
            eob["id"] = json!(format!("x{id}"));
            eob["insurer"] = json!({"display": "Hyvinvointialue"});
            eob["outcome"] = json!("complete");
            eob["claim"] = json!({"reference": format!("Claim/c{id}")});
            eob["total"] = json!([{
                "category": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adjudication", "code": "submitted"}]},
                "amount": total,
            }]);
            out.push(eob);
        }
    }
    out
}

/// The care records of client `index` as its system holds it (`c`), when `opts.records`:
/// - an EpisodeOfCare per social-welfare service the client had contacts of: the decision
///   behind them, from a few weeks before the first contact, open while the last is within 90
///   days of the as-of date, else closed a month after it;
/// - for a client of 65 or more with home visits, a Barthel Index total at the last one, the
///   lower the more visits, and half the time an earlier, better one a year before it; a few
///   other clients of 75 or more have one at their last contact, mostly near independence;
/// - at half of the oral-health contacts, an oral-status finding.
///
/// They come from a stream of their own, so every other resource is what it was without them.
pub fn records(opts: &SynthOptions, index: u64, c: &SynthClient) -> Vec<Value> {
    if !opts.records {
        return Vec::new();
    }
    let mut rng = rng_for(opts.seed, index);
    rng.set_stream(2);
    let intl = opts.flavor == CodeFlavor::International;
    let subject =
        json!({"reference": format!("Patient/{}", c.patient["id"].as_str().unwrap_or_default())});
    let text = |r: &Value, p: &str| {
        r.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let day = |e: &Value| Day::parse_fhir(&text(e, "/period/start"));
    let mut out = Vec::new();

    // Decisions: one per service, with the first and last day of its contacts.
    let mut decided: Vec<(Value, Day, Day)> = Vec::new();
    for e in &c.encounters {
        let service = text(e, "/serviceType/coding/0/code");
        let kind = if intl {
            (text(e, "/class/code") == "HH" && service == codes::T72.snomed.code)
                .then(|| coding(codes::EPISODE_TYPE, codes::HOME_AND_COMMUNITY_CARE))
        } else {
            codes::DECIDED
                .iter()
                .find(|s| s.palvelumuoto.code == service)
                .map(|s| coding(codes::PALVELUMUOTO, s.palvelumuoto))
        };
        let (Some(kind), Some(on)) = (kind, day(e)) else {
            continue;
        };
        match decided.iter_mut().find(|d| d.0 == kind) {
            Some(d) => (d.1, d.2) = (d.1.min(on), d.2.max(on)),
            None => decided.push((kind, on, on)),
        }
    }
    for (n, (kind, first, last)) in decided.into_iter().enumerate() {
        let mut period = json!({"start": first.plus_days(-rng.random_range(7..60)).to_string()});
        let open = last.days_until(opts.as_of) <= 90;
        if !open {
            period["end"] = json!(last.plus_days(30).to_string());
        }
        out.push(json!({
            "resourceType": "EpisodeOfCare",
            "id": format!("ep{index:07}-{n}"),
            "status": if open { "active" } else { "finished" },
            "type": [{"coding": [kind]}],
            "patient": subject,
            "period": period,
        }));
    }

    let age =
        Day::parse_fhir(&text(&c.patient, "/birthDate")).map_or(0, |b| b.years_until(opts.as_of));
    let home: Vec<Day> = c
        .encounters
        .iter()
        .filter(|e| text(e, "/class/code") == "HH")
        .filter_map(day)
        .collect();
    let last_contact = c.encounters.iter().filter_map(day).max();
    let mut scores: Vec<(Day, f64)> = Vec::new();
    if age >= 65
        && let Some(&last) = home.iter().max()
    {
        let loss = home.len() as f64 * 1.2 + rng.random::<f64>() * 25.0;
        let score = ((100.0 - loss).max(0.0) / 5.0).floor() * 5.0;
        scores.push((last, score));
        if rng.random_bool(0.5) {
            scores.push((last.plus_days(-365), (score + 10.0).min(100.0)));
        }
    } else if age >= 75
        && let Some(last) = last_contact
        && rng.random_bool(0.15)
    {
        scores.push((last, 100.0 - 5.0 * f64::from(rng.random_range(0..5u8))));
    }
    for (n, (on, score)) in scores.into_iter().enumerate() {
        out.push(json!({
            "resourceType": "Observation",
            "id": format!("fa{index:07}-{n}"),
            "status": "final",
            "category": [{"coding": [{"system": codes::OBSERVATION_CATEGORY, "code": "survey"}]}],
            "code": {"coding": [coding(codes::LOINC, codes::BARTHEL)]},
            "subject": subject,
            "effectiveDateTime": on.to_string(),
            "valueQuantity": {"value": score, "unit": "{score}", "system": "http://unitsofmeasure.org", "code": "{score}"},
        }));
    }

    let oral = c.encounters.iter().filter(|e| {
        let service = text(e, "/serviceType/coding/0/code");
        service == codes::T60.palvelumuoto.code || service == codes::T60.snomed.code
    });
    for (n, on) in oral.filter_map(day).enumerate() {
        if !rng.random_bool(0.5) {
            continue;
        }
        let x: f64 = rng.random();
        let (system, finding) =
            codes::ORAL_FINDINGS[usize::from(x >= 0.6) + usize::from(x >= 0.85)];
        out.push(json!({
            "resourceType": "Observation",
            "id": format!("os{index:07}-{n:03}"),
            "status": "final",
            "category": [{"coding": [{"system": codes::OBSERVATION_CATEGORY, "code": "exam"}]}],
            "code": {"coding": [coding(system, finding)]},
            "subject": subject,
            "effectiveDateTime": on.to_string(),
        }));
    }
    out
}

/// The service area of a generated Encounter (by its service type) or Condition (oral and
/// social diagnoses; the rest are health care's).
pub fn area_of(resource: &Value) -> Area {
    let code = |pointer: &str| {
        resource
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    if resource["resourceType"] == "Encounter" {
        let service = code("/serviceType/coding/0/code");
        return codes::SERVICES
            .iter()
            .find(|s| s.palvelumuoto.code == service || s.snomed.code == service)
            .map_or(Area::Health, |s| s.area);
    }
    let diagnosis = code("/code/coding/0/code");
    let is = |list: &[Diagnosis]| {
        list.iter().any(|d| {
            d.icd10.code == diagnosis
                || d.snomed.code == diagnosis
                || d.icpc2.is_some_and(|c| c.code == diagnosis)
        })
    };
    if is(&codes::ORAL) {
        Area::Oral
    } else if is(&codes::SOCIAL_RISK) {
        Area::Social
    } else {
        Area::Health
    }
}

/// Every resource of client `index` as its system holds it (`c`): the Patient first, then its
/// Encounters, Conditions, bills and care records.
pub fn resources(opts: &SynthOptions, index: u64, c: SynthClient) -> Vec<Value> {
    let bills = bills(opts, &c);
    let records = records(opts, index, &c);
    std::iter::once(c.patient)
        .chain(c.encounters)
        .chain(c.conditions)
        .chain(bills)
        .chain(records)
        .collect()
}

/// The NDJSON lines of the population, client by client ([`resources`]), for streaming
/// straight into a run.
pub fn lines(opts: &SynthOptions) -> impl Iterator<Item = (ResourceKind, String)> + '_ {
    clients(opts).flat_map(move |(i, c)| {
        resources(opts, i, c).into_iter().map(|r| {
            let kind = r["resourceType"]
                .as_str()
                .and_then(ResourceKind::parse)
                .unwrap_or(ResourceKind::Patient);
            (kind, r.to_string())
        })
    })
}

/// Writes the population to `dir` as NDJSON or Bundles.
pub fn write_dir(
    opts: &SynthOptions,
    format: SynthFormat,
    dir: &Path,
) -> Result<SynthReport, SynthError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SynthError { path, source }
    };
    let target = match format {
        SynthFormat::Ndjson => dir.to_owned(),
        SynthFormat::Bundles => dir.join("bundles"),
    };
    std::fs::create_dir_all(&target).map_err(io(&target))?;
    let mut report = SynthReport::default();
    let mut costs = Vec::with_capacity(usize::try_from(opts.clients).unwrap_or(0));
    let open = |name: &str| -> Result<(PathBuf, BufWriter<File>), SynthError> {
        let path = dir.join(name);
        let file = File::create(&path).map_err(io(&path))?;
        Ok((path, BufWriter::with_capacity(1 << 20, file)))
    };
    // One file per resource type, each resource to the file of its type.
    let mut ndjson = match format {
        SynthFormat::Ndjson => {
            let mut types = vec!["Patient", "Encounter", "Condition"];
            if opts.bills != Bills::None {
                types.push("Claim");
            }
            if opts.bills == Bills::ClaimsAndExplanations {
                types.push("ExplanationOfBenefit");
            }
            if opts.records {
                types.extend(["Observation", "EpisodeOfCare"]);
            }
            let files = types
                .into_iter()
                .map(|t| Ok((t, open(&format!("{t}.ndjson"))?)))
                .collect::<Result<Vec<_>, SynthError>>()?;
            Some(files)
        }
        SynthFormat::Bundles => None,
    };
    for (i, c) in clients(opts) {
        report.clients += 1;
        report.patients += 1;
        report.encounters += c.encounters.len() as u64;
        report.conditions += c.conditions.len() as u64;
        costs.push(c.cost_eur);
        let resources = resources(opts, i, c);
        for r in &resources {
            match r["resourceType"].as_str() {
                Some("Claim" | "ExplanationOfBenefit") => report.bills += 1,
                Some("Observation" | "EpisodeOfCare") => report.records += 1,
                _ => {}
            }
        }
        match &mut ndjson {
            Some(files) => {
                for resource in resources {
                    let Some((_, (path, writer))) = files
                        .iter_mut()
                        .find(|(t, _)| resource["resourceType"] == *t)
                    else {
                        continue;
                    };
                    serde_json::to_writer(&mut *writer, &resource).map_err(|e| SynthError {
                        path: path.clone(),
                        source: e.into(),
                    })?;
                    writer.write_all(b"\n").map_err(io(path))?;
                }
            }
            None => {
                let path = target.join(format!(
                    "{}.json",
                    resources[0]["id"].as_str().unwrap_or_default()
                ));
                std::fs::write(&path, bundle(opts, i, resources).to_string()).map_err(io(&path))?;
            }
        }
    }
    if let Some(files) = ndjson {
        for (_, (path, mut writer)) in files {
            writer.flush().map_err(io(&path))?;
        }
    }
    report.total_cost_eur = costs.iter().sum();
    report.top_decile_cost_share = crate::pipeline::top_share(&mut costs, 0.10);
    Ok(report)
}

/// A client as a collection Bundle with `urn:uuid:` references between its entries, as
/// Synthea writes them.
/// `resources`: the client's, the Patient first ([`resources`]).
fn bundle(opts: &SynthOptions, index: u64, resources: Vec<Value>) -> Value {
    let urn = |id: &str| {
        format!(
            "urn:uuid:{}",
            uuid::Uuid::new_v5(
                &uuid::Uuid::NAMESPACE_OID,
                format!("{}:{index}:{id}", opts.seed).as_bytes()
            )
        )
    };
    let mut resources = resources.into_iter();
    let patient = resources.next().unwrap_or_default();
    let patient_urn = urn(patient["id"].as_str().unwrap_or_default());
    let mut entries = vec![json!({"fullUrl": patient_urn, "resource": patient})];
    for mut r in resources {
        let client = if r.get("patient").is_some() {
            "patient"
        } else {
            "subject"
        };
        r[client] = json!({"reference": patient_urn});
        if let Some(enc) = r
            .pointer("/encounter/reference")
            .and_then(Value::as_str)
            .and_then(|s| s.strip_prefix("Encounter/"))
        {
            let target = urn(enc);
            r["encounter"] = json!({"reference": target});
        }
        let full = urn(r["id"].as_str().unwrap_or_default());
        entries.push(json!({"fullUrl": full, "resource": r}));
    }
    json!({"resourceType": "Bundle", "type": "collection", "entry": entries})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(clients: u64) -> SynthOptions {
        SynthOptions {
            clients,
            seed: 7,
            flavor: CodeFlavor::Finnish,
            as_of: "2026-01-01".parse().expect("day"),
            area: None,
            bills: Bills::None,
            records: false,
        }
    }

    #[test]
    fn clients_depend_on_seed_and_index_only() {
        assert_eq!(client(&opts(10), 3), client(&opts(1000), 3));
        let a: Vec<_> = lines(&opts(50)).collect();
        assert_eq!(a, lines(&opts(50)).collect::<Vec<_>>());
        assert_ne!(
            client(&opts(10), 3),
            client(
                &SynthOptions {
                    seed: 8,
                    ..opts(10)
                },
                3
            )
        );
    }

    #[test]
    fn identity_codes_are_valid_test_codes_matching_birth_date_and_gender() {
        // 130452900 mod 31 = 2.
        assert_eq!(
            identity_code("1952-04-13".parse().expect("day"), 900),
            "130452-9002"
        );
        assert_eq!(
            identity_code("2010-01-05".parse().expect("day"), 901).get(..7),
            Some("050110A")
        );
        for i in 0..200 {
            let c = client(&opts(200), i);
            let code = c.patient["identifier"][0]["value"].as_str().expect("code");
            let birth = c.patient["birthDate"].as_str().expect("birthDate");
            let (dd, mm, yy) = (&birth[8..10], &birth[5..7], &birth[2..4]);
            assert_eq!(&code[0..6], format!("{dd}{mm}{yy}"), "{code} vs {birth}");
            let individual: u32 = code[7..10].parse().expect("digits");
            assert!(
                (900..=999).contains(&individual),
                "{code} is in the test range"
            );
            assert_eq!(c.patient["gender"] == "male", individual % 2 == 1);
            let number: u64 = format!("{}{}", &code[0..6], &code[7..10])
                .parse()
                .expect("digits");
            assert_eq!(
                code.as_bytes()[10],
                b"0123456789ABCDEFHJKLMNPRSTUVWXY"[(number % 31) as usize]
            );
        }
    }

    #[test]
    fn references_resolve_and_nothing_is_after_as_of() {
        let o = opts(300);
        for i in 0..o.clients {
            let c = client(&o, i);
            let me = format!("Patient/{}", c.patient["id"].as_str().expect("id"));
            for r in c.encounters.iter().chain(&c.conditions) {
                assert_eq!(r["subject"]["reference"], me.as_str());
            }
            for e in &c.encounters {
                let start =
                    Day::parse_fhir(e["period"]["start"].as_str().expect("start")).expect("day");
                assert!(start <= o.as_of);
            }
        }
    }

    /// Care records refer to their client, fall before the as-of date, hold Barthel totals
    /// in 5-point steps, and leave every other resource as it was without them.
    #[test]
    fn care_records_are_dated_scored_and_added_without_changing_the_rest() {
        let plain = opts(400);
        let o = SynthOptions {
            records: true,
            ..plain.clone()
        };
        let (mut episodes, mut scores, mut findings) = (0, 0, 0);
        for i in 0..o.clients {
            let all = resources(&o, i, client(&o, i));
            let (records, rest): (Vec<Value>, Vec<Value>) = all.into_iter().partition(|r| {
                matches!(
                    r["resourceType"].as_str(),
                    Some("Observation" | "EpisodeOfCare")
                )
            });
            assert_eq!(rest, resources(&plain, i, client(&plain, i)));
            assert_eq!(
                records,
                super::records(&o, i, &client(&o, i)),
                "deterministic"
            );
            let me = json!({"reference": format!("Patient/p{i:07}")});
            for r in &records {
                let day = |p: &str| {
                    r.pointer(p)
                        .and_then(Value::as_str)
                        .and_then(Day::parse_fhir)
                };
                if r["resourceType"] == "EpisodeOfCare" {
                    episodes += 1;
                    assert_eq!(r["patient"], me);
                    let (start, end) = (day("/period/start"), day("/period/end"));
                    assert!(start.is_some_and(|s| s <= o.as_of));
                    assert!(end.is_none_or(|e| e <= o.as_of && start.is_some_and(|s| s < e)));
                    assert_eq!(r["status"] == "active", end.is_none());
                    continue;
                }
                assert_eq!(r["subject"], me);
                assert!(day("/effectiveDateTime").is_some_and(|d| d <= o.as_of));
                match r.pointer("/valueQuantity/value").and_then(Value::as_f64) {
                    Some(score) => {
                        scores += 1;
                        assert!(
                            (0.0..=100.0).contains(&score) && score % 5.0 == 0.0,
                            "{score}"
                        );
                    }
                    None => findings += 1,
                }
            }
        }
        assert!(
            episodes > 10 && scores > 10 && findings > 10,
            "{episodes} {scores} {findings}"
        );
    }

    #[test]
    fn bills_price_each_encounter_for_the_client_as_its_system_holds_it() {
        let mut o = opts(50);
        assert!(clients(&o).all(|(_, c)| bills(&o, &c).is_empty()));
        o.bills = Bills::ClaimsAndExplanations;
        o.area = Some(Area::Social);
        for (_, c) in clients(&o) {
            let bills = bills(&o, &c);
            assert_eq!(bills.len(), 2 * c.encounters.len());
            let (claims, explanations): (Vec<&Value>, Vec<&Value>) =
                bills.iter().partition(|b| b["resourceType"] == "Claim");
            for ((claim, eob), e) in claims.iter().zip(&explanations).zip(&c.encounters) {
                assert_eq!(
                    claim["patient"], e["subject"],
                    "the system's own Patient id"
                );
                assert_eq!(claim["total"]["value"], json!(cost_eur(e)));
                assert_eq!(eob["total"][0]["amount"], claim["total"]);
                assert_eq!(claim["billablePeriod"], e["period"]);
            }
            let total: f64 = claims
                .iter()
                .filter_map(|c| c["total"]["value"].as_f64())
                .sum();
            assert!((total - c.cost_eur).abs() < 1e-6);
        }
    }

    #[test]
    fn bundles_reference_their_own_entries() {
        let mut o = opts(20);
        o.bills = Bills::Claims;
        o.records = true;
        for i in 0..o.clients {
            let b = bundle(&o, i, resources(&o, i, client(&o, i)));
            let urls: Vec<&str> = b["entry"]
                .as_array()
                .expect("entries")
                .iter()
                .map(|e| e["fullUrl"].as_str().expect("fullUrl"))
                .collect();
            for e in b["entry"].as_array().expect("entries").iter().skip(1) {
                let r = &e["resource"];
                let subject = r["subject"]["reference"]
                    .as_str()
                    .or(r["patient"]["reference"].as_str())
                    .expect("subject or patient");
                assert!(urls.contains(&subject));
            }
        }
    }

    /// The areas' systems together hold the whole population: the same people by identity
    /// code, every resource in exactly one area, each system with Patient ids of its own.
    #[test]
    fn service_areas_split_the_population_without_losing_anything() {
        let whole = opts(300);
        let everything: Vec<String> = lines(&whole).map(|(_, l)| l).collect();
        let strip = |mut v: Value| {
            if let Some(o) = v.as_object_mut() {
                o.remove("subject");
                o.remove("encounter");
            }
            v
        };
        let mut expected: Vec<Value> = (0..whole.clients)
            .flat_map(|i| {
                let c = client(&whole, i);
                c.encounters.into_iter().chain(c.conditions).map(strip)
            })
            .collect();
        let mut split = Vec::new();
        let mut codes = std::collections::BTreeMap::new();
        for area in [Area::Health, Area::Social, Area::Oral] {
            let o = SynthOptions {
                area: Some(area),
                ..whole.clone()
            };
            let mut seen = 0;
            for (i, c) in clients(&o) {
                seen += 1;
                let code = c.patient["identifier"][0]["value"].clone();
                let id = c.patient["id"].as_str().expect("id").to_owned();
                assert_ne!(id, client(&whole, i).patient["id"].as_str().expect("id"));
                codes.entry(i).or_insert_with(|| code.clone());
                assert_eq!(
                    codes[&i], code,
                    "one person has one identity code everywhere"
                );
                for r in c.encounters.iter().chain(&c.conditions) {
                    assert_eq!(area_of(r), area);
                    assert_eq!(r["subject"]["reference"], format!("Patient/{id}").as_str());
                }
                split.extend(c.encounters.into_iter().chain(c.conditions).map(strip));
            }
            if area == Area::Health {
                assert_eq!(seen, whole.clients, "the health-care system holds everyone");
            } else {
                assert!(seen > 0 && seen < whole.clients, "{area:?}: {seen}");
            }
        }
        let key = |v: &Value| v["id"].as_str().expect("id").to_owned();
        expected.sort_by_key(key);
        split.sort_by_key(key);
        assert_eq!(split, expected);
        assert_eq!(
            lines(&whole).map(|(_, l)| l).collect::<Vec<_>>(),
            everything
        );
    }

    #[test]
    fn a_tenth_of_clients_carry_most_of_the_cost() {
        let o = opts(5000);
        let mut costs: Vec<f64> = (0..o.clients).map(|i| client(&o, i).cost_eur).collect();
        let share = crate::pipeline::top_share(&mut costs, 0.10);
        assert!(
            (0.70..=0.90).contains(&share),
            "top-decile cost share {share}"
        );
    }
}
