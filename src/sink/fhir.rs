//! Results written back to a FHIR server, idempotently. Clients are handled in batches: the
//! batch's active Flags are read (`Flag?patient=Patient/a,Patient/b`; R4 has no Flag `status` search
//! parameter, so status is checked here), `lifecycle::decide` says what changed, and one
//! transaction per batch carries every change with conditional updates on the deterministic
//! identifiers (`PUT Observation?identifier=system|value`), the old Flags ended and a
//! Provenance. An unchanged client costs one search and no write; a rerun of a completed run
//! writes nothing.
//!
//! What a refused transaction leads to depends on why (`FhirError::is_refusal`,
//! `FhirError::is_content_error`):
//!
//! | answer | what follows |
//! |---|---|
//! | a conflict ([`FhirError::is_conflict`]: a Flag changed since it was read) | read the batch's Flags again, decide again, resend; at most `CONFLICT_RETRIES` times |
//! | 400, 409, 412 (after those), 422 | split into one transaction per client: a bad client is reported with the server's OperationOutcome, the others land |
//! | 401, 403, 404, 405 | the run stops ([`FhirSinkError::Refused`]): no other client's write could succeed |
//! | anything else, after the client's retries | the run stops |
//!
//! Writes are safe to send twice, which the client's retries do after a lost answer: Observations
//! and new Flags are conditional updates on their identifiers, a Flag read from the server is
//! written by its id with `If-Match` on the version read (another writer's change in between is
//! a 412, not lost), and the Provenance is a conditional create on a tag naming the write.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::runtime::Runtime;
use tracing::{info, warn};

use super::{Sink, SinkError};
use crate::fhir::{FhirClient, FhirError, matches, patient_references};
use crate::model::plan::Plan;
use crate::record::Rejected;
use crate::record::Unassessed;
use crate::record::extract::patient_id;
use crate::writeback::WRITE_TAG;
use crate::writeback::lifecycle::{self, Changes, Existing};
use crate::writeback::{Built, ClientResources, Concepts};

/// How many times a batch is read and decided again after a 412 before its clients are
/// written one by one.
const CONFLICT_RETRIES: usize = 3;

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

/// Why the sink failed as a whole (a client refused for its content is not a failure of the
/// sink).
#[derive(Debug, thiserror::Error)]
pub enum FhirSinkError {
    /// The server could not be read or written (after retries).
    #[error(transparent)]
    Fhir(#[from] FhirError),
    /// The server refused a write-back transaction for what it is, not what it carries (401,
    /// 403, 404, 405): every client's would be refused alike, so the run stops there.
    #[error("{}", refused_message(.types, .refusal))]
    Refused {
        /// The resource types the transaction carried, such as `Observation, Flag and
        /// Provenance`.
        types: String,
        /// The server's answer.
        refusal: FhirError,
    },
    /// The runtime could not start.
    #[error("cannot start the HTTP runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

impl From<FhirSinkError> for SinkError {
    fn from(e: FhirSinkError) -> Self {
        SinkError::Server(Box::new(e))
    }
}

impl FhirSinkError {
    /// Whether the server refused a read or a write for what it is (see
    /// [`FhirError::is_refusal`]): the run stopped, and its exit code says so.
    pub(crate) fn is_refusal(&self) -> bool {
        match self {
            Self::Fhir(e) | Self::Refused { refusal: e, .. } => e.is_refusal(),
            Self::Runtime(_) => false,
        }
    }
}

/// The message of [`FhirSinkError::Refused`]: the server, its answer, what was asked and what to
/// do. No hint of the request's own ([`FhirError`]'s names no types for a transaction).
fn refused_message(types: &str, refusal: &FhirError) -> String {
    let server = refusal
        .url()
        .map(|u| crate::fhir::redact(u).to_string())
        .unwrap_or_default();
    let status = refusal.status().map(|s| s.to_string()).unwrap_or_default();
    let outcome = refusal
        .outcome()
        .filter(|o| !o.issues.is_empty())
        .map(|o| format!(" ({o})"))
        .unwrap_or_default();
    let hint = match refusal.status().map(|s| s.as_u16()) {
        Some(401) => "the server did not accept the credentials: check the bearer token, or the SMART client id, key and token URL, and that the token has not expired".to_owned(),
        Some(403) => format!(
            "the token has no write scope for {types}: check the client's scopes (such as system/Flag.write, or system/*.write) and the server's access rules"
        ),
        _ => "the server takes no transactions at this base: check that the base URL is the FHIR service base (such as https://fhir.example.org/fhir) and that the server supports transaction Bundles".to_owned(),
    };
    format!(
        "{server} refused segmentti's write of {types}: {status}{outcome}; the run stops, no later client is written and the checkpoint stays\nhint: {hint}"
    )
}

/// Writes each batch of clients to one server.
#[derive(Debug)]
pub(crate) struct FhirSink {
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
    pub(crate) fn new(
        client: FhirClient,
        batch: usize,
        dry_run: bool,
    ) -> Result<Self, FhirSinkError> {
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

    fn flush(&mut self, plan: &Plan) -> Result<(), FhirSinkError> {
        if self.pending.is_empty() && self.retiring.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        let retiring = std::mem::take(&mut self.retiring);
        let model = self
            .model
            .get_or_insert_with(|| {
                (
                    plan.mapping.canonical.to_string(),
                    plan.mapping.version.clone(),
                )
            })
            .clone();
        let mut conflicts = 0;
        loop {
            let decided = self.decide(plan, &batch, &retiring)?;
            if self.dry_run || decided.changes.is_empty() {
                self.count(&decided);
                decided
                    .changes
                    .iter()
                    .for_each(|(_, c)| written(c, &mut self.report));
                return Ok(());
            }
            let bundle = transaction(&decided.changes, &model);
            let error = match self.runtime.block_on(self.client.transaction(&bundle)) {
                Ok(_) => {
                    self.count(&decided);
                    self.report.transactions += 1;
                    self.report.entries += entry_count(&bundle);
                    decided
                        .changes
                        .iter()
                        .for_each(|(_, c)| written(c, &mut self.report));
                    info!(clients = decided.changes.len(), "transaction written");
                    return Ok(());
                }
                Err(e) => e,
            };
            if error.is_conflict() && conflicts < CONFLICT_RETRIES {
                conflicts += 1;
                warn!(
                    clients = decided.changes.len(),
                    attempt = conflicts,
                    "a Flag changed on the server since it was read; reading the batch's Flags again"
                );
                continue;
            }
            if !error.is_content_error() {
                return Err(stopped(error, &bundle));
            }
            self.count(&decided);
            return self.one_by_one(decided.changes, &model, error);
        }
    }

    /// What to write for the batch, on a fresh read of its clients' active Flags. Changes no
    /// count: a 412 may have this done again.
    fn decide(
        &self,
        plan: &Plan,
        batch: &[(ClientResources, String)],
        retiring: &[(String, Unassessed)],
    ) -> Result<Decided, FhirSinkError> {
        let patients = batch
            .iter()
            .map(|(r, _)| r.patient.as_str())
            .chain(retiring.iter().map(|(p, _)| p.as_str()));
        let existing = self
            .runtime
            .block_on(active_flags(&self.client, plan, patients))?;
        let current = |patient: &str| existing.get(patient).map_or(&[][..], Vec::as_slice);
        let mut decided = Decided::default();
        for (resources, print) in batch {
            let changes =
                lifecycle::decide(resources, print, current(&resources.patient), plan.as_of)
                    .map_err(|e| FhirError::InvalidOption {
                        option: "resource",
                        reason: e.to_string(),
                    })?;
            decided.add(&resources.patient, changes);
        }
        for (patient, why) in retiring {
            let changes = lifecycle::retire(current(patient), *why, plan.as_of);
            if !changes.is_empty() {
                info!(patient = %patient, reason = why.as_str(), flags = changes.end.len(), "ending the Flags of a client who gets no assessment");
            }
            decided.add(patient, changes);
        }
        Ok(decided)
    }

    /// Counts a batch's clients, and with `--dry-run` keeps what each would get.
    fn count(&mut self, decided: &Decided) {
        self.report.clients += decided.clients;
        self.report.unchanged += decided.clients - decided.changes.len() as u64;
        if self.dry_run {
            self.report
                .plan
                .extend(decided.changes.iter().map(|(p, c)| diff(p, c)));
        }
    }

    /// After a content error on a batch (`error`): each client in a transaction of its own, so
    /// that one bad client is reported and the others land. A batch of one is reported as is.
    fn one_by_one(
        &mut self,
        changes: Vec<(String, Changes)>,
        model: &(String, String),
        error: FhirError,
    ) -> Result<(), FhirSinkError> {
        if let [(patient, _)] = changes.as_slice() {
            self.refuse(patient, &error);
            return Ok(());
        }
        warn!(clients = changes.len(), status = ?error.status(), "transaction refused for its content; writing its clients one by one");
        for one in changes {
            let single = [one];
            let bundle = transaction(&single, model);
            match self.runtime.block_on(self.client.transaction(&bundle)) {
                Ok(_) => {
                    self.report.transactions += 1;
                    self.report.entries += entry_count(&bundle);
                    written(&single[0].1, &mut self.report);
                }
                Err(e) if e.is_content_error() => self.refuse(&single[0].0, &e),
                Err(e) => return Err(stopped(e, &bundle)),
            }
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

/// A batch's clients and the changes of those who get any.
#[derive(Debug, Default)]
struct Decided {
    clients: u64,
    changes: Vec<(String, Changes)>,
}

impl Decided {
    fn add(&mut self, patient: &str, changes: Changes) {
        self.clients += 1;
        if !changes.is_empty() {
            self.changes.push((patient.to_owned(), changes));
        }
    }
}

/// Counts what `c` writes into `r`.
fn written(c: &Changes, r: &mut WriteReport) {
    r.observations += u64::from(c.observation.is_some());
    r.flags_written += c.upsert.len() as u64;
    r.flags_ended += c.end.len() as u64;
}

/// The error that stops the run after `bundle` failed with `e`: a refusal names what the
/// transaction carried.
fn stopped(e: FhirError, bundle: &Value) -> FhirSinkError {
    if !e.is_refusal() {
        return e.into();
    }
    let mut types: Vec<&str> = Vec::new();
    for t in bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.pointer("/resource/resourceType")?.as_str())
    {
        if !types.contains(&t) {
            types.push(t);
        }
    }
    let types = match types.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => "resources".to_owned(),
    };
    warn!(status = ?e.status(), "the server refused the write-back; the run stops");
    FhirSinkError::Refused { types, refusal: e }
}

impl Sink for FhirSink {
    type Encoded = ClientResources;

    type Prepared = ();

    fn prepare(_: &Plan, _: &Concepts) -> Result<(), SinkError> {
        Ok(())
    }

    fn encode(
        (): &(),
        _: Built<'_>,
        resources: ClientResources,
    ) -> Result<ClientResources, SinkError> {
        Ok(resources)
    }

    fn client(&mut self, plan: &Plan, resources: ClientResources) -> Result<(), SinkError> {
        let print = resources.fingerprint.clone();
        self.pending.push((resources, print));
        if self.pending.len() >= self.batch {
            self.flush(plan)?;
        }
        Ok(())
    }

    fn rejected(&mut self, _rejected: &Rejected) -> Result<(), SinkError> {
        Ok(())
    }

    type Closing<'a> = &'a Plan;
    type Written = WriteReport;

    /// Writes what is still pending and returns the report.
    fn finish(mut self, plan: &Plan) -> Result<WriteReport, SinkError> {
        self.flush(plan)?;
        Ok(self.report)
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
            self.flush(plan)?;
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

/// One transaction for the decided clients: conditional updates on identifiers for what is new,
/// Flags read from the server written by their id with `If-Match` on the version read, and a
/// Provenance naming segmentti and the model, created only if this write's has not been (see
/// `WRITE_TAG`). Public so that [`crate::conformance`] sends a server exactly what a run would.
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
            if let Some(urn) = &observation_urn
                && let Some(detail) = flag["extension"].as_array_mut().and_then(|all| {
                    all.iter_mut()
                        .find(|e| e["url"] == crate::writeback::FLAG_DETAIL)
                })
            {
                detail["valueReference"]["reference"] = Value::String(urn.clone());
            }
            if let Some((entry, target)) = versioned(&mut flag) {
                targets.push(target);
                entries.push(entry);
                continue;
            }
            let url = conditional("Flag", &flag);
            let urn = format!(
                "urn:uuid:{}",
                uuid::Uuid::new_v5(
                    &uuid::Uuid::NAMESPACE_URL,
                    url.as_deref().unwrap_or_default().as_bytes()
                )
            );
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
            let mut flag = flag.clone();
            let (entry, target) = match versioned(&mut flag) {
                Some(versioned) => versioned,
                None => {
                    let url = format!("Flag/{}", flag["id"].as_str().unwrap_or_default());
                    if let Some(o) = flag.as_object_mut() {
                        o.remove("meta");
                    }
                    (
                        json!({"resource": flag, "request": {"method": "PUT", "url": url}}),
                        json!({"reference": url}),
                    )
                }
            };
            targets.push(target);
            entries.push(entry);
        }
    }
    let recorded = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    // The write's name: what it says and when it was made, so the same Bundle sent again
    // names the same write and any other write (another run, another batch) another.
    let key = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        json!([recorded, canonical, version, targets])
            .to_string()
            .as_bytes(),
    );
    let provenance = json!({
        "resourceType": "Provenance",
        "meta": {"tag": [{"system": WRITE_TAG, "code": key.to_string()}]},
        "target": targets,
        "recorded": recorded,
        "agent": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "assembler", "display": "Assembler"}]},
            "who": {"display": concat!("segmentti ", env!("CARGO_PKG_VERSION"))}
        }],
        "entity": [{"role": "source", "what": {"display": format!("{canonical}|{version}")}}]
    });
    let tag: String =
        url::form_urlencoded::byte_serialize(format!("{WRITE_TAG}|{key}").as_bytes()).collect();
    entries.push(
        json!({"fullUrl": format!("urn:uuid:{key}"), "resource": provenance,
        "request": {"method": "POST", "url": "Provenance", "ifNoneExist": format!("_tag={tag}")}}),
    );
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// The entry writing back a Flag read from the server, by its id and conditional on the version
/// read (`If-Match: W/"<versionId>"`), and the Provenance's reference to it; `None` for a Flag
/// that does not carry both (a new one). The server's `meta` is not sent back.
fn versioned(flag: &mut Value) -> Option<(Value, Value)> {
    let id = flag.get("id")?.as_str()?.to_owned();
    let version = flag.pointer("/meta/versionId")?.as_str()?.to_owned();
    flag.as_object_mut()?.remove("meta");
    let url = format!("Flag/{id}");
    Some((
        json!({"resource": flag, "request": {"method": "PUT", "url": url, "ifMatch": format!("W/\"{version}\"")}}),
        json!({"reference": url}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> (String, String) {
        ("https://example.org/model".into(), "1".into())
    }

    fn server_flag(id: &str, version: &str) -> Value {
        json!({"resourceType": "Flag", "id": id, "meta": {"versionId": version, "lastUpdated": "2026-01-01T00:00:00Z"},
            "identifier": [{"system": "https://example.org/model/identifier/segment-flag", "value": id}],
            "status": "inactive", "code": {"coding": [{"code": "1"}]}, "subject": {"reference": "Patient/p1"}})
    }

    #[test]
    fn flags_read_from_the_server_are_written_by_id_on_the_version_read() {
        let changes = Changes {
            observation: None,
            upsert: vec![server_flag("kept", "7")],
            end: vec![server_flag("old", "3")],
        };
        let bundle = transaction(&[("p1".into(), changes)], &model());
        let entries = bundle["entry"].as_array().expect("entries");
        for (entry, id, version) in [(&entries[0], "kept", "7"), (&entries[1], "old", "3")] {
            assert_eq!(entry["request"]["method"], "PUT");
            assert_eq!(entry["request"]["url"], format!("Flag/{id}"));
            assert_eq!(entry["request"]["ifMatch"], format!("W/\"{version}\""));
            assert!(
                entry["resource"].get("meta").is_none(),
                "the server's meta is not sent back"
            );
        }
        assert_eq!(
            entries[2]["resource"]["target"],
            json!([{"reference": "Flag/kept"}, {"reference": "Flag/old"}])
        );
    }

    #[test]
    fn a_provenance_is_created_only_if_its_write_left_none() {
        let changes = || Changes {
            observation: None,
            upsert: Vec::new(),
            end: vec![server_flag("old", "3")],
        };
        let one = transaction(&[("p1".into(), changes())], &model());
        let provenance = &one["entry"][1];
        let tag = &provenance["resource"]["meta"]["tag"][0];
        assert_eq!(tag["system"], WRITE_TAG);
        let key = tag["code"].as_str().expect("a key");
        assert_eq!(provenance["request"]["method"], "POST");
        assert_eq!(
            provenance["request"]["ifNoneExist"],
            format!("_tag=https%3A%2F%2Fsegmentti.fi%2Ffhir%2FCodeSystem%2Fwrite%7C{key}")
        );
        assert_eq!(provenance["fullUrl"], format!("urn:uuid:{key}"));
        let other = transaction(&[("p1".into(), changes())], &model());
        assert_ne!(
            other["entry"][1]["resource"]["meta"]["tag"][0]["code"], key,
            "another write of the same targets is another write"
        );
    }
}
