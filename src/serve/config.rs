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
//! | `state` | `SEGMENTTI_STATE` | the checkpoint file |
//! | `batch`, `page_size`, `concurrency`, `timeout_seconds` | | as `run --server` |
//! | `grace_minutes` | | how long a failed run leaves `/readyz` green |
//! | `[cds] max_body_bytes` | | larger CDS Hooks requests get 413 |
//! | `[cds] insecure_no_auth` | | accept unsigned CDS Hooks requests (local trials only) |
//! | `[[cds.issuers]] iss, jwks_url / jwks_file` | | the EHRs trusted to sign CDS Hooks requests |
//!
//! Precedence: command line over environment over file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;

use crate::fhir::connection::Credentials;
pub use crate::fhir::connection::{RawSmart, RawTls};
use crate::fhir::{BearerToken, SmartConfig, TlsOptions};

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
            state: var("SEGMENTTI_STATE").map(PathBuf::from),
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
            state: over.state.or(self.state),
            batch: over.batch.or(self.batch),
            page_size: over.page_size.or(self.page_size),
            concurrency: over.concurrency.or(self.concurrency),
            timeout_seconds: over.timeout_seconds.or(self.timeout_seconds),
            grace_minutes: over.grace_minutes.or(self.grace_minutes),
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
        let today = crate::day::Day::from_date(time::OffsetDateTime::now_utc().date());
        for model in &self.models {
            if let Err(e) = crate::model::plan_file(model, today) {
                problems.push(e.to_string());
            }
        }
        let schedule = self.schedule.as_deref().and_then(|t| {
            croner::parser::CronParser::builder()
                .seconds(croner::parser::Seconds::Optional)
                .build()
                .parse(t)
                .map_err(|e| problems.push(format!("schedule `{t}` is not a cron expression: {e}\n  hint: five fields (six with seconds first), such as \"*/15 * * * *\" (UTC)")))
                .ok()
                .map(|c| (t.to_owned(), c))
        });
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
            state: self.state,
            batch,
            page_size,
            concurrency,
            timeout: Duration::from_secs(self.timeout_seconds.unwrap_or(60)),
            grace: Duration::from_secs(self.grace_minutes.unwrap_or(120) * 60),
            max_body,
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
    /// Who may call CDS Hooks.
    pub auth: CdsAuth,
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
}
