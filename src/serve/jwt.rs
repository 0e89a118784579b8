//! The CDS Hooks 2.0 security model: every call carries `Authorization: Bearer <JWT>` signed by
//! the EHR. The token must name a configured issuer (`iss`), be signed by a key of that issuer's
//! JWKS, be addressed to the URL being called (`aud`), carry `iat`, be unexpired (`exp`), not
//! be early (`nbf`, and an `iat` ahead of this clock), all with 60 s of leeway for clocks that
//! disagree, live at most ten minutes, and carry a `jti` never seen before. It owns
//! verification and the key cache; it does not decide HTTP statuses (all its errors are 401)
//! and never logs a token.
//!
//! - Replay: seen `jti`s are remembered until their token expires, in a bounded map, so a replay
//!   is refused without unbounded memory. The map lives in this process only: replicas behind a
//!   load balancer, or a restarted process, do not share it, so a token captured in flight can
//!   be replayed once against each of them within its (at most ten-minute) life. Run one
//!   replica, or accept that window; TLS between the EHR and the service keeps tokens from
//!   being captured in the first place.
//! - Keys come only from the configured JWKS: a token's `jku` header is ignored, since following
//!   it would let the caller pick the key that verifies it. A `jwks_url` is https unless the
//!   issuer says `insecure_http_jwks` (checked with the configuration), and is fetched with the
//!   `[tls]` trust and client certificate.
//! - Fetches are single-flight per issuer (calls that need the keys while a fetch is under way
//!   wait for it), an unknown `kid` fetches again at most once a minute, and a failed fetch is
//!   not tried again for 30 s (calls meanwhile get its error), so a burst of calls, forged
//!   `kid`s included, never becomes a burst of fetches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tracing::warn;

use super::config::{Issuer, KeySource};
use crate::fhir::{FhirError, TlsOptions};

/// Tokens may say they live this long at most; CDS Hooks asks EHRs for five minutes.
const MAX_LIFETIME_S: u64 = 600;
/// Clock difference tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_S: u64 = 60;
/// `jti`s remembered at once; beyond this, new tokens are refused until old ones expire.
const MAX_SEEN: usize = 100_000;
/// A JWKS URL is fetched again for an unknown `kid` at most this often.
const REFETCH_AFTER: Duration = Duration::from_secs(60);
/// A failed JWKS fetch is not tried again before this.
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(30);
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
pub(crate) enum AuthError {
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
    /// Signature, `aud`, `exp`, `iss`, `iat` or `jti` wrong or missing.
    #[error("the token does not verify: {0}")]
    Invalid(String),
    /// `nbf` or `iat` ahead of this clock by more than the leeway.
    #[error(
        "the token is not valid yet: its {0} is more than {LEEWAY_S} s ahead of this service's clock; check the EHR's clock"
    )]
    Early(&'static str),
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
    iat: Option<u64>,
    #[serde(default)]
    jti: String,
}

#[derive(Debug, Deserialize)]
struct IssuerOnly {
    iss: String,
}

/// Verifies tokens; one per service.
#[derive(Debug)]
pub(crate) struct Verifier {
    issuers: Vec<Issuer>,
    http: reqwest::Client,
    fetched: Mutex<HashMap<String, Arc<KeySlot>>>,
    seen: Mutex<HashMap<String, u64>>,
}

/// One issuer's fetched keys.
#[derive(Debug, Default)]
struct KeySlot {
    cache: Mutex<Cached>,
    /// Held while a fetch is under way: the single flight.
    flight: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Cached {
    set: Option<(JwkSet, Instant)>,
    failed: Option<(String, Instant)>,
}

impl Cached {
    /// The answer without fetching, when there is one: the keys when they have the `kid` (or
    /// were fetched too recently to fetch again), the last failure while it is recent.
    fn answer(&self, kid: Option<&str>) -> Option<Result<JwkSet, AuthError>> {
        if let Some((set, _)) = &self.set
            && kid.is_none_or(|k| set.find(k).is_some())
        {
            return Some(Ok(set.clone()));
        }
        if let Some((cause, at)) = &self.failed
            && at.elapsed() < RETRY_FAILED_AFTER
        {
            return Some(Err(AuthError::Keys(format!(
                "{cause} (not tried again for {} s)",
                RETRY_FAILED_AFTER.as_secs()
            ))));
        }
        match &self.set {
            Some((set, at)) if at.elapsed() < REFETCH_AFTER => Some(Ok(set.clone())),
            _ => None,
        }
    }
}

impl Verifier {
    /// A verifier trusting `issuers`, fetching their JWKS with the `tls` trust and identity.
    pub(crate) fn new(issuers: Vec<Issuer>, tls: &TlsOptions) -> Result<Self, FhirError> {
        for issuer in &issuers {
            if let KeySource::Url(url) = &issuer.keys
                && url.scheme() != "https"
            {
                warn!(iss = %issuer.iss, "insecure_http_jwks: this issuer's keys are fetched over plain http; for local trials only");
            }
        }
        let builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("segmentti/", env!("CARGO_PKG_VERSION")));
        let http = crate::fhir::tls::configure(builder, tls)?
            .build()
            .map_err(|source| FhirError::Client { source })?;
        Ok(Self {
            issuers,
            http,
            fetched: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
        })
    }

    /// Checks the `Authorization` header of a call to `aud`; returns the issuer.
    pub(crate) async fn verify(
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
        validation.validate_nbf = true;
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
                // Claims are checked after the signature: this key is the signer's.
                Err(e) if *e.kind() == ErrorKind::ImmatureSignature => {
                    return Err(AuthError::Early("nbf"));
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(AuthError::Invalid(last))
    }

    /// Refuses a token issued in the future, long-lived or replayed, and remembers this one
    /// until it expires.
    fn fresh(&self, claims: Claims) -> Result<(), AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        match claims.iat {
            None => return Err(AuthError::Invalid("the token has no iat".into())),
            Some(iat) if iat > now + LEEWAY_S => return Err(AuthError::Early("iat")),
            Some(_) => {}
        }
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
        let slot = self
            .fetched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(issuer.iss.clone())
            .or_default()
            .clone();
        let cached = |slot: &KeySlot| {
            slot.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .answer(kid)
        };
        if let Some(answer) = cached(&slot) {
            return answer;
        }
        let _flight = slot.flight.lock().await;
        // The fetch this call waited for may have answered it already.
        if let Some(answer) = cached(&slot) {
            return answer;
        }
        let fetched = self.fetch(url).await;
        let mut cache = slot.cache.lock().unwrap_or_else(|p| p.into_inner());
        match &fetched {
            Ok(set) => {
                cache.set = Some((set.clone(), Instant::now()));
                cache.failed = None;
            }
            Err(e) => cache.failed = Some((e.clone(), Instant::now())),
        }
        fetched.map_err(AuthError::Keys)
    }

    async fn fetch(&self, url: &url::Url) -> Result<JwkSet, String> {
        self.http
            .get(url.clone())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| e.without_url().to_string())?
            .json()
            .await
            .map_err(|e| format!("the JWKS is not a key set: {}", e.without_url()))
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{Value, json};
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;

    const ISS: &str = "https://ehr.example.org/";
    const AUD: &str = "https://segmentti.example.org/cds-services/x";

    fn signing_key() -> (EncodingKey, JwkSet) {
        let pem = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/keys/test-es384.pem"
        ))
        .expect("test key");
        let key = EncodingKey::from_ec_pem(&pem).expect("EC key");
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::ES384).expect("jwk");
        jwk.common.key_id = Some("k1".into());
        (key, JwkSet { keys: vec![jwk] })
    }

    /// A token of `ISS` for `AUD`, alive for five minutes from now, with `extra` claims laid
    /// over (`null` removes one).
    fn token(key: &EncodingKey, extra: Value) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let mut claims = json!({
            "iss": ISS, "aud": AUD, "iat": now, "exp": now + 300,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        for (k, v) in extra.as_object().expect("object") {
            if v.is_null() {
                claims.as_object_mut().expect("object").remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        let mut header = Header::new(Algorithm::ES384);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, &claims, key).expect("sign")
    }

    fn verifier(keys: KeySource) -> Verifier {
        let issuer = Issuer {
            iss: ISS.into(),
            keys,
        };
        Verifier::new(vec![issuer], &TlsOptions::default()).expect("verifier")
    }

    async fn verify(v: &Verifier, token: &str) -> Result<String, AuthError> {
        v.verify(Some(&format!("Bearer {token}")), AUD).await
    }

    #[tokio::test]
    async fn expired_early_and_iat_less_tokens_are_refused_within_the_leeway() {
        let (key, set) = signing_key();
        let v = verifier(KeySource::Fixed(set));
        let now = jsonwebtoken::get_current_timestamp();
        assert_eq!(
            verify(&v, &token(&key, json!({}))).await.expect("valid"),
            ISS
        );
        // Clocks 30 s apart are tolerated.
        let skewed = json!({"nbf": now + 30, "iat": now + 30});
        verify(&v, &token(&key, skewed))
            .await
            .expect("within leeway");
        let cases = [
            (
                "expired",
                json!({"iat": now - 400, "exp": now - 120}),
                "ExpiredSignature",
            ),
            (
                "nbf ahead",
                json!({"nbf": now + 120}),
                "its nbf is more than 60 s ahead",
            ),
            (
                "iat ahead",
                json!({"iat": now + 120}),
                "its iat is more than 60 s ahead",
            ),
            ("no iat", json!({"iat": null}), "has no iat"),
        ];
        for (what, claims, says) in cases {
            let e = verify(&v, &token(&key, claims)).await.expect_err(what);
            assert!(e.to_string().contains(says), "{what}: {e}");
        }
    }

    async fn jwks_server(answer: ResponseTemplate) -> (MockServer, KeySource) {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/jwks"))
            .respond_with(answer)
            .mount(&server)
            .await;
        let url = url::Url::parse(&format!("{}/jwks", server.uri())).expect("url");
        (server, KeySource::Url(url))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_verifications_wait_for_one_jwks_fetch() {
        let (key, set) = signing_key();
        let slow = ResponseTemplate::new(200)
            .set_body_json(&set)
            .set_delay(Duration::from_millis(300));
        let (server, keys) = jwks_server(slow).await;
        let v = Arc::new(verifier(keys));
        let calls: Vec<_> = (0..16)
            .map(|_| {
                let (v, token) = (v.clone(), token(&key, json!({})));
                tokio::spawn(async move { verify(&v, &token).await })
            })
            .collect();
        for call in calls {
            call.await.expect("joined").expect("verified");
        }
        let fetches = server.received_requests().await.expect("recorded").len();
        assert_eq!(fetches, 1, "16 concurrent verifications, one JWKS fetch");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_jwks_fetch_is_not_tried_again_at_once() {
        let (key, _) = signing_key();
        let (server, keys) = jwks_server(ResponseTemplate::new(503)).await;
        let v = Arc::new(verifier(keys));
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let (v, token) = (v.clone(), token(&key, json!({})));
                tokio::spawn(async move { verify(&v, &token).await })
            })
            .collect();
        for call in calls {
            let e = call.await.expect("joined").expect_err("no keys");
            assert!(matches!(e, AuthError::Keys(_)), "{e}");
        }
        let e = verify(&v, &token(&key, json!({})))
            .await
            .expect_err("no keys");
        assert!(e.to_string().contains("not tried again for 30 s"), "{e}");
        let fetches = server.received_requests().await.expect("recorded").len();
        assert_eq!(fetches, 1, "nine verifications after a failure, one fetch");
    }

    #[test]
    fn the_jwks_client_takes_the_tls_settings() {
        let tls = TlsOptions {
            ca_bundle: Some("/no/such/ca.pem".into()),
            identity: None,
        };
        let e = Verifier::new(Vec::new(), &tls).expect_err("a CA bundle that is not there");
        assert!(e.to_string().contains("/no/such/ca.pem"), "{e}");
    }
}
