//! CDS Hooks 2.0: discovery, the `patient-view` service and card feedback. A call is checked
//! (token, size, hook, `context.patientId`, `fhirServer`) before anything is read, the body's
//! part by one pure function, [`parse_call`], which the fuzzer drives as well; the client's
//! Patient, Encounters and Conditions come from the prefetch, or else are read from the one
//! trusted server with the call's `fhirAuthorization` token (without one, with the service's
//! own credentials: the caller is already a verified EHR). That read retries once at most, since
//! the professional is waiting for the card. Evaluation is live and read-only:
//! nothing is written, and the `top_percent` thresholds are the last full run's (from the
//! checkpoint or this process's runs), since one client is no population. Without them, those
//! tests do not hold, and the card says so.
//!
//! Parsing the request and evaluating run on the blocking pool, never on the runtime's workers,
//! so that large prefetches cannot hold up `/healthz` or other calls.
//!
//! The language of the cards is the first of `fi`, `sv` and `en` in the call's
//! `Accept-Language` header; without one, Finnish.
//!
//! A card's link opens its explanation once, within `EXPLANATION_TTL`: the link carries its
//! expiry and an HMAC of id and expiry under a key drawn at start-up, so it cannot be forged or
//! stretched. A CDS Hooks token for the link's URL (without its query) opens it as well. The
//! explanation is the card's own text under the client's id: no more than the card showed.
//!
//! | problem | status |
//! |---|---|
//! | no, invalid, expired or replayed token; an explanation link unsigned, forged or expired | 401 |
//! | unknown service; an explanation already opened | 404 |
//! | body larger than `max_body_bytes` | 413 |
//! | not JSON, wrong `hook`, no `context.patientId` or not a FHIR id, prefetch of another client | 400 |
//! | `fhirServer` not the configured server | 403 |
//! | no complete prefetch and no `fhirServer` | 412 |
//! | the Patient is not on the server | 404 |
//! | the server failed | 502 |
//!
//! Messages name resource ids only; `fhirAuthorization` tokens are never logged.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::AppState;
use crate::assess::eval::{self, Lang};
use crate::assess::thresholds::{self, Basis};
use crate::fhir::types::{PatientId, is_fhir_id};
use crate::fhir::{BearerToken, FhirError, RetryPolicy, new_correlation_id};
use crate::run::pipeline;

/// The one service.
const SERVICE_ID: &str = "segmentti-patient-view";
/// How long an explanation behind a card's link can be opened.
const EXPLANATION_TTL: Duration = Duration::from_secs(5 * 60);
/// Explanations kept at once; the oldest go first.
const EXPLANATIONS_KEPT: usize = 1000;

/// A refused or failed call: its status and a message for the caller.
#[derive(Debug)]
pub struct Refusal(pub StatusCode, pub String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (
            self.0,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.1),
        )
            .into_response()
    }
}

/// `GET /cds-services`.
pub(crate) async fn discovery() -> Response {
    axum::Json(json!({
        "services": [{
            "hook": "patient-view",
            "id": SERVICE_ID,
            "title": "Client segment",
            "description": "The client's segment in each configured segmentation model, the criteria that placed them there and what professionals should do",
            "prefetch": {
                "patient": "Patient/{{context.patientId}}",
                "encounters": "Encounter?patient={{context.patientId}}",
                "conditions": "Condition?patient={{context.patientId}}"
            }
        }]
    }))
    .into_response()
}

/// `POST /cds-services/{id}`.
pub(crate) async fn call(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let response = match answer(state.clone(), &id, &headers, body).await {
        Ok(cards) => axum::Json(cards).into_response(),
        Err(refusal) => {
            tracing::info!(status = refusal.0.as_u16(), reason = %refusal.1, "CDS Hooks call refused");
            refusal.into_response()
        }
    };
    state.metrics.cds_answered(response.status().as_u16());
    response
}

/// `POST /cds-services/{id}/feedback`.
pub(crate) async fn feedback(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let body = checked(&state, &id, &headers, body, "/feedback").await?;
        let items = body["feedback"].as_array().ok_or_else(|| {
            Refusal(
                StatusCode::BAD_REQUEST,
                "the body has no `feedback` array".into(),
            )
        })?;
        for item in items {
            match item["outcome"].as_str() {
                Some("accepted") => state.metrics.feedback(true),
                Some("overridden") => state.metrics.feedback(false),
                other => {
                    return Err(Refusal(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "feedback outcome {other:?} is neither `accepted` nor `overridden`"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// `GET /explanations/{id}`: the explanation behind a card, once, for a while after the card,
/// to the holder of its signed link or of a CDS Hooks token for it.
pub(crate) async fn explanation(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match (&state.verifier, authorization) {
            (Some(verifier), Some(authorization)) => {
                let aud = format!("{}explanations/{id}", state.public_url);
                verifier
                    .verify(Some(authorization), &aud)
                    .await
                    .map_err(|e| Refusal(StatusCode::UNAUTHORIZED, e.to_string()))?;
            }
            _ => state
                .explanations
                .check_link(&id, uri.query().unwrap_or(""))?,
        }
        state.explanations.take(&id).ok_or_else(|| {
            Refusal(
                StatusCode::NOT_FOUND,
                "this explanation has been opened already, or has expired; open the card again"
                    .into(),
            )
        })
    }
    .await;
    match result {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// The checks every call to the service goes through: service id, token, size, JSON.
async fn checked(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    suffix: &str,
) -> Result<Value, Refusal> {
    if id != SERVICE_ID {
        return Err(Refusal(
            StatusCode::NOT_FOUND,
            format!("no CDS service `{id}`; GET /cds-services lists them"),
        ));
    }
    if let Some(verifier) = &state.verifier {
        let aud = format!("{}cds-services/{id}{suffix}", state.public_url);
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        verifier
            .verify(authorization, &aud)
            .await
            .map_err(|e| Refusal(StatusCode::UNAUTHORIZED, e.to_string()))?;
    }
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request is larger than {} bytes",
                state.settings.max_body
            ),
        ),
        status => Refusal(status, e.body_text()),
    })?;
    off_the_workers(state, move || {
        serde_json::from_slice(&body).map_err(|e| {
            Refusal(
                StatusCode::BAD_REQUEST,
                format!("the request is not JSON: {e}"),
            )
        })
    })
    .await
}

/// Runs `work` (parsing or evaluating a call) on the blocking pool, as one of the
/// evaluations `state` lets run at once.
async fn off_the_workers<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce() -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    let permit = state.evaluations.clone().acquire_owned().await;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
    .unwrap_or_else(|e| {
        Err(Refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("evaluating the call failed: {e}"),
        ))
    })
}

/// Whether `id` may stand as a FHIR resource id in a URL path: a FHIR id, and not `.` or `..`,
/// which match the pattern but which a path would read as this and the parent folder.
fn is_path_id(id: &str) -> bool {
    is_fhir_id(id) && id != "." && id != ".."
}

async fn answer(
    state: Arc<AppState>,
    id: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, Refusal> {
    let request = checked(&state, id, headers, body, "").await?;
    let lang = language(headers);
    let trusted = state.settings.server.clone();
    let call = off_the_workers(&state, move || parse_call(&request, &trusted)).await?;
    let patient = call.patient.as_str().to_owned();
    let resources = match call.resources {
        Resources::Prefetched(resources) => resources,
        Resources::OnServer(token) => fetch(&state, &patient, token).await?,
    };
    let evaluating = state.clone();
    off_the_workers(&state, move || {
        cards(&evaluating, &patient, &resources, lang)
    })
    .await
}

/// A `patient-view` call that passed [`parse_call`]: whose cards, and where the client's
/// resources come from.
#[derive(Debug)]
pub struct Call {
    /// `context.patientId`, a FHIR id (see `is_path_id`).
    pub patient: PatientId,
    /// The prefetch, or the server to read the client from.
    pub resources: Resources,
}

/// Where a call's client comes from.
#[derive(Debug)]
pub enum Resources {
    /// A complete prefetch of this client: the Patient, then its Encounters and Conditions.
    Prefetched(Vec<Value>),
    /// The trusted server, read with the call's `fhirAuthorization` token when it has one.
    OnServer(Option<BearerToken>),
}

/// Checks the body of a `patient-view` call, in order: `hook`, `context.patientId`,
/// `fhirServer` against `trusted` (the configured server), then the prefetch. Pure, so that
/// the fuzzer reaches every refusal the service gives before it reads anything; the token and
/// size checks, which need the service, come before it in `call`.
pub fn parse_call(request: &Value, trusted: &url::Url) -> Result<Call, Refusal> {
    let bad = |m: String| Refusal(StatusCode::BAD_REQUEST, m);
    match request["hook"].as_str() {
        Some("patient-view") => {}
        Some(other) => {
            return Err(bad(format!(
                "this service answers the `patient-view` hook, not `{other}`"
            )));
        }
        None => return Err(bad("the request has no `hook`".into())),
    }
    let patient = request["context"]["patientId"]
        .as_str()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| bad("the request has no `context.patientId`".into()))?;
    // It goes into a URL path, so nothing but a FHIR id may pass.
    if !is_path_id(patient) {
        return Err(bad(
            "`context.patientId` is not a FHIR id: 1 to 64 of A–Z, a–z, 0–9, `-` and `.`, and not `.` or `..`".into(),
        ));
    }
    let server = request.get("fhirServer").and_then(Value::as_str);
    if let Some(server) = server
        && !trusts(trusted, server)
    {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "`fhirServer` is not the FHIR server this service is configured to trust; it is never called".into(),
        ));
    }
    let resources = match prefetched(request, patient)? {
        Some(resources) => Resources::Prefetched(resources),
        None if server.is_some() => Resources::OnServer(
            request["fhirAuthorization"]["access_token"]
                .as_str()
                .map(BearerToken::new),
        ),
        None => {
            return Err(Refusal(
                StatusCode::PRECONDITION_FAILED,
                "the request has neither a complete prefetch (patient, encounters, conditions) nor a `fhirServer` to read them from".into(),
            ));
        }
    };
    Ok(Call {
        patient: PatientId::new(patient),
        resources,
    })
}

/// Whether `server` (a request's `fhirServer`) is `trusted`, the configured server; a trailing
/// `/` makes no difference.
fn trusts(trusted: &url::Url, server: &str) -> bool {
    let normal = |u: &url::Url| u.as_str().trim_end_matches('/').to_owned();
    url::Url::parse(server).is_ok_and(|u| normal(&u) == normal(trusted))
}

/// The cards of `patient`, one per model, from the client's `resources`.
fn cards(
    state: &AppState,
    patient: &str,
    resources: &[Value],
    lang: Lang,
) -> Result<Value, Refusal> {
    let bad = |m: String| Refusal(StatusCode::BAD_REQUEST, m);
    let refs: Vec<&Value> = resources.iter().collect();
    let plans = state
        .plans()
        .map_err(|e| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let thresholds = state.thresholds();
    let mut cards = Vec::new();
    for plan in plans.iter() {
        let (record, _) = pipeline::fold_client(plan, patient, &refs);
        let Some(record) = record else {
            return Err(bad(format!("the prefetch holds no Patient/{patient}")));
        };
        // No segment is offered for a client who gets none in a run (death, a birth after today,
        // an inactive record): a card would contradict the Flags the runs end.
        if record.unassessed.is_some() {
            continue;
        }
        let fixed = thresholds.get(plan.mapping.id.as_str());
        let limits = thresholds::of(plan, fixed.map_or(Basis::Unknown, |f| Basis::Given(f)));
        let a = pipeline::assess(plan, patient, &record, &limits)
            .map_err(|e| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let explanation = eval::explain(plan, patient, &record, &a, lang, &[]);
        let no_thresholds = fixed.is_none() && !plan.percentiles.is_empty();
        let (summary, detail) = card_text(plan, &explanation, lang, no_thresholds);
        let link = state.explanations.put(format!(
            "Patient/{patient}  ·  {}  ·  {}\n\n{summary}\n\n{detail}",
            explanation.model, explanation.as_of
        ));
        cards.push(card(
            plan,
            &explanation,
            lang,
            summary,
            detail,
            &format!("{}{link}", state.public_url),
        ));
    }
    Ok(json!({ "cards": cards }))
}

/// The resources of a complete prefetch; `None` when any of the three is missing.
fn prefetched(request: &Value, patient: &str) -> Result<Option<Vec<Value>>, Refusal> {
    let prefetch = &request["prefetch"];
    let (Some(p), Some(e), Some(c)) = (
        prefetch.get("patient").filter(|v| !v.is_null()),
        prefetch.get("encounters").filter(|v| !v.is_null()),
        prefetch.get("conditions").filter(|v| !v.is_null()),
    ) else {
        return Ok(None);
    };
    if p["resourceType"] != "Patient" || p["id"] != patient {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!("prefetch `patient` is not Patient/{patient}"),
        ));
    }
    let mut resources = vec![p.clone()];
    for bundle in [e, c] {
        if bundle["resourceType"] != "Bundle" {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                "prefetch `encounters` and `conditions` must be searchset Bundles".into(),
            ));
        }
        resources.extend(crate::fhir::matches(bundle).cloned());
    }
    Ok(Some(resources))
}

/// Reads the client from the trusted server with the call's `fhirAuthorization` `token`.
async fn fetch(
    state: &AppState,
    patient: &str,
    token: Option<BearerToken>,
) -> Result<Vec<Value>, Refusal> {
    let retry = RetryPolicy {
        max_attempts: 2,
        ..RetryPolicy::default()
    };
    let failed = |e: FhirError| match e.status() {
        Some(s) if s == StatusCode::NOT_FOUND || s == StatusCode::GONE => Refusal(
            StatusCode::NOT_FOUND,
            format!("Patient/{patient} is not on the FHIR server"),
        ),
        _ => Refusal(
            StatusCode::BAD_GATEWAY,
            format!(
                "the FHIR server failed: {}",
                e.to_string().lines().next().unwrap_or_default()
            ),
        ),
    };
    let client = state
        .fhir
        .for_call(&new_correlation_id(), retry, token)
        .map_err(failed)?;
    let url = patient_url(
        &client.url::<&str, &str>("Patient", &[]).map_err(failed)?,
        patient,
    );
    let mut resources = vec![client.get(&url).await.map_err(failed)?];
    let reference = crate::fhir::patient_references([patient]);
    for kind in ["Encounter", "Condition"] {
        let mut pages = client
            .pages(kind, &[("patient", reference.as_str()), ("_count", "200")])
            .map_err(failed)?;
        while let Some(page) = pages.next_page().await {
            resources.extend(crate::fhir::matches(&page.map_err(failed)?).cloned());
        }
    }
    Ok(resources)
}

/// `[base]/Patient/{id}`, the id one path segment whatever it holds (a `/` or `?` in it would be
/// escaped, never read as a path or query); callers have checked it with [`is_path_id`].
fn patient_url(patients: &url::Url, id: &str) -> url::Url {
    let mut url = patients.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.push(id);
    }
    url
}

/// The first of fi, sv, en in `Accept-Language`; Finnish without one.
fn language(headers: &HeaderMap) -> Lang {
    let accept = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept
        .split(',')
        .filter_map(|part| {
            let tag = part.split(';').next()?.trim().to_ascii_lowercase();
            match tag.split('-').next()? {
                "fi" => Some(Lang::Fi),
                "sv" => Some(Lang::Sv),
                "en" => Some(Lang::En),
                _ => None,
            }
        })
        .next()
        .unwrap_or(Lang::Fi)
}

/// A card's summary and detail (markdown), which its explanation shows as well.
fn card_text(
    plan: &crate::model::Plan,
    e: &eval::Explanation,
    lang: Lang,
    no_thresholds: bool,
) -> (String, String) {
    let m = &plan.mapping;
    let summary: String = format!("{}: {}", m.title.get(lang), e.segment_display)
        .chars()
        .take(140)
        .collect();
    let mut detail = format!(
        "**{}** ({})\n\n{}\n",
        e.segment_display, e.segment, e.guidance
    );
    if let Some(step) = e.path.iter().find(|s| s.held) {
        detail.push_str(&format!("\n{}\n", step.because));
    }
    detail.push('\n');
    for c in &e.criteria {
        detail.push_str(&format!("- {}: {}\n", c.title, c.level_display));
    }
    for o in &e.overlays {
        detail.push_str(&format!("- **{}**: {}\n", o.display, o.rules.join("; ")));
    }
    if no_thresholds {
        detail.push_str(match lang {
            Lang::Fi => "\n_Täyttä ajoa ei ole vielä tehty: väestön kärkiosuutta koskevia kriteerejä ei sovelleta._\n",
            Lang::Sv => "\n_Ingen fullständig körning har gjorts ännu: kriterier om befolkningens översta andel tillämpas inte._\n",
            Lang::En => "\n_No full run has finished yet: criteria about the population's top share are not applied._\n",
        });
    }
    (summary, detail)
}

fn card(
    plan: &crate::model::Plan,
    e: &eval::Explanation,
    lang: Lang,
    summary: String,
    detail: String,
    link: &str,
) -> Value {
    let m = &plan.mapping;
    let label = match lang {
        Lang::Fi => "Perustelut",
        Lang::Sv => "Motivering",
        Lang::En => "Explanation",
    };
    json!({
        "uuid": uuid::Uuid::new_v4().to_string(),
        "summary": summary,
        "detail": detail,
        "indicator": if e.overlays.is_empty() { "info" } else { "warning" },
        "source": {"label": format!("segmentti · {} {}", m.id, m.version), "url": m.canonical.to_string()},
        "links": [{"label": label, "url": link, "type": "absolute"}],
        "extension": {"segmentti": {"model": m.id.to_string(), "segment": e.segment, "criteria": e.criteria.iter().map(|c| json!({"id": c.id, "level": c.level})).collect::<Vec<_>>()}}
    })
}

/// Rendered explanations behind card links, each for [`EXPLANATION_TTL`] and one opening, at
/// most `EXPLANATIONS_KEPT`.
pub(crate) struct Explanations {
    /// Signs the links; drawn at start-up, so a link dies with the process that made it.
    key: [u8; 32],
    /// Id, expiry (Unix seconds) and text, oldest first.
    kept: Mutex<VecDeque<(String, u64, String)>>,
}

impl Default for Explanations {
    fn default() -> Self {
        Self {
            key: rand::random(),
            kept: Mutex::default(),
        }
    }
}

impl std::fmt::Debug for Explanations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Explanations").finish_non_exhaustive()
    }
}

impl Explanations {
    /// Keeps `text`; its link (relative to the public URL) with expiry and signature.
    fn put(&self, text: String) -> String {
        self.put_at(text, unix_now())
    }

    fn put_at(&self, text: String, now: u64) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let expires = now + EXPLANATION_TTL.as_secs();
        let signature: String = self
            .mac(&id, expires)
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|(_, until, _)| *until >= now);
        if kept.len() >= EXPLANATIONS_KEPT {
            kept.pop_front();
        }
        kept.push_back((id.clone(), expires, text));
        format!("explanations/{id}?expires={expires}&sig={signature}")
    }

    /// Whether `query` is the signed, unexpired link of explanation `id`.
    fn check_link(&self, id: &str, query: &str) -> Result<(), Refusal> {
        self.check_link_at(id, query, unix_now())
    }

    fn check_link_at(&self, id: &str, query: &str, now: u64) -> Result<(), Refusal> {
        let refused = |why: &str| Err(Refusal(StatusCode::UNAUTHORIZED, why.to_owned()));
        let (mut expires, mut signature) = (None, None);
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "expires" => expires = v.parse::<u64>().ok(),
                "sig" => signature = unhex(&v),
                _ => {}
            }
        }
        let (Some(expires), Some(signature)) = (expires, signature) else {
            return refused(
                "an explanation opens from its card's link, or with a CDS Hooks token for its URL",
            );
        };
        if self.mac(id, expires).verify_slice(&signature).is_err() {
            return refused("this explanation link is not one this service signed");
        }
        if expires < now {
            return refused("this explanation link has expired; open the card again");
        }
        Ok(())
    }

    /// The text of `id`, unless expired; it cannot be opened again.
    fn take(&self, id: &str) -> Option<String> {
        let now = unix_now();
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let at = kept
            .iter()
            .position(|(k, until, _)| k == id && *until >= now)?;
        kept.remove(at).map(|(_, _, text)| text)
    }

    fn mac(&self, id: &str, expires: u64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b"|");
        mac.update(expires.to_string().as_bytes());
        mac
    }
}

fn unix_now() -> u64 {
    time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64
}

/// The bytes of lowercase or uppercase hex; `None` for anything else.
fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.is_ascii() || !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_language_is_the_first_known_one_in_accept_language() {
        let mut h = HeaderMap::new();
        assert_eq!(language(&h), Lang::Fi);
        h.insert(
            header::ACCEPT_LANGUAGE,
            "de-DE, sv-FI;q=0.9, en;q=0.5".parse().expect("header"),
        );
        assert_eq!(language(&h), Lang::Sv);
    }

    #[test]
    fn only_fhir_ids_pass_and_none_becomes_another_path() {
        for id in ["a", "A-1.b", &"x".repeat(64), "..a", "a.."] {
            assert!(is_path_id(id), "{id}");
        }
        for id in ["", ".", "..", "a/b", "a?b", "a b", "ä", &"x".repeat(65)] {
            assert!(!is_path_id(id), "{id:?}");
        }
        let patients = url::Url::parse("https://fhir.example/r4/Patient").expect("url");
        assert_eq!(
            patient_url(&patients, "a.b-1").as_str(),
            "https://fhir.example/r4/Patient/a.b-1"
        );
        assert_eq!(
            patient_url(&patients, "a/b?c").as_str(),
            "https://fhir.example/r4/Patient/a%2Fb%3Fc"
        );
    }

    const TRUSTED: &str = "https://fhir.example/r4";

    fn parsed(request: Value) -> Result<Call, Refusal> {
        parse_call(&request, &url::Url::parse(TRUSTED).expect("url"))
    }

    fn refusal(request: Value) -> (StatusCode, String) {
        let Refusal(status, message) = parsed(request).expect_err("a refusal");
        (status, message)
    }

    fn bundle() -> Value {
        json!({"resourceType": "Bundle", "type": "searchset", "entry": []})
    }

    #[test]
    fn a_call_with_a_complete_prefetch_brings_its_resources() {
        let call = parsed(json!({
            "hook": "patient-view",
            "fhirServer": format!("{TRUSTED}/"),
            "context": {"patientId": "p-1.a"},
            "prefetch": {
                "patient": {"resourceType": "Patient", "id": "p-1.a"},
                "encounters": {"resourceType": "Bundle", "type": "searchset", "entry": [
                    {"resource": {"resourceType": "Encounter", "id": "e1"}, "search": {"mode": "match"}}
                ]},
                "conditions": bundle(),
            }
        }))
        .expect("a good call");
        assert_eq!(call.patient.as_str(), "p-1.a");
        let Resources::Prefetched(resources) = call.resources else {
            panic!("expected the prefetch, got {:?}", call.resources);
        };
        let ids: Vec<_> = resources.iter().map(|r| r["id"].as_str()).collect();
        assert_eq!(ids, [Some("p-1.a"), Some("e1")]);
    }

    #[test]
    fn a_call_without_a_prefetch_reads_the_trusted_server_with_its_token() {
        let call = parsed(json!({
            "hook": "patient-view",
            "fhirServer": TRUSTED,
            "fhirAuthorization": {"access_token": "secret", "token_type": "Bearer"},
            "context": {"patientId": "p1"},
            "prefetch": {"patient": null, "encounters": bundle(), "conditions": bundle()}
        }))
        .expect("a good call");
        assert!(
            matches!(call.resources, Resources::OnServer(Some(_))),
            "{call:?}"
        );
        assert!(!format!("{call:?}").contains("secret"), "{call:?}");
    }

    #[test]
    fn each_refusal_of_a_call_has_its_status_and_message() {
        let bad = StatusCode::BAD_REQUEST;
        let call =
            |patient: &str| json!({"hook": "patient-view", "context": {"patientId": patient}});
        let cases = [
            (json!({}), bad, "the request has no `hook`"),
            (
                json!({"hook": "order-select", "context": {"patientId": "p1"}}),
                bad,
                "this service answers the `patient-view` hook, not `order-select`",
            ),
            (
                json!({"hook": "patient-view"}),
                bad,
                "the request has no `context.patientId`",
            ),
            (call(""), bad, "the request has no `context.patientId`"),
            (call(".."), bad, "`context.patientId` is not a FHIR id"),
            (
                call("p1/../Patient"),
                bad,
                "`context.patientId` is not a FHIR id",
            ),
            (
                json!({"hook": "patient-view", "fhirServer": "https://evil.example/r4", "context": {"patientId": "p1"}}),
                StatusCode::FORBIDDEN,
                "`fhirServer` is not the FHIR server this service is configured to trust",
            ),
            (
                json!({"hook": "patient-view", "fhirServer": "not a url", "context": {"patientId": "p1"}}),
                StatusCode::FORBIDDEN,
                "`fhirServer` is not the FHIR server",
            ),
            (
                json!({"hook": "patient-view", "context": {"patientId": "p1"}, "prefetch": {
                    "patient": {"resourceType": "Patient", "id": "p2"},
                    "encounters": bundle(), "conditions": bundle()}}),
                bad,
                "prefetch `patient` is not Patient/p1",
            ),
            (
                json!({"hook": "patient-view", "context": {"patientId": "p1"}, "prefetch": {
                    "patient": {"resourceType": "Patient", "id": "p1"},
                    "encounters": {"resourceType": "Encounter"}, "conditions": bundle()}}),
                bad,
                "prefetch `encounters` and `conditions` must be searchset Bundles",
            ),
            (
                call("p1"),
                StatusCode::PRECONDITION_FAILED,
                "the request has neither a complete prefetch",
            ),
        ];
        for (request, status, message) in cases {
            let (got, text) = refusal(request.clone());
            assert_eq!(got, status, "{request}: {text}");
            assert!(text.starts_with(message), "{request}: {text}");
        }
    }

    /// The fuzz corpus's refusal inputs stay on the paths they are named after, so that the
    /// fuzzer starts from each refusal (the target trusts the server its corpus names).
    #[test]
    fn the_fuzz_corpus_refusals_are_refused_where_their_names_say() {
        let trusted = url::Url::parse("http://127.0.0.1:1/fhir").expect("url");
        let corpus = [
            (
                include_str!("../../fuzz/corpus/cds_request/prefetch.json"),
                None,
            ),
            (
                include_str!("../../fuzz/corpus/cds_request/wrong-hook.json"),
                Some((StatusCode::BAD_REQUEST, "this service answers")),
            ),
            (
                include_str!("../../fuzz/corpus/cds_request/dot-dot-patient.json"),
                Some((StatusCode::BAD_REQUEST, "`context.patientId` is not")),
            ),
            (
                include_str!("../../fuzz/corpus/cds_request/untrusted-server.json"),
                Some((StatusCode::FORBIDDEN, "`fhirServer` is not")),
            ),
        ];
        for (text, refused) in corpus {
            let request: Value = serde_json::from_str(text).expect("JSON");
            match (parse_call(&request, &trusted), refused) {
                (Ok(_), None) => {}
                (Err(Refusal(status, message)), Some((want, start))) => {
                    assert_eq!(status, want, "{message}");
                    assert!(message.starts_with(start), "{message}");
                }
                (got, want) => panic!("expected {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn an_explanation_opens_once_from_its_own_unexpired_signed_link() {
        let kept = Explanations::default();
        let now = unix_now();
        let link = kept.put_at("card text".into(), now);
        let (path, query) = link.split_once('?').expect("query");
        let id = path.trim_start_matches("explanations/");
        assert!(kept.check_link_at(id, query, now).is_ok());
        let expired = kept
            .check_link_at(id, query, now + EXPLANATION_TTL.as_secs() + 1)
            .expect_err("expired");
        assert_eq!(expired.0, StatusCode::UNAUTHORIZED);
        let stretched = query.replace(
            &format!("expires={}", now + EXPLANATION_TTL.as_secs()),
            &format!("expires={}", now + 86_400),
        );
        assert_ne!(stretched, query);
        assert!(
            kept.check_link_at(id, &stretched, now).is_err(),
            "stretched"
        );
        assert!(
            kept.check_link_at("other", query, now).is_err(),
            "another id"
        );
        assert!(kept.check_link_at(id, "", now).is_err(), "unsigned");
        let other_process = Explanations::default();
        assert!(other_process.check_link_at(id, query, now).is_err());
        assert_eq!(kept.take(id).as_deref(), Some("card text"));
        assert_eq!(kept.take(id), None, "single use");
    }
}
