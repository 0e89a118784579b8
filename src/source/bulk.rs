//! A FHIR Bulk Data Access 2.0 client: kick off an `$export` and poll its status
//! ([`export`]), then hand its NDJSON files on in one of two ways: streamed straight into the
//! fold as they download ([`stream`], cut into lines by [`super::files::LineBlocks`] like any
//! file), or downloaded into a work directory first ([`download`]) that the run then reads like
//! any Bulk output ([`super::files`]). At the end the job is deleted ([`finish`]).
//!
//! Everything needed to resume lives in `{work_dir}/job.json`, written after every step: a run
//! killed while the server exports resumes polling the same status URL. One killed while
//! streaming streams the same job's files again from their start, which counts nothing twice
//! because a run writes nothing before its whole input is folded; one killed while downloading
//! keeps the files it finished (each is written to `.part` and renamed when complete). A new
//! export is kicked off only when the job file asks for a different export.
//!
//! What it trusts: the token goes only to the FHIR base's origin; an output file elsewhere is
//! fetched without it, and refused when the manifest says it needs one. A file on the origin
//! that redirects elsewhere (object storage, a pre-signed URL) is followed there without the
//! token. Every URL it shows, in errors and logs, is redacted ([`redact`]): status and file
//! URLs may carry signatures in their query. The error files are read line by line and only
//! counted by severity and code ([`ExportErrors`]); their diagnostics, which may name a client,
//! go to the debug log alone. The next `_since` is the server's `transactionTime`, never this
//! machine's clock ([`Exported::next_since`]). A refusal for what a request is (401, 403, 404,
//! 405 on the kick-off, a poll or a file) is [`BulkError::Refused`], never retried; the job is
//! kept for the next run unless the server no longer knows it (404 on the status URL). This
//! module reads no resource beyond the client it belongs to ([`touched`]); it does not fold or
//! write results.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::{Rfc2822, Rfc3339};
use tracing::{debug, info, warn};

use super::files::{Limits, LineBlocks, SourceError};
use super::{Batch, Resource};
use crate::fhir::client::retry_after;
use crate::fhir::error::refusal_status;
use crate::fhir::{FhirClient, FhirError, OperationOutcomeSummary, redact};

/// Which population to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    /// `[base]/$export`: every resource of the asked types.
    System,
    /// `[base]/Patient/$export`: every patient's compartment.
    Patient,
    /// `[base]/Group/{id}/$export`: the members of one Group.
    Group(String),
}

/// What to export and where to keep it.
#[derive(Debug, Clone)]
pub struct BulkOptions {
    /// Which population.
    pub level: Level,
    /// `_type`: the resource types the models read.
    pub types: Vec<String>,
    /// `_since`: only resources changed at or after this instant.
    pub since: Option<String>,
    /// Where the job file lives, and the files when they are downloaded first ([`download`]).
    pub work_dir: PathBuf,
    /// Give up waiting for the export after this long (the job stays, to be resumed).
    pub timeout: Duration,
    /// The longest wait between two status polls, whatever `Retry-After` says.
    pub max_poll_interval: Duration,
    /// How long one output file may take to download.
    pub download_timeout: Duration,
}

/// The completion manifest of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    /// The server's time when the export's data were taken: the next `_since`. Required by
    /// Bulk Data, but a server that leaves it out is read all the same ([`Exported::next_since`]).
    #[serde(default)]
    pub transaction_time: Option<String>,
    /// The kick-off request.
    #[serde(default)]
    pub request: String,
    /// Whether the output files need the token.
    #[serde(default)]
    pub requires_access_token: bool,
    /// The data files.
    #[serde(default)]
    pub output: Vec<OutputFile>,
    /// OperationOutcome files of what could not be exported.
    #[serde(default)]
    pub error: Vec<OutputFile>,
}

/// One file of the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputFile {
    /// The resource type in the file.
    #[serde(rename = "type")]
    pub resource_type: String,
    /// Where to download it.
    pub url: String,
    /// Resources in it, when the server says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// The resumable state of one export, `{work_dir}/job.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Job {
    /// The kick-off URL; another one means another export.
    kick_off: String,
    /// The status URL the server gave.
    status: String,
    /// Once complete.
    manifest: Option<Manifest>,
    /// Output URLs already downloaded.
    downloaded: BTreeSet<String>,
    /// The server's clock (its `Date` header, RFC 3339) when it accepted the kick-off: the
    /// next `_since` when the manifest has no `transactionTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    accepted_at: Option<String>,
}

/// A finished export, its files not yet read.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// The manifest's transaction time, when it has a valid one.
    pub transaction_time: Option<String>,
    /// The `_since` of the next incremental run, on the server's clock: the transaction time;
    /// without one, when the server accepted the kick-off; without that, the `_since` this
    /// export was asked with (the checkpoint does not move). `None` only for a full export
    /// whose time is not known at all: the next run then exports everything again.
    pub next_since: Option<String>,
    /// The status URL (to delete the job once the run is done).
    pub status: String,
    /// The data files of the types asked for, in the manifest's order.
    pub files: Vec<OutputFile>,
    /// Whether the files need the token.
    pub requires_access_token: bool,
    /// Files of types not asked for, per type: neither downloaded nor read.
    pub ignored: BTreeMap<String, usize>,
    /// What the error files said, counted.
    pub errors: ExportErrors,
    /// Whether this run resumed an export a previous run started.
    pub resumed: bool,
    /// The job as last written, and where: [`download`] records its files in it.
    job: Job,
    job_path: PathBuf,
}

/// What the export's error files (OperationOutcome NDJSON) said, counted as they are read a
/// block of lines at a time: issues per severity and code, and where the first ones are. Never
/// their diagnostics, which may name a client; those are logged at debug, one per issue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportErrors {
    /// Error files read.
    pub files: usize,
    /// Issues per `severity code`; past `KINDS` distinct ones, the rest count as `other`.
    pub kinds: BTreeMap<String, u64>,
    /// Where the first `FIRST` issues are (file and line) and their `severity code`.
    pub first: Vec<String>,
    /// Lines that are not an OperationOutcome.
    pub unreadable: u64,
}

/// At most this many distinct `severity code`s are counted apart: a server's file cannot grow
/// the summary beyond it.
const KINDS: usize = 16;
/// The first this many issues are located.
const FIRST: usize = 3;

impl ExportErrors {
    /// All the issues counted.
    pub(crate) fn issues(&self) -> u64 {
        self.kinds.values().sum()
    }

    /// Whether the error files held nothing.
    pub fn is_empty(&self) -> bool {
        self.issues() == 0 && self.unreadable == 0
    }

    /// Counts the error file downloaded to `path`, named `name` (its redacted URL).
    fn read(&mut self, path: &Path, name: Arc<str>) -> Result<(), BulkError> {
        let mut file = std::fs::File::open(path).map_err(|source| BulkError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut lines = LineBlocks::new(name, Limits::DEFAULT);
        loop {
            let (read, batch) = lines.fill(&mut file)?;
            if let Some(batch) = batch {
                self.add(&batch);
            }
            if read == 0 {
                break;
            }
        }
        if let Some(batch) = lines.finish() {
            self.add(&batch);
        }
        self.files += 1;
        Ok(())
    }

    /// Counts the OperationOutcomes of one block of lines.
    fn add(&mut self, batch: &Batch) {
        let (origins, resources) = batch.resources();
        for (i, resource) in resources.into_iter().enumerate() {
            let outcome = match resource {
                Resource::Text(text) => OperationOutcomeSummary::from_body(text.as_bytes()),
                Resource::Value(value) => OperationOutcomeSummary::from_value(value),
                Resource::Unreadable(_) => None,
            };
            let Some(outcome) = outcome else {
                self.unreadable += 1;
                continue;
            };
            for issue in outcome.issues {
                let kind = format!("{} {}", code(&issue.severity), code(&issue.code));
                debug!(
                    origin = %origins.get(i),
                    kind = %kind,
                    diagnostics = issue.diagnostics.as_deref().unwrap_or(""),
                    "an export error"
                );
                if self.first.len() < FIRST {
                    self.first.push(format!("{} ({kind})", origins.get(i)));
                }
                let kind = if self.kinds.len() < KINDS || self.kinds.contains_key(&kind) {
                    kind
                } else {
                    "other".to_owned()
                };
                *self.kinds.entry(kind).or_default() += 1;
            }
        }
    }
}

/// A severity or issue code as shown: FHIR codes are short words with hyphens, so anything else
/// a server sends (which could be anything) is shown as `?`.
fn code(text: &str) -> &str {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '-';
    if (1..=32).contains(&text.len()) && text.chars().all(word) {
        text
    } else {
        "?"
    }
}

impl fmt::Display for ExportErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} issue(s) in {} error file(s)",
            self.issues(),
            self.files
        )?;
        for (n, (kind, count)) in self.kinds.iter().enumerate() {
            write!(f, "{} {kind} {count}", if n == 0 { ":" } else { "," })?;
        }
        if !self.first.is_empty() {
            write!(f, "; first at {}", self.first.join(", "))?;
        }
        if self.unreadable > 0 {
            write!(f, "; {} line(s) not an OperationOutcome", self.unreadable)?;
        }
        Ok(())
    }
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// The request could not be made.
    #[error(transparent)]
    Fhir(#[from] FhirError),
    /// The server refused the kick-off.
    #[error(
        "the export kick-off {url} answered {status}{}\nhint: check that the server supports Bulk Data $export at this level and the token's scopes",
        outcome.as_ref().map(|o| format!(": {o}")).unwrap_or_default()
    )]
    KickOff {
        /// The kick-off URL.
        url: String,
        /// Its status.
        status: StatusCode,
        /// The server's OperationOutcome.
        outcome: Option<OperationOutcomeSummary>,
    },
    /// The server refused the kick-off, the status poll or a file for what it is, not what it
    /// carries (401, 403, 404, 405): asking again cannot help, so the run stops at once.
    #[error(
        "the export's {step} {url} answered {status}{}\nhint: {}",
        outcome.as_ref().map(|o| format!(": {o}")).unwrap_or_default(),
        step.hint(*status)
    )]
    Refused {
        /// What was asked.
        step: Step,
        /// Its URL (redacted).
        url: String,
        /// The status.
        status: StatusCode,
        /// The server's OperationOutcome.
        outcome: Option<OperationOutcomeSummary>,
    },
    /// The kick-off answer had no status URL.
    #[error(
        "the export kick-off {url} answered {status} without a Content-Location\nhint: the server does not follow the Bulk Data async pattern"
    )]
    NoStatusUrl {
        /// The kick-off URL.
        url: String,
        /// Its status.
        status: StatusCode,
    },
    /// The export failed on the server.
    #[error(
        "the export at {status_url} failed with {status}{}\nhint: the job file is removed; the next run starts a new export",
        outcome.as_ref().map(|o| format!(": {o}")).unwrap_or_default()
    )]
    Failed {
        /// The status URL.
        status_url: String,
        /// Its status.
        status: StatusCode,
        /// The server's OperationOutcome.
        outcome: Option<OperationOutcomeSummary>,
    },
    /// The export did not complete in time.
    #[error(
        "the export at {status_url} was not complete after {}s (last progress: {progress})\nhint: run the same command again to go on waiting for this job (it is kept in {job}), or raise --bulk-timeout",
        after.as_secs()
    )]
    TimedOut {
        /// The status URL.
        status_url: String,
        /// How long it waited.
        after: Duration,
        /// The last `X-Progress`.
        progress: String,
        /// The job file.
        job: PathBuf,
    },
    /// The manifest is not a Bulk Data manifest.
    #[error(
        "the export at {status_url} completed with a manifest that cannot be read: {cause}\nhint: the server's manifest does not follow Bulk Data 2.0"
    )]
    Manifest {
        /// The status URL.
        status_url: String,
        /// What is wrong.
        cause: String,
    },
    /// An output file needs the token but is on another origin.
    #[error(
        "the {resource_type} file {url} requires an access token but is not on the FHIR server's origin; the token is not sent there\nhint: have the server put its files on its own origin, or serve them without a token"
    )]
    CrossOriginToken {
        /// The file's type.
        resource_type: String,
        /// The file's URL (redacted).
        url: String,
    },
    /// An output file could not be downloaded.
    #[error("cannot download {resource_type} file {url}: {cause}\nhint: {hint}")]
    Download {
        /// The file's type.
        resource_type: String,
        /// The file's URL (redacted).
        url: String,
        /// What went wrong.
        cause: String,
        /// What to do.
        hint: &'static str,
    },
    /// A streamed file broke off after some of its lines had gone into the run.
    #[error(
        "the {resource_type} file {url} broke off after {lines} line(s) had gone into the run: {cause}\nhint: those lines are counted and reading the file again would count them twice, so the run stops with nothing written; run the same command again to read this export again from the start (the job is resumed, not exported anew), or give --work-dir DIR to download the files first, resumably"
    )]
    BrokeOff {
        /// The file's type.
        resource_type: String,
        /// The file's URL (redacted).
        url: String,
        /// The lines already handed on.
        lines: u64,
        /// What went wrong.
        cause: String,
    },
    /// The consumer of a streamed file stopped the read.
    #[error("{0}")]
    Stopped(String),
    /// An export's line is not a resource.
    #[error(
        "{origin} is not a FHIR resource: {cause}\nhint: the export is damaged; delete job.json in the work directory (--work-dir, or OUT/.bulk) and run again for a new export"
    )]
    Unreadable {
        /// The file and line.
        origin: String,
        /// What is wrong.
        cause: String,
    },
    /// A downloaded file could not be read (or passed a limit of the line reader).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The work directory could not be used.
    #[error("cannot use {path}: {source}\nhint: check that the work directory is writable")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl BulkError {
    /// Whether the server refused a request for what it is (see
    /// `FhirError::is_refusal`): the run stopped, and its exit code says so.
    pub fn is_refusal(&self) -> bool {
        match self {
            Self::Fhir(e) => e.is_refusal(),
            Self::Refused { .. } => true,
            _ => false,
        }
    }
}

/// What to do when the server no longer has an export's files.
const EXPIRED_FILES: &str = "the export's files have expired; delete job.json in the work directory (--work-dir, or OUT/.bulk) and run again to start a new export";

/// Which request of an export a server refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The `$export` kick-off.
    KickOff,
    /// A poll of the status URL.
    Status,
    /// The download of an output or error file, by its resource type.
    File(String),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KickOff => f.write_str("kick-off"),
            Self::Status => f.write_str("status URL"),
            Self::File(resource_type) => write!(f, "{resource_type} file"),
        }
    }
}

impl Step {
    /// What to do about a refusal of this step.
    fn hint(&self, status: StatusCode) -> &'static str {
        match (status.as_u16(), self) {
            (401, _) => {
                "the server did not accept the credentials: check the bearer token, or the SMART client id, key and token URL, and that the token has not expired"
            }
            (403, Self::KickOff) => {
                "the credentials may not export: check the client's scopes (system/*.read, or read scopes for the types exported) and the server's access rules for Bulk Data"
            }
            (403, _) => {
                "the credentials may not read this export: check the client's scopes; the job is kept, so the same command resumes it once they are fixed"
            }
            (404 | 405, Self::KickOff) => {
                "the server has no Bulk Data $export by GET at this level: check that the base URL is the FHIR service base, the --bulk-level or --group (the Group must exist), and that the server supports Bulk Data 2.0"
            }
            (404, Self::Status) => {
                "the server no longer knows this export (it expired or was deleted): the job file is removed, so the next run starts a new export"
            }
            (404, Self::File(_)) => EXPIRED_FILES,
            _ => {
                "the server does not allow GET on the export's URLs: check that it supports Bulk Data 2.0; the job is kept in the work directory"
            }
        }
    }
}

/// The kick-off URL of an export.
fn kick_off_url(client: &FhirClient, options: &BulkOptions) -> Result<Url, FhirError> {
    let mut url = client.base().clone();
    {
        let mut path = url
            .path_segments_mut()
            .map_err(|()| FhirError::InvalidBase {
                url: client.base().to_string(),
                reason: "it cannot have a path",
            })?;
        path.pop_if_empty();
        match &options.level {
            Level::System => path.push("$export"),
            Level::Patient => path.push("Patient").push("$export"),
            Level::Group(id) => path.push("Group").push(id).push("$export"),
        };
    }
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("_outputFormat", "application/fhir+ndjson");
        if !options.types.is_empty() {
            query.append_pair("_type", &options.types.join(","));
        }
        if let Some(since) = &options.since {
            query.append_pair("_since", since);
        }
    }
    Ok(url)
}

/// Runs (or resumes) the export until its manifest, and reads its error files. The data files
/// are then read by [`stream`] or [`download`].
pub async fn export(client: &FhirClient, options: &BulkOptions) -> Result<Exported, BulkError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BulkError::Io { path, source }
    };
    std::fs::create_dir_all(&options.work_dir).map_err(io(&options.work_dir))?;
    let job_path = options.work_dir.join("job.json");
    let kick_off = kick_off_url(client, options)?;
    let mut job = read_job(&job_path)
        .filter(|j| j.kick_off == kick_off.as_str())
        .unwrap_or_default();
    let resumed = !job.status.is_empty();
    if !resumed {
        let files_dir = options.work_dir.join("files");
        if files_dir.exists() {
            clear_dir(&files_dir)?;
        }
        let (status, accepted_at) = start(client, &kick_off).await?;
        job = Job {
            kick_off: kick_off.to_string(),
            status: status.to_string(),
            accepted_at,
            ..Job::default()
        };
        write_job(&job_path, &job)?;
    }
    let status = Url::parse(&job.status).map_err(|e| BulkError::Manifest {
        status_url: format!("(the status URL in {})", job_path.display()),
        cause: format!("the status URL is not a URL: {e}"),
    })?;
    if resumed {
        info!(status = %redact(&status), "resuming the export a previous run started");
    }
    let manifest = match job.manifest.clone() {
        Some(m) => m,
        None => {
            let polled = poll(client, &status, options, &job_path).await;
            let m = match polled {
                Ok(m) => m,
                Err(
                    e @ (BulkError::Failed { .. }
                    | BulkError::Refused {
                        status: StatusCode::NOT_FOUND,
                        ..
                    }),
                ) => {
                    // A failed or forgotten job cannot be resumed: the next run starts afresh.
                    let _ = std::fs::remove_file(&job_path);
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            job.manifest = Some(m.clone());
            write_job(&job_path, &job)?;
            m
        }
    };
    let wanted: BTreeSet<&str> = options.types.iter().map(String::as_str).collect();
    let mut ignored: BTreeMap<String, usize> = BTreeMap::new();
    let mut files = Vec::new();
    for file in &manifest.output {
        if wanted.is_empty() || wanted.contains(file.resource_type.as_str()) {
            files.push(file.clone());
        } else {
            *ignored.entry(file.resource_type.clone()).or_default() += 1;
        }
    }
    if !ignored.is_empty() {
        warn!(
            ?ignored,
            "the export holds files of types not asked for; they are not read"
        );
    }
    let mut errors = ExportErrors::default();
    for file in &manifest.error {
        // On disk first, so a download that breaks off is fetched again from its start
        // without counting its lines twice; then read a block of lines at a time.
        let target = options.work_dir.join("errors.ndjson");
        fetch(
            client,
            file,
            manifest.requires_access_token,
            Target::Disk(&target),
            options.download_timeout,
        )
        .await?;
        errors.read(&target, Arc::from(shown(&file.url)))?;
        let _ = std::fs::remove_file(&target);
    }
    if !errors.is_empty() {
        warn!(
            issues = errors.issues(),
            files = errors.files,
            "the export's error files report resources the server could not export"
        );
    }
    let transaction_time = manifest.transaction_time.as_deref().and_then(instant);
    let next_since = match (&transaction_time, &job.accepted_at) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(accepted)) => {
            warn!(
                accepted_at = %accepted,
                "the export's manifest has no valid transactionTime; the next export asks for changes since the server accepted this one"
            );
            Some(accepted.clone())
        }
        (None, None) => {
            warn!(
                since = options.since.as_deref().unwrap_or("none"),
                "the export's manifest has no valid transactionTime and the server sent no Date; the checkpoint keeps the since this export was asked with"
            );
            options.since.clone()
        }
    };
    Ok(Exported {
        transaction_time,
        next_since,
        status: job.status.clone(),
        files,
        requires_access_token: manifest.requires_access_token,
        ignored,
        errors,
        resumed,
        job,
        job_path,
    })
}

/// Downloads the export's data files into `{work_dir}/files` and returns that directory. It
/// resumes: a file an earlier run of the same job finished is not fetched again.
pub async fn download(
    client: &FhirClient,
    exported: &Exported,
    options: &BulkOptions,
) -> Result<PathBuf, BulkError> {
    let dir = options.work_dir.join("files");
    std::fs::create_dir_all(&dir).map_err(|source| BulkError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut job = exported.job.clone();
    for (i, file) in exported.files.iter().enumerate() {
        if job.downloaded.contains(&file.url) {
            continue;
        }
        let target = dir.join(format!("{i:05}-{}.ndjson", safe_name(&file.resource_type)));
        fetch(
            client,
            file,
            exported.requires_access_token,
            Target::Disk(&target),
            options.download_timeout,
        )
        .await?;
        job.downloaded.insert(file.url.clone());
        write_job(&exported.job_path, &job)?;
    }
    Ok(dir)
}

/// Streams the export's data files, one after the other, into `emit` as their bytes arrive:
/// blocks of complete lines, as [`super::files`] reads a file, named by the file's URL. A file
/// is never in memory whole: the block being filled is, and what `emit`'s bounded channel holds.
///
/// A file that breaks off before any of its lines was handed on is fetched again, as
/// [`download`] would. Once lines have gone to `emit` they are folded, and a fold cannot take
/// them back; the file fetched again need not even be the same bytes (compressed differently,
/// regenerated), so skipping what was read could lose or double lines. The run then fails
/// ([`BulkError::BrokeOff`]) with the file named: nothing is written, and the next run streams
/// the same job again from the start. Buffering every file on disk first is what `--work-dir`
/// ([`download`]) is for.
pub async fn stream(
    client: &FhirClient,
    exported: &Exported,
    timeout: Duration,
    limits: Limits,
    emit: &mut (dyn FnMut(Batch) -> Result<(), String> + Send),
) -> Result<(), BulkError> {
    for file in &exported.files {
        fetch(
            client,
            file,
            exported.requires_access_token,
            Target::Fold(&mut *emit, limits),
            timeout,
        )
        .await?;
    }
    Ok(())
}

/// Adds the clients a batch of an export touches to `into`: its Patients' ids and the patients
/// its other resources refer to (`subject` or `patient`). An incremental export (`_since`)
/// holds only what changed, so these are the clients whose whole history must be read again.
pub fn touched(batch: &Batch, into: &mut BTreeSet<String>) -> Result<(), BulkError> {
    #[derive(Deserialize)]
    struct Reference {
        reference: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Touch {
        resource_type: String,
        id: Option<String>,
        subject: Option<Reference>,
        patient: Option<Reference>,
    }
    let (origins, resources) = batch.resources();
    for (i, resource) in resources.into_iter().enumerate() {
        let touch = match resource {
            Resource::Text(text) => serde_json::from_str::<Touch>(text).map_err(|e| e.to_string()),
            Resource::Value(value) => Touch::deserialize(value).map_err(|e| e.to_string()),
            Resource::Unreadable(reason) => Err(reason.to_owned()),
        }
        .map_err(|cause| BulkError::Unreadable {
            origin: origins.get(i).to_string(),
            cause,
        })?;
        let id = if touch.resource_type == "Patient" {
            touch.id
        } else {
            touch
                .subject
                .or(touch.patient)
                .and_then(|r| r.reference)
                .and_then(|r| r.strip_prefix("Patient/").map(str::to_owned))
        };
        into.extend(id);
    }
    Ok(())
}

/// Deletes the job on the server (it may then drop the files) and the local job file, after
/// the run used the files. A server that does not support deleting is not an error.
pub async fn finish(client: &FhirClient, exported: &Exported, work_dir: &Path) {
    if let Ok(status) = Url::parse(&exported.status) {
        match client
            .exchange(Method::DELETE, &status, HeaderMap::new(), None)
            .await
        {
            Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_FOUND => {}
            Ok(r) => {
                warn!(status = r.status().as_u16(), url = %redact(&status), "the export job could not be deleted")
            }
            Err(e) => warn!(error = %e, "the export job could not be deleted"),
        }
    }
    let _ = std::fs::remove_file(work_dir.join("job.json"));
}

/// The kick-off: `202 Accepted` with the status URL in `Content-Location`; with it, the
/// server's clock from its `Date` header (RFC 3339), when it sent one.
async fn start(client: &FhirClient, url: &Url) -> Result<(Url, Option<String>), BulkError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/fhir+json"),
    );
    headers.insert(
        HeaderName::from_static("prefer"),
        HeaderValue::from_static("respond-async"),
    );
    let policy = client.retry_policy().clone();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let response = client
            .exchange(Method::GET, url, headers.clone(), None)
            .await;
        let response = match response {
            Err(e) if e.is_retryable() && attempt < policy.max_attempts => {
                tokio::time::sleep(policy.delay(attempt, None)).await;
                continue;
            }
            r => r?,
        };
        let status = response.status();
        if status == StatusCode::ACCEPTED {
            let header = |name| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v: &HeaderValue| v.to_str().ok())
            };
            let location = header(header::CONTENT_LOCATION).and_then(|v| url.join(v).ok());
            let accepted_at = header(header::DATE).and_then(http_date);
            return location
                .map(|l| (l, accepted_at))
                .ok_or_else(|| BulkError::NoStatusUrl {
                    url: redact(url).to_string(),
                    status,
                });
        }
        if crate::fhir::error::retryable_status(status) && attempt < policy.max_attempts {
            let wait = retry_after(response.headers());
            tokio::time::sleep(policy.delay(attempt, wait)).await;
            continue;
        }
        let body = response.bytes().await.unwrap_or_default();
        let (url, outcome) = (
            redact(url).to_string(),
            OperationOutcomeSummary::from_body(&body),
        );
        return Err(if refusal_status(status) {
            BulkError::Refused {
                step: Step::KickOff,
                url,
                status,
                outcome,
            }
        } else {
            BulkError::KickOff {
                url,
                status,
                outcome,
            }
        });
    }
}

/// Polls the status URL until the manifest, honouring `Retry-After` and logging `X-Progress`.
async fn poll(
    client: &FhirClient,
    status_url: &Url,
    options: &BulkOptions,
    job: &Path,
) -> Result<Manifest, BulkError> {
    let started = Instant::now();
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    let policy = client.retry_policy().clone();
    let mut progress = String::from("none reported");
    let mut failures = 0;
    loop {
        let answer = client
            .exchange(Method::GET, status_url, headers.clone(), None)
            .await;
        let wait = match answer {
            Err(e) if e.is_retryable() && failures + 1 < policy.max_attempts => {
                failures += 1;
                warn!(error = %e, "polling the export failed; trying again");
                policy.delay(failures, None)
            }
            Err(e) => return Err(e.into()),
            Ok(response) => {
                let status = response.status();
                let retry = retry_after(response.headers());
                if status == StatusCode::OK {
                    let body = response.bytes().await.map_err(|e| BulkError::Manifest {
                        status_url: redact(status_url).to_string(),
                        cause: e.without_url().to_string(),
                    })?;
                    return serde_json::from_slice(&body).map_err(|e| BulkError::Manifest {
                        status_url: redact(status_url).to_string(),
                        cause: e.to_string(),
                    });
                }
                if status == StatusCode::ACCEPTED {
                    failures = 0;
                    if let Some(p) = response
                        .headers()
                        .get("x-progress")
                        .and_then(|v| v.to_str().ok())
                    {
                        // The server's words, shown in logs and messages: a line's worth.
                        progress = p.chars().take(120).collect();
                    }
                    info!(progress = %progress, "export in progress");
                    retry.unwrap_or(Duration::from_secs(1))
                } else if crate::fhir::error::retryable_status(status)
                    && failures + 1 < policy.max_attempts
                {
                    // 429 and 5xx while polling: the job goes on; wait as told.
                    failures += 1;
                    warn!(
                        status = status.as_u16(),
                        "the export status answered an error; polling again"
                    );
                    policy.delay(failures, retry)
                } else {
                    let body = response.bytes().await.unwrap_or_default();
                    let (url, outcome) = (
                        redact(status_url).to_string(),
                        OperationOutcomeSummary::from_body(&body),
                    );
                    return Err(if refusal_status(status) {
                        BulkError::Refused {
                            step: Step::Status,
                            url,
                            status,
                            outcome,
                        }
                    } else {
                        BulkError::Failed {
                            status_url: url,
                            status,
                            outcome,
                        }
                    });
                }
            }
        };
        let wait = wait.min(options.max_poll_interval);
        if started.elapsed() + wait > options.timeout {
            return Err(BulkError::TimedOut {
                status_url: redact(status_url).to_string(),
                after: started.elapsed(),
                progress,
                job: job.to_owned(),
            });
        }
        tokio::time::sleep(wait).await;
    }
}

/// Where a fetched file goes.
enum Target<'a> {
    /// To this file (through `.part`, renamed when complete).
    Disk(&'a Path),
    /// Into the fold, a block of lines at a time, within the reader's limits.
    Fold(
        &'a mut (dyn FnMut(Batch) -> Result<(), String> + Send),
        Limits,
    ),
}

/// Fetches one file into `target`, trying again on transport errors, truncated bodies and bad
/// gzip, as the client's retry policy allows, but never once lines have gone into the fold
/// (see [`stream`]).
async fn fetch(
    client: &FhirClient,
    file: &OutputFile,
    requires_token: bool,
    mut target: Target<'_>,
    timeout: Duration,
) -> Result<(), BulkError> {
    let failed = |cause: String, hint: &'static str| BulkError::Download {
        resource_type: file.resource_type.clone(),
        url: shown(&file.url),
        cause,
        hint,
    };
    let url = Url::parse(&file.url)
        .map_err(|e| failed(e.to_string(), "the manifest's URL is not a URL"))?;
    if requires_token && client.has_credentials() && !client.sends_credentials_to(&url) {
        return Err(BulkError::CrossOriginToken {
            resource_type: file.resource_type.clone(),
            url: redact(&url).to_string(),
        });
    }
    let name: Arc<str> = Arc::from(redact(&url).to_string());
    let mut headers = HeaderMap::new();
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/fhir+ndjson"),
    );
    let policy = client.retry_policy().clone();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut handed = 0;
        let request = (client, &url, headers.clone(), timeout);
        let fetched = match &mut target {
            Target::Disk(path) => fetch_to(request, path).await,
            Target::Fold(emit, limits) => {
                fetch_lines(request, &name, *limits, &mut **emit, &mut handed).await
            }
        };
        match fetched {
            Ok(()) => return Ok(()),
            Err(Fetch::Stopped(why)) => return Err(BulkError::Stopped(why)),
            Err(e) if handed > 0 => {
                return Err(BulkError::BrokeOff {
                    resource_type: file.resource_type.clone(),
                    url: shown(&file.url),
                    lines: handed,
                    cause: e.describe(),
                });
            }
            Err(Fetch::Status(status)) if refusal_status(status) => {
                return Err(BulkError::Refused {
                    step: Step::File(file.resource_type.clone()),
                    url: shown(&file.url),
                    status,
                    outcome: None,
                });
            }
            Err(Fetch::Status(StatusCode::GONE)) => {
                return Err(failed(
                    format!("the server answered {}", StatusCode::GONE),
                    EXPIRED_FILES,
                ));
            }
            Err(Fetch::Io(path, source)) => return Err(BulkError::Io { path, source }),
            Err(e @ Fetch::Redirect(_)) => {
                return Err(failed(
                    e.describe(),
                    "the server's redirects for this file cannot be followed safely; have it serve the file over https, with at most a few redirects",
                ));
            }
            Err(e) if attempt < policy.max_attempts && e.retryable() => {
                warn!(attempt, file = %file.resource_type, cause = %e.describe(), "download failed; trying again");
                tokio::time::sleep(policy.delay(attempt, None)).await;
            }
            Err(e) => {
                return Err(failed(
                    format!("{} (after {attempt} attempt(s))", e.describe()),
                    "check the server's log for this file; the next run resumes the same export (with --work-dir, keeping the files already downloaded)",
                ));
            }
        }
    }
}

/// Why one fetch attempt failed.
enum Fetch {
    Status(StatusCode),
    Transport(String),
    Body(String),
    Io(PathBuf, std::io::Error),
    Stopped(String),
    Redirect(String),
}

impl Fetch {
    fn retryable(&self) -> bool {
        match self {
            Self::Status(s) => crate::fhir::error::retryable_status(*s),
            Self::Transport(_) | Self::Body(_) => true,
            Self::Io(..) | Self::Stopped(_) | Self::Redirect(_) => false,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Status(s) => format!("the server answered {s}"),
            Self::Transport(e) | Self::Stopped(e) | Self::Redirect(e) => e.clone(),
            Self::Body(e) => format!("the body broke off or is corrupt: {e}"),
            Self::Io(path, e) => format!("{}: {e}", path.display()),
        }
    }
}

/// The `GET` of a file: client, URL, headers and timeout.
type Request<'a> = (&'a FhirClient, &'a Url, HeaderMap, Duration);

/// The most redirects one file may go through.
const MAX_REDIRECTS: usize = 5;

/// The body of a file, once the server said it is there. The HTTP client follows redirects on
/// the base's origin itself (token and all) and stops at any other; such a redirect, to object
/// storage or a pre-signed URL, is followed here, through [`FhirClient::exchange`] again, which
/// sends the token to the base's origin alone. A redirect from `https` to `http` is refused: a
/// pre-signed URL is as good as a token to whoever reads it on the way.
async fn open((client, url, headers, timeout): Request<'_>) -> Result<reqwest::Response, Fetch> {
    let mut url = url.clone();
    for _ in 0..=MAX_REDIRECTS {
        let response = client
            .exchange(Method::GET, &url, headers.clone(), Some(timeout))
            .await
            .map_err(|e| Fetch::Transport(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let next = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| url.join(v).ok());
        let Some(next) = next.filter(|_| status.is_redirection()) else {
            return Err(Fetch::Status(status));
        };
        if url.scheme() == "https" && next.scheme() != "https" {
            return Err(Fetch::Redirect(format!(
                "{} redirected to {}, off https",
                redact(&url),
                redact(&next)
            )));
        }
        debug!(from = %redact(&url), to = %redact(&next), status = status.as_u16(), "following the file's redirect");
        url = next;
    }
    Err(Fetch::Redirect(format!(
        "more than {MAX_REDIRECTS} redirects, the last to {}",
        redact(&url)
    )))
}

/// Downloads a file to `target`, through `target.part`.
async fn fetch_to(request: Request<'_>, target: &Path) -> Result<(), Fetch> {
    let response = open(request).await?;
    let part = target.with_extension("part");
    let io = |e| Fetch::Io(part.clone(), e);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&part).map_err(io)?);
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Fetch::Body(e.without_url().to_string()))?;
        out.write_all(&chunk).map_err(io)?;
    }
    out.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    std::fs::rename(&part, target).map_err(|e| Fetch::Io(target.to_owned(), e))
}

/// Streams a file's lines into `emit`; `handed` tells how many have gone there.
async fn fetch_lines(
    request: Request<'_>,
    name: &Arc<str>,
    limits: Limits,
    emit: &mut (dyn FnMut(Batch) -> Result<(), String> + Send),
    handed: &mut u64,
) -> Result<(), Fetch> {
    let mut body = open(request).await?.bytes_stream();
    let mut lines = LineBlocks::new(name.clone(), limits);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Fetch::Body(e.without_url().to_string()))?;
        if let Some(batch) = lines
            .push(&chunk)
            .map_err(|e| Fetch::Stopped(e.to_string()))?
        {
            emit(batch).map_err(Fetch::Stopped)?;
            *handed = lines.lines();
        }
    }
    if let Some(batch) = lines.finish() {
        emit(batch).map_err(Fetch::Stopped)?;
    }
    Ok(())
}

fn read_job(path: &Path) -> Option<Job> {
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

fn write_job(path: &Path, job: &Job) -> Result<(), BulkError> {
    let io = |source| BulkError::Io {
        path: path.to_owned(),
        source,
    };
    let text = serde_json::to_vec_pretty(job).map_err(|e| io(e.into()))?;
    let part = path.with_extension("part");
    std::fs::write(&part, text).map_err(io)?;
    std::fs::rename(&part, path).map_err(io)
}

/// Removes the files of an earlier export, so a new export is not read together with them.
fn clear_dir(dir: &Path) -> Result<(), BulkError> {
    let entries = std::fs::read_dir(dir).map_err(|source| BulkError::Io {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_file() {
            std::fs::remove_file(&path).map_err(|source| BulkError::Io { path, source })?;
        }
    }
    Ok(())
}

/// A manifest's URL as messages show it ([`redact`]); one that is not a URL loses its query,
/// which may be a signature all the same.
fn shown(url: &str) -> String {
    Url::parse(url).map_or_else(
        |_| match url.split_once(['?', '#']) {
            Some((before, _)) => format!("{before}?…"),
            None => url.to_owned(),
        },
        |u| redact(&u).to_string(),
    )
}

/// A resource type as a file-name part (a server could send anything).
fn safe_name(resource_type: &str) -> String {
    resource_type
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(64)
        .collect()
}

/// An RFC 3339 instant as given, when it is one: a server's string goes into the next
/// kick-off's query, so anything else is not taken.
fn instant(text: &str) -> Option<String> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .map(|_| text.to_owned())
}

/// An HTTP `Date` (`Sun, 06 Nov 1994 08:49:37 GMT`) as an RFC 3339 instant.
fn http_date(text: &str) -> Option<String> {
    OffsetDateTime::parse(text, &Rfc2822)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::ClientOptions;

    #[test]
    fn refusals_are_told_from_failures_and_say_what_to_fix_per_step() {
        let refused = |step: Step, code: u16| BulkError::Refused {
            step,
            url: "https://fhir.example.org/fhir/status/1?sig=…".into(),
            status: StatusCode::from_u16(code).expect("a status"),
            outcome: None,
        };
        for code in [401, 403, 404, 405] {
            assert!(refused(Step::Status, code).is_refusal(), "{code}");
        }
        let failed = BulkError::Failed {
            status_url: "https://fhir.example.org/fhir/status/1".into(),
            status: StatusCode::INTERNAL_SERVER_ERROR,
            outcome: None,
        };
        assert!(!failed.is_refusal());
        assert_eq!(
            refused(Step::File("Encounter".into()), 404).to_string(),
            format!(
                "the export's Encounter file https://fhir.example.org/fhir/status/1?sig=… answered 404 Not Found\nhint: {EXPIRED_FILES}"
            )
        );
        let hint = |step: Step, code: u16| refused(step, code).to_string();
        assert!(hint(Step::KickOff, 403).contains("hint: the credentials may not export"));
        assert!(hint(Step::Status, 403).contains("resumes it once they are fixed"));
        assert!(hint(Step::Status, 404).contains("the job file is removed"));
        assert!(hint(Step::KickOff, 404).contains("--bulk-level or --group"));
    }

    fn options(level: Level) -> BulkOptions {
        BulkOptions {
            level,
            types: vec!["Patient".into(), "Encounter".into()],
            since: Some("2026-01-01T00:00:00Z".into()),
            work_dir: PathBuf::from("w"),
            timeout: Duration::from_secs(1),
            max_poll_interval: Duration::from_secs(1),
            download_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn kick_off_urls_per_level() {
        let base = Url::parse("https://fhir.example/r4/").expect("url");
        let client = FhirClient::new(base, ClientOptions::new("t")).expect("client");
        let url = |level| {
            kick_off_url(&client, &options(level))
                .expect("url")
                .to_string()
        };
        let query = "_outputFormat=application%2Ffhir%2Bndjson&_type=Patient%2CEncounter&_since=2026-01-01T00%3A00%3A00Z";
        assert_eq!(
            url(Level::System),
            format!("https://fhir.example/r4/$export?{query}")
        );
        assert_eq!(
            url(Level::Patient),
            format!("https://fhir.example/r4/Patient/$export?{query}")
        );
        assert_eq!(
            url(Level::Group("g 1".into())),
            format!("https://fhir.example/r4/Group/g%201/$export?{query}")
        );
    }

    #[test]
    fn manifests_parse_with_optional_parts() {
        let m: Manifest = serde_json::from_str(
            r#"{"transactionTime":"2026-01-01T00:00:00Z","request":"x","requiresAccessToken":true,
                "output":[{"type":"Patient","url":"https://f/1.ndjson","count":2}]}"#,
        )
        .expect("a manifest");
        assert!(m.requires_access_token);
        assert_eq!(m.output[0].count, Some(2));
        assert!(m.error.is_empty());
        assert_eq!(safe_name("../Patient"), "Patient");
        let m: Manifest = serde_json::from_str(r#"{"request":"x","output":[]}"#)
            .expect("a manifest without transactionTime is read");
        assert_eq!(m.transaction_time, None);
    }

    #[test]
    fn error_files_are_counted_by_severity_and_code_without_their_diagnostics() {
        let lines = [
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"Patient 010101-123N born 1950-01-01"}]}"#,
            "",
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing"},{"severity":"warning","code":"010101-123N is not a code"}]}"#,
            r#"{"resourceType":"Patient","id":"p1","birthDate":"1950-01-01"}"#,
            "not json 010101-123N",
        ];
        let mut errors = ExportErrors::default();
        errors.add(&Batch::Lines {
            file: Arc::from("https://f.example/err.ndjson?sig=…"),
            first_line: 1,
            lines: lines.len(),
            text: lines.join("\n"),
        });
        errors.files += 1;
        assert_eq!(errors.issues(), 3);
        assert_eq!(errors.unreadable, 2);
        let shown = errors.to_string();
        assert_eq!(
            shown,
            "3 issue(s) in 1 error file(s): error processing 2, warning ? 1; first at https://f.example/err.ndjson?sig=…:1 (error processing), https://f.example/err.ndjson?sig=…:3 (error processing), https://f.example/err.ndjson?sig=…:3 (warning ?); 2 line(s) not an OperationOutcome"
        );
        assert!(
            !shown.contains("010101") && !shown.contains("1950"),
            "{shown}"
        );
    }

    #[test]
    fn a_server_cannot_grow_the_error_summary_past_its_kinds() {
        let text: String = (0..100)
            .map(|i| {
                format!(
                    "{{\"resourceType\":\"OperationOutcome\",\"issue\":[{{\"severity\":\"error\",\"code\":\"c{i}\"}}]}}\n"
                )
            })
            .collect();
        let mut errors = ExportErrors::default();
        errors.add(&Batch::Lines {
            file: Arc::from("e"),
            first_line: 1,
            lines: 100,
            text,
        });
        assert_eq!(errors.kinds.len(), KINDS + 1);
        assert_eq!(errors.kinds["other"], 100 - KINDS as u64);
        assert_eq!(errors.first.len(), FIRST);
    }

    #[test]
    fn manifest_urls_are_shown_without_their_query_values() {
        assert_eq!(
            shown("https://s.example/b/f.ndjson?X-Amz-Signature=abc"),
            "https://s.example/b/f.ndjson?X-Amz-Signature=…"
        );
        assert_eq!(shown("/relative/f.ndjson?sig=abc"), "/relative/f.ndjson?…");
    }

    #[test]
    fn server_times_are_taken_only_as_instants() {
        assert_eq!(
            instant("2026-01-01T00:00:00.123+02:00").as_deref(),
            Some("2026-01-01T00:00:00.123+02:00")
        );
        for bad in [
            "",
            "yesterday",
            "2026-01-01",
            "2026-01-01T00:00:00Z&_type=Patient",
        ] {
            assert_eq!(instant(bad), None, "{bad}");
        }
        assert_eq!(
            http_date("Sun, 06 Nov 1994 08:49:37 GMT").as_deref(),
            Some("1994-11-06T08:49:37Z")
        );
        assert_eq!(http_date("Sunday, 06-Nov-94 08:49:37"), None);
    }
}
