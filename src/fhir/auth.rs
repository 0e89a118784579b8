//! Credentials for the FHIR server, and the rule of where they may go: only to URLs on the
//! base's origin (scheme, host and port). A `next` link or redirect elsewhere never sees them.
//!
//! Two kinds: a static bearer token, and SMART Backend Services (client credentials with a
//! signed JWT assertion, RFC 7523): `SmartBackend` signs an assertion (`iss` = `sub` = the
//! client id, `aud` = the token endpoint, `exp` in five minutes, a fresh `jti`), trades it for
//! an access token, keeps the token until a minute before it expires, and fetches a new one
//! when the FHIR server answers 401. [`super::FhirClient`] asks `Auth::header_for` per
//! request. Nothing in it prints a token or key: [`BearerToken`]'s `Debug` shows `[redacted]`,
//! it has no `Display`, and header values are marked sensitive. It logs one thing:
//! [`read_secret`] warns, once per file, when a file holding a token or key can be read by
//! others than its owner (the path and mode, never the contents).

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Url;
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::FhirError;

/// A bearer token, kept in a [`SecretString`] (zeroed when dropped, never printed).
#[derive(Clone)]
pub struct BearerToken(SecretString);

impl BearerToken {
    /// Wraps a token, such as one read from an environment variable.
    pub fn new(token: impl Into<String>) -> Self {
        Self(SecretString::from(token.into()))
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken([redacted])")
    }
}

/// What a client authenticates with.
#[derive(Debug, Clone)]
pub(crate) enum Credentials {
    /// A static bearer token.
    Bearer(BearerToken),
    /// SMART Backend Services.
    Smart(SmartConfig),
}

/// A registered SMART Backend Services client.
#[derive(Clone)]
pub struct SmartConfig {
    /// The token endpoint (from the server's `.well-known/smart-configuration`, or given).
    pub token_url: Url,
    /// The client id the server registered.
    pub client_id: String,
    /// The private key (PEM) whose public half the server knows, RS384 or ES384.
    pub key_pem: SecretString,
    /// `RS384` or `ES384`, as SMART requires.
    pub algorithm: Algorithm,
    /// The key id (`kid`) in the server's copy of the client's JWKS.
    pub key_id: Option<String>,
    /// The scopes asked for.
    pub scope: String,
}

impl fmt::Debug for SmartConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmartConfig")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field("algorithm", &self.algorithm)
            .field("key_id", &self.key_id)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// How requests to the base's origin are authenticated.
#[derive(Debug, Clone)]
pub(super) enum Auth {
    /// No `Authorization` header.
    None,
    /// `Authorization: Bearer …`, ready to send (marked sensitive).
    Bearer(HeaderValue),
    /// A token fetched and refreshed from a SMART token endpoint.
    Smart(Arc<SmartBackend>),
}

impl Auth {
    pub(super) fn new(
        credentials: Option<&Credentials>,
        http: &reqwest::Client,
    ) -> Result<Self, FhirError> {
        match credentials {
            None => Ok(Self::None),
            Some(Credentials::Bearer(token)) => {
                Ok(Self::Bearer(bearer_header(token.0.expose_secret())?))
            }
            Some(Credentials::Smart(config)) => Ok(Self::Smart(Arc::new(SmartBackend::new(
                config.clone(),
                http.clone(),
            )?))),
        }
    }

    /// The `Authorization` header for a request to `url`: none unless `url` is on the origin
    /// of `base`. May fetch a token.
    pub(super) async fn header_for(
        &self,
        url: &Url,
        base: &Url,
    ) -> Result<Option<HeaderValue>, FhirError> {
        if !same_origin(url, base) {
            return Ok(None);
        }
        match self {
            Self::None => Ok(None),
            Self::Bearer(value) => Ok(Some(value.clone())),
            Self::Smart(smart) => smart.header().await.map(Some),
        }
    }

    /// Whether any credentials are configured.
    pub(super) fn is_some(&self) -> bool {
        !matches!(self, Self::None)
    }

    /// After a 401: drops a fetched token so the next request gets a new one. True when there
    /// was one to drop (a static token cannot get better by asking again).
    pub(super) async fn forget(&self) -> bool {
        match self {
            Self::Smart(smart) => smart.token.lock().await.take().is_some(),
            _ => false,
        }
    }
}

fn bearer_header(token: &str) -> Result<HeaderValue, FhirError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        FhirError::InvalidOption {
            option: "bearer token",
            reason: "it contains characters an HTTP header cannot carry".into(),
        }
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Tokens kept this long before their expiry are fetched anew.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// The longest a token is kept, whatever `expires_in` the token endpoint gave: the number is
/// the server's, and one near `u64::MAX` would overflow an [`Instant`] (a panic).
const LONGEST_KEPT: Duration = Duration::from_secs(24 * 60 * 60);

/// When a token fetched at `now` that lives `lifetime` is to be fetched anew: a minute before
/// it expires (half its life for short ones), at most [`LONGEST_KEPT`] ahead.
fn refresh_at(now: Instant, lifetime: Duration) -> Instant {
    let lifetime = lifetime.min(LONGEST_KEPT);
    let kept = lifetime.saturating_sub(REFRESH_MARGIN).max(lifetime / 2);
    now.checked_add(kept).unwrap_or(now)
}

/// The SMART Backend Services token source.
pub(super) struct SmartBackend {
    config: SmartConfig,
    key: EncodingKey,
    http: reqwest::Client,
    token: Mutex<Option<(HeaderValue, Instant)>>,
}

impl fmt::Debug for SmartBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmartBackend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The client assertion's claims (SMART Backend Services, "Protocol details").
#[derive(Debug, Serialize, Deserialize)]
pub struct AssertionClaims {
    /// The client id.
    pub iss: String,
    /// The client id.
    pub sub: String,
    /// The token endpoint.
    pub aud: String,
    /// Expiry, at most five minutes ahead.
    pub exp: u64,
    /// A nonce the server may refuse to see twice.
    pub jti: String,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl SmartBackend {
    fn new(config: SmartConfig, http: reqwest::Client) -> Result<Self, FhirError> {
        let pem = config.key_pem.expose_secret().as_bytes();
        let key = match config.algorithm {
            Algorithm::RS384 => EncodingKey::from_rsa_pem(pem),
            Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
            _ => {
                return Err(FhirError::InvalidOption {
                    option: "SMART signing algorithm",
                    reason: "SMART Backend Services allows RS384 and ES384".into(),
                });
            }
        }
        .map_err(|e| FhirError::InvalidOption {
            option: "SMART private key",
            reason: format!(
                "it is not a PEM {} private key ({e})",
                if config.algorithm == Algorithm::RS384 {
                    "RSA"
                } else {
                    "P-384 EC (PKCS#8)"
                }
            ),
        })?;
        Ok(Self {
            config,
            key,
            http,
            token: Mutex::new(None),
        })
    }

    async fn header(&self) -> Result<HeaderValue, FhirError> {
        let mut token = self.token.lock().await;
        if let Some((value, until)) = token.as_ref()
            && Instant::now() < *until
        {
            return Ok(value.clone());
        }
        let (value, lifetime) = self.fetch().await?;
        let until = refresh_at(Instant::now(), lifetime);
        *token = Some((value.clone(), until));
        Ok(value)
    }

    /// One token request: the signed assertion in, an access token out.
    async fn fetch(&self) -> Result<(HeaderValue, Duration), FhirError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = AssertionClaims {
            iss: self.config.client_id.clone(),
            sub: self.config.client_id.clone(),
            aud: self.config.token_url.to_string(),
            exp: now + 300,
            jti: super::new_correlation_id(),
        };
        let mut header = Header::new(self.config.algorithm);
        header.typ = Some("JWT".into());
        header.kid = self.config.key_id.clone();
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| {
            FhirError::InvalidOption {
                option: "SMART private key",
                reason: format!("signing the client assertion failed: {e}"),
            }
        })?;
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", self.config.scope.as_str()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
        ];
        let url = &self.config.token_url;
        let refused = |reason: String| FhirError::Token {
            url: Box::new(url.clone()),
            reason,
        };
        let response = self
            .http
            .post(url.clone())
            .form(&form)
            .send()
            .await
            .map_err(|e| refused(e.without_url().to_string()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| refused(e.without_url().to_string()))?;
        if !status.is_success() {
            // OAuth errors carry `error` and `error_description`, never the token.
            let detail: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            return Err(refused(format!(
                "{status}: {} {}",
                detail["error"].as_str().unwrap_or("no error code"),
                detail["error_description"].as_str().unwrap_or_default()
            )));
        }
        let token: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| refused(format!("the answer has no access_token ({e})")))?;
        let lifetime = Duration::from_secs(token.expires_in.unwrap_or(300));
        Ok((bearer_header(&token.access_token)?, lifetime))
    }
}

/// Reads a file that holds a secret (a bearer token, a private key), after
/// `warn_if_exposed`.
pub fn read_secret(path: &Path, what: &str) -> std::io::Result<String> {
    warn_if_exposed(path, what);
    std::fs::read_to_string(path)
}

/// Warns, once per file and process, when a file holding a secret can be read by its group or
/// by others (`mode & 0o077`): anyone else on the machine can then act as this client. A file
/// that cannot be inspected is left to the read that follows to report.
pub(crate) fn warn_if_exposed(path: &Path, what: &str) {
    #[cfg(unix)]
    {
        use std::collections::BTreeSet;
        use std::os::unix::fs::PermissionsExt;
        use std::path::PathBuf;
        static WARNED: std::sync::Mutex<BTreeSet<PathBuf>> = std::sync::Mutex::new(BTreeSet::new());
        let Ok(metadata) = std::fs::metadata(path) else {
            return;
        };
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 == 0 {
            return;
        }
        let first = WARNED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_owned());
        if first {
            tracing::warn!(
                file = %path.display(),
                mode = %format_args!("{mode:o}"),
                "the {what} {} can be read by other users than its owner\nhint: chmod 600 {}",
                path.display(),
                path.display()
            );
        }
    }
}

/// Whether two URLs share scheme, host and port (default ports made explicit).
pub(super) fn same_origin(a: &Url, b: &Url) -> bool {
    a.origin() == b.origin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn token_never_printed_and_only_sent_to_the_origin() {
        let token = BearerToken::new("s3cr3t-token");
        assert!(!format!("{token:?}").contains("s3cr3t"));
        let auth = Auth::new(Some(&Credentials::Bearer(token)), &reqwest::Client::new())
            .expect("a valid token");
        assert!(!format!("{auth:?}").contains("s3cr3t"));

        let base = Url::parse("https://fhir.example/fhir/").expect("valid");
        let same = Url::parse("https://fhir.example:443/fhir/Patient?_count=5").expect("valid");
        let header = auth
            .header_for(&same, &base)
            .await
            .expect("a static token")
            .expect("same origin gets the token");
        assert_eq!(header.to_str().expect("ascii"), "Bearer s3cr3t-token");
        for other in [
            "http://fhir.example/fhir/Patient",
            "https://fhir.example:8443/fhir/Patient",
            "https://evil.example/fhir/Patient",
            "https://fhir.example.evil.example/fhir/Patient",
        ] {
            let url = Url::parse(other).expect("valid");
            assert!(
                auth.header_for(&url, &base)
                    .await
                    .expect("no fetch")
                    .is_none(),
                "{other} got the token"
            );
        }
    }

    #[test]
    fn a_token_lifetime_is_kept_to_a_day() {
        let now = Instant::now();
        assert_eq!(
            refresh_at(now, Duration::from_secs(u64::MAX)),
            now + LONGEST_KEPT - REFRESH_MARGIN
        );
        assert_eq!(
            refresh_at(now, Duration::from_secs(300)),
            now + Duration::from_secs(240)
        );
        assert_eq!(
            refresh_at(now, Duration::from_secs(60)),
            now + Duration::from_secs(30)
        );
    }

    /// Issue 24, finding 11: `expires_in` of `u64::MAX` panicked with an `Instant` overflow.
    #[tokio::test]
    async fn a_huge_expires_in_from_the_token_endpoint_does_not_panic() {
        use wiremock::matchers::method;
        use wiremock::{Mock, MockServer, ResponseTemplate};
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_raw(
                format!(
                    r#"{{"access_token": "t0k3n", "token_type": "bearer", "expires_in": {}}}"#,
                    u64::MAX
                ),
                "application/json",
            ))
            .expect(1)
            .mount(&server)
            .await;
        let base = Url::parse(&format!("{}/fhir/", server.uri())).expect("valid");
        let smart = SmartConfig {
            token_url: Url::parse(&format!("{}/token", server.uri())).expect("valid"),
            client_id: "segmentti".into(),
            key_pem: SecretString::from(include_str!("../../tests/fixtures/keys/test-es384.pem")),
            algorithm: Algorithm::ES384,
            key_id: None,
            scope: "system/Flag.write".into(),
        };
        let auth = Auth::new(Some(&Credentials::Smart(smart)), &reqwest::Client::new())
            .expect("a valid key");
        for _ in 0..2 {
            let header = auth
                .header_for(&base, &base)
                .await
                .expect("a token")
                .expect("same origin");
            assert_eq!(header.to_str().expect("ascii"), "Bearer t0k3n");
        }
    }

    #[test]
    fn a_token_with_a_newline_is_refused() {
        let err = Auth::new(
            Some(&Credentials::Bearer(BearerToken::new("abc\ndef"))),
            &reqwest::Client::new(),
        )
        .expect_err("not a header value");
        assert!(!err.to_string().contains("abc"));
    }
}
