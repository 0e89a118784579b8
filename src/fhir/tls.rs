//! TLS trust and client identity for a FHIR server: a CA bundle to trust beside the system's
//! roots (a county's or a national platform's own CA), and a client certificate for mutual TLS,
//! both as PEM files. A bad file is refused when the client is made, naming the file; the
//! files' contents are never logged or echoed.

use std::path::{Path, PathBuf};

use super::FhirError;

/// Where the TLS material is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM certificates to trust beside the system's roots.
    pub ca_bundle: Option<PathBuf>,
    /// Mutual TLS: the client's certificate (PEM, with any intermediates) and its private key
    /// (PEM: PKCS#8, RSA or SEC1).
    pub identity: Option<ClientIdentity>,
}

/// A client certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate chain (PEM).
    pub certificate: PathBuf,
    /// The private key (PEM).
    pub key: PathBuf,
}

/// `builder` trusting `tls.ca_bundle` and presenting `tls.identity`.
pub(crate) fn configure(
    builder: reqwest::ClientBuilder,
    tls: &TlsOptions,
) -> Result<reqwest::ClientBuilder, FhirError> {
    // rustls by name: a dependency enabling reqwest's native-tls too must not change which
    // TLS stack reads the identity below.
    let mut builder = builder.use_rustls_tls();
    if let Some(path) = &tls.ca_bundle {
        let pem = read(path, "CA bundle")?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .ok()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| invalid("CA bundle", path, "it holds no PEM certificate"))?;
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    if let Some(identity) = &tls.identity {
        let mut pem = read(&identity.certificate, "client certificate")?;
        pem.push(b'\n');
        super::auth::warn_if_exposed(&identity.key, "client key");
        pem.extend(read(&identity.key, "client key")?);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|_| {
            invalid(
                "client certificate",
                &identity.certificate,
                "the certificate and key do not make a client identity (PEM certificate, PEM PKCS#8, RSA or SEC1 key)",
            )
        })?;
        builder = builder.identity(identity);
    }
    Ok(builder)
}

fn read(path: &Path, option: &'static str) -> Result<Vec<u8>, FhirError> {
    std::fs::read(path).map_err(|e| invalid(option, path, &e.to_string()))
}

fn invalid(option: &'static str, path: &Path, reason: &str) -> FhirError {
    FhirError::InvalidOption {
        option,
        reason: format!("{}: {reason}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate").expect("written");
        let cases = [
            (
                TlsOptions {
                    ca_bundle: Some(dir.path().join("missing.pem")),
                    identity: None,
                },
                "missing.pem",
            ),
            (
                TlsOptions {
                    ca_bundle: Some(empty.clone()),
                    identity: None,
                },
                "holds no PEM certificate",
            ),
            (
                TlsOptions {
                    ca_bundle: None,
                    identity: Some(ClientIdentity {
                        certificate: empty.clone(),
                        key: empty,
                    }),
                },
                "do not make a client identity",
            ),
        ];
        for (tls, expected) in cases {
            let e = configure(reqwest::Client::builder(), &tls).expect_err(expected);
            assert!(e.to_string().contains(expected), "{e}");
        }
    }
}
