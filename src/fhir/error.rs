//! What can go wrong talking to a FHIR server, and which of it is worth another try.
//!
//! Every message names the request's URL through [`redact`] (query values elided, see there),
//! says what failed, and ends with a `hint:` line saying what to do. The full [`Url`] stays in
//! the variant's fields for code that needs it.
//!
//! | variant | retryable | typical cause |
//! |---|---|---|
//! | [`FhirError::Transport`] | yes (not builder errors) | connection refused or reset, DNS, TLS |
//! | [`FhirError::Timeout`] | yes | no complete answer within [`super::ClientOptions::timeout`] |
//! | [`FhirError::Status`] | 408, 429, 5xx | the server answered an error status |
//! | [`FhirError::InvalidJson`] | yes | a body cut short (proxies do this) or not JSON |
//! | the others | no | configuration, or a server that answers something unexpected |
//!
//! Of the statuses that are not retried, two kinds decide what a run does next:
//! `FhirError::is_refusal` (401, 403, 404, 405: the server will not let this client do this
//! here, whatever is sent, so the run stops) and `FhirError::is_content_error` (400, 409,
//! 412, 422: this content was refused, so other content may still land).

use std::fmt;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::retry::Retryable;

/// Why a request to a FHIR server failed, or why the client could not be built.
///
/// URLs are boxed to keep the error small (`Result<Value, FhirError>` is returned everywhere).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FhirError {
    /// The base URL given to [`super::FhirClient::new`] cannot serve as a FHIR base.
    #[error(
        "the FHIR base URL {url} cannot be used: {reason}\nhint: give the server's service base, such as https://fhir.example.org/fhir (http or https, no query, no user name or password)"
    )]
    InvalidBase {
        /// The URL as given (with any user info removed).
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A client option cannot be sent as an HTTP header.
    #[error(
        "the client option {option} is not usable: {reason}\nhint: use visible ASCII characters only"
    )]
    InvalidOption {
        /// Which option.
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A resource type that is not a plain FHIR type name (it would leave the base's path).
    #[error(
        "{name:?} is not a FHIR resource type name\nhint: give a type name such as Patient or Encounter, letters and digits only"
    )]
    InvalidResourceType {
        /// The name given.
        name: String,
    },
    /// The HTTP client could not be built (TLS backend).
    #[error(
        "cannot build the HTTP client: {source}\nhint: this points at a broken TLS setup on this machine; report it with the log"
    )]
    Client {
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The request did not get an answer: connection refused or reset, DNS, TLS.
    #[error(
        "{method} {} failed: {}\nhint: check that the server is up and reachable from here (DNS, proxy, firewall); for a certificate the system does not trust give --ca-bundle, for a server asking for a client certificate --client-cert and --client-key",
        redact(.url),
        causes(.source)
    )]
    Transport {
        /// The request's method.
        method: Method,
        /// The request's URL.
        url: Box<Url>,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The SMART token endpoint gave no token.
    #[error(
        "cannot get an access token from {}: {reason}\nhint: check the client id, that the server knows this key (kid, algorithm), the scopes, and the token URL",
        redact(.url)
    )]
    Token {
        /// The token endpoint.
        url: Box<Url>,
        /// What it said (never the assertion or a token).
        reason: String,
    },
    /// No complete answer within the client's timeout.
    #[error(
        "{method} {} got no complete answer within {} s\nhint: the server is slow or overloaded; raise the timeout or ask for smaller pages (_count)",
        redact(.url), .after.as_secs_f64()
    )]
    Timeout {
        /// The request's method.
        method: Method,
        /// The request's URL.
        url: Box<Url>,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The server answered with a status other than 2xx.
    #[error(
        "{method} {} answered {status}{}\nhint: {}",
        redact(.url),
        outcome_suffix(.outcome.as_ref()),
        status_hint(*.status, .method, .url)
    )]
    Status {
        /// The request's method.
        method: Method,
        /// The status.
        status: StatusCode,
        /// The request's URL.
        url: Box<Url>,
        /// The OperationOutcome in the body, when there was one.
        outcome: Option<OperationOutcomeSummary>,
        /// The `Retry-After` the server asked for, when it did.
        retry_after: Option<Duration>,
    },
    /// A 2xx answer whose body is not complete JSON.
    #[error(
        "the answer to {method} {} is not valid JSON: {cause}\nhint: a proxy may have cut the response short; it is retried, and if it persists look at the server's log",
        redact(.url)
    )]
    InvalidJson {
        /// The request's method.
        method: Method,
        /// The request's URL.
        url: Box<Url>,
        /// What was wrong with the body.
        #[source]
        cause: BodyError,
    },
    /// A `next` link (or a redirect) pointing away from the base's origin; nothing was sent there.
    #[error(
        "refusing to follow a link to {} on another origin than the FHIR base {base_origin}\nhint: the server's own base URL setting is probably wrong (its links point elsewhere); fix it there, or use that origin as the base",
        redact(.url)
    )]
    CrossOrigin {
        /// Where the link pointed.
        url: Box<Url>,
        /// The base's origin (scheme, host and port).
        base_origin: String,
    },
    /// An answer that is a resource of another type than the request calls for.
    #[error(
        "{} answered {found} where {expected} was expected\nhint: check that the base URL is the FHIR service base and the server speaks FHIR R4 JSON",
        redact(.url)
    )]
    UnexpectedResource {
        /// The request's URL.
        url: Box<Url>,
        /// What was expected, such as `a searchset Bundle`.
        expected: &'static str,
        /// What came, such as `an OperationOutcome` or `a Bundle of type history`.
        found: String,
    },
    /// Paging came back to a page it had already read.
    #[error(
        "paging came back to {}, a page already read\nhint: the server's next links loop; report it to the server's operators",
        redact(.url)
    )]
    PagingLoop {
        /// The page's URL.
        url: Box<Url>,
    },
    /// A transaction-response or batch-response that does not say how its entries went.
    #[error(
        "the {what} is malformed: {detail}\nhint: the server does not follow FHIR's rules for this answer; report it to the server's operators"
    )]
    MalformedResponse {
        /// What was being read, such as `transaction-response`.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// What was wrong with a response body that should have been JSON.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body could not be read to its end (the connection closed early, for one).
    #[error("the body was cut short: {0}")]
    Truncated(#[source] reqwest::Error),
    /// The body was read but is not JSON (or JSON that stops in the middle).
    #[error("{0}")]
    Syntax(#[source] serde_json::Error),
}

/// An error and every cause under it (`error sending request: … : invalid peer certificate:
/// UnknownIssuer`): the innermost cause is the one an operator can act on.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.ends_with(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

impl FhirError {
    /// The URL of the request that failed, when the error belongs to one.
    pub(crate) fn url(&self) -> Option<&Url> {
        match self {
            Self::Transport { url, .. }
            | Self::Timeout { url, .. }
            | Self::Status { url, .. }
            | Self::InvalidJson { url, .. }
            | Self::CrossOrigin { url, .. }
            | Self::UnexpectedResource { url, .. }
            | Self::Token { url, .. }
            | Self::PagingLoop { url } => Some(url),
            Self::InvalidBase { .. }
            | Self::InvalidOption { .. }
            | Self::InvalidResourceType { .. }
            | Self::Client { .. }
            | Self::MalformedResponse { .. } => None,
        }
    }

    /// The HTTP status, for [`FhirError::Status`].
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The OperationOutcome the server sent with an error status.
    pub fn outcome(&self) -> Option<&OperationOutcomeSummary> {
        match self {
            Self::Status { outcome, .. } => outcome.as_ref(),
            _ => None,
        }
    }

    /// Whether the same request may succeed if sent again: transport errors, timeouts,
    /// 408, 429, 5xx and bodies that are not complete JSON.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { source, .. } => !source.is_builder(),
            Self::Timeout { .. } | Self::InvalidJson { .. } => true,
            Self::Status { status, .. } => retryable_status(*status),
            Self::InvalidBase { .. }
            | Self::InvalidOption { .. }
            | Self::InvalidResourceType { .. }
            | Self::Client { .. }
            | Self::CrossOrigin { .. }
            | Self::UnexpectedResource { .. }
            | Self::PagingLoop { .. }
            | Self::Token { .. }
            | Self::MalformedResponse { .. } => false,
        }
    }
}

impl FhirError {
    /// Whether the server refused the request for what it is, not for what it carries: 401
    /// (credentials), 403 (permission), 404 (no such endpoint), 405 (no such interaction).
    /// Sending other content, or the same again, cannot help: the run stops.
    pub(crate) fn is_refusal(&self) -> bool {
        self.status().is_some_and(refusal_status)
    }

    /// Whether another writer changed what a conditional write was conditional on: 409, 412,
    /// or a 400 whose OperationOutcome reports an entry's 412 (servers that answer a failed
    /// transaction with one status do that; hfs 0.2.7 says `Entry failed with status 412`).
    /// Reading again and deciding again may succeed.
    pub fn is_conflict(&self) -> bool {
        match self.status().map(|s| s.as_u16()) {
            Some(409 | 412) => true,
            Some(400) => self.outcome().is_some_and(|o| {
                o.issues.iter().any(|i| {
                    i.code == "conflict"
                        || i.diagnostics
                            .as_deref()
                            .is_some_and(|d| d.contains("status 412") || d.contains("If-Match"))
                })
            }),
            _ => false,
        }
    }

    /// Whether the server refused what the request carries: 400, 409, 412, 422. Another
    /// request (one client's resources alone, or a fresh read of what changed) may succeed.
    pub(crate) fn is_content_error(&self) -> bool {
        matches!(
            self.status().map(|s| s.as_u16()),
            Some(400 | 409 | 412 | 422)
        )
    }
}

/// 401, 403, 404 and 405: see [`FhirError::is_refusal`].
pub(crate) fn refusal_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 401 | 403 | 404 | 405)
}

/// 408, 429 and every 5xx.
pub(crate) fn retryable_status(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

impl Retryable for FhirError {
    fn is_retryable(&self) -> bool {
        FhirError::is_retryable(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn status(&self) -> Option<u16> {
        FhirError::status(self).map(|s| s.as_u16())
    }
}

/// What to do about an error status. The refusals name what was asked (`read Patient`), since
/// that is what a scope or an access rule has to allow.
fn status_hint(status: StatusCode, method: &Method, url: &Url) -> String {
    let asked = asked(method, url);
    match status.as_u16() {
        401 => "the server did not accept the credentials: check the bearer token, or the SMART client id, key and token URL, and that the token has not expired".into(),
        403 => format!(
            "the credentials may not {asked}: check the client's scopes and the server's access rules for it"
        ),
        404 => format!(
            "the server has no endpoint to {asked}: check that the base URL is the FHIR service base (such as https://fhir.example.org/fhir) and that the server serves this type"
        ),
        405 => format!(
            "the server does not allow {method} to {asked}: check the base URL and that the server supports this interaction"
        ),
        408 | 429 => {
            "the server is busy; this was retried as the retry policy allows: try later or lower the load".into()
        }
        409 | 412 => {
            "another writer changed the same resource; run again, conditional writes are safe to repeat".into()
        }
        300..=399 => {
            "the server redirected to another origin, which this client does not follow (credentials stay on the base's origin); use the target's base instead".into()
        }
        400 | 422 => "the server rejected the content; the OperationOutcome above says why".into(),
        s if s >= 500 => {
            "the server failed; this was retried as the retry policy allows: look at the server's log or try later".into()
        }
        _ => "the server refused the request; the OperationOutcome above, if any, says why".into(),
    }
}

/// What a request asked for, in an operator's words: `read Patient`, `write Flag`, or `send a
/// transaction` (a `POST` to the base names no type; the sink says which types it carried).
fn asked(method: &Method, url: &Url) -> String {
    let resource_type = url
        .path_segments()
        .into_iter()
        .flatten()
        .rev()
        .find(|s| s.starts_with(|c: char| c.is_ascii_uppercase()));
    match resource_type {
        Some(t) if method == Method::GET => format!("read {t}"),
        Some(t) => format!("write {t}"),
        None if method == Method::POST => "send a transaction".into(),
        None if method == Method::GET => "read this endpoint".into(),
        None => "use this endpoint".into(),
    }
}

fn outcome_suffix(outcome: Option<&OperationOutcomeSummary>) -> String {
    match outcome {
        Some(o) if !o.issues.is_empty() => format!(": {o}"),
        _ => String::new(),
    }
}

/// The issues of an OperationOutcome, in the form errors and logs show them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationOutcomeSummary {
    /// The issues, in the server's order.
    pub issues: Vec<OutcomeIssue>,
}

/// One `OperationOutcome.issue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeIssue {
    /// `fatal`, `error`, `warning` or `information` (empty when the server left it out).
    pub severity: String,
    /// The issue type code, such as `invalid` or `processing`.
    pub code: String,
    /// `diagnostics`, or `details.text` when there are no diagnostics (servers use either).
    pub diagnostics: Option<String>,
}

/// At most this many issues are shown in a message; the rest are counted.
const SHOWN_ISSUES: usize = 5;
/// At most this many characters of one issue's text are shown in a message.
const SHOWN_CHARS: usize = 300;

impl OperationOutcomeSummary {
    /// The summary of `value` when it is an OperationOutcome.
    pub(crate) fn from_value(value: &Value) -> Option<Self> {
        if value.get("resourceType")?.as_str()? != "OperationOutcome" {
            return None;
        }
        let issues = value
            .get("issue")
            .and_then(Value::as_array)
            .map(|issues| issues.iter().map(OutcomeIssue::from_value).collect())
            .unwrap_or_default();
        Some(Self { issues })
    }

    /// The summary of a response body when it is an OperationOutcome in JSON.
    pub fn from_body(body: &[u8]) -> Option<Self> {
        serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| Self::from_value(&v))
    }

    /// Whether any issue is `fatal` or `error`.
    pub fn has_errors(&self) -> bool {
        self.issues
            .iter()
            .any(|i| i.severity == "error" || i.severity == "fatal")
    }
}

impl OutcomeIssue {
    fn from_value(issue: &Value) -> Self {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        Self {
            severity: text(issue.get("severity")).unwrap_or_default(),
            code: text(issue.get("code")).unwrap_or_default(),
            diagnostics: text(issue.get("diagnostics"))
                .or_else(|| text(issue.get("details").and_then(|d| d.get("text")))),
        }
    }
}

impl fmt::Display for OutcomeIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.severity, self.code)?;
        if let Some(text) = &self.diagnostics {
            match text.char_indices().nth(SHOWN_CHARS) {
                Some((cut, _)) => write!(f, ": {}…", &text[..cut])?,
                None => write!(f, ": {text}")?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for OperationOutcomeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, issue) in self.issues.iter().take(SHOWN_ISSUES).enumerate() {
            if n > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{issue}")?;
        }
        if self.issues.len() > SHOWN_ISSUES {
            write!(f, " (and {} more issues)", self.issues.len() - SHOWN_ISSUES)?;
        }
        Ok(())
    }
}

/// Query parameters whose values are shown in messages and logs: they steer the search and
/// never identify a person. Every other value is shown as `…`, because search values can
/// (`identifier=urn:oid:1.2.246.21|<identity code>`), and cursors are long and opaque.
const SHOWN_PARAMS: &[&str] = &[
    "_count",
    "_sort",
    "_summary",
    "_total",
    "_elements",
    "_type",
    "_since",
    "_lastUpdated",
    "_include",
    "_revinclude",
];

/// A URL as messages and logs show it: without user info and fragment, with the values of
/// query parameters elided except those in a short list of paging and shaping parameters.
pub fn redact(url: &Url) -> Redacted<'_> {
    Redacted(url)
}

/// See [`redact`].
#[derive(Debug, Clone, Copy)]
pub struct Redacted<'a>(&'a Url);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = self.0;
        write!(f, "{}://", url.scheme())?;
        if let Some(host) = url.host_str() {
            f.write_str(host)?;
        }
        if let Some(port) = url.port() {
            write!(f, ":{port}")?;
        }
        f.write_str(url.path())?;
        let mut first = true;
        for (name, value) in url.query_pairs() {
            f.write_str(if first { "?" } else { "&" })?;
            first = false;
            if SHOWN_PARAMS.contains(&name.as_ref()) {
                write!(f, "{name}={value}")?;
            } else {
                write!(f, "{name}=…")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("a valid test URL")
    }

    #[test]
    fn redact_elides_search_values_but_keeps_paging() {
        let u = url(
            "https://user:pw@fhir.example:8443/fhir/Patient?identifier=urn:oid:1.2.246.21|010101-123N&_count=50#frag",
        );
        assert_eq!(
            redact(&u).to_string(),
            "https://fhir.example:8443/fhir/Patient?identifier=…&_count=50"
        );
    }

    #[test]
    fn outcome_reads_diagnostics_or_details_text() {
        let oo = json!({"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "invalid", "diagnostics": "Observation.status: required"},
            {"severity": "warning", "code": "processing", "details": {"text": "unknown parameter"}},
        ]});
        let s = OperationOutcomeSummary::from_value(&oo).expect("an OperationOutcome");
        assert!(s.has_errors());
        assert_eq!(
            s.to_string(),
            "error invalid: Observation.status: required; warning processing: unknown parameter"
        );
        assert!(OperationOutcomeSummary::from_value(&json!({"resourceType": "Patient"})).is_none());
    }

    #[test]
    fn status_message_names_url_outcome_and_hint() {
        let err = FhirError::Status {
            method: Method::POST,
            status: StatusCode::UNPROCESSABLE_ENTITY,
            url: url("http://127.0.0.1:8080/").into(),
            outcome: Some(OperationOutcomeSummary {
                issues: vec![OutcomeIssue {
                    severity: "error".into(),
                    code: "invalid".into(),
                    diagnostics: Some("bad status".into()),
                }],
            }),
            retry_after: None,
        };
        assert_eq!(
            err.to_string(),
            "POST http://127.0.0.1:8080/ answered 422 Unprocessable Entity: error invalid: bad status\nhint: the server rejected the content; the OperationOutcome above says why"
        );
        assert!(!err.is_retryable());
    }

    #[test]
    fn retryable_statuses() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(
                retryable_status(StatusCode::from_u16(code).expect("valid")),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 409, 410, 412, 422] {
            assert!(
                !retryable_status(StatusCode::from_u16(code).expect("valid")),
                "{code}"
            );
        }
    }

    fn status(code: u16, method: Method, at: &str) -> FhirError {
        FhirError::Status {
            method,
            status: StatusCode::from_u16(code).expect("valid"),
            url: url(at).into(),
            outcome: None,
            retry_after: None,
        }
    }

    #[test]
    fn refusals_and_content_errors_are_told_apart() {
        for code in [401, 403, 404, 405] {
            let e = status(code, Method::POST, "http://h/");
            assert!(e.is_refusal() && !e.is_content_error(), "{code}");
        }
        for code in [400, 409, 412, 422] {
            let e = status(code, Method::POST, "http://h/");
            assert!(e.is_content_error() && !e.is_refusal(), "{code}");
        }
        for code in [408, 410, 413, 429, 500] {
            let e = status(code, Method::POST, "http://h/");
            assert!(!e.is_content_error() && !e.is_refusal(), "{code}");
        }
    }

    #[test]
    fn a_conflict_is_a_409_a_412_or_a_400_that_reports_an_entrys_412() {
        assert!(status(412, Method::POST, "http://h/").is_conflict());
        assert!(status(409, Method::PUT, "http://h/Flag/1").is_conflict());
        let with = |text: &str| FhirError::Status {
            method: Method::POST,
            status: StatusCode::BAD_REQUEST,
            url: url("http://h/").into(),
            outcome: Some(OperationOutcomeSummary {
                issues: vec![OutcomeIssue {
                    severity: "error".into(),
                    code: "processing".into(),
                    diagnostics: Some(text.into()),
                }],
            }),
            retry_after: None,
        };
        assert!(with("Transaction failed at entry 0: Entry failed with status 412").is_conflict());
        assert!(!with("Flag.status: required").is_conflict());
        assert!(!status(400, Method::POST, "http://h/").is_conflict());
    }

    #[test]
    fn a_refusal_names_what_was_asked_and_what_to_do() {
        let e = status(
            403,
            Method::GET,
            "https://fhir.example/r4/Patient?_count=50",
        );
        assert_eq!(
            e.to_string(),
            "GET https://fhir.example/r4/Patient?_count=50 answered 403 Forbidden\nhint: the credentials may not read Patient: check the client's scopes and the server's access rules for it"
        );
        let e = status(405, Method::POST, "https://fhir.example/r4");
        assert!(
            e.to_string()
                .ends_with("the server does not allow POST to send a transaction: check the base URL and that the server supports this interaction"),
            "{e}"
        );
    }

    #[test]
    fn invalid_json_and_timeout_are_retryable() {
        let cause = serde_json::from_slice::<Value>(b"{\"resourceType\": \"Bun")
            .expect_err("truncated JSON");
        let err = FhirError::InvalidJson {
            method: Method::GET,
            url: url("http://h/Patient?_count=5").into(),
            cause: BodyError::Syntax(cause),
        };
        assert!(err.is_retryable());
        assert!(
            err.to_string()
                .starts_with("the answer to GET http://h/Patient?_count=5 is not valid JSON: EOF")
        );
        let err = FhirError::Timeout {
            method: Method::GET,
            url: url("http://h/metadata").into(),
            after: Duration::from_millis(1500),
        };
        assert!(err.is_retryable());
        assert!(err.to_string().contains("within 1.5 s"));
    }
}
