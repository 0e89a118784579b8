//! The command line against a live FHIR server: the connection flags, `run --server` (read by
//! paged search, write back by idempotent transactions, checkpoint) and `synth --server` (load a
//! synthetic population). Secrets come from a file or the environment, never from the command
//! line, and are never printed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use segmentti::fhir::connection::Connection;
use segmentti::fhir::{
    BearerToken, ClientIdentity, ClientOptions, FhirClient, SmartConfig, TlsOptions,
    new_correlation_id,
};
use segmentti::model::Plan;
use segmentti::run::job::{self, JobOptions};
use segmentti::run::pipeline::OnInvalid;
use segmentti::run::summary::ModelSummary;
use segmentti::sink::fhir::WriteReport;
use segmentti::source::search::SearchOptions;
use segmentti::source::synth::{self, SynthOptions};

use super::exit::Exit;

/// How to reach a FHIR server.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// A FHIR R4 server to read clients from (and, with `run`, to write results back to).
    /// `run --write-to` takes several, joined into whole clients.
    #[arg(long)]
    pub server: Vec<url::Url>,
    /// Credentials: none, a static bearer token from --token-file or SEGMENTTI_TOKEN, or SMART
    /// Backend Services (client credentials with a signed JWT: --client-id, --private-key).
    #[arg(long, value_enum, default_value_t = AuthArg::None)]
    pub auth: AuthArg,
    /// A file holding the bearer token (never give a token on the command line).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// With --auth smart: the client id the server registered.
    #[arg(long)]
    pub client_id: Option<String>,
    /// With --auth smart: the PEM private key (ES384 P-384 PKCS#8, or RS384 RSA) the server
    /// knows the public half of.
    #[arg(long)]
    pub private_key: Option<PathBuf>,
    /// With --auth smart: the key's `kid` in the JWKS the server has.
    #[arg(long)]
    pub key_id: Option<String>,
    /// With --auth smart: the token endpoint; default: from the server's
    /// `.well-known/smart-configuration`.
    #[arg(long)]
    pub token_url: Option<url::Url>,
    /// With --auth smart: the scopes to ask for.
    #[arg(long, default_value = segmentti::fhir::connection::DEFAULT_SCOPE)]
    pub scope: String,
    /// Seconds one request may take.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// PEM certificates to trust beside the system's roots (a county's own CA).
    #[arg(long)]
    pub ca_bundle: Option<PathBuf>,
    /// Mutual TLS: the client certificate (PEM) presented to the server.
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Mutual TLS: the client certificate's private key (PEM).
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Resources per search page.
    #[arg(long, default_value_t = 100)]
    pub page_size: u32,
    /// Pages of clients read at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Only this client (repeatable); `explain` takes exactly one.
    #[arg(long = "patient")]
    pub patients: Vec<String>,
    /// Only clients with data updated at or after this instant (RFC 3339); default: from --state.
    #[arg(long)]
    pub since: Option<String>,
}

/// `--auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthArg {
    /// No credentials.
    None,
    /// A static bearer token.
    Bearer,
    /// SMART Backend Services (OAuth client credentials, JWT client assertion).
    Smart,
}

impl ServerArgs {
    /// The client for `--server`, with a fresh correlation id.
    pub fn client(&self, url: &url::Url) -> Result<FhirClient> {
        let mut options = self.options();
        options.tls = self.tls();
        if self.auth == AuthArg::Bearer {
            let token = match &self.token_file {
                Some(path) => segmentti::fhir::auth::read_secret(path, "token file")
                    .with_context(|| format!("cannot read the token file {}", path.display()))?,
                None => std::env::var("SEGMENTTI_TOKEN")
                    .context("--auth bearer needs --token-file or SEGMENTTI_TOKEN")?,
            };
            options.bearer = Some(BearerToken::new(token.trim().to_owned()));
        }
        if self.auth == AuthArg::Smart {
            options.smart = Some(self.smart(url)?);
        }
        Ok(FhirClient::new(url.clone(), options)?)
    }

    /// The client for a server of a servers file: its own credentials, this command line's
    /// timeout.
    pub fn client_for(&self, connection: &Connection) -> Result<FhirClient> {
        let options = connection.credentials.apply(self.options());
        Ok(FhirClient::new(connection.url.clone(), options)?)
    }

    /// No credentials yet, a fresh correlation id, `--timeout`.
    fn options(&self) -> ClientOptions {
        let mut options = ClientOptions::new(new_correlation_id());
        options.timeout = Duration::from_secs(self.timeout);
        options
    }

    /// The SMART Backend Services settings, discovering the token endpoint when not given.
    fn smart(&self, base: &url::Url) -> Result<SmartConfig> {
        let (Some(client_id), Some(key_path)) = (&self.client_id, &self.private_key) else {
            bail!("--auth smart needs --client-id and --private-key");
        };
        let pem = segmentti::fhir::auth::read_secret(key_path, "private key")
            .with_context(|| format!("cannot read the private key {}", key_path.display()))?;
        let algorithm = if jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).is_ok() {
            jsonwebtoken::Algorithm::ES384
        } else {
            jsonwebtoken::Algorithm::RS384
        };
        let token_url = match &self.token_url {
            Some(url) => url.clone(),
            None => discover_token_url(base, self.timeout, self.tls())?,
        };
        Ok(SmartConfig {
            token_url,
            client_id: client_id.clone(),
            key_pem: pem.into(),
            algorithm,
            key_id: self.key_id.clone(),
            scope: self.scope.clone(),
        })
    }

    /// `--ca-bundle`, `--client-cert` and `--client-key`.
    fn tls(&self) -> TlsOptions {
        TlsOptions {
            ca_bundle: self.ca_bundle.clone(),
            identity: self
                .client_cert
                .clone()
                .zip(self.client_key.clone())
                .map(|(certificate, key)| ClientIdentity { certificate, key }),
        }
    }

    pub(super) fn search(&self, since: Option<String>) -> SearchOptions {
        SearchOptions {
            page_size: self.page_size,
            concurrency: self.concurrency,
            patients: self.patients.clone(),
            since,
        }
    }
}

/// The `token_endpoint` of `{base}/.well-known/smart-configuration`.
fn discover_token_url(base: &url::Url, timeout: u64, tls: TlsOptions) -> Result<url::Url> {
    let mut options = ClientOptions::new(new_correlation_id());
    options.timeout = Duration::from_secs(timeout);
    options.tls = tls;
    let client = FhirClient::new(base.clone(), options)?;
    let well_known = client
        .base()
        .join(".well-known/smart-configuration")
        .context("the server's base cannot have a .well-known path")?;
    let config = segmentti::fhir::runtime()?
        .block_on(client.get(&well_known))
        .context("cannot read the server's SMART configuration\nhint: give --token-url")?;
    let endpoint = config["token_endpoint"].as_str().context(
        "the server's SMART configuration has no token_endpoint\nhint: give --token-url",
    )?;
    url::Url::parse(endpoint).with_context(|| format!("token_endpoint `{endpoint}` is not a URL"))
}

/// What a server run writes, beside the fold.
#[derive(Debug, Clone)]
pub struct WriteArgs {
    /// Clients per transaction.
    pub batch: usize,
    /// Read and decide, write nothing.
    pub dry_run: bool,
    /// Print the run (with --dry-run: every client's changes) as JSON on stdout.
    pub json: bool,
    /// The checkpoint file.
    pub state: Option<PathBuf>,
    /// What to do with invalid resources.
    pub on_invalid: OnInvalid,
    /// Print read and write rates and peak memory (and a `stats:` line for tools).
    pub stats: bool,
}

/// `run --server`: read, segment, write back, checkpoint.
pub fn run(
    server: &ServerArgs,
    url: &url::Url,
    plans: &[Plan],
    write: &WriteArgs,
) -> Result<ExitCode> {
    let options = JobOptions {
        client: server.client(url)?,
        server: url.clone(),
        search: server.search(server.since.clone()),
        full: false,
        batch: write.batch,
        dry_run: write.dry_run,
        state: write.state.clone(),
        on_invalid: write.on_invalid,
    };
    let report = match job::run(&options, plans) {
        Ok(report) => report,
        Err(e) if e.is_refusal() => {
            eprintln!("error: {e}");
            return Ok(Exit::NotAllowed.into());
        }
        Err(e) => return Err(e.into()),
    };
    if write.json {
        let out = json!({
            "input": report.input,
            "since": report.since,
            "rejected": report.rejected,
            "models": report.models.iter().map(|(s, r)| json!({"summary": s, "writes": r})).collect::<Vec<Value>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!(
            "{}",
            render(
                &report.input,
                report.since.as_deref(),
                report.rejected_count,
                &report.models,
                write.dry_run
            )
        );
    }
    if write.stats {
        print!("{}", stats(&report));
    }
    let summaries: Vec<ModelSummary> = report.models.iter().map(|(s, _)| s.clone()).collect();
    Ok(Exit::worst([
        super::report_invalid(&summaries).then_some(Exit::Invalid),
        (report.refused() > 0).then_some(Exit::Refused),
        (report.rejected_count > 0).then_some(Exit::Rejects),
    ])
    .into())
}

/// Read and write rates of a server run; the `stats:` line is for tools (benchmarks) to parse.
fn stats(report: &segmentti::run::job::JobReport) -> String {
    let written: u64 = report.models.iter().map(|(_, w)| w.entries).sum();
    let transactions: u64 = report.models.iter().map(|(_, w)| w.transactions).sum();
    let rss = segmentti::run::telemetry::peak_rss_bytes().unwrap_or(0);
    let (read_s, write_s) = (report.read_seconds, report.write_seconds);
    format!(
        "\nStats: read {} resources in {read_s:.2} s ({:.0}/s); wrote {written} resources in {transactions} transaction(s) in {write_s:.2} s ({:.0}/s); peak RSS {:.0} MiB\nstats: read={} read_seconds={read_s:.3} written={written} transactions={transactions} write_seconds={write_s:.3} peak_rss_bytes={rss}\n",
        report.read,
        report.read as f64 / read_s.max(1e-9),
        written as f64 / write_s.max(1e-9),
        rss as f64 / 1048576.0,
        report.read,
    )
}

fn render(
    input: &str,
    since: Option<&str>,
    rejected: u64,
    models: &[(ModelSummary, WriteReport)],
    dry_run: bool,
) -> String {
    let mut out = format!(
        "Server: {input}{}\n",
        since
            .map(|s| format!(" (changes since {s})"))
            .unwrap_or_default()
    );
    for (s, r) in models {
        model_head(&mut out, s);
        let verb = if dry_run { "would write" } else { "wrote" };
        out.push_str(&format!(
            "  {verb}: {} Observation(s), {} Flag(s), ended {} Flag(s) in {} transaction(s); {} client(s) unchanged\n",
            r.observations, r.flags_written, r.flags_ended, r.transactions, r.unchanged
        ));
        for refused in &r.refused {
            out.push_str(&format!(
                "  refused: Patient/{}: {}\n",
                refused.patient,
                refused.message.lines().next().unwrap_or_default()
            ));
        }
    }
    out.push_str(&format!("Rejected inputs: {rejected}\n"));
    out
}

/// `synth --server`: loads the population into a server, `batch` clients per transaction, each
/// resource by `PUT` on its id so that loading twice leaves one copy.
pub fn load(
    server: &ServerArgs,
    url: &url::Url,
    opts: &SynthOptions,
    batch: usize,
) -> Result<ExitCode> {
    let client = server.client(url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut entries = Vec::new();
    let (mut resources, mut transactions, mut clients) = (0u64, 0u64, 0u64);
    let mut all = synth::clients(opts).peekable();
    while let Some((i, c)) = all.next() {
        clients += 1;
        for r in synth::resources(opts, i, c) {
            let url = format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap_or_default(),
                r["id"].as_str().unwrap_or_default()
            );
            entries.push(json!({"resource": r, "request": {"method": "PUT", "url": url}}));
        }
        if clients % batch as u64 == 0 || all.peek().is_none() {
            resources += entries.len() as u64;
            let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": std::mem::take(&mut entries)});
            runtime.block_on(client.transaction(&bundle))?;
            transactions += 1;
        }
    }
    if opts.clients == 0 {
        bail!("nothing to load: --clients is 0");
    }
    println!(
        "Loaded {clients} clients ({resources} resources) into {} in {transactions} transaction(s)",
        segmentti::fhir::redact(client.base())
    );
    Ok(ExitCode::SUCCESS)
}

/// A model's heading and its clients per segment, in a server run's printed summary.
pub(super) fn model_head(out: &mut String, s: &ModelSummary) {
    out.push_str(&format!(
        "\nModel {} {} · as of {} · {} clients\n",
        s.model, s.version, s.as_of, s.clients
    ));
    for seg in &s.segments {
        out.push_str(&format!(
            "  {:<13} {:<45} {:>8}\n",
            seg.code, seg.display, seg.count
        ));
    }
}
