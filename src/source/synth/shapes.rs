//! Real shapes (`--real-shapes`): what real exports have and the population otherwise lacks,
//! drawn from streams of their own so the rest of the population is unchanged: SNOMED CT
//! codings beside ICD-10, Encounters entered in error or cancelled, refuted Conditions,
//! deceased and inactive Patients, and resources of types no model reads.

use super::*;

/// Whether an Encounter took place: a generated one is `finished` unless [`reshape`] made it an
/// error or a cancellation, which cost nothing and are billed for nothing.
pub(super) fn finished(encounter: &Value) -> bool {
    encounter["status"] == "finished"
}

/// The diagnosis of a generated Condition's first coding (a code of the tables).
pub(super) fn diagnosis_of(condition: &Value) -> Option<Diagnosis> {
    let code = condition
        .pointer("/code/coding/0/code")
        .and_then(Value::as_str)?;
    codes::diagnoses().find(|d| d.icd10.code == code || d.snomed.code == code)
}

/// The more specific SNOMED CT code of a table's SNOMED CT code, if Synthea has one.
pub(super) fn descendant(code: &str) -> Option<codes::Code> {
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
pub(super) fn reshape(opts: &SynthOptions, index: u64, c: &mut SynthClient) {
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

/// What client `index` has beyond what segmentti reads, when `opts.shapes` and its system is
/// the health-care one (`c` as it holds it): a few Procedures, Immunizations and
/// MedicationRequests (ATC medicines in Finnish data, RxNorm in international), dated in the
/// three years before the as-of date or their death. From a stream of their own.
pub(crate) fn extras(opts: &SynthOptions, index: u64, c: &SynthClient) -> Vec<Value> {
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
pub(crate) fn organization(opts: &SynthOptions) -> Option<Value> {
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
