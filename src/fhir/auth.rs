//! Credentials for the FHIR server, and the rule of where they may go: only to URLs on the
//! base's origin (scheme, host and port). A `next` link or redirect elsewhere never sees them.
//!
//! Today the only kind is a static bearer token. Client credentials and SMART backend services
//! are later additions: they become more [`Auth`] variants that fetch and refresh a token, so
//! [`super::FhirClient`] keeps asking [`Auth::header_for`] per request and needs no change.
//! This module does not log, and nothing in it prints a token: [`BearerToken`]'s `Debug`
//! shows `[redacted]`, it has no `Display`, and the header value is marked sensitive.

use std::fmt;

use reqwest::Url;
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

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

/// How requests to the base's origin are authenticated.
#[derive(Debug, Clone)]
pub(super) enum Auth {
    /// No `Authorization` header.
    None,
    /// `Authorization: Bearer …`, ready to send (marked sensitive).
    Bearer(HeaderValue),
}

impl Auth {
    pub(super) fn new(bearer: Option<&BearerToken>) -> Result<Self, FhirError> {
        let Some(token) = bearer else {
            return Ok(Self::None);
        };
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.0.expose_secret()))
            .map_err(|_| FhirError::InvalidOption {
                option: "bearer token",
                reason: "it contains characters an HTTP header cannot carry".into(),
            })?;
        value.set_sensitive(true);
        Ok(Self::Bearer(value))
    }

    /// The `Authorization` header for a request to `url`: none unless `url` is on the origin
    /// of `base`.
    pub(super) fn header_for(&self, url: &Url, base: &Url) -> Option<HeaderValue> {
        match self {
            Self::None => None,
            Self::Bearer(value) => same_origin(url, base).then(|| value.clone()),
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

    #[test]
    fn token_never_printed_and_only_sent_to_the_origin() {
        let token = BearerToken::new("s3cr3t-token");
        assert!(!format!("{token:?}").contains("s3cr3t"));
        let auth = Auth::new(Some(&token)).expect("a valid token");
        assert!(!format!("{auth:?}").contains("s3cr3t"));

        let base = Url::parse("https://fhir.example/fhir/").expect("valid");
        let same = Url::parse("https://fhir.example:443/fhir/Patient?_count=5").expect("valid");
        let header = auth
            .header_for(&same, &base)
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
                auth.header_for(&url, &base).is_none(),
                "{other} got the token"
            );
        }
    }

    #[test]
    fn a_token_with_a_newline_is_refused() {
        let err = Auth::new(Some(&BearerToken::new("abc\ndef"))).expect_err("not a header value");
        assert!(!err.to_string().contains("abc"));
    }
}
