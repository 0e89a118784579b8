//! `--shard k/N`: N shards, agreeing on the population thresholds through the merged parts of
//! a first pass, write exactly what one unsharded run writes; a shard without thresholds is
//! refused with the way to make them.

use std::collections::BTreeSet;
use std::path::Path;

use crate::support::{Synth, run_files, segmentti, synth, text};

const SHARDS: usize = 3;

fn lines(dir: &Path, file: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("read {}/{file}: {e}", dir.display()))
        .lines()
        .map(str::to_owned)
        .collect()
}

fn ok(output: &std::process::Output) {
    let (stdout, stderr) = text(output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
}

#[test]
fn shards_together_write_what_one_run_writes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input");
    let p = |path: &Path| path.to_str().expect("utf-8").to_owned();
    synth(600, 11, Synth::Files(&input), &[]);
    let whole = dir.path().join("whole");
    ok(&run_files(&input, &whole, &["--progress", "off"]));

    let refused = run_files(&input, &dir.path().join("refused"), &["--shard", "0/3"]);
    let (_, stderr) = text(&refused);
    assert!(!refused.status.success());
    assert!(stderr.contains("segmentti thresholds --shard"), "{stderr}");

    let mut parts = Vec::new();
    for k in 0..SHARDS {
        let part = dir.path().join(format!("part-{k}.json"));
        ok(&segmentti(&[
            "thresholds",
            "--input",
            &p(&input),
            "--as-of",
            "2026-01-01",
            "--shard",
            &format!("{k}/{SHARDS}"),
            "--out",
            &p(&part),
        ]));
        parts.push(p(&part));
    }
    let merged = dir.path().join("thresholds.json");
    let mut args = vec![
        "thresholds".to_owned(),
        "--out".into(),
        p(&merged),
        "--merge".into(),
    ];
    args.extend(parts);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&segmentti(&args));
    let single = dir.path().join("single.json");
    ok(&segmentti(&[
        "thresholds",
        "--input",
        &p(&input),
        "--as-of",
        "2026-01-01",
        "--out",
        &p(&single),
    ]));
    assert_eq!(
        std::fs::read_to_string(&merged).expect("merged"),
        std::fs::read_to_string(&single).expect("single"),
        "merged parts give the unsharded thresholds"
    );

    let outs: Vec<_> = (0..SHARDS)
        .map(|k| {
            let out = dir.path().join(format!("shard-{k}"));
            ok(&run_files(
                &input,
                &out,
                &[
                    "--shard",
                    &format!("{k}/{SHARDS}"),
                    "--thresholds",
                    &p(&merged),
                    "--progress",
                    "off",
                ],
            ));
            out
        })
        .collect();
    for file in ["Observation.ndjson", "Flag.ndjson"] {
        let per_shard: Vec<Vec<String>> = outs.iter().map(|out| lines(out, file)).collect();
        assert!(
            per_shard.iter().all(|l| !l.is_empty()),
            "every shard has clients"
        );
        let union: Vec<String> = per_shard.concat();
        let union_set: BTreeSet<String> = union.iter().cloned().collect();
        assert_eq!(union_set.len(), union.len(), "no client is in two shards");
        let whole_set: BTreeSet<String> = lines(&whole, file).into_iter().collect();
        assert_eq!(
            union_set, whole_set,
            "{file}: the shards' union differs from the whole run"
        );
    }
}
