//! A `run`'s flags resolved into one [`RunSpec`], before a model or an input is read: what the
//! run reads (files, the synthetic population, a Bulk Data export, one server, or several
//! sources joined), where its results go and how. Every flag that does not go with that kind of
//! run is reported here, all at once, as serve's configuration reports its problems; the
//! commands that carry a spec out check nothing of the flags again.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use segmentti::fhir::day::Day;
use segmentti::run::files::Output;
use segmentti::source::synth::SynthOptions;

use super::bulk::BulkArgs;
use super::server::WriteArgs;
use super::{RunArgs, multi};

/// A `run`, resolved.
#[derive(Debug)]
pub struct RunSpec<'a> {
    /// The assessment date.
    pub as_of: Day,
    /// What the run reads, and where it writes.
    pub kind: Kind<'a>,
}

/// What a run reads, and where it writes.
#[derive(Debug)]
pub enum Kind<'a> {
    /// A file or directory of NDJSON or Bundles; results to `--out`.
    Files(PathBuf, ToFiles<'a>),
    /// The built-in synthetic population; results to `--out`.
    Synthetic(SynthOptions, ToFiles<'a>),
    /// A Bulk Data export of the `--bulk` server; results to `--out`.
    Bulk(&'a url::Url, &'a BulkArgs, ToFiles<'a>),
    /// One FHIR server, read by paged search and written back.
    Server(&'a url::Url, WriteArgs),
    /// Several sources joined into whole clients, written back as `--write-to` says: `each`,
    /// or the URL of the one server to write to.
    Joined(&'a str, WriteArgs),
}

/// Where and how a run whose results go to files writes.
#[derive(Debug)]
pub struct ToFiles<'a> {
    /// The output directory and how it is written.
    pub output: Output,
    /// The population thresholds given with `--thresholds`.
    pub thresholds: Option<&'a Path>,
}

/// The run `args` ask for, or every problem with their combination.
pub fn resolve(args: &RunArgs) -> Result<RunSpec<'_>> {
    let as_of = args.models.as_of()?;
    let several = multi::several(&args.models, &args.join);
    let servers = args.models.server.server.as_slice();
    let mut problems: Vec<String> = Vec::new();
    let kind = if several || args.write_to.write_to.is_some() {
        let write_to = joined(args, &mut problems);
        Kind::Joined(write_to, write_args(args))
    } else if let [url] = servers {
        if args.shard.is_some() || args.thresholds.is_some() {
            problems.push(
                "--shard and --thresholds go with file input\nhint: shard a server's population by exporting it first (Bulk Data $export) and running each shard on the files".into(),
            );
        }
        Kind::Server(url, write_args(args))
    } else {
        if args.dry_run || (args.state.is_some() && args.bulk.bulk.is_none()) {
            problems.push(
                "--dry-run goes with --server, --state with --server or --bulk\nhint: a run on files writes only to --out".into(),
            );
        }
        let to_files = ToFiles {
            output: Output {
                out: args.out.clone(),
                on_invalid: args.on_invalid,
                shard: args.shard,
                progress: args.progress.display(),
                measure: args.stats,
            },
            thresholds: args.thresholds.as_deref(),
        };
        match (&args.bulk.bulk, args.models.input.as_slice()) {
            (Some(base), _) => Kind::Bulk(base, &args.bulk, to_files),
            (None, [input]) => Kind::Files(input.clone(), to_files),
            (None, _) => Kind::Synthetic(args.models.synthetic(as_of), to_files),
        }
    };
    match problems.as_slice() {
        [] => Ok(RunSpec { as_of, kind }),
        [one] => bail!("{one}"),
        all => bail!(
            "{} problems with the flags of `run`:\n{}",
            all.len(),
            all.join("\n")
        ),
    }
}

/// What a run that writes back to servers writes, and how.
fn write_args(args: &RunArgs) -> WriteArgs {
    WriteArgs {
        batch: args.batch,
        dry_run: args.dry_run,
        json: args.json,
        state: args.state.clone(),
        on_invalid: args.on_invalid,
        stats: args.stats,
    }
}

/// A joined run, and what of its flags does not go with one.
fn joined<'a>(args: &'a RunArgs, problems: &mut Vec<String>) -> &'a str {
    let write_to = args.write_to.write_to.as_deref().unwrap_or_else(|| {
        problems.push(
            "several sources are joined into whole clients and need --write-to\nhint: --write-to each writes to every server that holds the client, --write-to URL to one of them".into(),
        );
        "each"
    });
    if args.thresholds.is_some()
        || args.state.is_some()
        || args.bulk.bulk.is_some()
        || args.models.server.since.is_some()
        || !args.models.server.patients.is_empty()
    {
        problems.push(
            "--thresholds, --state, --bulk, --since and --patient do not go with several sources yet\nhint: run the joined sources in full (--shard divides the writing)".into(),
        );
    }
    if args.shard.is_some() && !multi::has_join_key(&args.join) {
        problems.push(format!(
            "--shard with several sources needs the join key: shards are chosen by it, and a random key per process would give each shard other clients\nhint: give every shard the same --join-key-file or {}",
            multi::JOIN_KEY_VAR
        ));
    }
    write_to
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn run_args(flags: &[&str]) -> RunArgs {
        let argv = ["segmentti", "run"].iter().chain(flags);
        let cli = Cli::try_parse_from(argv).expect("the flags parse");
        let Command::Run(args) = cli.command else {
            panic!("not `run`")
        };
        *args
    }

    #[test]
    fn each_kind_of_run_is_told_by_its_flags() {
        let kind = |flags: &[&str]| -> String {
            let args = run_args(flags);
            let spec = resolve(&args).expect("a run");
            match spec.kind {
                Kind::Files(path, _) => format!("files {}", path.display()),
                Kind::Synthetic(population, to) => format!(
                    "synthetic {} on {} to {}",
                    population.clients,
                    population.as_of,
                    to.output.out.display()
                ),
                Kind::Bulk(url, _, _) => format!("bulk {url}"),
                Kind::Server(url, write) => format!("server {url} dry {}", write.dry_run),
                Kind::Joined(write_to, _) => format!("joined {write_to}"),
            }
        };
        assert_eq!(kind(&[]), "synthetic 10000 on 2026-01-01 to out");
        assert_eq!(kind(&["--input", "a"]), "files a");
        assert_eq!(
            kind(&["--bulk", "https://ehr.example/fhir"]),
            "bulk https://ehr.example/fhir"
        );
        assert_eq!(
            kind(&["--server", "https://ehr.example/fhir", "--dry-run"]),
            "server https://ehr.example/fhir dry true"
        );
        assert_eq!(
            kind(&["--input", "a", "--input", "b", "--write-to", "each"]),
            "joined each"
        );
    }

    #[test]
    fn every_problem_with_the_flags_is_reported_at_once() {
        let args = run_args(&[
            "--input", "a", "--input", "b", "--state", "s.json", "--shard", "1/2",
        ]);
        let error = resolve(&args).expect_err("three problems").to_string();
        assert!(
            error.starts_with("3 problems with the flags of `run`:"),
            "{error}"
        );
        for problem in [
            "need --write-to",
            "do not go with several sources",
            "needs the join key",
        ] {
            assert!(error.contains(problem), "{problem}: {error}");
        }
        let args = run_args(&["--server", "https://ehr.example/fhir", "--shard", "1/2"]);
        let error = resolve(&args).expect_err("one problem").to_string();
        assert!(
            error.starts_with("--shard and --thresholds go with file input"),
            "{error}"
        );
        let error = resolve(&run_args(&["--dry-run"]))
            .expect_err("files")
            .to_string();
        assert!(error.starts_with("--dry-run goes with --server"), "{error}");
    }
}
