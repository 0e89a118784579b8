//! The service's configuration in two stages: [`RawConfig`] is what the TOML file, the
//! environment and the command line say (every field optional, unknown keys refused), and
//! [`Settings`] is the checked whole. Checking collects every problem before failing, so an
//! operator fixes them in one go; nothing falls back to a default on a parse error. Secrets
//! are named by file and read here into `secrecy` types, never echoed. It reads files and the
//! environment, and does not touch the network.
//!
//! | key | environment | meaning |
//! |---|---|---|
//! | `listen` | `SEGMENTTI_LISTEN` | address of CDS Hooks (and, without `metrics_listen`, health and metrics) |
//! | `metrics_listen` | `SEGMENTTI_METRICS_LISTEN` | separate address of `/healthz`, `/readyz`, `/metrics` |
//! | `public_url` | `SEGMENTTI_PUBLIC_URL` | how the EHR reaches this service: JWT `aud` and explanation links |
//! | `server` | `SEGMENTTI_SERVER` | the FHIR server: scheduled runs and the one trusted `fhirServer` |
//! | `token_file` | `SEGMENTTI_TOKEN_FILE` | a file holding the bearer token for `server` |
//! | `[smart] client_id, private_key, key_id, token_url, scope` | | SMART Backend Services for `server` instead of a token (as `--auth smart`; `token_url` is required here) |
//! | `[tls] ca_bundle, client_cert, client_key` | | a CA to trust and a client certificate for `server` (as `--ca-bundle`, `--client-cert`, `--client-key`) |
//! | `models` | | mapping files |
//! | `schedule` | `SEGMENTTI_SCHEDULE` | cron expression (UTC; five fields, or six with seconds first) of incremental runs; none: no runs |
//! | `full_schedule` | `SEGMENTTI_FULL_SCHEDULE` | cron expression of full passes, which re-assess every client (segments age as windows move on) and refresh the population thresholds; default with a `schedule`: `0 0 2 * * *` (02:00 UTC nightly), without one: none |
//! | `as_of` | `SEGMENTTI_AS_OF` | for tests and trials only: the assessment date (YYYY-MM-DD) in place of today's |
//! | `state` | `SEGMENTTI_STATE` | the checkpoint file |
//! | `batch`, `page_size`, `concurrency`, `timeout_seconds` | | as `run --server` |
//! | `grace_minutes` | | how long a failed run leaves `/readyz` green |
//! | `header_timeout_seconds` | | a connection that has not sent a request's headers within this is closed (default 10) |
//! | `request_timeout_seconds` | | a request not answered within this gets 503 (default 30) |
//! | `max_connections` | | open connections per listener; more are closed at once (default 1024) |
//! | `metrics_token_file` | `SEGMENTTI_METRICS_TOKEN_FILE`, or the token in `SEGMENTTI_METRICS_TOKEN` | without `metrics_listen`, `/metrics` answers only this bearer token (without either, it is not served) |
//! | `[cds] max_body_bytes` | | larger CDS Hooks requests get 413 |
//! | `[cds] insecure_no_auth` | | accept unsigned CDS Hooks requests (local trials only) |
//! | `[[cds.issuers]] iss, jwks_url / jwks_file` | | the EHRs trusted to sign CDS Hooks requests; `jwks_url` is https |
//! | `[[cds.issuers]] insecure_http_jwks` | | allow this issuer's `jwks_url` over plain http (local trials only) |
//!
//! Precedence: command line over environment over file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use secrecy::SecretString;
use serde::Deserialize;

use crate::fhir::connection::Credentials;
pub(crate) use crate::fhir::connection::{RawSmart, RawTls};
use crate::fhir::day::Day;
use crate::fhir::{BearerToken, SmartConfig, TlsOptions};

/// The full passes of a service with a `schedule` and no `full_schedule`: nightly, 02:00 UTC.
const DEFAULT_FULL_SCHEDULE: &str = "0 0 2 * * *";

/// What the file, the environment or the command line say; `None`: not said.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// See the module table.
    pub listen: Option<String>,
    /// See the module table.
    pub metrics_listen: Option<String>,
    /// See the module table.
    pub public_url: Option<String>,
    /// See the module table.
    pub server: Option<String>,
    /// See the module table.
    pub token_file: Option<PathBuf>,
    /// See the module table.
    #[serde(default)]
    pub models: Vec<PathBuf>,
    /// See the module table.
    pub schedule: Option<String>,
    /// See the module table.
    pub full_schedule: Option<String>,
    /// See the module table.
    pub as_of: Option<String>,
    /// See the module table.
    pub state: Option<PathBuf>,
    /// See the module table.
    pub batch: Option<usize>,
    /// See the module table.
    pub page_size: Option<u32>,
    /// See the module table.
    pub concurrency: Option<usize>,
    /// See the module table.
    pub timeout_seconds: Option<u64>,
    /// See the module table.
    pub grace_minutes: Option<u64>,
    /// See the module table.
    pub header_timeout_seconds: Option<u64>,
    /// See the module table.
    pub request_timeout_seconds: Option<u64>,
    /// See the module table.
    pub max_connections: Option<usize>,
    /// See the module table.
    pub metrics_token_file: Option<PathBuf>,
    /// `SEGMENTTI_METRICS_TOKEN`: never read from the file, where it would sit in plain text.
    #[serde(skip)]
    pub metrics_token: Option<SecretString>,
    /// See the module table.
    pub cds: Option<RawCds>,
    /// See the module table.
    pub smart: Option<RawSmart>,
    /// `[tls]`.
    pub tls: Option<RawTls>,
}

/// The `[cds]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCds {
    /// See the module table.
    pub max_body_bytes: Option<usize>,
    /// See the module table.
    #[serde(default)]
    pub insecure_no_auth: bool,
    /// See the module table.
    #[serde(default)]
    pub issuers: Vec<RawIssuer>,
}

/// One `[[cds.issuers]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    /// The `iss` the EHR puts in its tokens.
    pub iss: String,
    /// Where its JWKS is served.
    pub jwks_url: Option<String>,
    /// Its JWKS, as a file.
    pub jwks_file: Option<PathBuf>,
    /// Allow `jwks_url` over plain http.
    #[serde(default)]
    pub insecure_http_jwks: bool,
}

impl RawConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![format!("cannot read {}: {e}", path.display())]))?;
        toml::from_str(&text).map_err(|e| ConfigError(vec![format!("{}: {e}", path.display())]))
    }

    /// The `SEGMENTTI_*` variables of the module table.
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            listen: var("SEGMENTTI_LISTEN"),
            metrics_listen: var("SEGMENTTI_METRICS_LISTEN"),
            public_url: var("SEGMENTTI_PUBLIC_URL"),
            server: var("SEGMENTTI_SERVER"),
            token_file: var("SEGMENTTI_TOKEN_FILE").map(PathBuf::from),
            schedule: var("SEGMENTTI_SCHEDULE"),
            full_schedule: var("SEGMENTTI_FULL_SCHEDULE"),
            as_of: var("SEGMENTTI_AS_OF"),
            state: var("SEGMENTTI_STATE").map(PathBuf::from),
            metrics_token_file: var("SEGMENTTI_METRICS_TOKEN_FILE").map(PathBuf::from),
            metrics_token: var("SEGMENTTI_METRICS_TOKEN").map(SecretString::from),
            ..Self::default()
        }
    }

    /// `self`, with what `over` says taking its place.
    pub fn overlay(self, over: Self) -> Self {
        let cds = match (self.cds, over.cds) {
            (Some(a), Some(b)) => Some(RawCds {
                max_body_bytes: b.max_body_bytes.or(a.max_body_bytes),
                insecure_no_auth: a.insecure_no_auth || b.insecure_no_auth,
                issuers: if b.issuers.is_empty() {
                    a.issuers
                } else {
                    b.issuers
                },
            }),
            (a, b) => b.or(a),
        };
        Self {
            listen: over.listen.or(self.listen),
            metrics_listen: over.metrics_listen.or(self.metrics_listen),
            public_url: over.public_url.or(self.public_url),
            server: over.server.or(self.server),
            token_file: over.token_file.or(self.token_file),
            models: if over.models.is_empty() {
                self.models
            } else {
                over.models
            },
            schedule: over.schedule.or(self.schedule),
            full_schedule: over.full_schedule.or(self.full_schedule),
            as_of: over.as_of.or(self.as_of),
            state: over.state.or(self.state),
            batch: over.batch.or(self.batch),
            page_size: over.page_size.or(self.page_size),
            concurrency: over.concurrency.or(self.concurrency),
            timeout_seconds: over.timeout_seconds.or(self.timeout_seconds),
            grace_minutes: over.grace_minutes.or(self.grace_minutes),
            header_timeout_seconds: over.header_timeout_seconds.or(self.header_timeout_seconds),
            request_timeout_seconds: over
                .request_timeout_seconds
                .or(self.request_timeout_seconds),
            max_connections: over.max_connections.or(self.max_connections),
            metrics_token_file: over.metrics_token_file.or(self.metrics_token_file),
            metrics_token: over.metrics_token.or(self.metrics_token),
            cds,
            smart: over.smart.or(self.smart),
            tls: over.tls.or(self.tls),
        }
    }

    /// Checks everything, reporting every problem at once.
    pub fn check(self) -> Result<Settings, ConfigError> {
        let mut problems = Vec::new();
        let mut need =
            |what: &str, hint: &str| problems.push(format!("{what} is not set\n  hint: {hint}"));
        if self.listen.is_none() {
            need(
                "listen",
                "listen = \"127.0.0.1:8090\" in the file, SEGMENTTI_LISTEN or --listen",
            );
        }
        if self.server.is_none() {
            need(
                "server",
                "server = \"https://fhir.example.org/\" in the file, SEGMENTTI_SERVER or --server",
            );
        }
        if self.models.is_empty() {
            need(
                "models",
                "models = [\"mappings/paijat-sote.yaml\"] in the file or --model",
            );
        }
        let addr = |problems: &mut Vec<String>, key: &str, text: &str| -> Option<SocketAddr> {
            text.parse()
                .map_err(|e| problems.push(format!("{key} `{text}` is not an address: {e}\n  hint: host:port, such as 0.0.0.0:8090")))
                .ok()
        };
        let listen = self
            .listen
            .as_deref()
            .and_then(|t| addr(&mut problems, "listen", t));
        let metrics_listen = self
            .metrics_listen
            .as_deref()
            .and_then(|t| addr(&mut problems, "metrics_listen", t));
        let server = self.server.as_deref().and_then(|t| {
            url::Url::parse(t)
                .map_err(|e| problems.push(format!("server `{t}` is not a URL: {e}")))
                .ok()
        });
        let public_url = self.public_url.as_deref().and_then(|t| {
            url::Url::parse(t)
                .map_err(|e| problems.push(format!("public_url `{t}` is not a URL: {e}")))
                .ok()
        });
        let Credentials { bearer, smart, tls } = Credentials::read(
            self.token_file.as_deref(),
            self.smart.as_ref(),
            self.tls.as_ref(),
            "",
            &mut problems,
        );
        let as_of = self.as_of.as_deref().and_then(|t| {
            t.parse::<Day>()
                .map_err(|e| problems.push(format!("as_of: {e}")))
                .ok()
        });
        let today = as_of.unwrap_or_else(|| Day::from_date(time::OffsetDateTime::now_utc().date()));
        for model in &self.models {
            if let Err(e) = crate::model::plan_file(model, today) {
                problems.push(e.to_string());
            }
        }
        let cron = |problems: &mut Vec<String>, key: &str, t: &str| {
            croner::parser::CronParser::builder()
                .seconds(croner::parser::Seconds::Optional)
                .build()
                .parse(t)
                .map_err(|e| problems.push(format!("{key} `{t}` is not a cron expression: {e}\n  hint: five fields (six with seconds first), such as \"*/15 * * * *\" (UTC)")))
                .ok()
                .map(|c| (t.to_owned(), c))
        };
        let schedule = self
            .schedule
            .as_deref()
            .and_then(|t| cron(&mut problems, "schedule", t));
        // Once a checkpoint exists every scheduled run is incremental: without full passes, no
        // segment would age and the thresholds would stay those of the first run.
        let full_schedule = match (self.full_schedule.as_deref(), &schedule) {
            (Some(t), _) => cron(&mut problems, "full_schedule", t),
            (None, Some(_)) => cron(&mut problems, "full_schedule", DEFAULT_FULL_SCHEDULE),
            (None, None) => None,
        };
        let positive =
            |problems: &mut Vec<String>, key: &str, v: Option<usize>, default: usize| match v {
                Some(0) => {
                    problems.push(format!("{key} must be at least 1"));
                    default
                }
                Some(v) => v,
                None => default,
            };
        let batch = positive(&mut problems, "batch", self.batch, 100);
        let concurrency = positive(&mut problems, "concurrency", self.concurrency, 4);
        let page_size = positive(
            &mut problems,
            "page_size",
            self.page_size.map(|v| v as usize),
            100,
        ) as u32;
        let limits = Limits {
            header_timeout: Duration::from_secs(positive(
                &mut problems,
                "header_timeout_seconds",
                self.header_timeout_seconds.map(|v| v as usize),
                10,
            ) as u64),
            request_timeout: Duration::from_secs(positive(
                &mut problems,
                "request_timeout_seconds",
                self.request_timeout_seconds.map(|v| v as usize),
                30,
            ) as u64),
            max_connections: positive(&mut problems, "max_connections", self.max_connections, 1024),
        };
        let metrics_token = match (self.metrics_token_file.as_deref(), self.metrics_token) {
            (Some(path), _) => match std::fs::read_to_string(path) {
                Ok(text) if !text.trim().is_empty() => Some(SecretString::from(text.trim())),
                Ok(_) => {
                    problems.push(format!("metrics_token_file {} is empty", path.display()));
                    None
                }
                Err(e) => {
                    problems.push(format!(
                        "cannot read metrics_token_file {}: {e}",
                        path.display()
                    ));
                    None
                }
            },
            (None, token) => token,
        };
        let cds = self.cds.unwrap_or_default();
        let max_body = positive(
            &mut problems,
            "cds.max_body_bytes",
            cds.max_body_bytes,
            256 * 1024,
        );
        let mut issuers = Vec::new();
        for raw in &cds.issuers {
            let keys = match (&raw.jwks_url, &raw.jwks_file) {
                (Some(u), None) => match url::Url::parse(u) {
                    Ok(u) if u.scheme() != "https" && !raw.insecure_http_jwks => {
                        problems.push(format!(
                            "issuer {}: jwks_url `{u}` is not https: anyone on the way could swap the keys CDS Hooks calls are verified with\n  hint: serve the JWKS over https, or set insecure_http_jwks = true in this [[cds.issuers]] (local trials only)",
                            raw.iss
                        ));
                        None
                    }
                    Ok(u) => Some(KeySource::Url(u)),
                    Err(e) => {
                        problems.push(format!(
                            "issuer {}: jwks_url `{u}` is not a URL: {e}",
                            raw.iss
                        ));
                        None
                    }
                },
                (None, Some(path)) => match std::fs::read_to_string(path)
                    .map_err(|e| e.to_string())
                    .and_then(|t| serde_json::from_str::<JwkSet>(&t).map_err(|e| e.to_string()))
                {
                    Ok(set) => Some(KeySource::Fixed(set)),
                    Err(e) => {
                        problems.push(format!(
                            "issuer {}: jwks_file {}: {e}",
                            raw.iss,
                            path.display()
                        ));
                        None
                    }
                },
                _ => {
                    problems.push(format!(
                        "issuer {}: give one of jwks_url and jwks_file",
                        raw.iss
                    ));
                    None
                }
            };
            if let Some(keys) = keys {
                issuers.push(Issuer {
                    iss: raw.iss.clone(),
                    keys,
                });
            }
        }
        if issuers.is_empty() && !cds.insecure_no_auth && cds.issuers.is_empty() {
            problems.push("no [[cds.issuers]]: no EHR could call the CDS Hooks service\n  hint: add an issuer with its jwks_url, or --insecure-no-auth for a local trial".to_owned());
        }
        if cds.insecure_no_auth && !cds.issuers.is_empty() {
            problems.push(
                "insecure_no_auth and [[cds.issuers]] together: say which one you mean".to_owned(),
            );
        }
        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        let (Some(listen), Some(server)) = (listen, server) else {
            return Err(ConfigError(vec!["listen and server are needed".to_owned()]));
        };
        Ok(Settings {
            listen,
            metrics_listen,
            public_url,
            server,
            bearer,
            smart,
            tls,
            models: self.models,
            schedule,
            full_schedule,
            as_of,
            state: self.state,
            batch,
            page_size,
            concurrency,
            timeout: Duration::from_secs(self.timeout_seconds.unwrap_or(60)),
            grace: Duration::from_secs(self.grace_minutes.unwrap_or(120) * 60),
            max_body,
            limits,
            metrics_token,
            auth: if cds.insecure_no_auth {
                CdsAuth::Insecure
            } else {
                CdsAuth::Issuers(issuers)
            },
        })
    }
}

/// Every problem of a configuration.
#[derive(Debug, thiserror::Error)]
#[error("the configuration has {} problem(s):\n- {}", .0.len(), .0.join("\n- "))]
pub struct ConfigError(pub Vec<String>);

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// CDS Hooks (and health and metrics without `metrics_listen`).
    pub listen: SocketAddr,
    /// Health and metrics, when apart.
    pub metrics_listen: Option<SocketAddr>,
    /// How callers reach this service; default: `http://` and the bound address.
    pub public_url: Option<url::Url>,
    /// The FHIR server.
    pub server: url::Url,
    /// Its bearer token.
    pub bearer: Option<BearerToken>,
    /// Or SMART Backend Services.
    pub smart: Option<SmartConfig>,
    /// A CA to trust and a client certificate.
    pub tls: TlsOptions,
    /// Mapping files.
    pub models: Vec<PathBuf>,
    /// The schedule of runs, as written and parsed.
    pub schedule: Option<(String, croner::Cron)>,
    /// The schedule of full passes, as written and parsed.
    pub full_schedule: Option<(String, croner::Cron)>,
    /// The assessment date in place of today's (tests and trials).
    pub as_of: Option<Day>,
    /// The checkpoint.
    pub state: Option<PathBuf>,
    /// Clients per write transaction.
    pub batch: usize,
    /// Resources per search page.
    pub page_size: u32,
    /// Pages read at once.
    pub concurrency: usize,
    /// Per request to the FHIR server.
    pub timeout: Duration,
    /// How long `/readyz` stays green after a failed run.
    pub grace: Duration,
    /// Largest CDS Hooks request body.
    pub max_body: usize,
    /// What one caller may hold of the listeners.
    pub limits: Limits,
    /// The bearer token `/metrics` answers on the CDS Hooks listener.
    pub metrics_token: Option<SecretString>,
    /// Who may call CDS Hooks.
    pub auth: CdsAuth,
}

/// Bounds on each listener, so that no caller can hold the service.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From a connection's start (or its last answer) to a request's complete headers.
    pub header_timeout: Duration,
    /// From a request's headers to its answer.
    pub request_timeout: Duration,
    /// Open connections per listener.
    pub max_connections: usize,
}

/// Who may call the CDS Hooks endpoints.
#[derive(Debug, Clone)]
pub enum CdsAuth {
    /// Anyone (a local trial; said loudly at start-up).
    Insecure,
    /// EHRs that sign with these issuers' keys.
    Issuers(Vec<Issuer>),
}

/// A trusted EHR.
#[derive(Debug, Clone)]
pub struct Issuer {
    /// Its `iss`.
    pub iss: String,
    /// Its keys.
    pub keys: KeySource,
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Fetched from this URL when first needed and when a token names an unknown `kid`.
    Url(url::Url),
    /// Read from a file at start-up.
    Fixed(JwkSet),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_at_once() {
        let raw: RawConfig = toml::from_str(
            "listen = \"nowhere\"\nschedule = \"every tuesday\"\nbatch = 0\nmodels = [\"/no/such.yaml\"]\n[tls]\nca_bundle = \"/no/such-ca.pem\"\nclient_cert = \"/no/cert.pem\"\n",
        )
        .expect("toml");
        let e = raw.check().expect_err("problems");
        let text = e.to_string();
        for needle in [
            "listen `nowhere`",
            "server is not set",
            "schedule `every tuesday`",
            "batch must",
            "/no/such.yaml",
            "no [[cds.issuers]]",
            "[tls] client_cert and client_key go together",
            "/no/such-ca.pem",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn smart_credentials_are_read_and_checked_with_the_rest() {
        let key = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/keys/test-es384.pem"
        );
        let raw: RawConfig = toml::from_str(&format!(
            "listen = \"127.0.0.1:0\"\nserver = \"http://127.0.0.1:1/\"\nmodels = [\"{}/mappings/paijat-sote.yaml\"]\n[cds]\ninsecure_no_auth = true\n[smart]\nclient_id = \"segmentti\"\nprivate_key = \"{key}\"\ntoken_url = \"http://127.0.0.1:1/token\"\n",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("toml");
        let settings = raw.clone().check().expect("valid");
        let smart = settings.smart.expect("smart");
        assert_eq!(smart.algorithm, jsonwebtoken::Algorithm::ES384);
        let both = RawConfig {
            token_file: Some("/no/such/token".into()),
            ..raw
        };
        let text = both.check().expect_err("two kinds").to_string();
        assert!(
            text.contains("token_file and [smart]") && text.contains("/no/such/token"),
            "{text}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<RawConfig>("lisen = \"x\"").is_err());
    }

    #[test]
    fn the_command_line_wins_over_the_file() {
        let file = RawConfig {
            listen: Some("0.0.0.0:1".into()),
            batch: Some(5),
            ..RawConfig::default()
        };
        let cli = RawConfig {
            listen: Some("127.0.0.1:2".into()),
            ..RawConfig::default()
        };
        let merged = file.overlay(cli);
        assert_eq!(merged.listen.as_deref(), Some("127.0.0.1:2"));
        assert_eq!(merged.batch, Some(5));
    }

    /// A valid configuration with one issuer whose keys are at `jwks_url`, plus `extra` lines.
    fn with_issuer(jwks_url: &str, issuer_extra: &str, extra: &str) -> RawConfig {
        toml::from_str(&format!(
            "listen = \"127.0.0.1:0\"\nserver = \"http://127.0.0.1:1/\"\nmodels = [\"{}/mappings/paijat-sote.yaml\"]\n{extra}\n[[cds.issuers]]\niss = \"https://ehr.example.org/\"\njwks_url = \"{jwks_url}\"\n{issuer_extra}\n",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("toml")
    }

    #[test]
    fn an_http_jwks_url_is_refused_unless_the_issuer_says_insecure() {
        let text = with_issuer("http://ehr.example.org/jwks", "", "")
            .check()
            .expect_err("plain http")
            .to_string();
        assert!(
            text.contains("issuer https://ehr.example.org/: jwks_url `http://ehr.example.org/jwks` is not https")
                && text.contains("insecure_http_jwks = true"),
            "{text}"
        );
        with_issuer(
            "http://ehr.example.org/jwks",
            "insecure_http_jwks = true",
            "",
        )
        .check()
        .expect("allowed by name");
        with_issuer("https://ehr.example.org/jwks", "", "")
            .check()
            .expect("https");
    }

    #[test]
    fn a_schedule_brings_nightly_full_passes_and_as_of_is_checked() {
        let https = "https://ehr.example.org/jwks";
        let none = with_issuer(https, "", "").check().expect("valid");
        assert!(none.schedule.is_none() && none.full_schedule.is_none());
        let nightly = with_issuer(https, "", "schedule = \"*/15 * * * *\"")
            .check()
            .expect("valid");
        assert_eq!(
            nightly.full_schedule.map(|(t, _)| t).as_deref(),
            Some(DEFAULT_FULL_SCHEDULE)
        );
        let own = with_issuer(
            https,
            "",
            "full_schedule = \"0 30 3 * * Sun\"\nas_of = \"2025-03-01\"",
        )
        .check()
        .expect("valid");
        assert_eq!(
            own.full_schedule.map(|(t, _)| t).as_deref(),
            Some("0 30 3 * * Sun")
        );
        assert_eq!(own.as_of, Some("2025-03-01".parse().expect("day")));
        let text = with_issuer(
            https,
            "",
            "full_schedule = \"nightly\"\nas_of = \"1.3.2025\"",
        )
        .check()
        .expect_err("problems")
        .to_string();
        assert!(
            text.contains("full_schedule `nightly`") && text.contains("as_of: `1.3.2025`"),
            "{text}"
        );
    }
}
