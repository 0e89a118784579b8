//! The conformance kit behind `segmentti conformance`: whether a FHIR server does what a
//! segmentti run needs of it, found out by doing it. A vendor runs it against their server; CI
//! pipelines read its JUnit XML.
//!
//! It owns the list of checks ([`CheckId`]), the synthetic test data they write, the report
//! ([`Report`]: a table, JSON, JUnit XML) and the HTTP exchanges behind each verdict. It writes
//! the Observation and Flags with segmentti's own builders and sends them in the transaction the
//! FHIR sink sends ([`crate::sink::fhir::transaction`]), so what is tested is what a run writes.
//!
//! What it must not do:
//! - touch data it did not write: every resource it creates carries a run-unique identifier in
//!   [`TEST_SYSTEM`] (or is built for a Patient it created), searches are narrowed to those and
//!   matches are filtered again here, and cleanup removes only what this run wrote;
//! - send credentials to another origin: it follows no redirect or `next` link off the base's
//!   origin ([`crate::fhir::FhirClient`]'s rule), and says so in the check's reason;
//! - keep a tester's or a client's data in its report: an exchange shows the method, the URL as
//!   [`crate::fhir::redact`] shows it, the status and a description of the body, never request
//!   headers, and never a resource's content (a server that ignores a search parameter could
//!   answer with real clients): searchsets are shown by their matches' ids;
//! - retry: each request is sent once, so the report shows each answer as it came.
//!
//! The test Patients are plainly synthetic (family name `Conformance Test`, tagged with
//! `TEST_TAG`, no identity code): a Finnish test identity code in the national system would
//! still share that system with other test data on the server, a run id in segmentti's own
//! system shares it with nothing.
//!
//! | check | required | what is done |
//! |---|---|---|
//! | `metadata` | yes | `GET /metadata` answers an R4 CapabilityStatement |
//! | `declared` | no | it declares the interactions and search parameters segmentti uses |
//! | `setup` | yes | three test Patients are created (`POST`) |
//! | `paged-search` | yes | `Patient?_id=…&_count=1` is followed by `next` links on the base's origin |
//! | `last-updated` | yes | `_lastUpdated=ge…` finds them, `_lastUpdated=lt…` does not |
//! | `conditional-update` | yes | `PUT Observation?identifier=…` creates, then updates the same resource |
//! | `transaction` | yes | a transaction with a bad entry is refused and stores nothing |
//! | `write` | yes | segmentti's Observation, Flag and Provenance in segmentti's transaction |
//! | `read-back` | yes | `Flag?patient=` finds the Flag; its status is checked here (R4 has no Flag `status` search parameter) |
//! | `category` | no | as an EHR filters: `Observation?patient=…&category=survey` finds the assessment and `category=laboratory` does not; the Flag carries the model's category, and `Flag?patient=…&category=…` is tried (R4 defines no Flag `category` search parameter: a server that ignores or refuses it is reported, not failed) |
//! | `supersede` | yes | a new segment ends the old Flag (`inactive`) and starts a new one |
//! | `cleanup` | no | what was written is deleted, or tagged with `TEST_TAG` where deletes are refused |
//!
//! A check whose server answered HTML, an OperationOutcome, 401, a redirect to another origin,
//! or nothing within the timeout fails with that reason, and the kit goes on with the next;
//! checks that need what a failed one was to provide are skipped, saying which.

mod checks;
mod http;
pub mod report;

use serde::Serialize;

use crate::fhir::FhirClient;
use crate::fhir::day::Day;
use crate::model::mapping::Mapping;

pub use checks::TEST_SYSTEM;

/// The checks, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckId {
    /// `GET /metadata` answers an R4 CapabilityStatement.
    Metadata,
    /// The CapabilityStatement declares what segmentti uses.
    Declared,
    /// Synthetic test Patients can be created.
    Setup,
    /// A search is paged by `next` links on the base's origin.
    PagedSearch,
    /// `_lastUpdated` filters a search.
    LastUpdated,
    /// A conditional update by identifier creates, then updates.
    ConditionalUpdate,
    /// A transaction with a bad entry stores nothing.
    Transaction,
    /// segmentti's Observation and Flag are written.
    Write,
    /// `Flag?patient=` finds the Flag, active.
    ReadBack,
    /// What was written is found by category, as an EHR filters it.
    Category,
    /// A new segment supersedes the Flag.
    Supersede,
    /// What the kit wrote is removed or tagged.
    Cleanup,
}

impl CheckId {
    /// Every check, in the order they run.
    pub const ALL: [CheckId; 12] = [
        Self::Metadata,
        Self::Declared,
        Self::Setup,
        Self::PagedSearch,
        Self::LastUpdated,
        Self::ConditionalUpdate,
        Self::Transaction,
        Self::Write,
        Self::ReadBack,
        Self::Category,
        Self::Supersede,
        Self::Cleanup,
    ];

    /// The id shown in reports, such as `paged-search`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Metadata => "metadata",
            Self::Declared => "declared",
            Self::Setup => "setup",
            Self::PagedSearch => "paged-search",
            Self::LastUpdated => "last-updated",
            Self::ConditionalUpdate => "conditional-update",
            Self::Transaction => "transaction",
            Self::Write => "write",
            Self::ReadBack => "read-back",
            Self::Category => "category",
            Self::Supersede => "supersede",
            Self::Cleanup => "cleanup",
        }
    }

    /// What the check shows when it passes.
    pub(crate) fn title(self) -> &'static str {
        match self {
            Self::Metadata => "GET /metadata answers a FHIR R4 CapabilityStatement",
            Self::Declared => {
                "the CapabilityStatement declares the interactions and search parameters segmentti uses"
            }
            Self::Setup => "synthetic test Patients can be created",
            Self::PagedSearch => "a search is paged by next links on the base's origin",
            Self::LastUpdated => "_lastUpdated filters a search",
            Self::ConditionalUpdate => {
                "a conditional update by identifier creates, then updates the same resource"
            }
            Self::Transaction => "a transaction with a bad entry is refused and stores nothing",
            Self::Write => {
                "segmentti's Observation, Flag and Provenance are written in one transaction"
            }
            Self::ReadBack => "Flag?patient= finds the Flag written, with status active",
            Self::Category => {
                "the assessment is found by category survey, and the Flag carries its category"
            }
            Self::Supersede => "a new segment ends the old Flag and starts a new one",
            Self::Cleanup => "what the kit wrote is deleted, or tagged where deletes are refused",
        }
    }

    /// Whether a failure means segmentti cannot work with the server. A CapabilityStatement that
    /// under-declares is common and harmless when the behaviour is there (the checks that do it
    /// decide); leftover test data are tagged and harm no client; a run never searches by
    /// category (EHRs reading its results do).
    pub fn required(self) -> bool {
        !matches!(self, Self::Declared | Self::Category | Self::Cleanup)
    }
}

/// How a check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The server did it.
    Pass,
    /// The server did not, or answered something unusable.
    Fail,
    /// Not tried: it needs what an earlier check failed to provide.
    Skip,
}

/// One HTTP request and its answer, as a report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exchange {
    /// `GET`, `POST`, …
    pub method: String,
    /// The URL with query values elided ([`crate::fhir::redact`]).
    pub url: String,
    /// The status, when an answer came.
    pub status: Option<u16>,
    /// What came back, described: a resource's type and id, a Bundle's matches, an
    /// OperationOutcome's issues, the start of a non-FHIR body, or why nothing came.
    pub answer: String,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Which check.
    pub id: CheckId,
    /// What it shows.
    pub title: &'static str,
    /// Whether a failure fails the kit.
    pub required: bool,
    /// Pass, fail or skip.
    pub outcome: Outcome,
    /// Why: what was seen, or what was missing.
    pub reason: String,
    /// The requests that decided it, in order.
    pub exchanges: Vec<Exchange>,
}

/// Every check's result against one server.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The server's base, redacted.
    pub server: String,
    /// The run id in the test data's identifiers.
    pub run: String,
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    /// The required checks that failed.
    pub fn required_failures(&self) -> impl Iterator<Item = &Check> {
        self.checks
            .iter()
            .filter(|c| c.required && c.outcome == Outcome::Fail)
    }

    /// The result of `id`.
    pub fn check(&self, id: CheckId) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }
}

/// Why the kit could not start (a server's answers never make it fail: they are results).
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    /// The model whose resources the kit writes does not compile or place a client.
    #[error(
        "the model `{model}` cannot be used for the test client: {reason}\nhint: run `segmentti check-mapping` on it"
    )]
    Model {
        /// The model's id.
        model: String,
        /// What went wrong.
        reason: String,
    },
}

/// Runs every check against `client`'s server, writing resources of `mapping`'s model for test
/// clients assessed yesterday and superseded `today`.
pub async fn run(
    client: &FhirClient,
    mapping: &Mapping,
    today: Day,
) -> Result<Report, ConformanceError> {
    checks::Kit::new(client, mapping, today)?.run().await
}
