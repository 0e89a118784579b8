//! SMART Backend Services against a token endpoint that checks what an authorization server
//! checks: the assertion's signature with the client's registered public key, `aud` = the
//! token URL, `exp` at most five minutes ahead, `iss` = `sub` = the client id, and a `jti`
//! never seen before. The FHIR side (a scripted server: the test server has no authorization)
//! accepts only the tokens the endpoint issued and revokes one on purpose. A joined run over
//! two such servers sends each the token its `[[server]]` of the servers file names.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::Url;
use segmentti::fhir::{AssertionClaims, ClientOptions, FhirClient, RetryPolicy, SmartConfig};
use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::support::{fixture, segmentti, text};

const CLIENT_ID: &str = "segmentti-it";

/// The token endpoint: verifies the assertion, issues `tok-1`, `tok-2`, …
struct TokenEndpoint {
    audience: String,
    key: DecodingKey,
    seen: Arc<Mutex<HashSet<String>>>,
    issued: Arc<Mutex<Vec<String>>>,
}

impl Respond for TokenEndpoint {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&request.body)
            .into_owned()
            .collect();
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let invalid = |why: &str| {
            ResponseTemplate::new(400)
                .set_body_json(json!({"error": "invalid_client", "error_description": why}))
        };
        if field("grant_type") != "client_credentials"
            || field("client_assertion_type")
                != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        {
            return invalid("wrong grant or assertion type");
        }
        let mut validation = Validation::new(Algorithm::ES384);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.set_issuer(&[CLIENT_ID]);
        let Ok(decoded) = jsonwebtoken::decode::<AssertionClaims>(
            &field("client_assertion"),
            &self.key,
            &validation,
        ) else {
            return invalid("assertion signature or claims do not verify");
        };
        let claims = decoded.claims;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        if claims.sub != CLIENT_ID || claims.exp > now + 300 {
            return invalid("sub or exp out of bounds");
        }
        if !self.seen.lock().expect("lock").insert(claims.jti) {
            return invalid("jti replayed");
        }
        let mut issued = self.issued.lock().expect("lock");
        let token = format!("tok-{}", issued.len() + 1);
        issued.push(token.clone());
        ResponseTemplate::new(200).set_body_json(
            json!({"access_token": token, "token_type": "bearer", "expires_in": 300, "scope": field("scope")}),
        )
    }
}

/// The FHIR server: answers a search for a token it issued and did not revoke.
struct Fhir {
    issued: Arc<Mutex<Vec<String>>>,
    revoked: Arc<Mutex<HashSet<String>>>,
}

impl Respond for Fhir {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let token = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned();
        let valid = self.issued.lock().expect("lock").contains(&token)
            && !self.revoked.lock().expect("lock").contains(&token);
        if !valid {
            return ResponseTemplate::new(401);
        }
        ResponseTemplate::new(200).set_body_raw(
            json!({"resourceType": "Bundle", "type": "searchset", "entry": []}).to_string(),
            "application/fhir+json",
        )
    }
}

struct Setup {
    server: MockServer,
    issued: Arc<Mutex<Vec<String>>>,
    revoked: Arc<Mutex<HashSet<String>>>,
}

async fn setup() -> Setup {
    let server = MockServer::start().await;
    let issued = Arc::new(Mutex::new(Vec::new()));
    let revoked = Arc::new(Mutex::new(HashSet::new()));
    let public = std::fs::read(fixture("keys/test-es384.pub.pem")).expect("public key");
    Mock::given(method("POST"))
        .and(path("/auth/token"))
        .respond_with(TokenEndpoint {
            audience: format!("{}/auth/token", server.uri()),
            key: DecodingKey::from_ec_pem(&public).expect("an EC public key"),
            seen: Arc::default(),
            issued: Arc::clone(&issued),
        })
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/.well-known/smart-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "token_endpoint": format!("{}/auth/token", server.uri()),
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["ES384", "RS384"],
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/Patient"))
        .respond_with(Fhir {
            issued: Arc::clone(&issued),
            revoked: Arc::clone(&revoked),
        })
        .mount(&server)
        .await;
    Setup {
        server,
        issued,
        revoked,
    }
}

fn smart_client(server: &MockServer, key: &str) -> FhirClient {
    let mut options = ClientOptions::new("it-smart");
    options.timeout = Duration::from_secs(5);
    options.retry = RetryPolicy {
        max_attempts: 2,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(20),
        max_retry_after: Duration::from_secs(1),
    };
    options.smart = Some(SmartConfig {
        token_url: Url::parse(&format!("{}/auth/token", server.uri())).expect("url"),
        client_id: CLIENT_ID.into(),
        key_pem: std::fs::read_to_string(fixture(key)).expect("key").into(),
        algorithm: Algorithm::ES384,
        key_id: Some("it-key-1".into()),
        scope: "system/Patient.rs".into(),
    });
    FhirClient::new(Url::parse(&server.uri()).expect("uri"), options).expect("client")
}

#[tokio::test]
async fn a_token_is_fetched_once_reused_and_replaced_after_a_401() {
    let s = setup().await;
    let client = smart_client(&s.server, "keys/test-es384.pem");
    client
        .search("Patient", &[("_count", "1")])
        .await
        .expect("the first search gets a token");
    client
        .search("Patient", &[("_count", "1")])
        .await
        .expect("the second search reuses it");
    assert_eq!(*s.issued.lock().expect("lock"), ["tok-1"]);
    s.revoked.lock().expect("lock").insert("tok-1".into());
    client
        .search("Patient", &[("_count", "1")])
        .await
        .expect("after a 401 a new token is fetched and the request sent again");
    assert_eq!(*s.issued.lock().expect("lock"), ["tok-1", "tok-2"]);
}

#[tokio::test]
async fn an_unregistered_key_is_refused_with_the_endpoint_s_reason_and_no_secret() {
    let s = setup().await;
    let key = std::fs::read_to_string(fixture("keys/test-es384-unregistered.pem")).expect("key");
    let mut options = ClientOptions::new("it-smart");
    options.retry = RetryPolicy::never();
    options.smart = Some(SmartConfig {
        token_url: Url::parse(&format!("{}/auth/token", s.server.uri())).expect("url"),
        client_id: CLIENT_ID.into(),
        key_pem: key.into(),
        algorithm: Algorithm::ES384,
        key_id: None,
        scope: "system/Patient.rs".into(),
    });
    let client =
        FhirClient::new(Url::parse(&s.server.uri()).expect("uri"), options).expect("client");
    let e = client
        .search("Patient", &[("_count", "1")])
        .await
        .expect_err("the endpoint refuses an unknown key")
        .to_string();
    assert!(e.contains("cannot get an access token"), "{e}");
    assert!(e.contains("invalid_client"), "{e}");
    assert!(
        !e.contains("BEGIN"),
        "the key never appears in messages: {e}"
    );
    assert!(s.issued.lock().expect("lock").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_discovers_the_token_endpoint() {
    let s = setup().await;
    let key = fixture("keys/test-es384.pem");
    let base = s.server.uri();
    let output = tokio::task::spawn_blocking(move || {
        segmentti(&[
            "explain",
            "--server",
            &base,
            "--patient",
            "p1",
            "--auth",
            "smart",
            "--client-id",
            CLIENT_ID,
            "--private-key",
            key.to_str().expect("utf-8"),
        ])
    })
    .await
    .expect("joined");
    let (stdout, stderr) = text(&output);
    // The mock server holds no patients: the run gets as far as an authorized, empty search.
    assert!(!output.status.success());
    assert!(stderr.contains("holds no resources"), "{stdout}\n{stderr}");
    assert_eq!(*s.issued.lock().expect("lock"), ["tok-1"], "{stderr}");
}

/// One server of a joined run that accepts only its own token; what it serves is one Patient
/// with the shared identity code and no Encounters, Conditions or Flags.
async fn guarded_server(token: &str, patient: &str) -> MockServer {
    let server = MockServer::start().await;
    let bundle = |resources: Vec<serde_json::Value>| {
        json!({"resourceType": "Bundle", "type": "searchset", "total": resources.len(),
               "entry": resources.into_iter().map(|r| json!({"resource": r, "search": {"mode": "match"}})).collect::<Vec<_>>()})
    };
    let bearer = format!("Bearer {token}");
    Mock::given(method("GET"))
        .and(path("/Patient"))
        .and(header("authorization", bearer.as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(bundle(vec![json!({
            "resourceType": "Patient", "id": patient, "gender": "female", "birthDate": "1950-02-03",
            "identifier": [{"system": "urn:oid:1.2.246.21", "value": "030250-912T"}]
        })])))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(header("authorization", bearer.as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(bundle(Vec::new())))
        .with_priority(10)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401))
        .with_priority(20)
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn each_joined_server_gets_its_own_token_from_the_servers_file() {
    let (social, health) = (
        guarded_server("tok-social", "s1").await,
        guarded_server("tok-health", "h1").await,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let servers = file(
        "servers.toml",
        &format!(
            "[[server]]\nurl = \"{}/\"\ntoken_file = \"{}\"\n\n[[server]]\nurl = \"{}/\"\ntoken_file = \"{}\"\n",
            social.uri(),
            file("social.token", "tok-social\n").display(),
            health.uri(),
            file("health.token", "tok-health\n").display(),
        ),
    );
    let args = [
        "run".to_owned(),
        "--servers".into(),
        servers.display().to_string(),
        "--write-to".into(),
        "each".into(),
        "--dry-run".into(),
        "--as-of".into(),
        "2026-01-01".into(),
    ];
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_segmentti"))
            .args(&args)
            .env("SEGMENTTI_JOIN_KEY", "segmentti-integration-test-join-key")
            .output()
            .expect("the segmentti binary runs")
    })
    .await
    .expect("the child finished");
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Joined: 1 clients, 1 of them in several sources"),
        "{stdout}"
    );
    assert!(
        !format!("{stdout}{stderr}").contains("tok-"),
        "a token was printed"
    );
    for (server, token) in [(&social, "tok-social"), (&health, "tok-health")] {
        let requests = server.received_requests().await.expect("recorded");
        assert!(
            requests.len() >= 3,
            "Patient, Encounter and Condition were read"
        );
        for r in requests {
            assert_eq!(
                r.headers.get("authorization").and_then(|v| v.to_str().ok()),
                Some(format!("Bearer {token}").as_str()),
                "{} {}",
                r.method,
                r.url
            );
        }
    }
}
