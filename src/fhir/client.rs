//! [`FhirClient`]: one FHIR server's REST API over HTTP, as JSON values. It owns the request
//! headers (`Accept: application/fhir+json`, `X-Correlation-Id`, credentials on the base's
//! origin only), the per-request timeout, retries through [`RetryPolicy`], paging through
//! searchsets ([`Pages`]) and turning error answers into [`FhirError`]s. It does not parse
//! resources into types, build Bundles, or decide what to read and write: sources and sinks do.
//!
//! Every request, the retried ones too, is a whole new attempt under the same policy; a
//! transaction is retried as well, which is safe because segmentti's writes are conditional
//! (a replay after a lost answer finds what the first attempt wrote). Callers that send
//! entries which are not safe to repeat should give the client [`RetryPolicy::never`].
//! Redirects are followed only within the base's origin (at most 5); one to elsewhere comes
//! back as the 3xx [`FhirError::Status`].

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url, redirect};
use serde_json::Value;
use tracing::{debug, warn};

use super::auth::{Auth, BearerToken, Credentials, SmartConfig, same_origin};
use super::bundle::{bundle_type, next_link, resource_type, search_outcomes};
use super::error::{BodyError, FhirError, OperationOutcomeSummary, redact};
use super::retry::RetryPolicy;

/// The value of a `patient` search parameter for `ids`: `Patient/a,Patient/b`. The typed form
/// matters for speed, not meaning: a bare id may name a Patient on any server, so a server
/// matches it by suffix, which hfs 0.2.7 does with `LIKE '%/id'` over every stored reference
/// (no index), while `Patient/id` is an exact, indexed match: the bare form costs a scan that
/// grows with everything the server holds.
pub fn patient_references<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut joined = String::new();
    for id in ids {
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str("Patient/");
        joined.push_str(id);
    }
    joined
}

/// The media type of FHIR JSON, sent as `Accept` and, with a body, as `Content-Type`.
pub(crate) const FHIR_JSON: &str = "application/fhir+json";

/// The header that carries the run's correlation id on every request.
pub(crate) const CORRELATION_HEADER: HeaderName = HeaderName::from_static("x-correlation-id");

/// Redirects followed within the base's origin before giving up.
const MAX_REDIRECTS: usize = 5;

/// How a [`FhirClient`] behaves.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The longest one attempt may take, from sending to the last byte of the answer.
    pub timeout: Duration,
    /// When and how often to retry.
    pub retry: RetryPolicy,
    /// The run's correlation id, sent as `X-Correlation-Id` (see [`new_correlation_id`]).
    pub correlation_id: String,
    /// A static bearer token, sent only to URLs on the base's origin.
    pub bearer: Option<BearerToken>,
    /// SMART Backend Services instead of a static token.
    pub smart: Option<SmartConfig>,
    /// A CA bundle to trust and a client certificate (mutual TLS).
    pub tls: super::TlsOptions,
}

impl ClientOptions {
    /// A 60 s timeout, the default [`RetryPolicy`], no credentials, the system's CA roots.
    pub fn new(correlation_id: impl Into<String>) -> Self {
        Self {
            timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            correlation_id: correlation_id.into(),
            bearer: None,
            smart: None,
            tls: super::TlsOptions::default(),
        }
    }
}

/// `X-Correlation-Id`'s value.
fn correlation_header(id: &str) -> Result<HeaderValue, FhirError> {
    HeaderValue::from_str(id).map_err(|_| FhirError::InvalidOption {
        option: "correlation id",
        reason: "it contains characters an HTTP header cannot carry".into(),
    })
}

/// A fresh random correlation id (a UUID) for a run.
pub fn new_correlation_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

/// A FHIR R4 server's REST API. Cheap to clone; clones share connections.
#[derive(Debug, Clone)]
pub struct FhirClient {
    http: reqwest::Client,
    /// The service base, its path ending in `/` so that `join("Patient")` stays below it.
    base: Url,
    timeout: Duration,
    retry: RetryPolicy,
    correlation_id: HeaderValue,
    auth: Auth,
}

/// What a write (`PUT`) answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// 200 (updated) or 201 (created).
    pub status: StatusCode,
    /// The `Location` header.
    pub location: Option<String>,
    /// The `ETag` header.
    pub etag: Option<String>,
    /// The resource as stored, when the server returned it.
    pub resource: Option<Value>,
}

/// One answered attempt, before its body is judged.
struct Reply {
    status: StatusCode,
    location: Option<String>,
    etag: Option<String>,
    body: Value,
}

impl FhirClient {
    /// A client for the server whose service base is `base`, such as
    /// `https://fhir.example.org/fhir`. Nothing is sent until the first request.
    pub fn new(base: Url, options: ClientOptions) -> Result<Self, FhirError> {
        let base = service_base(base)?;
        let correlation_id = correlation_header(&options.correlation_id)?;
        let credentials = match (options.bearer, options.smart) {
            (Some(_), Some(_)) => {
                return Err(FhirError::InvalidOption {
                    option: "credentials",
                    reason: "give a bearer token or SMART Backend Services, not both".into(),
                });
            }
            (Some(token), None) => Some(Credentials::Bearer(token)),
            (None, Some(smart)) => Some(Credentials::Smart(smart)),
            (None, None) => None,
        };
        let origin_of = base.clone();
        let redirects = redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
            } else if same_origin(attempt.url(), &origin_of) {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        let builder = reqwest::Client::builder()
            .timeout(options.timeout)
            .user_agent(concat!("segmentti/", env!("CARGO_PKG_VERSION")))
            .redirect(redirects);
        let http = super::tls::configure(builder, &options.tls)?
            .build()
            .map_err(|source| FhirError::Client { source })?;
        let auth = Auth::new(credentials.as_ref(), &http)?;
        Ok(Self {
            http,
            base,
            timeout: options.timeout,
            retry: options.retry,
            correlation_id,
            auth,
        })
    }

    /// The service base, its path ending in `/`.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The URL of `resource_type` below the base with `params` as its query, such as
    /// `[base]/Encounter?patient=a,b`.
    pub(crate) fn url<K: AsRef<str>, V: AsRef<str>>(
        &self,
        resource_type: &str,
        params: &[(K, V)],
    ) -> Result<Url, FhirError> {
        if resource_type.is_empty() || !resource_type.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(FhirError::InvalidResourceType {
                name: resource_type.to_owned(),
            });
        }
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| FhirError::InvalidBase {
                url: self.base.to_string(),
                reason: "it cannot have a path",
            })?
            .pop_if_empty()
            .push(resource_type);
        if !params.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(params.iter().map(|(k, v)| (k.as_ref(), v.as_ref())));
        }
        Ok(url)
    }

    /// One attempt whose answer is left to the caller: for exchanges that are not a FHIR JSON
    /// body, such as Bulk Data's kick-off (202 and `Content-Location`), status polling
    /// (`X-Progress`) and NDJSON files. Credentials and the correlation id go as on every
    /// request (credentials only to the base's origin); `timeout` replaces the client's for
    /// long downloads. Transport failures and timeouts are errors; every status is not.
    pub(crate) async fn exchange(
        &self,
        method: Method,
        url: &Url,
        headers: HeaderMap,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, FhirError> {
        self.exchange_with_body(method, url, headers, None, timeout)
            .await
    }

    /// [`Self::exchange`] with a FHIR JSON body (sent with `Content-Type: application/fhir+json`):
    /// for callers that must see every answer as it came, writes included, such as the
    /// conformance kit. One attempt, no retries.
    pub(crate) async fn exchange_with_body(
        &self,
        method: Method,
        url: &Url,
        headers: HeaderMap,
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, FhirError> {
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .headers(headers)
            .header(CORRELATION_HEADER, self.correlation_id.clone());
        if let Some(authorization) = self.auth.header_for(url, &self.base).await? {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        if let Some(body) = body {
            request = request.header(header::CONTENT_TYPE, FHIR_JSON).body(body);
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request
            .send()
            .await
            .map_err(|source| self.failed(&method, url, source))?;
        debug!(method = %method, url = %redact(url), status = response.status().as_u16(), "exchange");
        Ok(response)
    }

    /// Whether a request to `url` would carry this client's credentials (same origin as the
    /// base, and credentials configured).
    pub(crate) fn sends_credentials_to(&self, url: &Url) -> bool {
        self.auth.is_some() && same_origin(url, &self.base)
    }

    /// Whether this client has credentials at all.
    pub(crate) fn has_credentials(&self) -> bool {
        self.auth.is_some()
    }

    /// The retry policy requests of this client follow.
    pub(crate) fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// This client for one call or run of a long-lived process: its connections and (unless
    /// `bearer` replaces them with a caller's token) its credentials and their token are
    /// shared, the correlation id and retry policy are the call's own.
    pub(crate) fn for_call(
        &self,
        correlation_id: &str,
        retry: RetryPolicy,
        bearer: Option<BearerToken>,
    ) -> Result<Self, FhirError> {
        let auth = match bearer {
            Some(token) => Auth::new(Some(&Credentials::Bearer(token)), &self.http)?,
            None => self.auth.clone(),
        };
        Ok(Self {
            http: self.http.clone(),
            base: self.base.clone(),
            timeout: self.timeout,
            retry,
            correlation_id: correlation_header(correlation_id)?,
            auth,
        })
    }

    /// `GET url`: the answer's JSON (`Null` for an empty body). A URL on another origin than
    /// the base is fetched without credentials.
    pub async fn get(&self, url: &Url) -> Result<Value, FhirError> {
        Ok(self.send(Method::GET, url, None).await?.body)
    }

    /// `GET [base]/metadata`: the server's CapabilityStatement.
    pub async fn capabilities(&self) -> Result<Value, FhirError> {
        let url = self.url::<&str, &str>("metadata", &[])?;
        let statement = self.get(&url).await?;
        if resource_type(&statement) != Some("CapabilityStatement") {
            return Err(FhirError::UnexpectedResource {
                url: url.into(),
                expected: "a CapabilityStatement",
                found: describe(&statement),
            });
        }
        Ok(statement)
    }

    /// The first page of `GET [base]/resource_type?params`, a searchset Bundle.
    pub async fn search<K: AsRef<str>, V: AsRef<str>>(
        &self,
        resource_type: &str,
        params: &[(K, V)],
    ) -> Result<Value, FhirError> {
        let url = self.url(resource_type, params)?;
        self.searchset(&url).await
    }

    /// Every page of `GET [base]/resource_type?params`, following `next` links.
    pub fn pages<K: AsRef<str>, V: AsRef<str>>(
        &self,
        resource_type: &str,
        params: &[(K, V)],
    ) -> Result<Pages<'_>, FhirError> {
        Ok(self.pages_from(self.url(resource_type, params)?))
    }

    /// Every page of a search that starts at `url` (which must be on the base's origin).
    fn pages_from(&self, url: Url) -> Pages<'_> {
        Pages {
            client: self,
            next: Some(url),
            seen: HashSet::new(),
        }
    }

    /// `POST [base]` of a `transaction` or `batch` Bundle: the `transaction-response` or
    /// `batch-response`. Read how each entry went with [`super::entry_outcomes`].
    pub async fn transaction(&self, bundle: &Value) -> Result<Value, FhirError> {
        let url = self.service_root();
        let expected = match bundle_type(bundle) {
            Some("batch") => "batch-response",
            _ => "transaction-response",
        };
        let body = bundle.to_string().into_bytes();
        let reply = self.send(Method::POST, &url, Some(body)).await?;
        if bundle_type(&reply.body) != Some(expected) {
            return Err(FhirError::UnexpectedResource {
                url: url.into(),
                expected: if expected == "batch-response" {
                    "a batch-response Bundle"
                } else {
                    "a transaction-response Bundle"
                },
                found: describe(&reply.body),
            });
        }
        Ok(reply.body)
    }

    /// `PUT [base]/resource_type?params` with `resource`: a conditional update, which creates
    /// the resource when nothing matches and updates it when one does (the server answers 412
    /// when several match).
    pub async fn update_conditional<K: AsRef<str>, V: AsRef<str>>(
        &self,
        resource_type: &str,
        params: &[(K, V)],
        resource: &Value,
    ) -> Result<Written, FhirError> {
        let url = self.url(resource_type, params)?;
        let body = resource.to_string().into_bytes();
        let reply = self.send(Method::PUT, &url, Some(body)).await?;
        Ok(Written {
            status: reply.status,
            location: reply.location,
            etag: reply.etag,
            resource: (!reply.body.is_null()).then_some(reply.body),
        })
    }

    /// `GET url`, which must answer a searchset Bundle; the server's remarks on the search are
    /// logged at WARN.
    async fn searchset(&self, url: &Url) -> Result<Value, FhirError> {
        let page = self.get(url).await?;
        if bundle_type(&page) != Some("searchset") {
            return Err(FhirError::UnexpectedResource {
                url: url.clone().into(),
                expected: "a searchset Bundle",
                found: describe(&page),
            });
        }
        for remark in search_outcomes(&page) {
            warn!(url = %redact(url), remark = %remark, "the server remarked on a search");
        }
        Ok(page)
    }

    /// The base without its trailing `/`, where transactions go (`POST [base]`).
    pub(crate) fn service_root(&self) -> Url {
        let mut url = self.base.clone();
        let trimmed = url.path().trim_end_matches('/').to_owned();
        if !trimmed.is_empty() {
            url.set_path(&trimmed);
        }
        url
    }

    /// One request under the retry policy.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, FhirError> {
        let reply = self
            .retry
            .run(|| self.attempt(&method, url, body.as_deref()))
            .await;
        // A fetched token may have been revoked or expired early: one more try with a new one.
        match reply {
            Err(e) if e.status() == Some(StatusCode::UNAUTHORIZED) && self.auth.forget().await => {
                self.retry
                    .run(|| self.attempt(&method, url, body.as_deref()))
                    .await
            }
            reply => reply,
        }
    }

    /// One attempt: a 2xx answer with its JSON, or the error.
    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&[u8]>,
    ) -> Result<Reply, FhirError> {
        let started = Instant::now();
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .header(header::ACCEPT, FHIR_JSON)
            .header(CORRELATION_HEADER, self.correlation_id.clone());
        if let Some(authorization) = self.auth.header_for(url, &self.base).await? {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        if let Some(body) = body {
            request = request
                .header(header::CONTENT_TYPE, FHIR_JSON)
                .body(body.to_vec());
        }
        let response = request
            .send()
            .await
            .map_err(|source| self.failed(method, url, source))?;
        let status = response.status();
        let headers = response.headers();
        let retry_after = retry_after(headers);
        let location = text(headers, &header::LOCATION);
        let etag = text(headers, &header::ETAG);
        let bytes = response.bytes().await;
        debug!(
            method = %method,
            url = %redact(url),
            status = status.as_u16(),
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            bytes = bytes.as_ref().map_or(0, |b| b.len()),
            "fhir request"
        );
        if !status.is_success() {
            return Err(FhirError::Status {
                method: method.clone(),
                status,
                url: url.clone().into(),
                outcome: bytes
                    .ok()
                    .and_then(|b| OperationOutcomeSummary::from_body(&b)),
                retry_after,
            });
        }
        let bytes = bytes.map_err(|source| match self.failed(method, url, source) {
            FhirError::Transport { source, .. } => FhirError::InvalidJson {
                method: method.clone(),
                url: url.clone().into(),
                cause: BodyError::Truncated(source),
            },
            timeout => timeout,
        })?;
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| FhirError::InvalidJson {
                method: method.clone(),
                url: url.clone().into(),
                cause: BodyError::Syntax(e),
            })?
        };
        Ok(Reply {
            status,
            location,
            etag,
            body,
        })
    }

    /// A reqwest error as a timeout or a transport error. reqwest's own message would repeat
    /// the URL with its query values, which [`redact`] keeps out of messages: it is removed.
    fn failed(&self, method: &Method, url: &Url, source: reqwest::Error) -> FhirError {
        let source = source.without_url();
        if source.is_timeout() {
            FhirError::Timeout {
                method: method.clone(),
                url: url.clone().into(),
                after: self.timeout,
            }
        } else {
            FhirError::Transport {
                method: method.clone(),
                url: url.clone().into(),
                source,
            }
        }
    }
}

/// The pages of a search, one searchset Bundle at a time.
///
/// ```no_run
/// # async fn demo(client: &segmentti::fhir::FhirClient) -> Result<(), segmentti::fhir::FhirError> {
/// let mut pages = client.pages("Patient", &[("_count", "50")])?;
/// while let Some(page) = pages.next_page().await {
///     for patient in segmentti::fhir::matches(&page?) {
///         // ...
///     }
/// }
/// # Ok(()) }
/// ```
///
/// A `next` link is followed only when it is on the base's origin; one elsewhere ends the
/// paging with [`FhirError::CrossOrigin`], nothing sent there. A link back to a page already
/// read ends it with [`FhirError::PagingLoop`]. After an error there are no more pages.
#[derive(Debug)]
pub struct Pages<'c> {
    client: &'c FhirClient,
    next: Option<Url>,
    seen: HashSet<Url>,
}

impl Pages<'_> {
    /// The next page, or `None` after the last page or an error.
    pub async fn next_page(&mut self) -> Option<Result<Value, FhirError>> {
        let url = self.next.take()?;
        Some(self.fetch(url).await)
    }

    async fn fetch(&mut self, url: Url) -> Result<Value, FhirError> {
        if !same_origin(&url, &self.client.base) {
            return Err(FhirError::CrossOrigin {
                url: url.into(),
                base_origin: self.client.base.origin().ascii_serialization(),
            });
        }
        if !self.seen.insert(url.clone()) {
            return Err(FhirError::PagingLoop { url: url.into() });
        }
        let page = self.client.searchset(&url).await?;
        if let Some(link) = next_link(&page) {
            let next = url.join(link).map_err(|e| FhirError::MalformedResponse {
                what: "searchset Bundle",
                detail: format!("its next link is not a URL: {e}"),
            })?;
            self.next = Some(next);
        }
        Ok(page)
    }
}

/// Checks a base URL and makes its path end in `/`.
fn service_base(mut base: Url) -> Result<Url, FhirError> {
    let invalid = |base: &Url, reason| {
        let mut shown = base.clone();
        // Never echo a password, not even into an error.
        let _ = shown.set_password(None);
        let _ = shown.set_username("");
        FhirError::InvalidBase {
            url: shown.to_string(),
            reason,
        }
    };
    if !matches!(base.scheme(), "http" | "https") {
        return Err(invalid(&base, "the scheme is not http or https"));
    }
    if base.cannot_be_a_base() || base.host_str().is_none_or(str::is_empty) {
        return Err(invalid(&base, "it has no host"));
    }
    if !base.username().is_empty() || base.password().is_some() {
        return Err(invalid(&base, "it carries a user name or password"));
    }
    if base.query().is_some() || base.fragment().is_some() {
        return Err(invalid(&base, "it has a query or a fragment"));
    }
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    Ok(base)
}

/// A header's value as text, when it is text.
fn text(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_owned)
}

/// `Retry-After` in seconds, or as an HTTP date (counted from now; a past date is zero).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// What a body is, for a message: `a Bundle of type history`, `an OperationOutcome (…)`.
fn describe(value: &Value) -> String {
    match resource_type(value) {
        Some("Bundle") => match bundle_type(value) {
            Some(kind) => format!("a Bundle of type {kind}"),
            None => "a Bundle without type".into(),
        },
        Some("OperationOutcome") => match OperationOutcomeSummary::from_value(value) {
            Some(outcome) if !outcome.issues.is_empty() => {
                format!("an OperationOutcome ({outcome})")
            }
            _ => "an OperationOutcome".into(),
        },
        Some(other) => format!("a {other}"),
        None if value.is_null() => "an empty body".into(),
        None => "JSON without resourceType".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("a valid test URL")
    }

    fn client(base: &str) -> Result<FhirClient, FhirError> {
        FhirClient::new(url(base), ClientOptions::new("test-run"))
    }

    #[test]
    fn patient_references_are_typed_and_comma_separated() {
        assert_eq!(patient_references(["a", "b-1"]), "Patient/a,Patient/b-1");
        assert_eq!(patient_references([]), "");
    }

    #[test]
    fn base_gets_a_trailing_slash_and_resource_urls_stay_below_it() {
        let c = client("https://fhir.example/r4").expect("a valid base");
        assert_eq!(c.base().as_str(), "https://fhir.example/r4/");
        assert_eq!(c.service_root().as_str(), "https://fhir.example/r4");
        let u = c
            .url("Encounter", &[("patient", "a,b"), ("_count", "50")])
            .expect("a valid type");
        assert_eq!(
            u.as_str(),
            "https://fhir.example/r4/Encounter?patient=a%2Cb&_count=50"
        );
        let root = client("http://127.0.0.1:8080").expect("a valid base");
        assert_eq!(root.service_root().as_str(), "http://127.0.0.1:8080/");
        assert_eq!(
            root.url::<&str, &str>("Patient", &[])
                .expect("valid")
                .as_str(),
            "http://127.0.0.1:8080/Patient"
        );
        assert!(c.url::<&str, &str>("../admin", &[]).is_err());
        assert!(c.url::<&str, &str>("", &[]).is_err());
    }

    #[test]
    fn unusable_bases_are_refused_without_echoing_passwords() {
        for (base, reason) in [
            ("ftp://fhir.example/", "scheme"),
            ("https://fhir.example/fhir?x=1", "query"),
            (
                "https://me:hunter2@fhir.example/fhir",
                "user name or password",
            ),
        ] {
            let err = client(base).expect_err("refused");
            let text = err.to_string();
            assert!(text.contains(reason), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
        let bad = FhirClient::new(url("http://h/"), ClientOptions::new("line\nbreak"))
            .expect_err("a header cannot carry a newline");
        assert!(bad.to_string().contains("correlation id"));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(90));
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&later).expect("ascii"),
        );
        let d = retry_after(&headers).expect("a date");
        assert!(
            d > Duration::from_secs(85) && d <= Duration::from_secs(90),
            "{d:?}"
        );
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn correlation_ids_are_fresh_uuids() {
        let (a, b) = (new_correlation_id(), new_correlation_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
    }
}
