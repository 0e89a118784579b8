//! What a client holds beyond contacts and diagnoses: bills (Claim, ExplanationOfBenefit) and
//! care records (social-welfare service decisions, Barthel Index totals, oral-status findings).

use super::*;

/// The Claims (and ExplanationOfBenefits) of `c`'s Encounters per `opts.bills`: one per
/// Encounter, billed for its period, with its price by [`cost_eur`] as the total, so a run
/// costed by bills gives the same cost as the price table. Made from the client as its system
/// holds it, so the bills refer to that system's Patient and Encounters.
pub(crate) fn bills(opts: &SynthOptions, c: &SynthClient) -> Vec<Value> {
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
pub(crate) fn records(opts: &SynthOptions, index: u64, c: &SynthClient) -> Vec<Value> {
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
