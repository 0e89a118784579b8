//! A private CA and mutual TLS against a real TLS endpoint: `openssl s_server` on loopback,
//! demanding a client certificate, serving a CapabilityStatement as `/metadata`; the
//! certificates are made for the test by `openssl`. The client reads `/metadata` only when it
//! trusts the CA and presents its certificate; without either, the handshake fails.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use segmentti::fhir::{
    ClientIdentity, ClientOptions, FhirClient, RetryPolicy, TlsOptions, runtime,
};

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs (Debian package openssl)");
    assert!(status.success(), "openssl {args:?}");
}

/// `openssl req` with a new P-256 key, unencrypted, plus `extra`.
fn new_key_request(dir: &Path, extra: &[&str]) {
    let mut args = vec![
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
    ];
    args.push("-nodes");
    args.extend_from_slice(extra);
    openssl(dir, &args);
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, signed by the CA.
fn certificates(dir: &Path) {
    let ca = ["-x509", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2"];
    new_key_request(
        dir,
        &[&ca[..], &["-subj", "/CN=segmentti test CA"]].concat(),
    );
    for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
        let ext = format!("{name}.ext");
        let san = if name == "server" {
            "subjectAltName=IP:127.0.0.1\n"
        } else {
            ""
        };
        std::fs::write(
            dir.join(&ext),
            format!("{san}extendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"),
        )
        .expect("written");
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let subject = format!("/CN={name}");
        new_key_request(dir, &["-keyout", &key, "-out", &csr, "-subj", &subject]);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
}

/// `openssl s_server` serving `dir`'s files, requiring a client certificate from the CA.
struct TlsServer {
    child: Child,
    port: u16,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> TlsServer {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new("openssl")
        .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
        .args([
            "-cert",
            "server.pem",
            "-key",
            "server.key",
            "-CAfile",
            "ca.pem",
        ])
        .args(["-Verify", "1", "-WWW", "-quiet"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s_server listens");
        std::thread::sleep(Duration::from_millis(50));
    }
    TlsServer { child, port }
}

fn metadata(server: &TlsServer, tls: TlsOptions) -> Result<serde_json::Value, String> {
    let mut options = ClientOptions::new("it-tls");
    options.retry = RetryPolicy::never();
    options.timeout = Duration::from_secs(10);
    options.tls = tls;
    let base = url::Url::parse(&format!("https://127.0.0.1:{}/", server.port)).expect("url");
    let client = FhirClient::new(base, options).map_err(|e| e.to_string())?;
    runtime()
        .expect("runtime")
        .block_on(client.capabilities())
        .map_err(|e| e.to_string())
}

#[test]
fn a_private_ca_and_a_client_certificate_reach_a_mutual_tls_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    certificates(dir.path());
    std::fs::write(
        dir.path().join("metadata"),
        r#"{"resourceType": "CapabilityStatement", "status": "active", "kind": "instance", "fhirVersion": "4.0.1", "format": ["json"]}"#,
    )
    .expect("written");
    let server = start(dir.path());
    let ca = Some(dir.path().join("ca.pem"));
    let identity = Some(ClientIdentity {
        certificate: dir.path().join("client.pem"),
        key: dir.path().join("client.key"),
    });

    let statement = metadata(
        &server,
        TlsOptions {
            ca_bundle: ca.clone(),
            identity: identity.clone(),
        },
    )
    .expect("trusting the CA and presenting the certificate, /metadata is read");
    assert_eq!(statement["resourceType"], "CapabilityStatement");

    let untrusted = metadata(
        &server,
        TlsOptions {
            ca_bundle: None,
            identity,
        },
    );
    let untrusted = untrusted.expect_err("the system roots do not trust the test CA");
    assert!(untrusted.contains("UnknownIssuer"), "{untrusted}");
    let anonymous = metadata(
        &server,
        TlsOptions {
            ca_bundle: ca,
            identity: None,
        },
    );
    let anonymous = anonymous.expect_err("the server demands a client certificate");
    assert!(anonymous.contains("CertificateRequired"), "{anonymous}");
}

#[test]
fn the_command_line_names_a_bad_ca_bundle() {
    let output = crate::support::segmentti(&[
        "run",
        "--server",
        "https://127.0.0.1:9/fhir",
        "--ca-bundle",
        "tests/fixtures/no-such-ca.pem",
        "--dry-run",
    ]);
    let (_, stderr) = crate::support::text(&output);
    assert!(!output.status.success());
    assert!(stderr.contains("no-such-ca.pem"), "{stderr}");
}
