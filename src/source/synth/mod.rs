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
//! (EpisodeOfCare), Barthel Index totals and oral-status findings (Observation). With real
//! shapes ([`SynthOptions::shapes`], `--real-shapes`) the data also have what real exports
//! (Synthea and others) have and the population otherwise lacks: Procedure, Immunization and
//! MedicationRequest resources ([`extras`]) and one Organization ([`organization`]), types no
//! model reads, which are in the written files and a loaded server but not in [`lines`];
//! diagnoses coded both in ICD-10 and SNOMED CT, or with more specific SNOMED CT codes as
//! Synthea codes them; Encounters entered in error or cancelled (which cost nothing and get no
//! bills); refuted Conditions; deceased and inactive Patients. They are drawn from streams of
//! their own, so the rest of the population is what it was, and the flag is off by default: the
//! embedded default and every output without it are byte for byte what they were. Ties in
//! service use need no shape of their own: many clients have the same number of contacts. This
//! module writes files only in [`write_dir`]; it knows nothing of models.

pub mod codes;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

pub use self::codes::Area;
use self::codes::{ContactKind, Diagnosis, Service};
use crate::fhir::day::Day;
use crate::fhir::types::ResourceKind;

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
    /// Whether to give the population the shapes of real exports (see the module's
    /// documentation, [`extras`] and [`organization`]); without them it is what it always was.
    pub shapes: bool,
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
    /// With `shapes`: Procedure, Immunization and MedicationRequest resources, and the one
    /// Organization.
    pub shapes: u64,
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
    let mut client = SynthClient {
        patient,
        encounters,
        conditions,
        cost_eur: cost,
    };
    if opts.shapes {
        reshape(opts, index, &mut client);
    }
    client
}

/// Whether an Encounter took place: a generated one is `finished` unless [`reshape`] made it an
/// error or a cancellation, which cost nothing and are billed for nothing.
fn finished(encounter: &Value) -> bool {
    encounter["status"] == "finished"
}

/// The diagnosis of a generated Condition's first coding (a code of the tables).
fn diagnosis_of(condition: &Value) -> Option<Diagnosis> {
    let code = condition
        .pointer("/code/coding/0/code")
        .and_then(Value::as_str)?;
    codes::diagnoses().find(|d| d.icd10.code == code || d.snomed.code == code)
}

/// The more specific SNOMED CT code of a table's SNOMED CT code, if Synthea has one.
fn descendant(code: &str) -> Option<codes::Code> {
    codes::DESCENDANTS
        .iter()
        .find(|(of, _)| *of == code)
        .map(|&(_, d)| d)
}

/// The shapes of real exports on client `index` (`opts.shapes`), from a stream of its own whose
/// first draws decide which shapes a client gets, so the rest of the client is what it was:
/// - about a fifth of the clients have a diagnosis coded both in ICD-10 and SNOMED CT, the
///   SNOMED CT code of Finnish data half the time a more specific one ([`codes::DESCENDANTS`]);
/// - in international data about a third of the clients have the more specific codes
///   throughout, as Synthea codes them;
/// - about 3 % have one more Encounter, a copy of one of theirs `entered-in-error` or
///   `cancelled`, and about 3 % a refuted Condition of a long-term illness they do not have;
/// - about 2 % of the Patients have died (`deceasedDateTime`, after their last contact and
///   before the as-of date) and about 1 % are not `active`.
fn reshape(opts: &SynthOptions, index: u64, c: &mut SynthClient) {
    let mut rng = rng_for(opts.seed, index);
    rng.set_stream(3);
    let intl = opts.flavor == CodeFlavor::International;
    // Drawn for every client, in this order.
    let dual = rng.random_bool(0.2);
    let specific = rng.random_bool(0.3) && intl;
    let voided = rng.random_bool(0.03);
    let refuted = rng.random_bool(0.03);
    let deceased = rng.random_bool(0.02);
    let inactive = rng.random_bool(0.01);

    let primary = if intl { codes::SNOMED } else { codes::ICD10FI };
    let both = c.conditions.iter().enumerate().find_map(|(n, r)| {
        let system = r.pointer("/code/coding/0/system").and_then(Value::as_str);
        (system == Some(primary))
            .then(|| diagnosis_of(r))
            .flatten()
            .map(|d| (n, d))
    });
    if dual && let Some((at, dx)) = both {
        let other = if intl {
            coding(codes::ICD10FI, dx.icd10)
        } else {
            let snomed = match descendant(dx.snomed.code) {
                Some(d) if rng.random_bool(0.5) => d,
                _ => dx.snomed,
            };
            coding(codes::SNOMED, snomed)
        };
        if let Some(list) = c.conditions[at]
            .pointer_mut("/code/coding")
            .and_then(Value::as_array_mut)
        {
            list.push(other);
        }
    }

    if voided && !c.encounters.is_empty() {
        let mut copy = c.encounters[rng.random_range(0..c.encounters.len())].clone();
        copy["id"] = json!(format!("e{index:07}-{:04}", c.encounters.len()));
        copy["status"] = json!(if rng.random_bool(0.5) {
            "entered-in-error"
        } else {
            "cancelled"
        });
        c.encounters.push(copy);
    }

    let held = |d: &Diagnosis| {
        c.conditions.iter().any(|r| {
            r["code"]["coding"].as_array().is_some_and(|list| {
                list.iter().any(|x| {
                    x["code"] == d.icd10.code
                        || x["code"] == d.snomed.code
                        || d.icpc2.is_some_and(|i| x["code"] == i.code)
                })
            })
        })
    };
    let free: Vec<Diagnosis> = codes::CHRONIC.into_iter().filter(|d| !held(d)).collect();
    if refuted && !free.is_empty() {
        let dx = pick(&mut rng, &free);
        let n = c.conditions.len();
        let code = if intl {
            coding(codes::SNOMED, dx.snomed)
        } else {
            coding(codes::ICD10FI, dx.icd10)
        };
        let patient = c.patient["id"].as_str().unwrap_or_default();
        let mut condition = json!({
            "resourceType": "Condition",
            "id": format!("c{index:07}-{n:03}"),
            "verificationStatus": {"coding": [{"system": codes::VERIFICATION, "code": "refuted"}]},
            "code": {"coding": [code]},
            "subject": {"reference": format!("Patient/{patient}")},
            "onsetDateTime": opts.as_of.plus_days(-rng.random_range(30..1000)).to_string(),
        });
        if let Some(e) = c.encounters.first() {
            condition["encounter"] =
                json!({"reference": format!("Encounter/{}", e["id"].as_str().unwrap_or_default())});
        }
        c.conditions.push(condition);
    }

    if specific {
        for r in &mut c.conditions {
            if let Some(first) = r.pointer_mut("/code/coding/0")
                && first["system"] == codes::SNOMED
                && let Some(d) = first["code"].as_str().and_then(descendant)
            {
                *first = coding(codes::SNOMED, d);
            }
        }
    }

    if deceased {
        let last = c
            .encounters
            .iter()
            .filter_map(|e| e.pointer("/period/end").and_then(Value::as_str))
            .filter_map(Day::parse_fhir)
            .max();
        let day = match last {
            Some(last) => last.plus_days(rng.random_range(1..120)),
            None => opts.as_of.plus_days(-rng.random_range(30..1000)),
        };
        let day = day.min(opts.as_of.plus_days(-1));
        c.patient["deceasedDateTime"] = json!(datetime(day, rng.random_range(0..24 * 60)));
    }
    if inactive {
        c.patient["active"] = json!(false);
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
    c.cost_eur = c
        .encounters
        .iter()
        .filter(|e| finished(e))
        .map(cost_eur)
        .sum();
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
    for e in c.encounters.iter().filter(|e| finished(e)) {
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
    let encounters = || c.encounters.iter().filter(|e| finished(e));
    let mut out = Vec::new();

    // Decisions: one per service, with the first and last day of its contacts.
    let mut decided: Vec<(Value, Day, Day)> = Vec::new();
    for e in encounters() {
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
    let home: Vec<Day> = encounters()
        .filter(|e| text(e, "/class/code") == "HH")
        .filter_map(day)
        .collect();
    let last_contact = encounters().filter_map(day).max();
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

    let oral = encounters().filter(|e| {
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

/// What client `index` has beyond what segmentti reads, when `opts.shapes` and its system is
/// the health-care one (`c` as it holds it): a few Procedures, Immunizations and
/// MedicationRequests (ATC medicines in Finnish data, RxNorm in international), dated in the
/// three years before the as-of date or their death. From a stream of their own.
pub fn extras(opts: &SynthOptions, index: u64, c: &SynthClient) -> Vec<Value> {
    if !opts.shapes || opts.area.is_some_and(|a| a != Area::Health) {
        return Vec::new();
    }
    let mut rng = rng_for(opts.seed, index);
    rng.set_stream(4);
    let intl = opts.flavor == CodeFlavor::International;
    let patient = c.patient["id"].as_str().unwrap_or_default();
    let subject = json!({"reference": format!("Patient/{patient}")});
    let end = c.patient["deceasedDateTime"]
        .as_str()
        .and_then(Day::parse_fhir)
        .unwrap_or(opts.as_of);
    let when = |rng: &mut ChaCha8Rng| {
        let day = end.plus_days(-rng.random_range(0..3 * 365));
        (day, datetime(day, rng.random_range(480..960)))
    };
    let mut out = Vec::new();
    for n in 0..rng.random_range(0..=3u32) {
        let (_, at) = when(&mut rng);
        out.push(json!({
            "resourceType": "Procedure",
            "id": format!("pr{index:07}-{n}"),
            "status": "completed",
            "code": {"coding": [coding(codes::SNOMED, pick(&mut rng, &codes::PROCEDURES))]},
            "subject": subject,
            "performedDateTime": at,
        }));
    }
    for n in 0..rng.random_range(0..=2u32) {
        let (_, at) = when(&mut rng);
        out.push(json!({
            "resourceType": "Immunization",
            "id": format!("im{index:07}-{n}"),
            "status": "completed",
            "vaccineCode": {"coding": [coding(codes::CVX, pick(&mut rng, &codes::VACCINES))]},
            "patient": subject,
            "occurrenceDateTime": at,
            "primarySource": true,
        }));
    }
    for n in 0..rng.random_range(0..=3u32) {
        let (day, at) = when(&mut rng);
        let (atc, rxnorm) = pick(&mut rng, &codes::MEDICINES);
        let medicine = if intl {
            coding(codes::RXNORM, rxnorm)
        } else {
            coding(codes::ATC, atc)
        };
        out.push(json!({
            "resourceType": "MedicationRequest",
            "id": format!("mr{index:07}-{n}"),
            "status": if day.days_until(end) > 365 { "stopped" } else { "active" },
            "intent": "order",
            "medicationCodeableConcept": {"coding": [medicine]},
            "subject": subject,
            "authoredOn": at,
        }));
    }
    out
}

/// The one Organization of a population with `opts.shapes`, a type no model reads: the
/// wellbeing county, written once however many clients there are (and in each client's Bundle).
pub fn organization(opts: &SynthOptions) -> Option<Value> {
    opts.shapes.then(|| {
        json!({
            "resourceType": "Organization",
            "id": "org-1",
            "active": true,
            "type": [{"coding": [{"system": codes::ORGANIZATION_TYPE, "code": "prov", "display": "Healthcare Provider"}]}],
            "name": "Päijät-Hämeen hyvinvointialue",
            "address": [{"city": "Lahti", "country": "FI"}],
        })
    })
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
/// Encounters, Conditions, bills, care records and, with `shapes`, [`extras`].
pub fn resources(opts: &SynthOptions, index: u64, c: SynthClient) -> Vec<Value> {
    let bills = bills(opts, &c);
    let records = records(opts, index, &c);
    let extras = extras(opts, index, &c);
    std::iter::once(c.patient)
        .chain(c.encounters)
        .chain(c.conditions)
        .chain(bills)
        .chain(records)
        .chain(extras)
        .collect()
}

/// The NDJSON lines of the population, client by client ([`resources`]), for streaming
/// straight into a run: the types segmentti reads, so not the [`extras`] and [`organization`]
/// of `shapes`, which only [`write_dir`] writes.
pub fn lines(opts: &SynthOptions) -> impl Iterator<Item = (ResourceKind, String)> + '_ {
    clients(opts).flat_map(move |(i, c)| {
        resources(opts, i, c).into_iter().filter_map(|r| {
            let kind = r["resourceType"].as_str().and_then(ResourceKind::parse)?;
            Some((kind, r.to_string()))
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
            if opts.shapes {
                types.extend([
                    "Procedure",
                    "Immunization",
                    "MedicationRequest",
                    "Organization",
                ]);
            }
            let files = types
                .into_iter()
                .map(|t| Ok((t, open(&format!("{t}.ndjson"))?)))
                .collect::<Result<Vec<_>, SynthError>>()?;
            Some(files)
        }
        SynthFormat::Bundles => None,
    };
    let organization = organization(opts);
    if let Some(org) = &organization {
        report.shapes += 1;
        if let Some(files) = &mut ndjson {
            write_line(files, org)?;
        }
    }
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
                Some("Procedure" | "Immunization" | "MedicationRequest") => report.shapes += 1,
                _ => {}
            }
        }
        match &mut ndjson {
            Some(files) => {
                for resource in &resources {
                    write_line(files, resource)?;
                }
            }
            None => {
                let path = target.join(format!(
                    "{}.json",
                    resources[0]["id"].as_str().unwrap_or_default()
                ));
                let mut resources = resources;
                resources.extend(organization.clone());
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
    report.top_decile_cost_share = crate::assess::thresholds::top_share(&mut costs, 0.10);
    Ok(report)
}

/// Writes `resource` as a line of the NDJSON file of its type, if there is one.
fn write_line(
    files: &mut [(&str, (PathBuf, BufWriter<File>))],
    resource: &Value,
) -> Result<(), SynthError> {
    let Some((_, (path, writer))) = files
        .iter_mut()
        .find(|(t, _)| resource["resourceType"] == *t)
    else {
        return Ok(());
    };
    let error = |source: std::io::Error| SynthError {
        path: path.clone(),
        source,
    };
    serde_json::to_writer(&mut *writer, resource).map_err(|e| error(e.into()))?;
    writer.write_all(b"\n").map_err(error)
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
        // The Organization of `shapes` refers to no client.
        let client = ["patient", "subject"]
            .into_iter()
            .find(|k| r.get(*k).is_some());
        if let Some(client) = client {
            r[client] = json!({"reference": patient_urn});
        }
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
            shapes: false,
        }
    }

    /// A digest of everything a population generates: its lines, and each client's Bundle.
    fn digest(o: &SynthOptions) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for (kind, line) in lines(o) {
            h.update(format!("{kind:?}\n{line}\n"));
        }
        for (i, c) in clients(o).take(40) {
            h.update(bundle(o, i, resources(o, i, c)).to_string());
        }
        format!("{:x}", h.finalize())
    }

    /// Without `shapes` every output is byte for byte what it was before the flag existed
    /// (digests taken from the generator as it was then; the International one since "Lives
    /// alone" is sent as SNOMED CT 105529008, its right id).
    #[test]
    fn without_shapes_the_population_is_as_it_always_was() {
        let base = opts(300);
        let intl = SynthOptions {
            flavor: CodeFlavor::International,
            bills: Bills::ClaimsAndExplanations,
            records: true,
            ..base.clone()
        };
        let social = SynthOptions {
            area: Some(Area::Social),
            records: true,
            bills: Bills::Claims,
            ..base.clone()
        };
        let got = [digest(&base), digest(&intl), digest(&social)];
        assert_eq!(got, GOLDEN);
    }

    const GOLDEN: [&str; 3] = [
        "6fa855e1c34bfde252da78951932e13301521d7e1f2cd35ab6c8d8dbebea2640",
        "4710a6ec8580eca56945f25e16f14029e7ff93479a9adf84ac2a72173ad8480b",
        "9094628e12a6ab7a21dcc844501faa8678b9b79295c33338f4bfcc86e40cd862",
    ];

    fn shaped(clients: u64) -> SynthOptions {
        SynthOptions {
            shapes: true,
            ..opts(clients)
        }
    }

    /// The NDJSON files of a written population by name.
    fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.is_file())
            .map(|p| {
                let name = p.file_name().expect("name").to_string_lossy().into_owned();
                (name, std::fs::read(&p).expect("file"))
            })
            .collect()
    }

    /// With `shapes` every client keeps what it had: the same Patient but for a death or an
    /// inactive flag, the same cost, its Encounters and Conditions first and as they were but
    /// for a second coding. The shapes only add, one Encounter and one Condition at most.
    #[test]
    fn shapes_add_to_each_client_without_changing_what_it_had() {
        let (plain, o) = (opts(300), shaped(300));
        let mut changed = 0;
        for i in 0..o.clients {
            let (before, mut after) = (client(&plain, i), client(&o, i));
            changed += usize::from(after != before);
            if let Some(p) = after.patient.as_object_mut() {
                p.remove("deceasedDateTime");
                p.remove("active");
            }
            assert_eq!(after.patient, before.patient);
            assert_eq!(after.cost_eur, before.cost_eur);
            let (e, n) = (before.encounters.len(), before.conditions.len());
            assert_eq!(after.encounters[..e], before.encounters[..]);
            for r in &mut after.conditions {
                if let Some(list) = r.pointer_mut("/code/coding").and_then(Value::as_array_mut) {
                    list.truncate(1);
                }
            }
            assert_eq!(after.conditions[..n], before.conditions[..]);
            assert!(after.encounters.len() <= e + 1 && after.conditions.len() <= n + 1);
            // A voided Encounter is billed for nothing.
            let o = SynthOptions {
                bills: Bills::Claims,
                ..o.clone()
            };
            assert_eq!(bills(&o, &after).len(), e);
        }
        assert!(changed > 30 && changed < 150, "{changed}");
    }

    /// With `shapes`, 500 clients have every shape, and the types no model reads are written to
    /// files of their own, never into `lines`.
    #[test]
    fn real_shapes_appear_in_500_clients() {
        let o = shaped(500);
        let dir = tempfile::tempdir().expect("tempdir");
        let report = write_dir(&o, SynthFormat::Ndjson, dir.path()).expect("written");
        let read = |t: &str| -> Vec<Value> {
            std::fs::read_to_string(dir.path().join(format!("{t}.ndjson")))
                .expect(t)
                .lines()
                .map(|l| serde_json::from_str(l).expect("json"))
                .collect()
        };
        let mut extra = 0;
        for t in ["Procedure", "Immunization", "MedicationRequest"] {
            let all = read(t);
            assert!(all.len() > 100, "{t}: {}", all.len());
            extra += all.len() as u64;
            let client = if t == "Immunization" {
                "patient"
            } else {
                "subject"
            };
            for r in &all {
                assert!(r["status"].is_string() && r["id"].is_string(), "{r}");
                let me = r[client]["reference"].as_str().expect("reference");
                assert!(me.starts_with("Patient/p"), "{me}");
            }
        }
        assert_eq!(
            read("Organization"),
            vec![organization(&o).expect("organization")]
        );
        assert_eq!(report.shapes, extra + 1);

        let patients = read("Patient");
        let died: Vec<Day> = patients
            .iter()
            .filter_map(|p| p["deceasedDateTime"].as_str())
            .filter_map(Day::parse_fhir)
            .collect();
        assert!(
            !died.is_empty() && died.iter().all(|d| *d < o.as_of),
            "{died:?}"
        );
        assert!(patients.iter().any(|p| p["active"] == false));
        let encounters = read("Encounter");
        for status in ["entered-in-error", "cancelled"] {
            assert!(encounters.iter().any(|e| e["status"] == status), "{status}");
        }
        let conditions = read("Condition");
        assert!(
            conditions
                .iter()
                .any(|c| c["verificationStatus"]["coding"][0]["code"] == "refuted")
        );
        let dual = conditions
            .iter()
            .filter(|c| {
                c["code"]["coding"][0]["system"] == codes::ICD10FI
                    && c["code"]["coding"][1]["system"] == codes::SNOMED
            })
            .count();
        assert!(dual > 40, "{dual}");

        // International data have the more specific SNOMED CT codes Synthea uses.
        let intl = SynthOptions {
            flavor: CodeFlavor::International,
            ..o.clone()
        };
        let text: String = lines(&intl)
            .filter(|(k, _)| *k == ResourceKind::Condition)
            .map(|(_, l)| l)
            .collect();
        for (_, d) in codes::DESCENDANTS {
            assert!(text.contains(&format!("\"{}\"", d.code)), "{}", d.code);
        }
        // `lines` holds the types segmentti reads only.
        for (kind, line) in lines(&o).take(20_000) {
            let r: Value = serde_json::from_str(&line).expect("json");
            assert_eq!(r["resourceType"], kind.as_str());
        }
    }

    /// In Bundles each client's has its Procedures, Immunizations and MedicationRequests
    /// referring to its Patient entry, and the Organization, which refers to no client.
    #[test]
    fn real_shapes_are_entries_of_each_bundle() {
        let o = shaped(30);
        let dir = tempfile::tempdir().expect("tempdir");
        write_dir(&o, SynthFormat::Bundles, dir.path()).expect("written");
        let mut extras = 0;
        for (name, bytes) in files(&dir.path().join("bundles")) {
            let b: Value = serde_json::from_slice(&bytes).expect(&name);
            let entries = b["entry"].as_array().expect("entries");
            let me = entries[0]["fullUrl"].as_str().expect("fullUrl");
            let org: Vec<&Value> = entries
                .iter()
                .map(|e| &e["resource"])
                .filter(|r| r["resourceType"] == "Organization")
                .collect();
            assert_eq!(org.len(), 1, "{name}");
            assert!(org[0].get("subject").is_none() && org[0].get("patient").is_none());
            for r in entries.iter().map(|e| &e["resource"]) {
                let t = r["resourceType"].as_str().expect("type");
                if matches!(t, "Procedure" | "Immunization" | "MedicationRequest") {
                    extras += 1;
                    let client = r["subject"]["reference"]
                        .as_str()
                        .or(r["patient"]["reference"].as_str());
                    assert_eq!(client, Some(me));
                }
            }
        }
        assert!(extras > 10, "{extras}");
    }

    /// The same seed and flags write the same bytes; another seed other ones.
    #[test]
    fn real_shapes_are_deterministic() {
        let o = SynthOptions {
            bills: Bills::Claims,
            records: true,
            ..shaped(200)
        };
        let write = |o: &SynthOptions| {
            let dir = tempfile::tempdir().expect("tempdir");
            write_dir(o, SynthFormat::Ndjson, dir.path()).expect("written");
            files(dir.path())
        };
        let a = write(&o);
        assert_eq!(a.len(), 10, "{:?}", a.keys());
        assert_eq!(a, write(&o));
        let other = write(&SynthOptions {
            seed: 8,
            ..o.clone()
        });
        assert_ne!(a["Encounter.ndjson"], other["Encounter.ndjson"]);
        assert_eq!(a["Organization.ndjson"], other["Organization.ndjson"]);
        assert_eq!(lines(&o).collect::<Vec<_>>(), lines(&o).collect::<Vec<_>>());
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
        let share = crate::assess::thresholds::top_share(&mut costs, 0.10);
        assert!(
            (0.70..=0.90).contains(&share),
            "top-decile cost share {share}"
        );
    }
}
