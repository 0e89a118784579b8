//! Results written back to a FHIR server, idempotently. Clients are handled in batches: the
//! batch's active Flags are read (`Flag?patient=Patient/a,Patient/b`; R4 has no Flag `status` search
//! parameter, so status is checked here), [`lifecycle::decide`] says what changed, and one
//! transaction per batch carries every change with conditional updates on the deterministic
//! identifiers (`PUT Observation?identifier=system|value`), the old Flags ended and a
//! Provenance. An unchanged client costs one search and no write; a rerun of a completed run
//! writes nothing. A transaction the server refuses is split into one per client, so one bad
//! client is reported with the server's OperationOutcome and the others still land.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::runtime::Runtime;
use tracing::{info, warn};

use super::{Built, ClientResources, Sink, SinkError};
use crate::fhir::{FhirClient, FhirError, matches, patient_references};
use crate::model::plan::Plan;
use crate::pipeline::Rejected;
use crate::record::Unassessed;
use crate::record::extract::patient_id;
use crate::writeback::lifecycle::{self, Changes, Existing};

/// What a server sink did, for the summary and the exit code.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WriteReport {
    /// Clients considered.
    pub clients: u64,
    /// Clients whose results were already on the server: nothing written.
    pub unchanged: u64,
    /// Assessment Observations written.
    pub observations: u64,
    /// Flags created or updated.
    pub flags_written: u64,
    /// Flags ended (set inactive with `period.end`).
    pub flags_ended: u64,
    /// Transactions posted.
    pub transactions: u64,
    /// Entries in those transactions (resources written, Provenances included).
    pub entries: u64,
    /// Clients the server refused, with its message.
    pub refused: Vec<Refused>,
    /// Per client, what a dry run would do (only with `--dry-run`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<ClientDiff>,
}

/// A client whose write the server refused.
#[derive(Debug, Clone, Serialize)]
pub struct Refused {
    /// The client.
    pub patient: String,
    /// What the server said.
    pub message: String,
}

/// What would change for one client.
#[derive(Debug, Clone, Serialize)]
pub struct ClientDiff {
    /// The client.
    pub patient: String,
    /// Whether a new assessment would be written.
    pub observation: bool,
    /// Codes of the Flags created or updated.
    pub write: Vec<String>,
    /// Codes of the Flags ended.
    pub end: Vec<String>,
}

/// Why the sink failed as a whole (a refused client is not a failure of the sink).
#[derive(Debug, thiserror::Error)]
pub enum FhirSinkError {
    /// The server could not be read or written (after retries).
    #[error(transparent)]
    Fhir(#[from] FhirError),
    /// The runtime could not start.
    #[error("cannot start the HTTP runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Writes each batch of clients to one server.
#[derive(Debug)]
pub struct FhirSink {
    client: FhirClient,
    runtime: Runtime,
    batch: usize,
    dry_run: bool,
    pending: Vec<(ClientResources, String)>,
    /// Clients who get no assessment: their active Flags are ended.
    retiring: Vec<(String, Unassessed)>,
    report: WriteReport,
    model: Option<(String, String)>,
}

impl FhirSink {
    /// A sink writing to `client` in transactions of `batch` clients; `dry_run` reads but never writes.
    pub fn new(client: FhirClient, batch: usize, dry_run: bool) -> Result<Self, FhirSinkError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Self {
            client,
            runtime,
            batch: batch.max(1),
            dry_run,
            pending: Vec::new(),
            retiring: Vec::new(),
            report: WriteReport::default(),
            model: None,
        })
    }

    /// Writes what is still pending and returns the report.
    pub fn finish(mut self, plan: &Plan) -> Result<WriteReport, FhirSinkError> {
        self.flush(plan)?;
        Ok(self.report)
    }

    fn flush(&mut self, plan: &Plan) -> Result<(), FhirSinkError> {
        if self.pending.is_empty() && self.retiring.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        let retiring = std::mem::take(&mut self.retiring);
        let patients = batch
            .iter()
            .map(|(r, _)| r.patient.as_str())
            .chain(retiring.iter().map(|(p, _)| p.as_str()));
        let existing = self
            .runtime
            .block_on(active_flags(&self.client, plan, patients))?;
        let mut decided = Vec::new();
        for (resources, print) in &batch {
            let current = existing
                .get(&resources.patient)
                .map_or(&[][..], Vec::as_slice);
            let changes =
                lifecycle::decide(resources, print, current, plan.as_of).map_err(|e| {
                    FhirError::InvalidOption {
                        option: "resource",
                        reason: e.to_string(),
                    }
                })?;
            self.report.clients += 1;
            if changes.is_empty() {
                self.report.unchanged += 1;
                continue;
            }
            if self.dry_run {
                self.report.plan.push(diff(&resources.patient, &changes));
            }
            decided.push((resources.patient.clone(), changes));
        }
        for (patient, why) in retiring {
            let current = existing.get(&patient).map_or(&[][..], Vec::as_slice);
            let changes = lifecycle::retire(current, why, plan.as_of);
            self.report.clients += 1;
            if changes.is_empty() {
                self.report.unchanged += 1;
                continue;
            }
            info!(patient = %patient, reason = why.as_str(), flags = changes.end.len(), "ending the Flags of a client who gets no assessment");
            if self.dry_run {
                self.report.plan.push(diff(&patient, &changes));
            }
            decided.push((patient, changes));
        }
        let written = |c: &Changes, r: &mut WriteReport| {
            r.observations += u64::from(c.observation.is_some());
            r.flags_written += c.upsert.len() as u64;
            r.flags_ended += c.end.len() as u64;
        };
        if self.dry_run || decided.is_empty() {
            for (_, c) in &decided {
                written(c, &mut self.report);
            }
            return Ok(());
        }
        let model = self
            .model
            .get_or_insert_with(|| {
                (
                    plan.mapping.canonical.to_string(),
                    plan.mapping.version.clone(),
                )
            })
            .clone();
        let bundle = transaction(&decided, &model);
        match self.runtime.block_on(self.client.transaction(&bundle)) {
            Ok(_) => {
                self.report.transactions += 1;
                self.report.entries += entry_count(&bundle);
                decided
                    .iter()
                    .for_each(|(_, c)| written(c, &mut self.report));
                info!(clients = decided.len(), "transaction written");
            }
            Err(e) if decided.len() > 1 && !e.is_retryable() => {
                warn!(clients = decided.len(), status = ?e.status(), "transaction refused; writing its clients one by one");
                for one in decided {
                    let single = [one];
                    let bundle = transaction(&single, &model);
                    match self.runtime.block_on(self.client.transaction(&bundle)) {
                        Ok(_) => {
                            self.report.transactions += 1;
                            self.report.entries += entry_count(&bundle);
                            written(&single[0].1, &mut self.report);
                        }
                        Err(e) if !e.is_retryable() => self.refuse(&single[0].0, &e),
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Err(e) if !e.is_retryable() => self.refuse(&decided[0].0, &e),
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    fn refuse(&mut self, patient: &str, e: &FhirError) {
        warn!(patient, status = ?e.status(), "the server refused this client's results");
        self.report.refused.push(Refused {
            patient: patient.to_owned(),
            message: e.to_string(),
        });
    }
}

impl Sink for FhirSink {
    type Encoded = ClientResources;

    fn encode(_: Built<'_>, resources: ClientResources) -> Result<ClientResources, SinkError> {
        Ok(resources)
    }

    fn client(&mut self, plan: &Plan, resources: ClientResources) -> Result<(), SinkError> {
        let print = resources.fingerprint.clone();
        self.pending.push((resources, print));
        if self.pending.len() >= self.batch {
            self.flush(plan)
                .map_err(|e| SinkError::Remote(e.to_string()))?;
        }
        Ok(())
    }

    fn rejected(&mut self, _rejected: &Rejected) -> Result<(), SinkError> {
        Ok(())
    }

    fn unassessed(
        &mut self,
        plan: &Plan,
        _target: usize,
        patient: &str,
        why: Unassessed,
    ) -> Result<(), SinkError> {
        self.retiring.push((patient.to_owned(), why));
        if self.pending.len() + self.retiring.len() >= self.batch {
            self.flush(plan)
                .map_err(|e| SinkError::Remote(e.to_string()))?;
        }
        Ok(())
    }
}

/// The active Flags of this model that the server holds for the batch's clients.
async fn active_flags(
    client: &FhirClient,
    plan: &Plan,
    patients: impl Iterator<Item = &str>,
) -> Result<HashMap<String, Vec<Existing>>, FhirError> {
    let joined = patient_references(patients);
    let mut pages = client.pages("Flag", &[("patient", joined.as_str()), ("_count", "200")])?;
    let mut out: HashMap<String, Vec<Existing>> = HashMap::new();
    while let Some(page) = pages.next_page().await {
        for flag in matches(&page?) {
            let Some(existing) = Existing::from_server(plan, flag) else {
                continue;
            };
            let Some(patient) = flag
                .pointer("/subject/reference")
                .and_then(Value::as_str)
                .and_then(patient_id)
            else {
                continue;
            };
            out.entry(patient.to_owned()).or_default().push(existing);
        }
    }
    Ok(out)
}

/// How many entries a Bundle has.
fn entry_count(bundle: &Value) -> u64 {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .map_or(0, |e| e.len() as u64)
}

fn diff(patient: &str, c: &Changes) -> ClientDiff {
    let code = |v: &Value| {
        v.pointer("/code/coding/0/code")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    ClientDiff {
        patient: patient.to_owned(),
        observation: c.observation.is_some(),
        write: c.upsert.iter().map(code).collect(),
        end: c.end.iter().map(code).collect(),
    }
}

/// The search URL of a conditional update on a resource's first identifier.
pub fn conditional(resource_type: &str, resource: &Value) -> Option<String> {
    let identifier = resource.pointer("/identifier/0")?;
    let system = identifier.get("system")?.as_str()?;
    let value = identifier.get("value")?.as_str()?;
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    Some(format!(
        "{resource_type}?identifier={}|{}",
        encode(system),
        encode(value)
    ))
}

/// One transaction for the decided clients: conditional updates on identifiers, ended Flags by
/// their server id, and a Provenance naming segmentti and the model. Public so that
/// [`crate::conformance`] sends a server exactly what a run would.
pub fn transaction(
    decided: &[(String, Changes)],
    (canonical, version): &(String, String),
) -> Value {
    let mut entries = Vec::new();
    let mut targets = Vec::new();
    for (_, c) in decided {
        let mut observation_urn = None;
        if let Some(obs) = &c.observation {
            let mut obs = obs.clone();
            let urn = format!("urn:uuid:{}", obs["id"].as_str().unwrap_or_default());
            let url = conditional("Observation", &obs);
            if let Some(o) = obs.as_object_mut() {
                o.remove("id");
            }
            targets.push(json!({"reference": urn}));
            entries.push(
                json!({"fullUrl": urn, "resource": obs, "request": {"method": "PUT", "url": url}}),
            );
            observation_urn = Some(urn);
        }
        for flag in &c.upsert {
            let mut flag = flag.clone();
            let urn = format!(
                "urn:uuid:{}",
                uuid::Uuid::new_v5(
                    &uuid::Uuid::NAMESPACE_URL,
                    conditional("Flag", &flag).unwrap_or_default().as_bytes()
                )
            );
            if let (Some(urn), Some(detail)) = (
                &observation_urn,
                flag.pointer_mut("/extension/0/valueReference/reference"),
            ) {
                *detail = Value::String(urn.clone());
            }
            let url = conditional("Flag", &flag);
            if let Some(o) = flag.as_object_mut() {
                o.remove("id");
                o.remove("meta");
            }
            targets.push(json!({"reference": urn}));
            entries.push(
                json!({"fullUrl": urn, "resource": flag, "request": {"method": "PUT", "url": url}}),
            );
        }
        for flag in &c.end {
            let id = flag["id"].as_str().unwrap_or_default();
            targets.push(json!({"reference": format!("Flag/{id}")}));
            entries.push(json!({"resource": flag, "request": {"method": "PUT", "url": format!("Flag/{id}")}}));
        }
    }
    let provenance = json!({
        "resourceType": "Provenance",
        "target": targets,
        "recorded": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "agent": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "assembler", "display": "Assembler"}]},
            "who": {"display": concat!("segmentti ", env!("CARGO_PKG_VERSION"))}
        }],
        "entity": [{"role": "source", "what": {"display": format!("{canonical}|{version}")}}]
    });
    entries.push(json!({"fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()), "resource": provenance, "request": {"method": "POST", "url": "Provenance"}}));
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}
