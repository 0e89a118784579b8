//! `segmentti profiles build`: makes the FHIR package of what segmentti writes (`profiles/`)
//! from the mapping files and the vendored base packages, or with `--check` says which
//! committed files a build would change.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use segmentti::model::include::is_fragment;
use segmentti::profiles::Package;

/// What to do with the package.
#[derive(Debug, Subcommand)]
pub enum ProfilesCommand {
    /// Generate the package: StructureDefinitions with snapshots, the models' CodeSystems and
    /// ValueSets, the CapabilityStatement and examples.
    Build(BuildArgs),
}

/// Where the package's inputs are and where it goes.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The folder of mapping files: every `*.yaml` in it is a model of the package.
    #[arg(long, default_value = "mappings")]
    pub mappings: PathBuf,
    /// Base packages (published .tgz), repeatable.
    #[arg(
        long = "package",
        default_values = [
            "vendor/fhir/packages/hl7.fhir.r4.core-4.0.1.tgz",
            "vendor/fhir/packages/hl7.fhir.fi.base-1.0.0.tgz",
        ]
    )]
    pub packages: Vec<PathBuf>,
    /// The package folder.
    #[arg(long, default_value = "profiles")]
    pub out: PathBuf,
    /// Write nothing; list the files a build would change and fail if there are any.
    #[arg(long)]
    pub check: bool,
}

/// Runs `profiles …`.
pub fn run(command: ProfilesCommand) -> Result<ExitCode> {
    let ProfilesCommand::Build(args) = command;
    let mappings = mapping_files(&args.mappings)?;
    let package = Package::build(&mappings, &args.packages)?;
    if args.check {
        let stale = package.stale_files(&args.out)?;
        if stale.is_empty() {
            println!(
                "{} is up to date ({} files)",
                args.out.display(),
                package.files.len()
            );
            return Ok(ExitCode::SUCCESS);
        }
        for name in &stale {
            eprintln!("stale: {}", args.out.join(name).display());
        }
        eprintln!(
            "hint: run `segmentti profiles build` and commit {}",
            args.out.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    package.write(&args.out)?;
    println!(
        "Wrote {} files to {}",
        package.files.len(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The models of `dir`, sorted so the package does not depend on directory order.
fn mapping_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the mapping folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        // Files that models include are part of the models that include them.
        .filter(|p| !std::fs::read_to_string(p).is_ok_and(|t| is_fragment(&t)))
        .collect();
    files.sort();
    Ok(files)
}
