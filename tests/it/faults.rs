//! The FHIR client against a scripted HTTP server (wiremock) that misbehaves on purpose:
//! 429 with `Retry-After`, 503, answers slower than the timeout, bodies cut short or not JSON,
//! `next` links and redirects to another origin, an OperationOutcome 422 on a transaction.
//! Only faults live here; how a real server behaves is tested in `server_client`.

use std::time::{Duration, Instant};

use reqwest::{StatusCode, Url};
use segmentti::fhir::{
    BearerToken, BodyError, ClientOptions, FhirClient, FhirError, RetryPolicy, matches,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const TOKEN: &str = "it-faults-token";

/// A client for `server` with a fast retry policy (3 attempts, 10–40 ms backoff).
fn client(server: &MockServer) -> FhirClient {
    client_with(server, 3, Duration::from_secs(5))
}

fn client_with(server: &MockServer, max_attempts: u32, timeout: Duration) -> FhirClient {
    let mut options = ClientOptions::new("it-faults-run");
    options.timeout = timeout;
    options.bearer = Some(BearerToken::new(TOKEN));
    options.retry = RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
        max_retry_after: Duration::from_secs(5),
    };
    FhirClient::new(base(server), options).expect("the mock server's URL is a valid base")
}

fn base(server: &MockServer) -> Url {
    Url::parse(&server.uri()).expect("the mock server's URI parses")
}

fn searchset(ids: &[&str], next: Option<&str>) -> Value {
    let mut bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": ids.iter().map(|id| json!({
            "resource": {"resourceType": "Patient", "id": id},
            "search": {"mode": "match"},
        })).collect::<Vec<_>>(),
    });
    if let Some(next) = next {
        bundle["link"] = json!([{"relation": "next", "url": next}]);
    }
    bundle
}

fn fhir_json(status: u16, body: &Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.to_string(), "application/fhir+json")
}

async fn requests(server: &MockServer) -> Vec<Request> {
    server
        .received_requests()
        .await
        .expect("request recording is on by default")
}

fn header<'r>(request: &'r Request, name: &str) -> Option<&'r str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn retry_after_on_429_is_waited_for_then_the_search_succeeds() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/Patient"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "1"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/Patient"))
        .respond_with(fhir_json(200, &searchset(&["a"], None)))
        .mount(&server)
        .await;

    let started = Instant::now();
    let page = client(&server)
        .search("Patient", &[("_count", "10")])
        .await
        .expect("the second attempt succeeds");
    let waited = started.elapsed();

    assert_eq!(matches(&page).count(), 1);
    // The backoff alone is at most 10 ms: only Retry-After explains a wait of a second.
    assert!(waited >= Duration::from_secs(1), "waited only {waited:?}");
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    let seen = requests(&server).await;
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(header(request, "accept"), Some("application/fhir+json"));
        assert_eq!(header(request, "x-correlation-id"), Some("it-faults-run"));
        assert_eq!(
            header(request, "authorization"),
            Some("Bearer it-faults-token")
        );
    }
}

#[tokio::test]
async fn service_unavailable_is_retried_until_success() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/metadata"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/metadata"))
        .respond_with(fhir_json(
            200,
            &json!({"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"}),
        ))
        .mount(&server)
        .await;

    let statement = client(&server)
        .capabilities()
        .await
        .expect("the third attempt succeeds");
    assert_eq!(statement["fhirVersion"], "4.0.1");
    assert_eq!(requests(&server).await.len(), 3);
}

#[tokio::test]
async fn persistent_503_gives_up_after_max_attempts_with_the_status() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "0"))
        .mount(&server)
        .await;

    let err = client(&server)
        .search("Patient", &[("_count", "10")])
        .await
        .expect_err("the server never recovers");
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert!(matches!(err, FhirError::Status { retry_after: Some(d), .. } if d.is_zero()));
    assert_eq!(requests(&server).await.len(), 3);
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "GET {}/Patient?_count=10 answered 503 Service Unavailable",
            server.uri()
        )),
        "{text}"
    );
    assert!(text.contains("\nhint: "), "{text}");
}

#[tokio::test]
async fn an_answer_slower_than_the_timeout_is_retried_then_fails_as_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/Patient"))
        .respond_with(fhir_json(200, &searchset(&["a"], None)).set_delay(Duration::from_secs(2)))
        .mount(&server)
        .await;

    let started = Instant::now();
    let err = client_with(&server, 2, Duration::from_millis(300))
        .search("Patient", &[("_count", "10")])
        .await
        .expect_err("every attempt times out");
    let took = started.elapsed();

    assert!(matches!(err, FhirError::Timeout { .. }), "{err}");
    assert!(err.is_retryable());
    assert_eq!(
        requests(&server).await.len(),
        2,
        "timed out once, retried once"
    );
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(2),
        "took {took:?}"
    );
    assert!(
        err.to_string().contains("no complete answer within 0.3 s"),
        "{err}"
    );
}

/// A one-shot raw HTTP server: answers every connection with `response` and closes it, so a
/// body can end before its `Content-Length`. Returns its base URL and a request counter.
async fn raw_server(
    response: &'static str,
) -> (Url, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port can be bound");
    let address = listener
        .local_addr()
        .expect("a bound listener has an address");
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buffer = [0u8; 4096];
            // Enough to have the request; its content does not matter here.
            let _ = socket.read(&mut buffer).await;
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    let base = Url::parse(&format!("http://{address}/")).expect("a loopback URL parses");
    (base, count)
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_invalid_json_naming_the_url() {
    const CUT: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\ncontent-length: 4000\r\nconnection: close\r\n\r\n{\"resourceType\":\"Bundle\",\"type\":\"searchset\",\"entry\":[{\"resource\":";
    let (base, count) = raw_server(CUT).await;
    let mut options = ClientOptions::new("it-faults-run");
    options.timeout = Duration::from_secs(5);
    options.retry = RetryPolicy {
        max_attempts: 2,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(10),
        max_retry_after: Duration::from_secs(1),
    };
    let client = FhirClient::new(base.clone(), options).expect("a valid base");

    let err = client
        .search("Patient", &[("_count", "10")])
        .await
        .expect_err("the body is cut short");
    assert!(
        matches!(
            &err,
            FhirError::InvalidJson {
                cause: BodyError::Truncated(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "retried once"
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "GET {base}Patient?_count=10 is not valid JSON: the body was cut short"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn an_invalid_json_page_ends_paging_with_an_error_naming_the_page() {
    let server = MockServer::start().await;
    let second = format!("{}/Patient?_cursor=page-2", server.uri());
    Mock::given(method("GET"))
        .and(path("/Patient"))
        .and(query_param("_cursor", "page-2"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            r#"{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"Pat"#,
            "application/fhir+json",
        ))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/Patient"))
        .and(query_param("_count", "2"))
        .respond_with(fhir_json(200, &searchset(&["a", "b"], Some(&second))))
        .mount(&server)
        .await;

    let client = client(&server);
    let mut pages = client
        .pages("Patient", &[("_count", "2")])
        .expect("a valid type");
    let first = pages
        .next_page()
        .await
        .expect("a first page")
        .expect("the first page is fine");
    assert_eq!(matches(&first).count(), 2);
    let err = pages
        .next_page()
        .await
        .expect("a second page")
        .expect_err("the second page is cut");
    assert!(
        matches!(
            &err,
            FhirError::InvalidJson {
                cause: BodyError::Syntax(_),
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "GET {}/Patient?_cursor=… is not valid JSON: EOF",
            server.uri()
        )),
        "{text}"
    );
    assert!(
        pages.next_page().await.is_none(),
        "paging stops after an error"
    );
    let cut_requests = requests(&server)
        .await
        .iter()
        .filter(|r| r.url.query() == Some("_cursor=page-2"))
        .count();
    assert_eq!(cut_requests, 3, "an invalid page is retried like a cut one");
}

#[tokio::test]
async fn a_next_link_to_another_origin_is_refused_and_gets_no_token() {
    let ours = MockServer::start().await;
    let theirs = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(fhir_json(200, &searchset(&["x"], None)))
        .mount(&theirs)
        .await;
    let elsewhere = format!("{}/Patient?_cursor=stolen", theirs.uri());
    Mock::given(method("GET"))
        .and(path("/Patient"))
        .respond_with(fhir_json(200, &searchset(&["a"], Some(&elsewhere))))
        .mount(&ours)
        .await;

    let client = client(&ours);
    let mut pages = client
        .pages("Patient", &[("_count", "1")])
        .expect("a valid type");
    pages
        .next_page()
        .await
        .expect("a first page")
        .expect("the first page is fine");
    let err = pages
        .next_page()
        .await
        .expect("an answer")
        .expect_err("another origin");
    match &err {
        FhirError::CrossOrigin { url, base_origin } => {
            assert_eq!(url.as_str(), elsewhere);
            assert_eq!(*base_origin, ours.uri());
        }
        other => panic!("expected CrossOrigin, got {other:?}"),
    }
    assert!(!err.is_retryable());
    assert!(
        requests(&theirs).await.is_empty(),
        "nothing may be sent to the other origin"
    );
    assert_eq!(
        header(&requests(&ours).await[0], "authorization"),
        Some("Bearer it-faults-token")
    );

    // Asked directly for a URL on the other origin, the client goes there, but without the token.
    let direct = Url::parse(&elsewhere).expect("a URL");
    client.get(&direct).await.expect("the other server answers");
    let theirs_seen = requests(&theirs).await;
    assert_eq!(theirs_seen.len(), 1);
    assert_eq!(header(&theirs_seen[0], "authorization"), None);
}

#[tokio::test]
async fn a_redirect_to_another_origin_is_not_followed() {
    let ours = MockServer::start().await;
    let theirs = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(fhir_json(200, &searchset(&[], None)))
        .mount(&theirs)
        .await;
    Mock::given(method("GET"))
        .and(path("/Patient"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("Location", format!("{}/Patient", theirs.uri())),
        )
        .mount(&ours)
        .await;

    let err = client(&ours)
        .search("Patient", &[("_count", "1")])
        .await
        .expect_err("the redirect is refused");
    assert_eq!(err.status(), Some(StatusCode::FOUND));
    assert!(!err.is_retryable());
    assert!(requests(&theirs).await.is_empty());
}

#[tokio::test]
async fn an_operation_outcome_422_on_a_transaction_carries_its_diagnostics_and_is_not_retried() {
    let server = MockServer::start().await;
    let outcome = json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": "error",
            "code": "invalid",
            "diagnostics": "Bundle.entry[0].resource: Observation.status is required",
        }],
    });
    Mock::given(method("POST"))
        .and(path("/"))
        .respond_with(fhir_json(422, &outcome))
        .mount(&server)
        .await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": {"resourceType": "Observation", "code": {"text": "it"}},
        "request": {"method": "POST", "url": "Observation"},
    }]});

    let err = client(&server).transaction(&bundle).await.expect_err("422");
    assert_eq!(err.status(), Some(StatusCode::UNPROCESSABLE_ENTITY));
    assert!(!err.is_retryable());
    let issue = &err.outcome().expect("the OperationOutcome is kept").issues[0];
    assert_eq!(
        (issue.severity.as_str(), issue.code.as_str()),
        ("error", "invalid")
    );
    assert_eq!(
        issue.diagnostics.as_deref(),
        Some("Bundle.entry[0].resource: Observation.status is required")
    );
    let text = err.to_string();
    assert!(text.contains("answered 422 Unprocessable Entity: error invalid: Bundle.entry[0].resource: Observation.status is required"), "{text}");
    let seen = requests(&server).await;
    assert_eq!(seen.len(), 1, "a 422 is not retried");
    assert_eq!(
        header(&seen[0], "content-type"),
        Some("application/fhir+json")
    );
    let sent: Value = seen[0].body_json().expect("the Bundle was sent as JSON");
    assert_eq!(sent, bundle);
}

#[tokio::test]
async fn a_refused_connection_is_a_transport_error_that_keeps_search_values_out() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a loopback port can be bound")
        .port();
    let base = Url::parse(&format!("http://127.0.0.1:{port}/")).expect("a loopback URL");
    let mut options = ClientOptions::new("it-faults-run");
    options.retry = RetryPolicy {
        max_attempts: 2,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(10),
        max_retry_after: Duration::from_secs(1),
    };
    let client = FhirClient::new(base, options).expect("a valid base");

    let err = client
        .search(
            "Patient",
            &[("identifier", "urn:oid:1.2.246.21|it-fake-0001")],
        )
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, FhirError::Transport { .. }), "{err:?}");
    assert!(err.is_retryable());
    let text = format!("{err} {:?}", std::error::Error::source(&err));
    assert!(
        text.contains(&format!(
            "GET http://127.0.0.1:{port}/Patient?identifier=… failed"
        )),
        "{text}"
    );
    assert!(
        !text.contains("it-fake-0001"),
        "a search value leaked: {text}"
    );
}
