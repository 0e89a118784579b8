//! The real FHIR server the behaviour tests run against: the Helios FHIR Server (`hfs` 0.2.7)
//! as a child process on loopback, one per [`TestServer`], with its own fresh data directory.
//! It owns starting, waiting for readiness and killing; it does not put data in (tests do).
//!
//! Where the binary comes from: `SEGMENTTI_HFS` (the path to `hfs`) when set; otherwise what
//! `scripts/install-hfs.sh` prints, which installs it first when missing (about 8 min on 2
//! cores; set `SEGMENTTI_TOOLS=$HOME/.cache/segmentti/tools` to reuse a machine-wide install).
//! A test never skips: when the server cannot be found or started it fails, saying how to fix it.
//!
//! What was checked against `hfs --help` and the running 0.2.7 binary:
//! - started as `hfs --host 127.0.0.1 --port P --base-url http://127.0.0.1:P --data-dir D
//!   --database-url D/fhir.db --export-dir D/export`, with `D/search-parameters-r4.json` copied
//!   from `vendor/fhir/` (without it `identifier`, `patient`, `code` are unknown parameters);
//! - the FHIR base is the root: `GET /metadata`, `/Patient`, and transactions are `POST /`;
//!   `/fhir/metadata` answers 404;
//! - `--base-url` is what `next` links and `Location` headers use (its default is
//!   `http://localhost:8080`, which would send paging to the wrong origin);
//! - `HFS_*` environment variables configure it too, so the child gets none of ours;
//! - by default it stores the spec's 1 372 SearchParameters as resources at every start, 3.5 s
//!   of a 4 s start on a 2-core machine (debug build); `HFS_SEED_CONFORMANCE=false` (set here,
//!   there is no flag to turn it off) skips that, and searching by `identifier`, `patient` and
//!   the like still works, from the registry loaded from the file: ready in about 0.7 s.
//!   Only `GET /SearchParameter` then finds nothing, which no test needs.
//!
//! The process is killed when the [`TestServer`] is dropped, on panics too. A test process
//! that is itself killed (SIGKILL) leaves the server running: there is no safe-Rust way to
//! tie a child's life to the parent's here.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use reqwest::Url;
use segmentti::fhir::{ClientOptions, FhirClient, RetryPolicy};
use tempfile::TempDir;

/// How long a server may take to answer `/metadata` before the test fails.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// How often a start is tried again when the chosen port was taken in the meantime.
const PORT_TRIES: usize = 3;

const INSTALL_HINT: &str = "hint: install the test server once with \
`SEGMENTTI_TOOLS=$HOME/.cache/segmentti/tools bash scripts/install-hfs.sh` (~8 min on 2 cores) \
and set SEGMENTTI_HFS to the path it prints";

/// A running `hfs` on `127.0.0.1`, with its own data directory; killed on drop.
#[derive(Debug)]
pub struct TestServer {
    child: Child,
    base: Url,
    /// Holds the data directory until the server is gone (drop order: after `child`'s kill).
    dir: TempDir,
    started_in: Duration,
}

impl TestServer {
    /// Starts a fresh server and waits until `GET /metadata` answers 200.
    ///
    /// # Panics
    /// When the binary cannot be found or the server does not become ready within 60 s; the
    /// message says why and carries the end of the server's log.
    pub async fn start() -> TestServer {
        TestServer::start_with(Setup::Full).await
    }

    /// Starts a fresh server set up as `setup` says; see [`TestServer::start`].
    pub async fn start_with(setup: Setup) -> TestServer {
        let binary = hfs_binary();
        let mut last_log = String::new();
        for _ in 0..PORT_TRIES {
            let started = Instant::now();
            let mut server = TestServer::spawn(binary, setup);
            match server.wait_ready(started).await {
                Ok(()) => {
                    server.started_in = started.elapsed();
                    return server;
                }
                Err(Failure::PortTaken(log)) => last_log = log,
                Err(Failure::Other(message)) => panic!("{message}\n{INSTALL_HINT}"),
            }
        }
        panic!(
            "the test server could not get a free port in {PORT_TRIES} tries; its log ends with:\n{last_log}"
        );
    }

    /// The FHIR base, `http://127.0.0.1:PORT/`.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// How long the server took from spawn to its first 200 on `/metadata`.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// Stores `resources` as they are (ids included), in one transaction of PUTs.
    pub async fn put(&self, resources: &[serde_json::Value]) {
        let entries: Vec<serde_json::Value> = resources
            .iter()
            .map(|r| {
                let url = format!(
                    "{}/{}",
                    r["resourceType"].as_str().expect("type"),
                    r["id"].as_str().expect("id")
                );
                serde_json::json!({"resource": r, "request": {"method": "PUT", "url": url}})
            })
            .collect();
        let bundle =
            serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        self.client()
            .transaction(&bundle)
            .await
            .expect("the test server takes the transaction");
    }

    /// A client for this server with a short retry policy and a 30 s timeout.
    pub fn client(&self) -> FhirClient {
        let mut options = ClientOptions::new(format!("it-{}", self.base.port().unwrap_or(0)));
        options.timeout = Duration::from_secs(30);
        options.retry = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
            max_retry_after: Duration::from_secs(2),
        };
        FhirClient::new(self.base.clone(), options).expect("a loopback base URL is a valid base")
    }

    fn spawn(binary: &Path, setup: Setup) -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("segmentti-hfs-")
            .tempdir()
            .expect("a temporary directory for the test server can be created");
        let parameters =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor/fhir/search-parameters-r4.json");
        let copied = match setup {
            Setup::Full => std::fs::copy(&parameters, dir.path().join("search-parameters-r4.json")),
            Setup::Bare => Ok(0),
        };
        copied.unwrap_or_else(|e| {
            panic!(
                "cannot copy {} into the test server's data directory: {e}\nhint: the file belongs to the repository; restore it with git",
                parameters.display()
            )
        });
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let log = File::create(dir.path().join("hfs.log")).expect("the server log can be created");
        let mut command = Command::new(binary);
        command.args(["--host", "127.0.0.1", "--port", &port.to_string()]);
        if setup == Setup::Full {
            command.args(["--base-url", &base]);
        }
        command
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--database-url")
            .arg(dir.path().join("fhir.db"))
            .arg("--export-dir")
            .arg(dir.path().join("export"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file handle can be cloned"))
            .stderr(log);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("HFS_") {
                command.env_remove(name);
            }
        }
        // Storing the 1 372 SearchParameters as resources takes 3.5 of the 4 s start; searches
        // use the registry read from the file either way. There is no CLI flag to turn it off.
        command.env("HFS_SEED_CONFORMANCE", "false");
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start the test server {}: {e}\n{INSTALL_HINT}",
                binary.display()
            )
        });
        TestServer {
            child,
            base: Url::parse(&format!("{base}/")).expect("a loopback URL parses"),
            dir,
            started_in: Duration::ZERO,
        }
    }

    async fn wait_ready(&mut self, started: Instant) -> Result<(), Failure> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("a plain HTTP client can be built");
        let metadata = self.base.join("metadata").expect("a relative path joins");
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .expect("the child's state can be read")
            {
                let log = self.log_tail();
                if log.contains("Address already in use") || log.contains("AddrInUse") {
                    return Err(Failure::PortTaken(log));
                }
                return Err(Failure::Other(format!(
                    "the test server exited ({status}) before answering /metadata; its log ends with:\n{log}"
                )));
            }
            if let Ok(response) = http.get(metadata.clone()).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if started.elapsed() > READY_WITHIN {
                return Err(Failure::Other(format!(
                    "the test server did not answer {metadata} within {} s; its log ends with:\n{}",
                    READY_WITHIN.as_secs(),
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last 40 lines of the server's log.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("hfs.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Already gone is fine; a kill that fails otherwise leaves nothing better to do.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a test server is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// As the behaviour tests need it: `--base-url`, and the spec's search parameters.
    Full,
    /// As an operator who skipped both would: `next` links point to `http://localhost:8080`, and
    /// `identifier`, `patient` and the like are unknown (for the conformance kit to find).
    Bare,
}

enum Failure {
    PortTaken(String),
    Other(String),
}

/// A port that was free a moment ago (the listener is closed before the server binds it,
/// hence the retry in [`TestServer::start`]).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a loopback port can be bound")
        .port()
}

/// The `hfs` binary, looked up once per test process (an install runs at most once); the
/// benchmarks print it, since a debug and a release build differ several times in speed.
pub fn hfs_binary() -> &'static Path {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BINARY.get_or_init(find_hfs) {
        Ok(path) => path,
        Err(message) => panic!("{message}\n{INSTALL_HINT}"),
    }
}

fn find_hfs() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("SEGMENTTI_HFS") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "SEGMENTTI_HFS is {}, which is not a file: the test server cannot be found",
                path.display()
            ))
        };
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("scripts/install-hfs.sh");
    let output = Command::new("bash")
        .arg(&script)
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()));
    match path {
        Some(path) if output.status.success() && path.is_file() => Ok(path),
        _ => Err(format!(
            "SEGMENTTI_HFS is not set and {} did not provide the test server ({}); it said:\n{}{}",
            script.display(),
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        )),
    }
}
