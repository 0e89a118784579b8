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
//! (`cost_eur`), and with [`Bills::ClaimsAndExplanations`] a payer's ExplanationOfBenefit
//! restating it, as Synthea writes them; without bills the output is what it always was. With
//! care records ([`SynthOptions::records`], `--care-records`) the data also hold what a model
//! reads beyond contacts and diagnoses (`records`): social-welfare service decisions
//! (EpisodeOfCare), Barthel Index totals and oral-status findings (Observation). With real
//! shapes ([`SynthOptions::shapes`], `--real-shapes`) the data also have what real exports
//! (Synthea and others) have and the population otherwise lacks: Procedure, Immunization and
//! MedicationRequest resources (`extras`) and one Organization (`organization`), types no
//! model reads, which are in the written files and a loaded server but not in `lines`;
//! diagnoses coded both in ICD-10 and SNOMED CT, or with more specific SNOMED CT codes as
//! Synthea codes them; Encounters entered in error or cancelled (which cost nothing and get no
//! bills); refuted Conditions; deceased and inactive Patients. They are drawn from streams of
//! their own, so the rest of the population is what it was, and the flag is off by default: the
//! embedded default and every output without it are byte for byte what they were. Ties in
//! service use need no shape of their own: many clients have the same number of contacts. This
//! module writes files only in [`write_dir`]; it knows nothing of models.
//!
//! By job: `people` (clients, their contacts, diagnoses and areas, prices), `shapes` (what
//! real exports look like), `records` (bills and care records), `write` (files and Bundles) and
//! `codes` (the code lists every part draws from).

pub(crate) mod codes;
mod people;
mod records;
mod shapes;
mod write;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

pub use self::codes::Area;
use self::codes::{ContactKind, Diagnosis, Service};
pub use self::people::client;
pub(crate) use self::people::cost_eur;
use self::people::{coding, datetime, in_area, pick, rng_for};
pub(crate) use self::records::{bills, records};
pub(crate) use self::shapes::{extras, organization};
use self::shapes::{finished, reshape};
pub use self::write::write_dir;
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
    /// Whether to write care records (`records`) too.
    pub records: bool,
    /// Whether to give the population the shapes of real exports (see the module's
    /// documentation, `extras` and `organization`); without them it is what it always was.
    pub shapes: bool,
}

/// Which bills `bills` writes for each Encounter.
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
    /// What their contacts cost by `cost_eur`.
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

/// Every resource of client `index` as its system holds it (`c`): the Patient first, then its
/// Encounters, Conditions, bills, care records and, with `shapes`, `extras`.
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
pub(crate) fn lines(opts: &SynthOptions) -> impl Iterator<Item = (ResourceKind, String)> + '_ {
    clients(opts).flat_map(move |(i, c)| {
        resources(opts, i, c).into_iter().filter_map(|r| {
            let kind = r["resourceType"].as_str().and_then(ResourceKind::parse)?;
            Some((kind, r.to_string()))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::synth::people::{area_of, identity_code};
    use crate::source::synth::write::bundle;

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
