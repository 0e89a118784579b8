//! CDS Hooks 2.0: discovery, the `patient-view` service and card feedback. A call is checked
//! (token, size, hook, `context.patientId`, `fhirServer`) before anything is read; the client's
//! Patient, Encounters and Conditions come from the prefetch, or else are read from the one
//! trusted server with the call's `fhirAuthorization` token (without one, with the service's
//! own credentials: the caller is already a verified EHR). That read retries once at most, since
//! the professional is waiting for the card. Evaluation is live and read-only:
//! nothing is written, and the `top_percent` thresholds are the last full run's (from the
//! checkpoint or this process's runs), since one client is no population. Without them, those
//! tests do not hold, and the card says so.
//!
//! The language of the cards is the first of `fi`, `sv` and `en` in the call's
//! `Accept-Language` header; without one, Finnish.
//!
//! | problem | status |
//! |---|---|
//! | no, invalid, expired or replayed token | 401 |
//! | unknown service | 404 |
//! | body larger than `max_body_bytes` | 413 |
//! | not JSON, wrong `hook`, no `context.patientId`, prefetch of another client | 400 |
//! | `fhirServer` not the configured server | 403 |
//! | no complete prefetch and no `fhirServer` | 412 |
//! | the Patient is not on the server | 404 |
//! | the server failed | 502 |
//!
//! Messages name resource ids only; `fhirAuthorization` tokens are never logged.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use crate::fhir::{
    BearerToken, ClientOptions, FhirClient, FhirError, RetryPolicy, new_correlation_id,
};
use crate::model::eval::{self, Lang};
use crate::pipeline;

/// The one service.
pub const SERVICE_ID: &str = "segmentti-patient-view";
/// How long an explanation behind a card's link can be opened.
const EXPLANATION_TTL: Duration = Duration::from_secs(15 * 60);
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
pub async fn discovery() -> Response {
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
pub async fn call(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let response = match answer(&state, &id, &headers, body).await {
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
pub async fn feedback(
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

/// `GET /explanations/{id}`: the explanation behind a card, for a while after the card.
pub async fn explanation(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match state.explanations.get(&id) {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
        None => Refusal(
            StatusCode::NOT_FOUND,
            "no such explanation, or it has expired; open the card again".into(),
        )
        .into_response(),
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
    serde_json::from_slice(&body).map_err(|e| {
        Refusal(
            StatusCode::BAD_REQUEST,
            format!("the request is not JSON: {e}"),
        )
    })
}

async fn answer(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, Refusal> {
    let request = checked(state, id, headers, body, "").await?;
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
        .ok_or_else(|| bad("the request has no `context.patientId`".into()))?
        .to_owned();
    // A FHIR id: it goes into a URL path, so nothing else may pass.
    if patient.len() > 64
        || !patient
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(bad(
            "`context.patientId` is not a FHIR id (A–Z, a–z, 0–9, `-`, `.`, at most 64)".into(),
        ));
    }
    if let Some(server) = request.get("fhirServer").and_then(Value::as_str)
        && !state.trusts(server)
    {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "`fhirServer` is not the FHIR server this service is configured to trust; it is never called".into(),
        ));
    }
    let lang = language(headers);
    let resources = match prefetched(&request, &patient)? {
        Some(resources) => resources,
        None => fetch(state, &request, &patient).await?,
    };
    let refs: Vec<&Value> = resources.iter().collect();
    let plans = state
        .plans()
        .map_err(|e| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let thresholds = state.thresholds();
    let mut cards = Vec::new();
    for plan in plans.iter() {
        let (record, _) = pipeline::fold_client(plan, &patient, &refs);
        let Some(record) = record else {
            return Err(bad(format!("the prefetch holds no Patient/{patient}")));
        };
        // No segment is offered for a client who gets none in a run (death, a birth after today,
        // an inactive record): a card would contradict the Flags the runs end.
        if record.unassessed.is_some() {
            continue;
        }
        let fixed = thresholds.get(plan.mapping.id.as_str());
        let limits = fixed.map_or_else(
            || vec![None; plan.percentiles.len()],
            |f| pipeline::given_thresholds(plan, f),
        );
        let a = pipeline::assess(plan, &patient, &record, &limits)
            .map_err(|e| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let explanation = eval::explain(plan, &patient, &record, &a, lang, &[]);
        let link = state.explanations.put(explanation.render());
        let no_thresholds = fixed.is_none() && !plan.percentiles.is_empty();
        cards.push(card(
            plan,
            &explanation,
            lang,
            &format!("{}explanations/{link}", state.public_url),
            no_thresholds,
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

/// Reads the client from the trusted server with the call's `fhirAuthorization`.
async fn fetch(state: &AppState, request: &Value, patient: &str) -> Result<Vec<Value>, Refusal> {
    if request.get("fhirServer").and_then(Value::as_str).is_none() {
        return Err(Refusal(
            StatusCode::PRECONDITION_FAILED,
            "the request has neither a complete prefetch (patient, encounters, conditions) nor a `fhirServer` to read them from".into(),
        ));
    }
    let mut options = ClientOptions::new(new_correlation_id());
    options.timeout = state.settings.timeout;
    options.tls = state.settings.tls.clone();
    options.retry = RetryPolicy {
        max_attempts: 2,
        ..RetryPolicy::default()
    };
    match request["fhirAuthorization"]["access_token"].as_str() {
        Some(token) => options.bearer = Some(BearerToken::new(token.to_owned())),
        None => {
            options.bearer = state.settings.bearer.clone();
            options.smart = state.settings.smart.clone();
        }
    }
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
    let client = FhirClient::new(state.settings.server.clone(), options).map_err(failed)?;
    let url = client
        .base()
        .join(&format!("Patient/{patient}"))
        .map_err(|e| {
            Refusal(
                StatusCode::BAD_REQUEST,
                format!("`context.patientId` cannot be a path: {e}"),
            )
        })?;
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

fn card(
    plan: &crate::model::Plan,
    e: &eval::Explanation,
    lang: Lang,
    link: &str,
    no_thresholds: bool,
) -> Value {
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

/// Rendered explanations behind card links, each for [`EXPLANATION_TTL`], at most
/// [`EXPLANATIONS_KEPT`]. The link's random id is what grants reading one.
#[derive(Debug, Default)]
pub struct Explanations(Mutex<VecDeque<(String, Instant, String)>>);

impl Explanations {
    fn put(&self, text: String) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|(_, at, _)| at.elapsed() < EXPLANATION_TTL);
        if kept.len() >= EXPLANATIONS_KEPT {
            kept.pop_front();
        }
        kept.push_back((id.clone(), Instant::now(), text));
        id
    }

    fn get(&self, id: &str) -> Option<String> {
        let kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter()
            .find(|(k, at, _)| k == id && at.elapsed() < EXPLANATION_TTL)
            .map(|(_, _, t)| t.clone())
    }
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
}
