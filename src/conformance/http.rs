//! The kit's side of HTTP: one attempt per request through [`FhirClient::exchange_with_body`]
//! (credentials on the base's origin only, no redirect followed off it), each exchange recorded
//! for the report, and every answer that is no FHIR JSON turned into a [`Problem`] that says
//! what came instead.

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::Exchange;
use crate::fhir::bundle::{bundle_type, entry_outcomes, next_link, resource_type};
use crate::fhir::{FHIR_JSON, FhirClient, FhirError, OperationOutcomeSummary, matches, redact};

/// At most this many characters of a non-FHIR body are shown.
const SHOWN_CHARS: usize = 200;
/// At most this many matches of a searchset are named.
const SHOWN_MATCHES: usize = 5;

/// Why an answer cannot be used; a check fails with its message.
#[derive(Debug, thiserror::Error)]
pub(super) enum Problem {
    /// Nothing came back: connection refused, timeout, TLS; or the request could not be made.
    #[error("{}", first_line(&.0.to_string()))]
    Request(#[source] FhirError),
    /// The body could not be read to its end.
    #[error("{request}: the answer's body could not be read: {reason}")]
    Body { request: String, reason: String },
    /// A redirect off the base's origin, not followed.
    #[error(
        "{request} was redirected ({status}) to another origin, {target}; not followed, so no credentials went there"
    )]
    Redirect {
        request: String,
        status: u16,
        target: String,
    },
    /// 401 or 403.
    #[error("{request} answered {status}{}: check the credentials (--auth) and their scopes", outcome_suffix(.outcome.as_ref()))]
    Refused {
        request: String,
        status: u16,
        outcome: Option<OperationOutcomeSummary>,
    },
    /// HTML, a login page or a proxy's error page most likely.
    #[error("{request} answered {status} with an HTML page where FHIR JSON was expected")]
    Html { request: String, status: u16 },
    /// A body that is not JSON.
    #[error("{request} answered {status} with a body that is not JSON")]
    NotJson { request: String, status: u16 },
    /// Another status than the check needs.
    #[error("{request} answered {status}{}", outcome_suffix(.outcome.as_ref()))]
    Status {
        request: String,
        status: u16,
        outcome: Option<OperationOutcomeSummary>,
    },
    /// JSON of another kind than the request calls for.
    #[error("{request} answered {found} where {expected} was expected")]
    Unexpected {
        request: String,
        expected: &'static str,
        found: String,
    },
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

fn outcome_suffix(outcome: Option<&OperationOutcomeSummary>) -> String {
    match outcome {
        Some(o) if !o.issues.is_empty() => format!(" ({o})"),
        _ => String::new(),
    }
}

/// A FHIR JSON answer, any status.
#[derive(Debug)]
pub(super) struct Answer {
    /// `METHOD url`, redacted, for messages.
    pub request: String,
    pub status: StatusCode,
    pub location: Option<String>,
    /// `Null` for an empty body.
    pub body: Value,
}

impl Answer {
    /// The answer when its status is 2xx.
    pub(crate) fn ok(self) -> Result<Self, Problem> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(Problem::Status {
                request: self.request,
                status: self.status.as_u16(),
                outcome: OperationOutcomeSummary::from_value(&self.body),
            })
        }
    }

    /// The body when it is a Bundle of `kind` (such as `searchset`).
    pub(crate) fn bundle(self, kind: &'static str) -> Result<Value, Problem> {
        if bundle_type(&self.body) == Some(kind) {
            Ok(self.body)
        } else {
            Err(Problem::Unexpected {
                request: self.request,
                expected: kind,
                found: describe(&self.body),
            })
        }
    }

    /// `Type/id` of what a write answered: from the body, else from `Location`.
    pub(crate) fn written(&self) -> Option<String> {
        let from_body = resource_type(&self.body)
            .zip(self.body.get("id").and_then(Value::as_str))
            .map(|(kind, id)| format!("{kind}/{id}"));
        from_body.or_else(|| self.location.as_deref().and_then(reference))
    }
}

/// `Type/id` of a `Location` or `response.location`: absolute or relative, with or without
/// `/_history/n`.
pub(super) fn reference(location: &str) -> Option<String> {
    let path = location.split(['?', '#']).next()?;
    let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.len() >= 4 && parts[parts.len() - 2] == "_history" {
        parts.truncate(parts.len() - 2);
    }
    match parts.as_slice() {
        [.., kind, id] if kind.chars().next().is_some_and(|c| c.is_ascii_uppercase()) => {
            Some(format!("{kind}/{id}"))
        }
        _ => None,
    }
}

/// Sends requests for one check and keeps their exchanges.
#[derive(Debug)]
pub(super) struct Http<'c> {
    pub client: &'c FhirClient,
    pub exchanges: Vec<Exchange>,
}

impl<'c> Http<'c> {
    pub(crate) fn new(client: &'c FhirClient) -> Self {
        Self {
            client,
            exchanges: Vec::new(),
        }
    }

    /// `[base]/resource_type?params`.
    pub(crate) fn url(&self, resource_type: &str, params: &[(&str, &str)]) -> Result<Url, Problem> {
        self.client
            .url(resource_type, params)
            .map_err(Problem::Request)
    }

    /// A relative reference such as `Flag/123` or `Observation?identifier=…` below the base.
    pub(crate) fn join(&self, relative: &str) -> Result<Url, Problem> {
        self.client.base().join(relative).map_err(|e| {
            Problem::Request(FhirError::InvalidOption {
                option: "relative URL",
                reason: e.to_string(),
            })
        })
    }

    /// `GET url`, which must answer 2xx.
    pub(crate) async fn get(&mut self, url: &Url) -> Result<Answer, Problem> {
        self.send(Method::GET, url, None).await?.ok()
    }

    /// `GET url`, which must answer a searchset Bundle.
    pub(crate) async fn search(&mut self, url: &Url) -> Result<Value, Problem> {
        self.get(url).await?.bundle("searchset")
    }

    /// One request, one attempt; its exchange recorded whatever happens.
    pub(crate) async fn send(
        &mut self,
        method: Method,
        url: &Url,
        body: Option<&Value>,
    ) -> Result<Answer, Problem> {
        let request = format!("{method} {}", redact(url));
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(FHIR_JSON));
        if body.is_some() {
            // The stored resource in the answer gives its id and meta.lastUpdated.
            headers.insert("prefer", HeaderValue::from_static("return=representation"));
        }
        let sent = self
            .client
            .exchange_with_body(
                method.clone(),
                url,
                headers,
                body.map(|b| b.to_string().into_bytes()),
                None,
            )
            .await;
        let mut record = |status: Option<StatusCode>, answer: String| {
            self.exchanges.push(Exchange {
                method: method.to_string(),
                url: redact(url).to_string(),
                status: status.map(|s| s.as_u16()),
                answer,
            });
        };
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                let problem = Problem::Request(e);
                record(None, problem.to_string());
                return Err(problem);
            }
        };
        let status = response.status();
        let text = |name: header::HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let location = text(header::LOCATION);
        let html = text(header::CONTENT_TYPE).is_some_and(|t| t.contains("html"));
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => {
                let problem = Problem::Body {
                    request,
                    reason: e.without_url().to_string(),
                };
                record(Some(status), problem.to_string());
                return Err(problem);
            }
        };
        if status.is_redirection() {
            // Redirects on the base's origin were followed by the client; this one was not.
            let target = location
                .as_deref()
                .and_then(|l| url.join(l).ok())
                .map_or_else(
                    || "an unknown place".to_owned(),
                    |t| t.origin().ascii_serialization(),
                );
            let problem = Problem::Redirect {
                request,
                status: status.as_u16(),
                target,
            };
            record(Some(status), problem.to_string());
            return Err(problem);
        }
        let shown = String::from_utf8_lossy(&bytes);
        let trimmed = shown.trim_start();
        let json = serde_json::from_str::<Value>(trimmed);
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let outcome = json
                .as_ref()
                .ok()
                .and_then(OperationOutcomeSummary::from_value);
            record(
                Some(status),
                json.as_ref().map_or_else(|_| excerpt(trimmed), describe),
            );
            return Err(Problem::Refused {
                request,
                status: status.as_u16(),
                outcome,
            });
        }
        if html || trimmed.starts_with('<') {
            record(Some(status), excerpt(trimmed));
            return Err(Problem::Html {
                request,
                status: status.as_u16(),
            });
        }
        let body = match json {
            Ok(v) => v,
            Err(_) if trimmed.is_empty() => Value::Null,
            Err(_) => {
                record(Some(status), excerpt(trimmed));
                return Err(Problem::NotJson {
                    request,
                    status: status.as_u16(),
                });
            }
        };
        record(Some(status), describe(&body));
        Ok(Answer {
            request,
            status,
            location,
            body,
        })
    }
}

/// The start of a body that is not FHIR JSON, whitespace collapsed.
fn excerpt(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match collapsed.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{}…", &collapsed[..cut]),
        None => collapsed,
    }
}

/// A FHIR JSON body as a report shows it: never a resource's content.
pub(super) fn describe(body: &Value) -> String {
    match resource_type(body) {
        None if body.is_null() => "an empty body".into(),
        None => "JSON without resourceType".into(),
        Some("OperationOutcome") => match OperationOutcomeSummary::from_value(body) {
            Some(o) if !o.issues.is_empty() => format!("OperationOutcome: {o}"),
            _ => "an OperationOutcome without issues".into(),
        },
        Some("CapabilityStatement") => {
            let text = |p: &str| body.pointer(p).and_then(Value::as_str).unwrap_or("?");
            format!(
                "CapabilityStatement, FHIR {}, software {} {}",
                text("/fhirVersion"),
                text("/software/name"),
                text("/software/version")
            )
        }
        Some("Bundle") => describe_bundle(body),
        Some(kind) => match body.get("id").and_then(Value::as_str) {
            Some(id) => format!("{kind}/{id}"),
            None => format!("a {kind} without id"),
        },
    }
}

fn describe_bundle(bundle: &Value) -> String {
    let kind = bundle_type(bundle).unwrap_or("without type");
    if matches!(kind, "transaction-response" | "batch-response") {
        return match entry_outcomes(bundle) {
            Ok(entries) => {
                let shown: Vec<String> = entries
                    .iter()
                    .map(|e| match &e.location {
                        Some(l) => format!("{} {}", e.status, reference(l).unwrap_or_default()),
                        None => e.status.to_string(),
                    })
                    .collect();
                format!("Bundle {kind}: {}", shown.join(", "))
            }
            Err(e) => format!("Bundle {kind}, malformed: {}", first_line(&e.to_string())),
        };
    }
    let found: Vec<String> = matches(bundle)
        .map(|r| {
            format!(
                "{}/{}",
                resource_type(r).unwrap_or("?"),
                r.get("id").and_then(Value::as_str).unwrap_or("?")
            )
        })
        .collect();
    let mut text = format!("Bundle {kind}, {} match(es)", found.len());
    if !found.is_empty() {
        let more = found.len().saturating_sub(SHOWN_MATCHES);
        text.push_str(": ");
        text.push_str(&found[..found.len().min(SHOWN_MATCHES)].join(", "));
        if more > 0 {
            text.push_str(&format!(" and {more} more"));
        }
    }
    if next_link(bundle).is_some() {
        text.push_str("; next link");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn locations_become_references() {
        for (location, expected) in [
            (
                "http://h/fhir/Observation/1/_history/2",
                Some("Observation/1"),
            ),
            ("Flag/abc", Some("Flag/abc")),
            ("Patient/p1/_history/1", Some("Patient/p1")),
            ("http://h/fhir/", None),
        ] {
            assert_eq!(reference(location).as_deref(), expected, "{location}");
        }
    }

    #[test]
    fn bodies_are_described_without_their_content() {
        let patient =
            json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Virtanen"}]});
        assert_eq!(describe(&patient), "Patient/p1");
        let page = json!({"resourceType": "Bundle", "type": "searchset",
            "link": [{"relation": "next", "url": "http://h/?page=2"}],
            "entry": [{"resource": patient, "search": {"mode": "match"}}]});
        let text = describe(&page);
        assert_eq!(text, "Bundle searchset, 1 match(es): Patient/p1; next link");
        assert!(!text.contains("Virtanen"));
        let outcome = json!({"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "invalid", "diagnostics": "bad entry"}]});
        assert_eq!(
            describe(&outcome),
            "OperationOutcome: error invalid: bad entry"
        );
        let response = json!({"resourceType": "Bundle", "type": "transaction-response",
            "entry": [{"response": {"status": "201 Created", "location": "Flag/f/_history/1"}}]});
        assert_eq!(
            describe(&response),
            "Bundle transaction-response: 201 Flag/f"
        );
        assert_eq!(
            excerpt(&format!("<html>\n  {}</html>", "x".repeat(300)))
                .chars()
                .count(),
            201
        );
    }
}
