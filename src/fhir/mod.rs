//! FHIR itself, the bottom layer every other module stands on: the value types every stage
//! shares ([`day`], [`types`]) and the HTTP side, a client for one FHIR R4 server's REST API with
//! its errors, the retry policy, credentials and the reading of the Bundles servers answer with.
//! Besides [`crate::source`] and [`crate::sink`], this is the only module that touches the
//! network. It deals in `serde_json::Value`: which resources to read, how to fold them and what
//! to write back belong to the source, record, writeback and sink modules.
//!
//! - [`day`]: calendar days, parsed once from a FHIR `date` or `dateTime`.
//! - [`types`]: patient ids, references, segment codes, model ids, canonical URLs.
//! - `client`: [`FhirClient`] (`get`, `search`, [`Pages`], `transaction`,
//!   `update_conditional`, `capabilities`) and its [`ClientOptions`].
//! - `retry`: [`RetryPolicy`], full-jitter backoff honouring `Retry-After`.
//! - [`error`]: [`FhirError`] and the OperationOutcome summary errors carry.
//! - [`auth`]: [`BearerToken`], sent only to the base's origin.
//! - [`bundle`]: `next` links, search matches, per-entry results of transactions.
//! - `tls`: a CA bundle to trust and a client certificate for mutual TLS.
//! - [`connection`]: a server's credentials as a configuration file names them.
//!
//! Logs: each request at DEBUG (`method`, `url` with query values elided, `status`,
//! `elapsed_ms`, `bytes`), each retry at WARN, a server's remarks on a search at WARN.
//! Never a token, never a resource's content.

pub mod auth;
pub mod bundle;
pub(crate) mod client;
pub mod connection;
pub mod day;
pub mod error;
pub(crate) mod retry;
pub(crate) mod tls;
pub mod types;

pub use auth::{AssertionClaims, BearerToken, SmartConfig};
pub use bundle::{entry_outcomes, matches, next_link};
pub(crate) use client::FHIR_JSON;
pub use client::{
    ClientOptions, FhirClient, Pages, Written, new_correlation_id, patient_references,
};
pub use error::{BodyError, FhirError, OperationOutcomeSummary, redact};
pub use retry::{RetryPolicy, Retryable};
pub use tls::{ClientIdentity, TlsOptions};

/// A single-threaded tokio runtime for the blocking parts of the program that talk HTTP: one
/// connection pool, no worker threads competing with the extraction for the cores.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
