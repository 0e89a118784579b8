//! What kind of run a `run`'s flags ask for, decided once: files (or the synthetic population),
//! a Bulk Data export, one server, or several sources joined. Every flag that does not go with
//! that kind is reported at once, before a model or an input is read, as serve's configuration
//! reports its problems.

use anyhow::{Result, bail};

use super::RunArgs;
use super::multi;

/// The kind of run the flags ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode<'a> {
    /// Files, or the synthetic population without `--input`; results to `--out`.
    Files,
    /// A Bulk Data export of the `--bulk` server; results to `--out`.
    Bulk,
    /// One FHIR server, read by paged search and written back.
    Server(&'a url::Url),
    /// Several sources joined into whole clients, written back as `--write-to` says.
    Joined {
        /// `each`, or the URL of the one server to write to.
        write_to: &'a str,
    },
}

/// The kind of run `args` ask for, or every problem with their combination.
pub fn resolve(args: &RunArgs) -> Result<Mode<'_>> {
    let several = multi::several(&args.models, &args.join);
    let servers = args.models.server.server.as_slice();
    let mut problems: Vec<String> = Vec::new();
    let mode = if several || args.write_to.write_to.is_some() {
        joined(args, &mut problems)
    } else if let [url] = servers {
        if args.shard.is_some() || args.thresholds.is_some() {
            problems.push(
                "--shard and --thresholds go with file input\nhint: shard a server's population by exporting it first (Bulk Data $export) and running each shard on the files".into(),
            );
        }
        Mode::Server(url)
    } else {
        if args.dry_run || (args.state.is_some() && args.bulk.bulk.is_none()) {
            problems.push(
                "--dry-run goes with --server, --state with --server or --bulk\nhint: a run on files writes only to --out".into(),
            );
        }
        if args.bulk.bulk.is_some() {
            Mode::Bulk
        } else {
            Mode::Files
        }
    };
    match problems.as_slice() {
        [] => Ok(mode),
        [one] => bail!("{one}"),
        all => bail!(
            "{} problems with the flags of `run`:\n{}",
            all.len(),
            all.join("\n")
        ),
    }
}

/// A joined run, and what of its flags does not go with one.
fn joined<'a>(args: &'a RunArgs, problems: &mut Vec<String>) -> Mode<'a> {
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
    Mode::Joined { write_to }
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
        assert_eq!(resolve(&run_args(&[])).expect("files"), Mode::Files);
        assert_eq!(
            resolve(&run_args(&["--input", "a"])).expect("files"),
            Mode::Files
        );
        assert_eq!(
            resolve(&run_args(&["--bulk", "https://ehr.example/fhir"])).expect("bulk"),
            Mode::Bulk
        );
        let server = run_args(&["--server", "https://ehr.example/fhir", "--dry-run"]);
        assert!(
            matches!(resolve(&server), Ok(Mode::Server(u)) if u.as_str() == "https://ehr.example/fhir")
        );
        let joined = run_args(&["--input", "a", "--input", "b", "--write-to", "each"]);
        assert_eq!(
            resolve(&joined).expect("joined"),
            Mode::Joined { write_to: "each" }
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
