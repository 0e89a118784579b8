//! How to reach a FHIR server as a configuration file says it: a bearer token in a file,
//! SMART Backend Services (`[smart]`) or a CA bundle and client certificate (`[tls]`), read
//! and checked into the parts of [`ClientOptions`]. `serve`'s configuration and the servers
//! file of a joined run (`run --servers`, one `[[server]]` table per source, each with its
//! own credentials) both use it, so a secret is read and refused the same way everywhere.
//!
//! Checking collects every problem before failing; a problem names the file's key and the
//! file it points to, never the secret in it. It reads files, not the network.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{BearerToken, ClientIdentity, ClientOptions, SmartConfig, TlsOptions};

/// The scopes of `[smart]` without `scope`: what a run reads and writes.
pub const DEFAULT_SCOPE: &str = "system/Patient.rs system/Encounter.rs system/Condition.rs system/Observation.cru system/Flag.cru system/Provenance.c";

/// `[tls]`: PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Certificates to trust beside the system's roots.
    pub ca_bundle: Option<PathBuf>,
    /// The client certificate (mutual TLS).
    pub client_cert: Option<PathBuf>,
    /// Its private key.
    pub client_key: Option<PathBuf>,
}

/// `[smart]`: a registered SMART Backend Services client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmart {
    /// The client id the server registered.
    pub client_id: String,
    /// The PEM private key file (ES384 or RS384).
    pub private_key: PathBuf,
    /// The key's `kid`.
    pub key_id: Option<String>,
    /// The token endpoint.
    pub token_url: String,
    /// The scopes asked for; default: what a run reads and writes.
    pub scope: Option<String>,
}

/// A server's credentials, read and checked.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// From `token_file`.
    pub bearer: Option<BearerToken>,
    /// From `[smart]`.
    pub smart: Option<SmartConfig>,
    /// From `[tls]`.
    pub tls: TlsOptions,
}

impl Credentials {
    /// Reads what `token_file`, `[smart]` and `[tls]` name; each problem goes to `problems`,
    /// prefixed with `label` when it is not empty (which server of several).
    pub(crate) fn read(
        token_file: Option<&Path>,
        smart: Option<&RawSmart>,
        tls: Option<&RawTls>,
        label: &str,
        problems: &mut Vec<String>,
    ) -> Self {
        let mut problem = |text: String| {
            problems.push(if label.is_empty() {
                text
            } else {
                format!("{label}: {text}")
            });
        };
        let bearer = token_file.and_then(|path| {
            super::auth::read_secret(path, "token file")
                .map_err(|e| problem(format!("token_file {}: {e}", path.display())))
                .ok()
                .map(|t| BearerToken::new(t.trim().to_owned()))
        });
        if token_file.is_some() && smart.is_some() {
            problem("token_file and [smart] together: give one kind of credentials".to_owned());
        }
        let smart = smart.and_then(|raw| read_smart(raw, &mut problem));
        let tls = tls.map_or_else(TlsOptions::default, |raw| TlsOptions {
            ca_bundle: raw.ca_bundle.clone(),
            identity: match (&raw.client_cert, &raw.client_key) {
                (Some(certificate), Some(key)) => Some(ClientIdentity {
                    certificate: certificate.clone(),
                    key: key.clone(),
                }),
                (None, None) => None,
                _ => {
                    problem("[tls] client_cert and client_key go together".to_owned());
                    None
                }
            },
        });
        if let Err(e) = super::tls::configure(reqwest::Client::builder(), &tls) {
            problem(format!("[tls] {e}"));
        }
        Self { bearer, smart, tls }
    }

    /// `options` with these credentials.
    pub fn apply(&self, mut options: ClientOptions) -> ClientOptions {
        options.bearer = self.bearer.clone();
        options.smart = self.smart.clone();
        options.tls = self.tls.clone();
        options
    }
}

fn read_smart(raw: &RawSmart, problem: &mut impl FnMut(String)) -> Option<SmartConfig> {
    let token_url = url::Url::parse(&raw.token_url)
        .map_err(|e| {
            problem(format!(
                "smart.token_url `{}` is not a URL: {e}",
                raw.token_url
            ))
        })
        .ok();
    let pem = super::auth::read_secret(&raw.private_key, "private key")
        .map_err(|e| {
            problem(format!(
                "smart.private_key {}: {e}",
                raw.private_key.display()
            ))
        })
        .ok();
    let (token_url, pem) = (token_url?, pem?);
    let algorithm = if jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).is_ok() {
        jsonwebtoken::Algorithm::ES384
    } else if jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).is_ok() {
        jsonwebtoken::Algorithm::RS384
    } else {
        problem(format!(
            "smart.private_key {} is neither an EC (ES384) nor an RSA (RS384) PEM key",
            raw.private_key.display()
        ));
        return None;
    };
    Some(SmartConfig {
        token_url,
        client_id: raw.client_id.clone(),
        key_pem: pem.into(),
        algorithm,
        key_id: raw.key_id.clone(),
        scope: raw
            .scope
            .clone()
            .unwrap_or_else(|| DEFAULT_SCOPE.to_owned()),
    })
}

/// One `[[server]]` of a servers file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    url: String,
    token_file: Option<PathBuf>,
    smart: Option<RawSmart>,
    tls: Option<RawTls>,
}

/// A servers file: `[[server]]` tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServers {
    #[serde(default)]
    server: Vec<RawServer>,
}

/// A server and how to reach it.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Its base URL.
    pub url: url::Url,
    /// Its credentials.
    pub credentials: Credentials,
}

/// Why a servers file cannot be used: every problem, with the file's name.
#[derive(Debug, thiserror::Error)]
#[error("the servers file {} has {} problem(s):\n- {}\nhint: each [[server]] has a url and at most one of token_file and [smart], and may have [tls]", .path.display(), .problems.len(), .problems.join("\n- "))]
pub struct ServersFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub problems: Vec<String>,
}

/// Reads a servers file (TOML): one [`Connection`] per `[[server]]`, in the file's order.
pub fn servers_file(path: &Path) -> Result<Vec<Connection>, ServersFileError> {
    let fail = |problems: Vec<String>| ServersFileError {
        path: path.to_owned(),
        problems,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(vec![e.to_string()]))?;
    let raw: RawServers = toml::from_str(&text).map_err(|e| fail(vec![e.to_string()]))?;
    if raw.server.is_empty() {
        return Err(fail(vec!["no [[server]] table".to_owned()]));
    }
    let mut problems = Vec::new();
    let mut connections = Vec::new();
    for (i, s) in raw.server.iter().enumerate() {
        let label = format!("server {} ({})", i + 1, s.url);
        let credentials = Credentials::read(
            s.token_file.as_deref(),
            s.smart.as_ref(),
            s.tls.as_ref(),
            &label,
            &mut problems,
        );
        match url::Url::parse(&s.url) {
            Ok(url) if connections.iter().any(|c: &Connection| c.url == url) => {
                problems.push(format!("{label}: listed twice"));
            }
            Ok(url) => connections.push(Connection { url, credentials }),
            Err(e) => problems.push(format!("{label}: url is not a URL: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(connections)
    } else {
        Err(fail(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("servers.toml");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn each_server_gets_its_own_credentials() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("sos.token");
        std::fs::write(&token, "secret-of-sos\n").expect("token");
        let (_keep, path) = file(&format!(
            "[[server]]\nurl = \"https://sos.example/fhir\"\ntoken_file = \"{}\"\n\n[[server]]\nurl = \"https://ter.example/fhir\"\n",
            token.display()
        ));
        let servers = servers_file(&path).expect("servers");
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].url.as_str(), "https://sos.example/fhir");
        let read = format!(
            "{:?}",
            servers[0].credentials.bearer.as_ref().expect("token")
        );
        assert!(!read.contains("secret-of-sos"), "{read}");
        assert!(servers[1].credentials.bearer.is_none());
        assert!(servers[1].credentials.smart.is_none());
    }

    #[test]
    fn every_problem_is_named_with_its_server() {
        let (_keep, path) = file(
            "[[server]]\nurl = \"not a url\"\n\n[[server]]\nurl = \"https://a.example/\"\ntoken_file = \"/nonexistent/token\"\n[server.tls]\nclient_cert = \"c.pem\"\n\n[[server]]\nurl = \"https://a.example/\"\n",
        );
        let message = servers_file(&path).expect_err("problems").to_string();
        assert!(
            message.contains("servers.toml has 4 problem(s)"),
            "{message}"
        );
        assert!(
            message.contains("server 1 (not a url): url is not a URL"),
            "{message}"
        );
        assert!(message.contains("server 2 (https://a.example/): token_file /nonexistent/token"));
        assert!(
            message.contains("client_cert and client_key go together"),
            "{message}"
        );
        assert!(
            message.contains("server 3 (https://a.example/): listed twice"),
            "{message}"
        );
    }

    #[test]
    fn unknown_keys_and_empty_files_are_refused() {
        let (_keep, path) = file("[[server]]\nurl = \"https://a.example/\"\npassword = \"x\"\n");
        let message = servers_file(&path).expect_err("unknown key").to_string();
        assert!(message.contains("unknown field `password`"), "{message}");
        let (_keep, path) = file("");
        let message = servers_file(&path).expect_err("empty").to_string();
        assert!(message.contains("no [[server]] table"), "{message}");
    }
}
