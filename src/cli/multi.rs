//! `run` over several sources: repeatable `--server` and `--input`, joined into whole clients
//! and written back with `--write-to each|URL` (see [`segmentti::run::multi`]), and `explain` of one
//! such client. This module turns flags into [`MultiOptions`] and the report into text or
//! JSON; the join key comes from a file or the environment, never from the command line, and
//! is never printed.
//!
//! | variable | meaning |
//! |---|---|
//! | `SEGMENTTI_JOIN_KEY` | the join key (at least 16 bytes of text), when `--join-key-file` is not given |

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;

use compact_str::CompactString;
use segmentti::assess::eval::{self, Explanation, HeldBy};
use segmentti::fhir::FhirClient;
use segmentti::model::Plan;
use segmentti::record::join::{Holder, IDENTITY_CODE, JoinSpec};
use segmentti::run::multi::{self, MultiOptions, MultiReport, Source, WriteTo};
use segmentti::run::pipeline::{self, Input, OnInvalid};
use segmentti::run::summary::ModelSummary;
use segmentti::sink::fanout::TargetOutcome;

use super::exit::Exit;
use super::server::WriteArgs;
use super::{ExplainArgs, ModelArgs, RunArgs};

/// The environment variable holding the join key.
pub const JOIN_KEY_VAR: &str = "SEGMENTTI_JOIN_KEY";

/// Where a joined run writes.
#[derive(Debug, Clone, Args)]
pub struct WriteToArg {
    /// Several sources: where results go, `each` (every server that holds the client, with its
    /// own Patient id) or one server's URL (one of the --server sources; clients it does not
    /// hold are reported).
    #[arg(long)]
    pub(super) write_to: Option<String>,
}

/// How several sources are joined.
#[derive(Debug, Clone, Args)]
pub struct JoinArgs {
    /// Identifier systems to join clients on, most preferred first (repeatable); default: the
    /// personal identity code.
    #[arg(long = "join-system", default_value = IDENTITY_CODE)]
    join_systems: Vec<String>,
    /// The key of the join keys (HMAC-SHA256), at least 16 bytes; default: SEGMENTTI_JOIN_KEY,
    /// else a fresh random key per run (join keys in reports then differ between runs).
    #[arg(long)]
    join_key_file: Option<PathBuf>,
    /// A source (a --server URL or an --input path) the run may go on without when it cannot
    /// be read (repeatable); any other source down stops the run before anything is written.
    /// A source that refuses the read (401, 403, 404, 405) stops the run all the same.
    #[arg(long = "allow-partial")]
    allow_partial: Vec<String>,
    /// Put the identifiers of duplicate Patients into the report (they are personal data).
    #[arg(long)]
    show_identifiers: bool,
    /// A TOML file of servers to read and join, each with its own credentials: `[[server]]`
    /// tables with `url` and at most one of `token_file` and `[server.smart]` (client_id,
    /// private_key, key_id, token_url, scope), and `[server.tls]` (ca_bundle, client_cert,
    /// client_key). A --server with the same URL is the same source; other --server sources use
    /// the command line's credentials.
    #[arg(long)]
    servers: Option<PathBuf>,
}

/// Whether the join key is given (a file or the environment), rather than drawn at random.
pub fn has_join_key(join: &JoinArgs) -> bool {
    join.join_key_file.is_some() || std::env::var_os(JOIN_KEY_VAR).is_some()
}

/// Whether the flags name several sources to join.
pub fn several(models: &ModelArgs, join: &JoinArgs) -> bool {
    models.input.len() + models.server.server.len() > 1 || join.servers.is_some()
}

/// The sources the flags name: servers first (those of the servers file, then the other
/// --server ones), then inputs.
struct Sources {
    sources: Vec<Source>,
    /// Each source as flags name it (a URL or a path), to match --allow-partial and --write-to.
    given: Vec<String>,
    /// How many of them are servers.
    servers: usize,
}

impl Sources {
    fn from_flags(models: &ModelArgs, join: &JoinArgs) -> Result<Self> {
        // The servers: those of the servers file with their own credentials, then the --server
        // ones it does not list, with the command line's.
        let mut servers: Vec<(url::Url, FhirClient)> = Vec::new();
        if let Some(path) = &join.servers {
            for connection in segmentti::fhir::connection::servers_file(path)? {
                let client = models.server.client_for(&connection)?;
                servers.push((connection.url, client));
            }
        }
        for url in &models.server.server {
            if !servers.iter().any(|(u, _)| u == url) {
                servers.push((url.clone(), models.server.client(url)?));
            }
        }
        let given: Vec<String> = (servers.iter())
            .map(|(u, _)| u.as_str().to_owned())
            .chain(models.input.iter().map(|p| p.display().to_string()))
            .collect();
        let mut this = Self {
            sources: Vec::new(),
            given,
            servers: servers.len(),
        };
        for a in &join.allow_partial {
            if this.find(a).is_none() {
                bail!(
                    "--allow-partial {a} names no source\nhint: give it as the --server URL or --input path"
                );
            }
        }
        let allowed = |s: usize| join.allow_partial.iter().any(|a| this.names(a, s));
        let mut sources = Vec::new();
        for (url, client) in servers {
            sources.push(Source {
                input: models.server_input(client.clone()),
                name: segmentti::fhir::redact(&url).to_string(),
                server: Some(client),
                may_be_missing: allowed(sources.len()),
            });
        }
        for path in &models.input {
            sources.push(Source {
                input: Input::Files(path.clone(), models.limits()),
                name: path.display().to_string(),
                server: None,
                may_be_missing: allowed(sources.len()),
            });
        }
        this.sources = sources;
        Ok(this)
    }

    /// Whether `flag` names source `s`.
    fn names(&self, flag: &str, s: usize) -> bool {
        self.given[s] == flag || url::Url::parse(flag).is_ok_and(|u| u.as_str() == self.given[s])
    }

    /// The source `flag` names.
    fn find(&self, flag: &str) -> Option<usize> {
        (0..self.given.len()).find(|&s| self.names(flag, s))
    }
}

/// `run` over several sources, written back as `write_to` says; the flags were checked by
/// [`super::spec::resolve`]: `write.state` is never set for one.
pub fn run(args: &RunArgs, write_to: &str, write: &WriteArgs, plans: &[Plan]) -> Result<ExitCode> {
    let join = &args.join;
    let named = Sources::from_flags(&args.models, join)?;
    let write_to = match write_to {
        "each" => WriteTo::Each,
        url => match named.find(url).filter(|&s| s < named.servers) {
            Some(t) => WriteTo::One(t),
            None => bail!(
                "--write-to {url} is neither `each` nor one of the --server sources\nhint: a target must also be read, to know which clients it holds"
            ),
        },
    };
    let options = MultiOptions {
        sources: named.sources,
        write_to,
        batch: write.batch,
        dry_run: write.dry_run,
        on_invalid: write.on_invalid,
        join: spec(join)?,
        shard: args.shard,
    };
    let report = match multi::run(&options, plans) {
        Ok(report) => report,
        Err(e) if e.is_refusal() => {
            eprintln!("error: {e}");
            return Ok(Exit::NotAllowed.into());
        }
        Err(e) => return Err(e.into()),
    };
    if write.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report, write.dry_run));
    }
    if write.stats {
        print!("{}", stats(&report));
    }
    let refusing = report.refusing_targets();
    for (target, message) in &refusing {
        eprintln!("error: stopped writing to {target}: {message}");
    }
    let failed = report.failed_targets();
    for (target, message) in &failed {
        eprintln!(
            "not written: {target}: {}\nhint: the other targets were written; run again when it answers",
            message.lines().next().unwrap_or_default()
        );
    }
    let summaries: Vec<ModelSummary> = report.models.iter().map(|m| m.summary.clone()).collect();
    Ok(Exit::worst([
        (!refusing.is_empty()).then_some(Exit::NotAllowed),
        (!failed.is_empty()).then_some(Exit::TargetFailed),
        super::report_invalid(&summaries).then_some(Exit::Invalid),
        (report.refused() > 0).then_some(Exit::Refused),
        (report.rejected_count() > 0).then_some(Exit::Rejects),
    ])
    .into())
}

/// How clients are joined, from the flags.
fn spec(join: &JoinArgs) -> Result<Arc<JoinSpec>> {
    Ok(Arc::new(JoinSpec::new(
        join_key(join)?,
        join.join_systems.clone(),
        join.show_identifiers,
    )?))
}

/// The join key: `--join-key-file`, `SEGMENTTI_JOIN_KEY`, or a fresh random one.
fn join_key(join: &JoinArgs) -> Result<Vec<u8>> {
    if let Some(path) = &join.join_key_file {
        let key = std::fs::read(path)
            .with_context(|| format!("cannot read the join key file {}", path.display()))?;
        return Ok(key.trim_ascii().to_vec());
    }
    if let Ok(key) = std::env::var(JOIN_KEY_VAR) {
        return Ok(key.trim().as_bytes().to_vec());
    }
    tracing::info!(
        "no join key given: a random one for this run, so join keys in its report match no other run's"
    );
    Ok(rand::random::<[u8; 32]>().to_vec())
}

/// Per source its read rate, per target its write rate (over all models), and the memory of
/// the join; each also as a `stats:` line of `key=value` for tools (benchmarks) to parse.
fn stats(report: &MultiReport) -> String {
    let mut out = String::from("\nStats:\n");
    let rate = |n: u64, s: f64| n as f64 / s.max(1e-9);
    for s in report.sources.iter().filter(|s| s.missing.is_none()) {
        out.push_str(&format!(
            "  read  {}: {} resources in {:.2} s ({:.0}/s)\nstats: source={} read={} read_seconds={:.3}\n",
            s.source,
            s.resources,
            s.seconds,
            rate(s.resources, s.seconds),
            s.source,
            s.resources,
            s.seconds
        ));
    }
    let mut targets: Vec<(&str, u64, u64, f64)> = Vec::new();
    for t in report.models.iter().flat_map(|m| &m.targets) {
        let (entries, transactions) = match &t.outcome {
            TargetOutcome::Written(r) => (r.entries, r.transactions),
            TargetOutcome::Failed(_) | TargetOutcome::NotAllowed(_) => (0, 0),
        };
        match targets.iter_mut().find(|(name, ..)| *name == t.target) {
            Some(sum) => {
                sum.1 += entries;
                sum.2 += transactions;
                sum.3 += t.seconds;
            }
            None => targets.push((&t.target, entries, transactions, t.seconds)),
        }
    }
    for (target, entries, transactions, seconds) in targets {
        out.push_str(&format!(
            "  write {target}: {entries} resources in {transactions} transaction(s) in {seconds:.2} s ({:.0}/s)\nstats: target={target} written={entries} transactions={transactions} write_seconds={seconds:.3}\n",
            rate(entries, seconds)
        ));
    }
    let clients = report.join.clients;
    let after_join = report.rss_after_join_bytes.unwrap_or(0);
    let peak = segmentti::run::telemetry::peak_rss_bytes().unwrap_or(0);
    out.push_str(&format!(
        "  join  {clients} clients: resident {:.1} MiB right after the join ({:.0} bytes per client), peak {:.1} MiB\nstats: clients={clients} rss_after_join_bytes={after_join} peak_rss_bytes={peak}\n",
        after_join as f64 / 1048576.0,
        rate(after_join, clients as f64),
        peak as f64 / 1048576.0
    ));
    out
}

fn render(report: &MultiReport, dry_run: bool) -> String {
    let mut out = String::new();
    for s in &report.sources {
        match &s.missing {
            None => out.push_str(&format!(
                "Source: {} ({} resources in {:.1} s, {:.0}/s)\n",
                s.source,
                s.resources,
                s.seconds,
                s.resources as f64 / s.seconds.max(1e-9)
            )),
            Some(why) => out.push_str(&format!(
                "Source: {} MISSING (--allow-partial): {}\n",
                s.source,
                why.lines().next().unwrap_or_default()
            )),
        }
    }
    let j = &report.join;
    out.push_str(&format!(
        "Joined: {} clients, {} of them in several sources\n",
        j.clients, j.in_several
    ));
    for (s, sj) in report.sources.iter().zip(&j.sources) {
        out.push_str(&format!(
            "  {}: {} Patients, {} without a joinable identifier, {} merged by link, {} duplicate key(s)\n",
            s.source,
            sj.patients,
            sj.unjoinable,
            sj.linked,
            sj.duplicates.len()
        ));
        for d in &sj.duplicates {
            out.push_str(&format!(
                "    duplicate: key {} kept Patient/{}, skipped {}{}\n",
                d.key,
                d.kept,
                d.skipped
                    .iter()
                    .map(|p| format!("Patient/{p}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                d.identifier
                    .as_deref()
                    .map(|i| format!(" ({i})"))
                    .unwrap_or_default()
            ));
        }
    }
    if report.unwritten.clients > 0 {
        out.push_str(&format!(
            "Not held by any write target: {} client(s) (assessed and counted, written nowhere)\n",
            report.unwritten.clients
        ));
    }
    let verb = if dry_run { "would write" } else { "wrote" };
    for m in &report.models {
        super::server::model_head(&mut out, &m.summary);
        for t in &m.targets {
            match &t.outcome {
                TargetOutcome::Written(r) => {
                    out.push_str(&format!(
                        "  {}: {verb} {} Observation(s), {} Flag(s), ended {} Flag(s) in {} transaction(s); {} client(s) unchanged; {:.1} s\n",
                        t.target, r.observations, r.flags_written, r.flags_ended, r.transactions, r.unchanged, t.seconds
                    ));
                    for refused in &r.refused {
                        out.push_str(&format!(
                            "    refused: Patient/{}: {}\n",
                            refused.patient,
                            refused.message.lines().next().unwrap_or_default()
                        ));
                    }
                }
                TargetOutcome::Failed(message) => out.push_str(&format!(
                    "  {}: FAILED: {}\n",
                    t.target,
                    message.lines().next().unwrap_or_default()
                )),
                TargetOutcome::NotAllowed(message) => out.push_str(&format!(
                    "  {}: REFUSED: {}\n",
                    t.target,
                    message.lines().next().unwrap_or_default()
                )),
            }
        }
    }
    out.push_str(&format!("Rejected inputs: {}\n", report.rejected_count()));
    out
}

/// The client `--patient` names in a joined `explain`: a Patient id, or `SOURCE/Patient/ID`
/// for the Patient of one source (its --server URL or --input path); the source as given, and
/// the id.
pub fn named_patient(patient: &str) -> (Option<&str>, &str) {
    match patient.rsplit_once("/Patient/") {
        Some((source, id)) => (Some(source), id),
        None => (None, patient),
    }
}

/// `explain` of a client joined from several sources. `patient` is the client's Patient id on
/// one of them, or `SOURCE/Patient/ID` (SOURCE as its --server URL or --input path) where the
/// id alone names different clients on different sources.
pub fn explain(args: &ExplainArgs, plans: &[Plan], patient: &str) -> Result<Vec<Explanation>> {
    if args.state.is_some() || args.thresholds.is_some() || args.models.server.since.is_some() {
        bail!(
            "--state, --thresholds and --since do not go with several sources yet\nhint: explain reads the joined sources in full and takes percentiles over them"
        );
    }
    let mut named = Sources::from_flags(&args.models, &args.join)?;
    // The person's Patients on the other sources have other ids: every source is read in full.
    for source in &mut named.sources {
        if let Input::Server(server) = &mut source.input {
            server.options.patients.clear();
        }
    }
    let (flag, id) = named_patient(patient);
    let within = match flag {
        Some(flag) => match named.find(flag) {
            Some(s) => Some(s),
            None => bail!(
                "--patient {patient}: {flag} names no source\nhint: give the source as its --server URL or --input path"
            ),
        },
        None => None,
    };
    let read = multi::read_joined(&named.sources, &spec(&args.join)?, OnInvalid::Skip, plans)?;
    let holds = |h: &Holder| h.patient == id && within.is_none_or(|s| s == h.source);
    let found: Vec<(&CompactString, &Vec<Holder>)> = (read.joined.holders.iter())
        .filter(|(_, holders)| holders.iter().any(holds))
        .collect();
    let names: Vec<String> = named.sources.iter().map(|s| s.name.clone()).collect();
    let (client, holders) = match found.as_slice() {
        [one] => *one,
        [] => bail!(
            "Patient/{id} is in none of the sources\nhint: check the id; explain takes a Patient's logical id on one source, not an identity code"
        ),
        several => {
            let on: Vec<&str> = (several.iter())
                .flat_map(|(_, hs)| hs.iter().filter(|h| holds(h)))
                .map(|h| names[h.source].as_str())
                .collect();
            bail!(
                "Patient/{id} is a different client on each of {}\nhint: name the source: --patient SOURCE/Patient/{id}",
                on.join(", ")
            )
        }
    };
    let held_by: Vec<HeldBy> = (holders.iter())
        .map(|h| HeldBy {
            source: names[h.source].clone(),
            patient: h.patient.to_string(),
        })
        .collect();
    let mut explanations = Vec::new();
    for (plan, clients) in plans.iter().zip(&read.joined.clients) {
        let record = &clients[client];
        let thresholds = segmentti::assess::thresholds::population_thresholds(plan, clients);
        let a = pipeline::assess(plan, id, record, &thresholds)?;
        let mut explanation = eval::explain(plan, id, record, &a, args.lang, &names);
        explanation.held_by = held_by.clone();
        explanations.push(explanation);
    }
    Ok(explanations)
}
