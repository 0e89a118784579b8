//! The fuzz targets' committed inputs as plain tests: every file in `fuzz/corpus/<target>/`
//! goes through its target's function, the very code the libFuzzer binaries run (included from
//! `fuzz/src/lib.rs`), so every input that once reached new code or broke something stays
//! covered on stable, in every `cargo test`, wherever libFuzzer does not run. A crash that
//! fuzzing finds gets its input into the corpus and a test of its own here, named after it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[path = "../../fuzz/src/lib.rs"]
mod targets;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn names(dir: &Path, strip: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| {
            let name = entry.expect("a directory entry").file_name();
            name.to_string_lossy().trim_end_matches(strip).to_owned()
        })
        .collect()
}

#[test]
fn every_fuzz_target_has_a_function_and_a_corpus() {
    let listed: BTreeSet<String> = targets::TARGETS
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect();
    assert_eq!(
        names(&fuzz_dir().join("fuzz_targets"), ".rs"),
        listed,
        "fuzz/fuzz_targets/ and targets::TARGETS name different targets"
    );
    assert_eq!(
        names(&fuzz_dir().join("corpus"), ""),
        listed,
        "fuzz/corpus/ and targets::TARGETS name different targets"
    );
}

#[test]
fn every_corpus_input_runs_through_its_target_without_a_panic() {
    let mut failed = Vec::new();
    let mut inputs = 0;
    for (name, run) in targets::TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        let files = names(&dir, "");
        assert!(!files.is_empty(), "fuzz/corpus/{name}/ is empty");
        for file in files {
            let bytes = std::fs::read(dir.join(&file)).expect("a corpus file");
            inputs += 1;
            if std::panic::catch_unwind(|| run(&bytes)).is_err() {
                failed.push(format!("fuzz/corpus/{name}/{file}"));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {inputs} corpus inputs panic (see above): {failed:?}; reproduce one with \
         `cargo fuzz run <target> <file>` in fuzz/",
        failed.len()
    );
}
