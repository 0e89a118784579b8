//! `serve` under hostile callers (issue 24, findings 1, 2, 8, 10 and 15), against the real
//! binary on loopback: idle and half-sent connections are closed after the header timeout and
//! cannot slow `/healthz`; connections past the limit are closed while the health listener
//! answers; a stalled body gets 503 at the request deadline; a `patientId` that is not a FHIR id
//! is refused before anything is sent; `/readyz` asks the FHIR server at most once per
//! [`segmentti::serve::PROBE_TTL`] and says why the last run failed; `/metrics` and
//! `/explanations` are not open to anyone on the CDS Hooks listener.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::serve::{Serve, request, start_with_env, with_prefetch};

const SERVICE: &str = "segmentti-patient-view";

/// A configuration accepting unsigned calls, its FHIR server at `server`, with `extra` lines.
fn config(dir: &Path, server: &str, extra: &str) -> PathBuf {
    let path = dir.join("segmentti.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\nserver = \"{server}\"\nmodels = [\"mappings/paijat-sote.yaml\"]\n{extra}\n\n[cds]\ninsecure_no_auth = true\n"
        ),
    )
    .expect("write config");
    path
}

fn start(config: &Path, env: &[(&str, &str)]) -> Serve {
    start_with_env(&["--config", config.to_str().expect("utf-8")], env)
}

/// `host:port` of a listener's base URL.
fn addr(base: &str) -> &str {
    base.trim_start_matches("http://")
}

/// `n` connections to `base` that send nothing.
fn idle(base: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| TcpStream::connect(addr(base)).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect()
}

/// Whether the peer closed `stream` (end of file or reset) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // An answer (such as a 408) before the close: read on to the end.
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// The slowest of five `/healthz` calls, each on a fresh connection, timed on a thread of its
/// own so that this process's other tasks do not count.
async fn slowest_health(base: &str) -> Duration {
    let addr = addr(base).to_owned();
    tokio::task::spawn_blocking(move || {
        (0..5)
            .map(|_| {
                let started = Instant::now();
                let mut s = TcpStream::connect(&addr).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                s.write_all(
                    b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                )
                .expect("request");
                let mut answer = String::new();
                s.read_to_string(&mut answer).expect("healthz answers");
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
                started.elapsed()
            })
            .max()
            .unwrap_or_default()
    })
    .await
    .expect("timing thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_at_once_while_2000_idle_connections_are_held_and_those_are_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = start(
        &config(
            dir.path(),
            "http://127.0.0.1:9/fhir",
            "header_timeout_seconds = 3\nmax_connections = 4096",
        ),
        &[],
    );
    let mut held = idle(&serve.cds, 2000);
    // On the same listener as the 2 000, so they are what it competes with.
    let slowest = slowest_health(&serve.ops).await;
    assert!(
        slowest < Duration::from_millis(100),
        "/healthz took {slowest:?}"
    );
    let started = Instant::now();
    let mut open = 0;
    for s in &mut held {
        let left = Duration::from_secs(8).saturating_sub(started.elapsed());
        open += usize::from(!closed_within(s, left.max(Duration::from_millis(1))));
    }
    assert_eq!(
        open, 0,
        "idle connections still open after the header timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_header_is_dropped_after_the_header_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = start(
        &config(
            dir.path(),
            "http://127.0.0.1:9/fhir",
            "header_timeout_seconds = 1",
        ),
        &[],
    );
    let mut slow = TcpStream::connect(addr(&serve.cds)).expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .expect("half a header");
    let started = Instant::now();
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)),
        "a half-sent header held the connection open for 5 s"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_503_at_the_request_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = start(
        &config(
            dir.path(),
            "http://127.0.0.1:9/fhir",
            "request_timeout_seconds = 1",
        ),
        &[],
    );
    let mut slow = TcpStream::connect(addr(&serve.cds)).expect("connect");
    write!(
        slow,
        "POST /cds-services/{SERVICE} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"hook\":"
    )
    .expect("headers and the start of a body");
    slow.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut answer = [0u8; 12];
    slow.read_exact(&mut answer)
        .expect("an answer within 5 s to a body that never comes");
    assert_eq!(&answer, b"HTTP/1.1 503");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_while_the_health_listener_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = start(
        &config(
            dir.path(),
            "http://127.0.0.1:9/fhir",
            "metrics_listen = \"127.0.0.1:0\"\nmax_connections = 16\nheader_timeout_seconds = 60",
        ),
        &[],
    );
    let mut within = idle(&serve.cds, 16);
    // Let the service accept the sixteen before the ones past the limit arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut past = idle(&serve.cds, 8);
    for (i, s) in past.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(2)),
            "connection {} past the limit of 16 was kept open",
            i + 17
        );
    }
    assert!(
        !closed_within(&mut within[0], Duration::from_millis(200)),
        "a connection within the limit was closed"
    );
    let slowest = slowest_health(&serve.ops).await;
    assert!(
        slowest < Duration::from_millis(100),
        "/healthz took {slowest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_id_that_is_not_a_fhir_id_gets_400_and_nothing_reaches_the_server() {
    // A tripwire, not a FHIR server: any connection to it is the failure.
    let tripwire = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    tripwire.set_nonblocking(true).expect("nonblocking");
    let server = format!("http://{}/fhir", tripwire.local_addr().expect("addr"));
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = start(&config(dir.path(), &server, ""), &[]);
    let http = reqwest::Client::new();
    let long = "a".repeat(65);
    for id in [".", "..", "a/b", long.as_str(), "a%2Fb", "a?b"] {
        let answer = http
            .post(format!("{}/cds-services/{SERVICE}", serve.cds))
            .json(&request(&server, id))
            .send()
            .await
            .expect("call");
        assert_eq!(answer.status(), 400, "{id:?}");
        let message = answer.text().await.expect("text");
        assert!(message.contains("not a FHIR id"), "{id:?}: {message}");
    }
    match tripwire.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("a request reached the FHIR server: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_asks_the_server_once_per_ttl_and_says_why_the_last_run_failed() {
    use wiremock::matchers::any;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    // A server that refuses everything: the fault, not a stand-in for FHIR behaviour.
    let refusing = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(404))
        .mount(&refusing)
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = start(
        &config(
            dir.path(),
            &format!("{}/fhir", refusing.uri()),
            "schedule = \"* * * * * *\"\ngrace_minutes = 0",
        ),
        &[],
    );
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let reason = loop {
        let answer = http
            .get(format!("{}/readyz", serve.ops))
            .send()
            .await
            .expect("readyz");
        assert_eq!(answer.status(), 503);
        let text = answer.text().await.expect("text");
        if text.contains("the last run failed") {
            break text;
        }
        assert!(Instant::now() < deadline, "no run failed: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        reason.contains("404"),
        "the reason of the failed run is missing: {reason}"
    );

    // With the runs' failure out of the way (a long grace), /readyz probes the server.
    drop(serve);
    let serve = start(
        &config(dir.path(), &format!("{}/fhir", refusing.uri()), ""),
        &[],
    );
    refusing.reset().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(404))
        .mount(&refusing)
        .await;
    for _ in 0..20 {
        let answer = http
            .get(format!("{}/readyz", serve.ops))
            .send()
            .await
            .expect("readyz");
        assert_eq!(answer.status(), 503);
        assert!(
            answer
                .text()
                .await
                .expect("text")
                .contains("does not answer")
        );
    }
    let probes = refusing
        .received_requests()
        .await
        .expect("recorded")
        .iter()
        .filter(|r| r.url.path().ends_with("/metadata"))
        .count();
    assert_eq!(probes, 1, "20 calls of /readyz within its cache time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_not_public_and_explanations_need_their_signed_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let http = reqwest::Client::new();
    let fhir = "http://127.0.0.1:9/fhir";

    // No metrics listener and no token: not served on the CDS Hooks listener.
    let serve = start(&config(dir.path(), fhir, ""), &[]);
    let open = http
        .get(format!("{}/metrics", serve.cds))
        .send()
        .await
        .expect("metrics");
    assert_eq!(open.status(), 404);

    // An explanation link without its signature, and a signed one twice.
    let cards: Value = http
        .post(format!("{}/cds-services/{SERVICE}", serve.cds))
        .json(&with_prefetch(fhir))
        .send()
        .await
        .expect("call")
        .json()
        .await
        .expect("cards");
    let link = cards["cards"][0]["links"][0]["url"]
        .as_str()
        .expect("link")
        .to_owned();
    let (unsigned, _) = link.split_once('?').expect("a signed link has a query");
    for (what, url) in [
        ("unsigned", unsigned.to_owned()),
        ("another expiry", link.replace("expires=", "expires=9")),
    ] {
        let answer = http.get(url).send().await.expect("explanation");
        assert_eq!(answer.status(), 401, "{what}");
    }
    let first = http.get(&link).send().await.expect("explanation");
    assert_eq!(first.status(), 200);
    let text = first.text().await.expect("text");
    let detail = cards["cards"][0]["detail"].as_str().expect("detail");
    assert!(text.contains(detail), "the card's text:\n{text}");
    let again = http.get(&link).send().await.expect("explanation");
    assert_eq!(again.status(), 404, "opened twice");
    drop(serve);

    // A metrics token: /metrics on the CDS Hooks listener answers it, and only it.
    let serve = start(
        &config(dir.path(), fhir, ""),
        &[("SEGMENTTI_METRICS_TOKEN", "s3cret-metrics")],
    );
    let url = format!("{}/metrics", serve.cds);
    for (token, status) in [
        (None, 401),
        (Some("wrong"), 401),
        (Some("s3cret-metrics"), 200),
    ] {
        let mut call = http.get(&url);
        if let Some(token) = token {
            call = call.bearer_auth(token);
        }
        assert_eq!(
            call.send().await.expect("metrics").status(),
            status,
            "{token:?}"
        );
    }
}

/// p50 and p99 of `n` CDS calls with a complete prefetch, one after another. The body is
/// serialised once, so that the figures are the service's, not this client's.
async fn cds_latency(base: &str, body: &Value, n: usize) -> (Duration, Duration) {
    let http = reqwest::Client::new();
    let body = serde_json::to_vec(body).expect("json");
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let answer = http
            .post(format!("{base}/cds-services/{SERVICE}"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("call");
        assert_eq!(answer.status(), 200);
        answer.bytes().await.expect("body");
        took.push(started.elapsed());
    }
    took.sort();
    (took[n / 2], took[n * 99 / 100])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints CDS latency with and without 2 000 idle connections"]
async fn measure_cds_latency_with_2000_idle_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fhir = "http://127.0.0.1:9/fhir";
    let serve = start(
        &config(
            dir.path(),
            fhir,
            "header_timeout_seconds = 600\nmax_connections = 4096",
        ),
        &[],
    );
    let body = with_prefetch(fhir);
    cds_latency(&serve.cds, &body, 20).await;
    let (p50, p99) = cds_latency(&serve.cds, &body, 500).await;
    println!("CDS call, normal prefetch: p50 {p50:?}, p99 {p99:?}");
    let held = idle(&serve.cds, 2000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (p50, p99) = cds_latency(&serve.cds, &body, 500).await;
    println!("CDS call, 2 000 idle connections held: p50 {p50:?}, p99 {p99:?}");
    println!(
        "/healthz alone: slowest of 5 {:?}",
        slowest_health(&serve.ops).await
    );
    // Four concurrent calls with 256 KiB bodies, and /healthz meanwhile.
    let mut big = body.clone();
    big["prefetch"]["patient"]["text"] = json!({"status": "generated", "div": "x".repeat(250_000)});
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let (base, big) = (serve.cds.clone(), big.clone());
            tokio::spawn(async move { cds_latency(&base, &big, 10).await })
        })
        .collect();
    let health = slowest_health(&serve.ops).await;
    for call in calls {
        call.await.expect("calls");
    }
    println!("/healthz during four concurrent 256 KiB calls: slowest of 5 {health:?}");
    drop(held);
}
