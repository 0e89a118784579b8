//! The command line: clap subcommands, each a thin call into the library, and the exit codes.
//! `anyhow` lives here and in `main.rs` only. Output meant for people and pipes (tables,
//! explanations, JSON) goes to stdout; logs go to stderr.
//! The exit codes and their precedence are in [`exit`].

mod bulk;
mod conformance;
pub mod exit;
mod multi;
mod profiles;
mod serve;
mod server;
mod spec;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use exit::Exit;
use spec::{Kind, RunSpec};

use segmentti::assess::cases;
use segmentti::assess::eval::{self, Lang};
use segmentti::assess::thresholds::{self, Basis};
use segmentti::fhir::day::Day;
use segmentti::model::{self, Plan, load};
use segmentti::run::files::{self, FileRun, Stages};
use segmentti::run::multi::MultiError;
use segmentti::run::pipeline::{self, Input, OnInvalid, PipelineError, RunOptions};
use segmentti::run::progress;
use segmentti::run::shard::{self, Shard, ThresholdPart};
use segmentti::run::summary::{ModelSummary, Summary};
use segmentti::source::files::Limits;
use segmentti::source::synth::{self, CodeFlavor, SynthFormat, SynthOptions};
use segmentti::source::synthetic::DEFAULT_AS_OF;

/// The model used when `--model` is not given: Päijät-Sote's four tiers, built into the binary.
pub const DEFAULT_MODEL: &str = include_str!("../../mappings/paijat-sote.yaml");
const DEFAULT_MODEL_NAME: &str = "mappings/paijat-sote.yaml (built in)";

/// Prints the clients whose resources broke a rule; whether there were any.
fn report_invalid(models: &[ModelSummary]) -> bool {
    let invalid: Vec<_> = models.iter().flat_map(|m| &m.invalid).collect();
    for i in &invalid {
        eprintln!("not written: {i}");
    }
    !invalid.is_empty()
}

/// segmentti: client segmentation for FHIR R4 (Finnish social and health care).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// Log more (-v: info, -vv: debug). Logs go to stderr and never contain personal data.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// A FHIR package (a .tgz, or its unpacked folder) that code lists name ValueSets from by
    /// canonical URL (`valueset: http://…/ValueSet/x`, or `…|version`). Repeatable.
    #[arg(long = "package", global = true)]
    pub packages: Vec<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Segment clients and write Observation + Flag resources. Without --input, segments the
    /// built-in synthetic population of 10 000 clients.
    // Boxed: with the flags of joined runs, `run`'s are far larger than any other command's.
    Run(Box<RunArgs>),
    /// Generate a deterministic synthetic population (Bulk Data NDJSON or Bundles).
    Synth(SynthArgs),
    /// Explain one client's segment: the question tree path, criteria and the resources behind them.
    Explain(ExplainArgs),
    /// Check mapping files; reports every problem with file, line, column and a hint.
    CheckMapping {
        /// The mapping files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Pin the expansions of the FHIR ValueSets a model's code lists name (`valueset:`): asks a
    /// terminology server's `$expand` for each and writes the expansion into the ValueSet file.
    /// Only this command calls out; runs read the pinned files.
    Expand(ExpandArgs),
    /// Run the cases kept beside each model (`mappings/{model}/cases/*.yaml`); every tree node
    /// must be reached, and every overlay rule hold, in at least one case.
    TestMapping {
        /// The mapping files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the JSON Schema of mapping files (the source of mappings/schema.json).
    Schema,
    /// A population report of a run's output (and the moves since a previous run): one
    /// self-contained HTML page with SVG charts, report.json and CSV files.
    Report {
        /// The run's output directory.
        run: PathBuf,
        /// The previous run's output directory, for the transitions between segments.
        previous: Option<PathBuf>,
        /// Where to write the report.
        #[arg(long, default_value = "report")]
        out: PathBuf,
    },
    /// The population thresholds of the models' `top_percent` tests, for sharded runs: each
    /// shard writes its part, `--merge` turns the parts into what `run --thresholds` reads.
    Thresholds(ThresholdsArgs),
    /// Run as a service: scheduled incremental runs, CDS Hooks cards, health and metrics.
    Serve(serve::ServeArgs),
    /// The FHIR package of what segmentti writes (profiles/).
    #[command(subcommand)]
    Profiles(profiles::ProfilesCommand),
    /// Check that a FHIR server does what segmentti needs, by doing it with synthetic test data:
    /// a table on stdout, JSON and JUnit XML on request; exit code 6 when a required check fails.
    Conformance(conformance::ConformanceArgs),
}

/// `expand`: the model whose ValueSets to pin and the terminology server that expands them.
#[derive(Debug, Args)]
pub struct ExpandArgs {
    /// The model (or file to include) whose code lists name the ValueSets; those of its
    /// included files are expanded too.
    model: PathBuf,
    /// Base URL of the FHIR R4 terminology server (`https://tx.example.org/fhir`); each ValueSet
    /// is POSTed to `{URL}/ValueSet/$expand`.
    #[arg(long)]
    terminology: url::Url,
    /// Seconds one request may take.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

/// Where a run reads and which models it uses.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A file or directory of NDJSON (Bulk Data output, .ndjson.gz too) or Bundles. Without it,
    /// the built-in synthetic population. `run --write-to` takes several, and servers beside.
    /// In a directory, links to files are followed and links to directories are not.
    #[arg(long)]
    pub input: Vec<PathBuf>,
    /// The longest NDJSON line read; a longer one is rejected (file and line) and skipped.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::DEFAULT.max_line_bytes)]
    pub max_line_bytes: usize,
    /// The most bytes a .ndjson.gz file or a Bulk download read into a work directory may
    /// expand to; past it the run stops with an error.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::DEFAULT.max_decompressed_bytes)]
    pub max_decompressed_bytes: u64,
    /// Mapping files (repeatable); default: the built-in Päijät-Sote model.
    #[arg(long = "model")]
    pub models: Vec<PathBuf>,
    /// The assessment date: windows end here, later data are ignored. Default: today, or
    /// 2026-01-01 for the built-in population.
    #[arg(long)]
    pub as_of: Option<Day>,
    /// Size of the built-in population (without --input).
    #[arg(long, default_value_t = 10_000)]
    pub clients: u64,
    /// Seed of the built-in population (without --input).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    #[command(flatten)]
    pub server: server::ServerArgs,
}

/// `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    models: ModelArgs,
    /// Output directory.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// What to do with an invalid resource.
    #[arg(long, value_enum, default_value_t = OnInvalid::Skip)]
    on_invalid: OnInvalid,
    /// Print throughput per stage and peak memory at the end (also a `stats:` line for tools).
    #[arg(long)]
    stats: bool,
    /// With --server: clients per write transaction.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// With --server: read and decide, write nothing; says what would be created, updated and ended.
    #[arg(long)]
    dry_run: bool,
    /// With --server: print the run as JSON (with --dry-run, every client's changes).
    #[arg(long)]
    json: bool,
    /// With --server: the checkpoint file of incremental runs.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Only the clients of shard k of N (k from 0, as Kubernetes' JOB_COMPLETION_INDEX).
    #[arg(long)]
    shard: Option<Shard>,
    /// Population thresholds of the `top_percent` tests (from `segmentti thresholds`), instead
    /// of computing them from this run's clients; a shard needs them.
    #[arg(long)]
    thresholds: Option<PathBuf>,
    /// Progress display on stderr: bars on a terminal, a log line every 10 s elsewhere.
    #[arg(long, value_enum, default_value_t = ProgressArg::Auto)]
    progress: ProgressArg,
    #[command(flatten)]
    bulk: bulk::BulkArgs,
    #[command(flatten)]
    join: multi::JoinArgs,
    #[command(flatten)]
    write_to: multi::WriteToArg,
}

/// `--progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressArg {
    /// Bars when stderr is a terminal, log lines otherwise.
    Auto,
    /// Log lines (target `segmentti::progress`) every 10 s.
    Log,
    /// None.
    Off,
}

impl ProgressArg {
    fn display(self) -> progress::Display {
        match self {
            Self::Auto => progress::Display::auto(),
            Self::Log => progress::Display::Log {
                every: std::time::Duration::from_secs(10),
            },
            Self::Off => progress::Display::Off,
        }
    }
}

/// `thresholds`.
#[derive(Debug, Args)]
pub struct ThresholdsArgs {
    #[command(flatten)]
    models: ModelArgs,
    /// Write this shard's part (its clients' raw values) instead of thresholds.
    #[arg(long, conflicts_with = "merge")]
    shard: Option<Shard>,
    /// Merge these parts (files, or directories of `part-*.json`) into the population
    /// thresholds (reads no input).
    #[arg(long, num_args = 1..)]
    merge: Vec<PathBuf>,
    /// Where to write the part or the thresholds.
    #[arg(long)]
    out: PathBuf,
}

/// `synth`.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Number of clients.
    #[arg(long, default_value_t = 10_000)]
    clients: u64,
    /// Seed; the same seed gives the same population.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Output directory.
    #[arg(long, required_unless_present = "server")]
    out: Option<PathBuf>,
    /// Bulk Data NDJSON, or one collection Bundle per client.
    #[arg(long, value_enum, default_value_t = FormatArg::Ndjson)]
    format: FormatArg,
    /// Finnish code systems (ICD-10 FI, ICPC-2, AvoHILMO) or international ones (SNOMED CT).
    #[arg(long, value_enum, default_value_t = CodesArg::Finnish)]
    codes: CodesArg,
    /// Data end at this date.
    #[arg(long, default_value = DEFAULT_AS_OF)]
    as_of: Day,
    /// Load the population into this FHIR server instead of writing files.
    #[command(flatten)]
    server: server::ServerArgs,
    /// With --server: clients per transaction.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Only what this area's system holds: its contacts and diagnoses, under local Patient ids
    /// of its own; the same people (same identity codes) as without it.
    #[arg(long, value_enum)]
    service_area: Option<ServiceAreaArg>,
    /// Also write a Claim per Encounter, its total the Encounter's price (EUR), so that a model
    /// whose cost is billed from Claims is costed by them.
    #[arg(long)]
    claims: bool,
    /// With --claims: also an ExplanationOfBenefit per Claim restating its total, as Synthea
    /// writes them.
    #[arg(long, requires = "claims")]
    explanations: bool,
    /// Also write care records: social-welfare service decisions (EpisodeOfCare), Barthel
    /// Index totals and oral-status findings (Observation), which Nylander, Suuntima, Virta and
    /// the Helsinki oral-health model read. A run on the embedded default has them whenever a
    /// model reads them.
    #[arg(long)]
    care_records: bool,
    /// Also give the population shapes real EHR exports (Synthea and others) have: Procedure,
    /// Immunization and MedicationRequest resources and one Organization (types no model
    /// reads: in the written files and a loaded server only, not in the embedded default),
    /// diagnoses coded both in ICD-10 and SNOMED CT or with more specific SNOMED CT codes,
    /// Encounters entered in error or cancelled, refuted Conditions, and deceased and inactive
    /// Patients. Off by default: without it the output is what it always was.
    #[arg(long)]
    real_shapes: bool,
}

/// `--service-area`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ServiceAreaArg {
    /// Social welfare.
    Social,
    /// Health care (holds every Patient).
    Health,
    /// Oral health care.
    Oral,
}

impl ServiceAreaArg {
    fn area(self) -> synth::Area {
        match self {
            Self::Social => synth::Area::Social,
            Self::Health => synth::Area::Health,
            Self::Oral => synth::Area::Oral,
        }
    }
}

/// `--format`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    /// `Patient.ndjson`, `Encounter.ndjson`, `Condition.ndjson`.
    Ndjson,
    /// `bundles/{patient}.json`.
    Bundles,
}

/// `--codes`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CodesArg {
    /// ICD-10 Finnish edition, ICPC-2, AvoHILMO contact and service types.
    Finnish,
    /// SNOMED CT.
    International,
}

/// `explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    models: ModelArgs,
    /// Machine-readable JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Language of the texts.
    #[arg(long, value_enum, default_value_t = Lang::Fi)]
    lang: Lang,
    /// Population thresholds of the `top_percent` tests from a server run's checkpoint: one
    /// client read from a server is no population to take percentiles of.
    #[arg(long, conflicts_with = "thresholds")]
    state: Option<PathBuf>,
    /// Population thresholds from `segmentti thresholds`.
    #[arg(long)]
    thresholds: Option<PathBuf>,
    #[command(flatten)]
    join: multi::JoinArgs,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    model::package::give(model::package::Packages::read(&cli.packages)?);
    match cli.command {
        Command::Run(args) => run_command(*args),
        Command::Synth(args) => synth_command(args),
        Command::Explain(args) => explain_command(args).or_else(exit_on_refusal),
        Command::CheckMapping { files } => check_command(&files),
        Command::TestMapping { files } => test_mapping_command(&files),
        Command::Expand(args) => expand_command(&args),
        Command::Thresholds(args) => thresholds_command(args),
        Command::Report { run, previous, out } => {
            let report = segmentti::report::build(&run, previous.as_deref())?;
            let files = segmentti::report::write(&report, &out)?;
            for f in files {
                println!("Wrote {}", f.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => serve::run(args),
        Command::Profiles(command) => profiles::run(command),
        Command::Conformance(args) => conformance::run(&args),
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&load::schema())?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A command that failed because a server refused a read for what it is (401, 403, 404, 405:
/// [`PipelineError::is_refusal`], [`MultiError::is_refusal`]) ends with its message and exit
/// code 8, as a run does; any other error is handed back as it is.
fn exit_on_refusal(e: anyhow::Error) -> Result<ExitCode> {
    let refused = e.chain().any(|c| {
        c.downcast_ref::<PipelineError>()
            .is_some_and(PipelineError::is_refusal)
            || c.downcast_ref::<MultiError>()
                .is_some_and(MultiError::is_refusal)
    });
    if !refused {
        return Err(e);
    }
    eprintln!("error: {e:#}");
    Ok(Exit::NotAllowed.into())
}

impl ModelArgs {
    /// What one input file may cost.
    pub fn limits(&self) -> Limits {
        Limits {
            max_line_bytes: self.max_line_bytes,
            max_decompressed_bytes: self.max_decompressed_bytes,
        }
    }

    fn input(&self, as_of: Day) -> Result<Input> {
        Ok(
            match (self.input.as_slice(), self.server.server.as_slice()) {
                ([path], []) => Input::Files(path.clone(), self.limits()),
                ([], [url]) => self.server_input(self.server.client(url)?),
                ([], []) => Input::Synthetic(self.synthetic(as_of)),
                _ => bail!(
                    "this command reads one source: give --input or --server once\nhint: `run --write-to each` (or a server's URL) joins several sources into whole clients"
                ),
            },
        )
    }

    /// The built-in population of `--clients` and `--seed`, as it was on `as_of`.
    fn synthetic(&self, as_of: Day) -> SynthOptions {
        SynthOptions {
            clients: self.clients,
            seed: self.seed,
            flavor: CodeFlavor::Finnish,
            as_of,
            area: None,
            bills: synth::Bills::None,
            records: false,
            shapes: false,
        }
    }

    /// `client`'s server read by paged search with the search flags.
    fn server_input(&self, client: segmentti::fhir::FhirClient) -> Input {
        Input::Server(Box::new(pipeline::ServerInput {
            client,
            options: segmentti::source::search::SearchOptions {
                page_size: self.server.page_size,
                concurrency: self.server.concurrency,
                patients: self.server.patients.clone(),
                since: self.server.since.clone(),
            },
        }))
    }

    fn as_of(&self) -> Result<Day> {
        match (
            self.as_of,
            !self.input.is_empty() || !self.server.server.is_empty(),
        ) {
            (Some(day), _) => Ok(day),
            (None, false) => DEFAULT_AS_OF.parse().map_err(anyhow::Error::msg),
            (None, true) => {
                let today = time::OffsetDateTime::now_utc().date();
                Ok(Day::from_date(today))
            }
        }
    }

    fn plans(&self, as_of: Day) -> Result<Vec<Plan>> {
        if self.models.is_empty() {
            let plan = Plan::compile(default_mapping()?, as_of)
                .map_err(|e| anyhow::anyhow!("built-in model: {e:?}"))?;
            return Ok(vec![plan]);
        }
        let plans: Vec<Plan> = self
            .models
            .iter()
            .map(|p| model::plan_file(p, as_of))
            .collect::<Result<_, _>>()?;
        for (i, a) in plans.iter().enumerate() {
            if plans[..i].iter().any(|b| b.mapping.id == a.mapping.id) {
                bail!(
                    "model `{}` is given twice\nhint: each --model must have its own id, or their results would overwrite each other",
                    a.mapping.id
                );
            }
        }
        Ok(plans)
    }
}

/// The built-in model's mapping.
fn default_mapping() -> Result<model::mapping::Mapping> {
    Ok(
        load::load_str(DEFAULT_MODEL).map_err(|diagnostics| model::MappingError::Invalid {
            path: DEFAULT_MODEL_NAME.into(),
            diagnostics,
        })?,
    )
}

fn run_command(args: RunArgs) -> Result<ExitCode> {
    let RunSpec { as_of, kind } = spec::resolve(&args)?;
    let plans = args.models.plans(as_of)?;
    let (input, to) = match kind {
        Kind::Joined(write_to, write) => return multi::run(&args, write_to, &write, &plans),
        Kind::Server(url, write) => return server::run(&args.models.server, url, &plans, &write),
        Kind::Bulk(base, bulk, to) => {
            let state = args.state.clone();
            return bulk::run(
                &args.models,
                base,
                bulk,
                state,
                to.output,
                to.thresholds,
                &plans,
            );
        }
        Kind::Files(path, to) => (Input::Files(path, args.models.limits()), to),
        Kind::Synthetic(population, to) => (Input::Synthetic(population), to),
    };
    let outcome = files::run(
        FileRun {
            input,
            thresholds: fixed_thresholds(to.thresholds, to.output.shard, &plans)?,
            ignored_files: Default::default(),
            output: to.output,
        },
        &plans,
    )?;
    print_file_run(&outcome)
}

/// What a run to files did, for people (and with `--stats`, for scripts), and its exit code.
fn print_file_run(outcome: &files::Outcome) -> Result<ExitCode> {
    let summary = &outcome.summary;
    print!("{}", summary.render(outcome.seconds));
    if let Some(stages) = &outcome.stages {
        print!("{}", render_stages(summary, outcome.seconds, stages));
    }
    Ok(Exit::worst([
        report_invalid(&summary.models).then_some(Exit::Invalid),
        (summary.rejected > 0).then_some(Exit::Rejects),
    ])
    .into())
}

/// `run --stats`: each stage's time, CPU and peak memory for people, then one `stats:` line of
/// `key=value`s for scripts (the benchmark reads it).
fn render_stages(summary: &Summary, seconds: f64, stages: &Stages) -> String {
    let resources: u64 = summary.resources.values().sum();
    let clients = summary.models.first().map_or(0, |m| m.clients);
    let (fold_seconds, fold_usage, end) = (stages.fold_seconds, stages.after_fold, stages.at_end);
    // Without the reset, the peak since the start is all there is to know.
    let write_rss = if stages.write_peak_known {
        end.peak_rss
    } else {
        0
    };
    let rss = fold_usage.peak_rss.max(end.peak_rss);
    let (cpu, fold_cpu) = (end.cpu, fold_usage.cpu);
    let write_seconds = seconds - fold_seconds;
    let mib = |bytes: u64| {
        if bytes == 0 {
            "unknown".to_owned()
        } else {
            format!("{:.0} MiB", bytes as f64 / 1048576.0)
        }
    };
    format!(
        "\nStats:\n  read + fold       {fold_seconds:>8.2} s  {:>9.0} resources/s  CPU {fold_cpu:>6.1} s ({:.2} cores)  peak RSS {}\n  evaluate + write  {write_seconds:>8.2} s  {:>9.0} clients/s    CPU {:>6.1} s ({:.2} cores)  peak RSS {}\n  run               {seconds:>8.2} s                         CPU {cpu:>6.1} s ({:.2} cores)  peak RSS {}\nstats: resources={resources} clients={clients} seconds={seconds:.3} fold_seconds={fold_seconds:.3} cpu_seconds={cpu:.2} fold_cpu_seconds={fold_cpu:.2} peak_rss_bytes={rss} fold_peak_rss_bytes={} write_peak_rss_bytes={write_rss}\n",
        resources as f64 / fold_seconds.max(1e-9),
        fold_cpu / fold_seconds.max(1e-9),
        mib(fold_usage.peak_rss),
        clients as f64 / write_seconds.max(1e-9),
        cpu - fold_cpu,
        (cpu - fold_cpu) / write_seconds.max(1e-9),
        mib(write_rss),
        cpu / seconds.max(1e-9),
        mib(rss),
        fold_usage.peak_rss
    )
}

/// The thresholds of `--thresholds`; a shard of a model with `top_percent` tests must have them,
/// since its own clients are no population.
fn fixed_thresholds(
    path: Option<&std::path::Path>,
    shard: Option<Shard>,
    plans: &[Plan],
) -> Result<Option<shard::Thresholds>> {
    if let Some(path) = path {
        return Ok(Some(shard::read_thresholds(path, plans)?));
    }
    if let (Some(shard), Some(plan)) = (shard, plans.iter().find(|p| !p.percentiles.is_empty())) {
        bail!(
            "shard {shard}: model `{}` has top_percent tests, whose thresholds are percentiles of the whole population\nhint: run `segmentti thresholds --shard k/N --out part-k.json` for every shard, then `segmentti thresholds --merge part-*.json --out thresholds.json`, and give every shard `--thresholds thresholds.json`",
            plan.mapping.id
        );
    }
    Ok(None)
}

fn thresholds_command(args: ThresholdsArgs) -> Result<ExitCode> {
    if !args.merge.is_empty() {
        let mut files = Vec::new();
        for path in &args.merge {
            if !path.is_dir() {
                files.push(path.clone());
                continue;
            }
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("part-") && n.ends_with(".json"))
                })
                .collect();
            if found.is_empty() {
                bail!("{} holds no part-*.json files", path.display());
            }
            found.sort();
            files.extend(found);
        }
        let parts = files
            .iter()
            .map(|p| ThresholdPart::read(p))
            .collect::<Result<Vec<_>, _>>()?;
        let merged = shard::merge(parts)?;
        shard::write_json(&args.out, &merged)?;
        println!("Merged {} part(s) into {}", files.len(), args.out.display());
        return Ok(ExitCode::SUCCESS);
    }
    let as_of = args.models.as_of()?;
    let plans = args.models.plans(as_of)?;
    let input = args.models.input(as_of)?;
    let options = RunOptions {
        shard: args.shard,
        ..RunOptions::default()
    };
    // Rejections are the run's to report; this pass only needs the clients.
    let folded = pipeline::fold(&input, &plans, &options, &mut |_| Ok(()))?;
    let columns = plans
        .iter()
        .zip(&folded.clients)
        .map(|(plan, clients)| segmentti::assess::thresholds::threshold_columns(plan, clients))
        .collect();
    let part = ThresholdPart::new(args.shard, &plans, columns);
    let clients = folded.clients.first().map_or(0, |c| c.len());
    if args.shard.is_some() {
        shard::write_json(&args.out, &part)?;
        println!(
            "Wrote the part of shard {} ({clients} clients) to {}",
            part.shard,
            args.out.display()
        );
    } else {
        shard::write_json(&args.out, &shard::merge(vec![part])?)?;
        println!(
            "Wrote the thresholds of {clients} clients to {}",
            args.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn synth_command(args: SynthArgs) -> Result<ExitCode> {
    let flavor = match args.codes {
        CodesArg::Finnish => CodeFlavor::Finnish,
        CodesArg::International => CodeFlavor::International,
    };
    let format = match args.format {
        FormatArg::Ndjson => SynthFormat::Ndjson,
        FormatArg::Bundles => SynthFormat::Bundles,
    };
    let opts = SynthOptions {
        clients: args.clients,
        seed: args.seed,
        flavor,
        as_of: args.as_of,
        area: args.service_area.map(ServiceAreaArg::area),
        bills: match (args.claims, args.explanations) {
            (false, _) => synth::Bills::None,
            (true, false) => synth::Bills::Claims,
            (true, true) => synth::Bills::ClaimsAndExplanations,
        },
        records: args.care_records,
        shapes: args.real_shapes,
    };
    match args.server.server.as_slice() {
        [] => {}
        [url] => return server::load(&args.server, url, &opts, args.batch.max(1)),
        _ => bail!(
            "synth loads one server at a time\nhint: load each system with its own --service-area"
        ),
    }
    let Some(out) = &args.out else {
        bail!("synth needs --out DIR or --server URL");
    };
    let report = synth::write_dir(&opts, format, out)?;
    let bills = match opts.bills {
        synth::Bills::None => String::new(),
        synth::Bills::Claims => format!(", {} Claim", report.bills),
        synth::Bills::ClaimsAndExplanations => {
            format!(", {} Claim and ExplanationOfBenefit", report.bills)
        }
    };
    let records = if opts.records {
        format!(", {} Observation and EpisodeOfCare", report.records)
    } else {
        String::new()
    };
    println!(
        "Wrote {} clients ({} Patient, {} Encounter, {} Condition{bills}{records}) to {}\nThe 10 % most costly clients hold {:.1} % of the cost ({:.0} EUR in all).",
        report.clients,
        report.patients,
        report.encounters,
        report.conditions,
        out.display(),
        report.top_decile_cost_share * 100.0,
        report.total_cost_eur
    );
    Ok(ExitCode::SUCCESS)
}

fn explain_command(args: ExplainArgs) -> Result<ExitCode> {
    let [patient] = args.models.server.patients.as_slice() else {
        bail!("explain takes exactly one --patient ID");
    };
    let several = multi::several(&args.models, &args.join);
    let id = if several {
        multi::named_patient(patient).1
    } else {
        patient.as_str()
    };
    // What was typed may be an identity code by mistake: it is described, never repeated.
    if !segmentti::fhir::types::is_fhir_id(id) {
        bail!(
            "--patient is not a FHIR id ({})\nhint: explain takes the Patient's logical id, not an identity code",
            segmentti::record::shape::describe(id)
        );
    }
    if several {
        let plans = args.models.plans(args.models.as_of()?)?;
        let explanations = multi::explain(&args, &plans, patient)?;
        return print_explanations(&explanations, args.json);
    }
    let as_of = args.models.as_of()?;
    let mut plans = args.models.plans(as_of)?;
    for plan in &mut plans {
        plan.keep_codings = true;
    }
    let input = args.models.input(as_of)?;
    let given = match (&args.state, &args.thresholds) {
        (Some(path), _) => {
            let state = segmentti::run::state::State::read(path)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "the state file {} does not exist\nhint: give the --state of a completed server run",
                    path.display()
                )
            })?;
            Some(state.thresholds)
        }
        (None, Some(path)) => Some(shard::read_thresholds(path, &plans)?),
        (None, None) => None,
    };
    let mut rejected = 0u64;
    let options = RunOptions {
        watch: Some(patient.as_str().into()),
        ..RunOptions::default()
    };
    let folded = pipeline::fold(&input, &plans, &options, &mut |_| {
        rejected += 1;
        Ok(())
    })?;
    let mut explanations = Vec::new();
    for (((plan, clients), left_out), counted) in plans
        .iter()
        .zip(&folded.clients)
        .zip(&folded.left_out)
        .zip(&folded.counted)
    {
        let Some(record) = clients.get(patient.as_str()) else {
            // Not repeated: an identity code typed by mistake can be a valid id.
            bail!(
                "the Patient given with --patient is not in {input}\nhint: check the id; explain takes the Patient's logical id, not an identity code"
            );
        };
        let id = plan.mapping.id.as_str();
        if let Some(why) = record.unassessed {
            let line = format!(
                "Patient/{patient} gets no assessment from model {id}: {} ({} at {as_of})",
                why.reason(),
                why.as_str()
            );
            if args.json {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
            continue;
        }
        let basis = match given.as_ref().map(|g| g.get(id)) {
            Some(Some(given)) => Basis::Given(given),
            Some(None) => bail!(
                "the thresholds given hold none for model `{id}`\nhint: use the checkpoint of a full run of this model"
            ),
            None if !args.models.server.server.is_empty() && !plan.percentiles.is_empty() => {
                eprintln!(
                    "warning: model `{id}` has top_percent tests, which compare with the whole population; without --state or --thresholds they do not hold for this client"
                );
                Basis::Unknown
            }
            None => Basis::Population(clients),
        };
        let thresholds = thresholds::of(plan, basis);
        let a = pipeline::assess(plan, patient, record, &thresholds)?;
        let mut explanation = eval::explain(plan, patient, record, &a, args.lang, &[]);
        explanation.left_out = left_out
            .iter()
            .map(|l| eval::LeftOutLine {
                resource: format!("{}/{}", l.kind, l.id),
                reason: l.why.reason(),
            })
            .collect();
        explanation.name_concepts(plan, counted);
        explanations.push(explanation);
    }
    print_explanations(&explanations, args.json)
}

fn print_explanations(explanations: &[eval::Explanation], json: bool) -> Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(explanations)?);
    } else {
        let texts: Vec<String> = explanations.iter().map(eval::Explanation::render).collect();
        print!("{}", texts.join("\n"));
    }
    Ok(ExitCode::SUCCESS)
}

fn check_command(files: &[PathBuf]) -> Result<ExitCode> {
    let mut failed = 0;
    for file in files {
        match load::check_file(file) {
            Ok(load::Loaded::Model(m)) => {
                println!(
                    "{}: ok ({} {}, {} features, {} criteria, {} segments, {} tree nodes, {} overlays)",
                    file.display(),
                    m.id,
                    m.version,
                    m.features.len(),
                    m.criteria.len(),
                    m.segments.len(),
                    m.tree.len(),
                    m.overlays.len()
                );
                print_data_notes(&m.features);
            }
            Ok(load::Loaded::Fragment(f)) => {
                println!(
                    "{}: ok (included file {} {}, {} code lists, {} features, {} overlays, {} service areas)",
                    file.display(),
                    f.fragment,
                    f.version,
                    f.code_lists.len(),
                    f.features.len(),
                    f.overlays.len(),
                    f.service_areas.len()
                );
                print_data_notes(&f.features);
            }
            Err(e) => {
                failed += 1;
                eprintln!("{e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} mapping file(s) have problems", files.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// `segmentti expand`: each ValueSet file the model names, expanded by the terminology server
/// and pinned; a file whose expansion fails is left as it was, and the command fails (exit 1)
/// naming the server and the ValueSet.
fn expand_command(args: &ExpandArgs) -> Result<ExitCode> {
    use segmentti::model::valueset;
    let files = valueset::named_files(&args.model)?;
    if files.is_empty() {
        println!(
            "{}: no code list names a ValueSet (`valueset:`); nothing to expand",
            args.model.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let server = segmentti::fhir::redact(&args.terminology).to_string();
    let mut endpoint = url::Url::parse(&format!(
        "{}/ValueSet/$expand",
        args.terminology.as_str().trim_end_matches('/')
    ))?;
    let user = endpoint.username().to_owned();
    let password = endpoint.password().map(str::to_owned);
    let _ = endpoint.set_username("");
    let _ = endpoint.set_password(None);
    let timeout = args.timeout;
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(timeout))
        .build()?;
    let runtime = segmentti::fhir::runtime()?;
    let expand = |file: &std::path::Path| -> std::result::Result<usize, String> {
        let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read it: {e}"))?;
        let body = valueset::expand_request(file, &text).map_err(|e| e.problem.to_string())?;
        let answer = runtime.block_on(async {
            let mut request = client
                .post(endpoint.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/fhir+json")
                .header(reqwest::header::ACCEPT, "application/fhir+json")
                .body(body.to_string());
            if !user.is_empty() {
                request = request.basic_auth(&user, password.as_deref());
            }
            let response = request.send().await?;
            let status = response.status();
            let bytes = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, bytes))
        });
        let (status, bytes) = answer.map_err(|e| {
            if e.is_timeout() {
                format!("no answer within {timeout} s")
            } else {
                let e = e.without_url();
                let mut why = format!("cannot reach it: {e}");
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    why.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                why
            }
        })?;
        let outcome = segmentti::fhir::OperationOutcomeSummary::from_body(&bytes);
        if !status.is_success() {
            return Err(match outcome {
                Some(o) => format!("it answered {status}: {o}"),
                None => format!("it answered {status}"),
            });
        }
        if let Some(o) = outcome {
            return Err(format!("it answered with an OperationOutcome: {o}"));
        }
        let answer: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("its answer is not JSON: {e}"))?;
        let pinned = valueset::pin(&text, &answer).map_err(|e| e.to_string())?;
        let concepts = valueset::parse(file, &pinned)
            .map(|v| v.concepts.len())
            .unwrap_or_default();
        valueset::write_pinned(file, &pinned)
            .map_err(|e| format!("the expansion could not be written: {e}"))?;
        Ok(concepts)
    };
    let mut failed = 0;
    for file in &files {
        match expand(file) {
            Ok(concepts) => println!(
                "{}: pinned the expansion of {server} ({concepts} codes)",
                file.display()
            ),
            Err(why) => {
                failed += 1;
                eprintln!(
                    "error: the terminology server {server} could not expand the ValueSet {}: {why}\n  the file is left as it was\n  hint: check --terminology and that the server is up and knows the ValueSet's code systems, then run expand again",
                    file.display()
                );
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} ValueSet(s) not expanded by {server}",
            files.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What a checked model reads beyond Patient, Encounter and Condition, indented under its line.
fn print_data_notes(features: &[segmentti::model::mapping::Feature]) {
    for note in segmentti::model::check::data_notes(features) {
        println!("  {note}");
    }
}

fn test_mapping_command(files: &[PathBuf]) -> Result<ExitCode> {
    let (mut passed, mut failed) = (0usize, 0usize);
    for file in files {
        let outcomes = cases::run_all(file)?;
        let mapping = model::load_file(file)?;
        println!("{} ({} cases)", file.display(), outcomes.len());
        for o in &outcomes {
            let name = o
                .file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if o.failures.is_empty() {
                passed += 1;
                println!("  ok    {name}: {}", o.description);
            } else {
                failed += 1;
                println!("  FAIL  {name}: {}", o.description);
                for f in &o.failures {
                    println!("        {f}");
                }
                if let Some(text) = &o.explanation {
                    for line in text.lines() {
                        println!("        | {line}");
                    }
                }
            }
        }
        for node in &mapping.tree {
            if !outcomes
                .iter()
                .any(|o| o.node.as_deref() == Some(node.id.as_str()))
            {
                failed += 1;
                println!(
                    "  FAIL  tree node `{}` is reached by no case\n        hint: add a case that ends there",
                    node.id
                );
            }
        }
        for overlay in &mapping.overlays {
            for rule in &overlay.rules {
                let held = (overlay.code.clone(), rule.id.clone());
                if !outcomes.iter().any(|o| o.rules.contains(&held)) {
                    failed += 1;
                    println!(
                        "  FAIL  rule `{}` of overlay `{}` holds in no case\n        hint: add a case where it holds",
                        rule.id, overlay.code
                    );
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} case check(s) failed");
    }
    Ok(ExitCode::SUCCESS)
}
