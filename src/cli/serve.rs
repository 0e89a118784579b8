//! `segmentti serve`: the command line of the long-running service. It turns flags into a
//! [`RawConfig`] laid over the file and the environment, checks the whole, and runs
//! [`segmentti::serve::run`] on a multi-threaded runtime. Everything else is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use segmentti::serve::config::{RawCds, RawConfig};

/// `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The configuration file (TOML); see docker/segmentti.toml. Flags and SEGMENTTI_*
    /// variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address of CDS Hooks (and of health and metrics without --metrics-listen).
    #[arg(long)]
    listen: Option<String>,
    /// A separate address for /healthz, /readyz and /metrics.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// How the EHR reaches this service (the JWT audience); default: http:// and --listen.
    #[arg(long)]
    public_url: Option<String>,
    /// The FHIR server: scheduled runs, and the one `fhirServer` CDS Hooks calls may name.
    #[arg(long)]
    server: Option<String>,
    /// A file holding the bearer token for --server.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Mapping files (repeatable).
    #[arg(long = "model")]
    models: Vec<PathBuf>,
    /// Cron expression (UTC) of incremental runs, such as "*/15 * * * *"; none: no runs.
    #[arg(long)]
    schedule: Option<String>,
    /// The checkpoint file.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Accept unsigned CDS Hooks calls (local trials only; said loudly at start-up).
    #[arg(long)]
    insecure_no_auth: bool,
    /// Check the configuration (and compile the models), print what would run, and exit.
    #[arg(long)]
    check: bool,
}

/// Runs the service until SIGTERM.
pub fn run(args: ServeArgs) -> Result<ExitCode> {
    let file = match &args.config {
        Some(path) => RawConfig::from_file(path)?,
        None => RawConfig::default(),
    };
    let flags = RawConfig {
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        public_url: args.public_url,
        server: args.server,
        token_file: args.token_file,
        models: args.models,
        schedule: args.schedule,
        state: args.state,
        cds: args.insecure_no_auth.then(|| RawCds {
            insecure_no_auth: true,
            ..RawCds::default()
        }),
        ..RawConfig::default()
    };
    let settings = file.overlay(RawConfig::from_env()).overlay(flags).check()?;
    if args.check {
        println!(
            "configuration ok: listen {}, server {}, {} model(s), schedule {}",
            settings.listen,
            segmentti::fhir::redact(&settings.server),
            settings.models.len(),
            settings
                .schedule
                .as_ref()
                .map_or("none", |(text, _)| text.as_str())
        );
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(segmentti::serve::run(settings))?;
    Ok(ExitCode::SUCCESS)
}
