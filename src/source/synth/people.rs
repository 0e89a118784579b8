//! The people of the synthetic county and their care: each client's latent need, age, identity
//! code, contacts, diagnoses and service areas, drawn from the client's own random stream, and
//! the price of a contact.

use super::*;

/// The price of one generated Encounter in EUR: illustrative unit costs rounded from THL's
/// unit-cost reports, the same table as `mappings/paijat-sote.yaml`.
pub(crate) fn cost_eur(encounter: &Value) -> f64 {
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

pub(super) fn rng_for(seed: u64, index: u64) -> ChaCha8Rng {
    // SplitMix64 of (seed, index): neighbouring clients get unrelated streams.
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ChaCha8Rng::seed_from_u64(z ^ (z >> 31))
}

pub(super) fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller; 1 - u keeps the logarithm finite.
    let (u, v): (f64, f64) = (rng.random(), rng.random());
    (-2.0 * (1.0 - u).ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

pub(super) fn poisson(rng: &mut ChaCha8Rng, lambda: f64) -> u32 {
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

pub(super) fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

/// The Finnish personal identity code of a birth date, in the test range (900–999).
pub(crate) fn identity_code(birth: Day, individual: u32) -> String {
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

pub(super) fn coding(system: &str, code: codes::Code) -> Value {
    json!({"system": system, "code": code.code, "display": code.display})
}

pub(super) fn datetime(day: Day, minutes: u32) -> String {
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

/// The oral-health diagnoses of a client with oral-health contacts, more with need and age.
/// They come from a stream of their own and are appended last, so every other resource of the
/// population is what it was before they were added.
pub(super) fn oral_diagnoses(seed: u64, index: u64, age: u32, h: f64) -> Vec<(Diagnosis, bool)> {
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
pub(super) fn contact(
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

/// What `area`'s system holds of client `index`: that area's resources only, under a local
/// Patient id of its own (a UUID of the seed, area and index, as opaque as a real system's).
pub(super) fn in_area(
    seed: u64,
    index: u64,
    area: Area,
    mut c: SynthClient,
) -> Option<SynthClient> {
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

/// The service area of a generated Encounter (by its service type) or Condition (oral and
/// social diagnoses; the rest are health care's).
pub(crate) fn area_of(resource: &Value) -> Area {
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
