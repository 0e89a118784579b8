//! The CDS Hooks 2.0 security model: every call carries `Authorization: Bearer <JWT>` signed by
//! the EHR. The token must name a configured issuer (`iss`), be signed by a key of that issuer's
//! JWKS, be addressed to the URL being called (`aud`), be unexpired (`exp`, 30 s leeway) and
//! live at most ten minutes, and carry a `jti` never seen before. Seen `jti`s are remembered
//! until their token expires, in a bounded map, so a replay is refused without unbounded memory.
//! Keys come only from the configured JWKS: a token's `jku` header is ignored, since following
//! it would let the caller pick the key that verifies it. It owns verification and the key
//! cache; it does not decide HTTP statuses (all its errors are 401) and never logs a token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::config::{Issuer, KeySource};

/// Tokens may say they live this long at most; CDS Hooks asks EHRs for five minutes.
const MAX_LIFETIME_S: u64 = 600;
/// Clock difference tolerated on `exp`.
const LEEWAY_S: u64 = 30;
/// `jti`s remembered at once; beyond this, new tokens are refused until old ones expire.
const MAX_SEEN: usize = 100_000;
/// A JWKS URL is fetched again for an unknown `kid` at most this often.
const REFETCH_AFTER: Duration = Duration::from_secs(60);
/// The algorithms CDS Hooks names (ES384, RS384) and their common siblings; never `none` or HMAC.
const ALGORITHMS: [Algorithm; 6] = [
    Algorithm::ES384,
    Algorithm::RS384,
    Algorithm::ES256,
    Algorithm::RS256,
    Algorithm::RS512,
    Algorithm::PS384,
];

/// Why a call is not trusted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer`.
    #[error(
        "no bearer token: CDS Hooks calls must carry the EHR's signed JWT in `Authorization: Bearer`"
    )]
    Missing,
    /// Not a JWT, or an algorithm not accepted.
    #[error("the bearer token is not an acceptable JWT: {0}")]
    Malformed(String),
    /// `iss` is not configured.
    #[error("the token's issuer is not trusted by this service")]
    UnknownIssuer,
    /// The issuer's keys could not be had.
    #[error("cannot get the issuer's keys: {0}")]
    Keys(String),
    /// Signature, `aud`, `exp` or `iss` wrong.
    #[error("the token does not verify: {0}")]
    Invalid(String),
    /// `exp` too far ahead.
    #[error(
        "the token lives longer than {MAX_LIFETIME_S} s; CDS Hooks tokens should expire within 5 minutes"
    )]
    TooLong,
    /// `jti` seen before.
    #[error("the token's jti was already used: each call needs a fresh token")]
    Replay,
    /// Too many live tokens.
    #[error("too many live tokens to remember; try again shortly")]
    Busy,
}

#[derive(Debug, Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    jti: String,
}

#[derive(Debug, Deserialize)]
struct IssuerOnly {
    iss: String,
}

/// Verifies tokens; one per service.
#[derive(Debug)]
pub struct Verifier {
    issuers: Vec<Issuer>,
    http: reqwest::Client,
    fetched: Mutex<HashMap<String, (JwkSet, Instant)>>,
    seen: Mutex<HashMap<String, u64>>,
}

impl Verifier {
    /// A verifier trusting `issuers`.
    pub fn new(issuers: Vec<Issuer>) -> Self {
        Self {
            issuers,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            fetched: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Checks the `Authorization` header of a call to `aud`; returns the issuer.
    pub async fn verify(
        &self,
        authorization: Option<&str>,
        aud: &str,
    ) -> Result<String, AuthError> {
        let token = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(AuthError::Malformed(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        // Read unverified only to choose whose keys to verify with; everything is checked below.
        let iss = jsonwebtoken::dangerous::insecure_decode_claims::<IssuerOnly>(token)
            .map_err(|e| AuthError::Malformed(e.to_string()))?
            .iss;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.iss == iss)
            .ok_or(AuthError::UnknownIssuer)?;
        let keys = self.keys(issuer, header.kid.as_deref()).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[aud]);
        validation.set_issuer(&[&issuer.iss]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = LEEWAY_S;
        let candidates: Vec<_> = match header.kid.as_deref() {
            Some(kid) => keys.find(kid).into_iter().collect(),
            None => keys.keys.iter().collect(),
        };
        let mut last = "no key of the issuer has the token's kid".to_owned();
        for jwk in candidates {
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
                Ok(data) => return self.fresh(data.claims).map(|()| issuer.iss.clone()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(AuthError::Invalid(last))
    }

    /// Refuses a long-lived or replayed token, and remembers this one until it expires.
    fn fresh(&self, claims: Claims) -> Result<(), AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        if claims.exp > now + MAX_LIFETIME_S + LEEWAY_S {
            return Err(AuthError::TooLong);
        }
        if claims.jti.is_empty() {
            return Err(AuthError::Invalid("the token has no jti".into()));
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains_key(&claims.jti) {
            return Err(AuthError::Replay);
        }
        if seen.len() >= MAX_SEEN {
            seen.retain(|_, exp| *exp + LEEWAY_S >= now);
            if seen.len() >= MAX_SEEN {
                return Err(AuthError::Busy);
            }
        }
        seen.insert(claims.jti, claims.exp);
        Ok(())
    }

    async fn keys(&self, issuer: &Issuer, kid: Option<&str>) -> Result<JwkSet, AuthError> {
        let url = match &issuer.keys {
            KeySource::Fixed(set) => return Ok(set.clone()),
            KeySource::Url(url) => url,
        };
        let cached = self
            .fetched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&issuer.iss)
            .cloned();
        if let Some((set, at)) = cached {
            let has_kid = kid.is_none_or(|k| set.find(k).is_some());
            if has_kid || at.elapsed() < REFETCH_AFTER {
                return Ok(set);
            }
        }
        let set: JwkSet = self
            .http
            .get(url.clone())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| AuthError::Keys(e.without_url().to_string()))?
            .json()
            .await
            .map_err(|e| {
                AuthError::Keys(format!("the JWKS is not a key set: {}", e.without_url()))
            })?;
        self.fetched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(issuer.iss.clone(), (set.clone(), Instant::now()));
        Ok(set)
    }
}
