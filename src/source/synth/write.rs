//! The population written out: NDJSON files or transaction Bundles in a directory, one
//! resource type per file; the only file I/O of the synthetic population.

use super::*;

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
pub(super) fn write_line(
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
pub(super) fn bundle(opts: &SynthOptions, index: u64, resources: Vec<Value>) -> Value {
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
