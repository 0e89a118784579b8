//! The national benchmark's harness (`benches/national`, run by `cargo bench`) end to end at a
//! small size: it generates its own populations, times the parse-only floor and real runs, and
//! prints every figure the national-scale floors are judged by, down to the shard count for the
//! country.

use std::path::{Path, PathBuf};

use crate::support::{Synth, run_files, stats_line, synth, text};

#[path = "../../benches/national/harness.rs"]
mod harness;

/// The benchmark at `clients`, `repeat` rounds, in `work`; its printed table.
fn bench(clients: &[u64], repeat: usize, real_shapes: bool, work: &Path) -> String {
    let options = harness::Options {
        clients: clients.to_vec(),
        seed: 7,
        work_dir: work.to_path_buf(),
        repeat,
        real_shapes,
    };
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_segmentti"));
    let mut out = Vec::new();
    harness::bench(&options, &exe, &mut out).expect("the benchmark runs");
    String::from_utf8(out).expect("utf-8")
}

/// A number of the table, by column.
fn number(row: &[&str], column: usize) -> f64 {
    row[column]
        .parse()
        .unwrap_or_else(|_| panic!("column {column} of {row:?} is a number"))
}

#[test]
fn bench_prints_every_figure_for_every_size_and_the_country() {
    let work = tempfile::tempdir().expect("tempdir");
    // Given out of order: the table and the linearity line go from the smaller size up.
    let stdout = bench(&[900, 300], 2, false, work.path());
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|r| r.len() > 1 && r[..2].iter().all(|c| c.parse::<u64>().is_ok()))
        .collect();
    assert_eq!(
        rows.iter().map(|r| r[0]).collect::<Vec<_>>(),
        ["300", "900"],
        "{stdout}"
    );
    for row in &rows {
        // clients, resources, MiB, floor s, floor res/s, run s, run range s, run res/s, ratio,
        // run CPU s, peak RSS MiB.
        assert_eq!(row.len(), 12, "{row:?}");
        assert!(
            number(row, 1) > number(row, 0),
            "more resources than clients: {row:?}"
        );
        for column in [3, 5, 8, 10] {
            assert!(number(row, column) > 0.0, "column {column} of {row:?}");
        }
        assert!(number(row, 9).is_finite(), "the run's CPU time: {row:?}");
        let (low, high) = row[6].split_once('-').expect("a range");
        let (low, high): (f64, f64) = (low.parse().expect("low"), high.parse().expect("high"));
        assert!(low <= number(row, 5) && number(row, 5) <= high, "{row:?}");
    }
    // The growth is the median of the rounds' own ratios, inside their range.
    let linearity = stdout
        .lines()
        .find_map(|l| l.strip_prefix("linearity: 900 clients took "))
        .unwrap_or_else(|| panic!("a linearity line: {stdout}"));
    let growth: f64 = linearity[..linearity.find('x').expect("a factor")]
        .parse()
        .expect("a number");
    let range = linearity
        .split("median of 2 rounds, ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap_or_else(|| panic!("the rounds' range: {linearity}"));
    let (low, high) = range.split_once('-').expect("a range");
    let (low, high): (f64, f64) = (low.parse().expect("low"), high.parse().expect("high"));
    assert!(low > 0.0 && low <= growth && growth <= high, "{linearity}");
    assert!(linearity.contains("the run's CPU time"), "{linearity}");
    assert!(stdout.contains("medians of 2 runs"), "{stdout}");
    assert!(stdout.contains("5.5 M clients: one process"), "{stdout}");
    assert!(stdout.contains("10 minutes"), "{stdout}");
    // The populations are kept for the next benchmark.
    for clients in [300, 900] {
        assert!(
            work.path()
                .join(format!("synth-{clients}-7/.complete"))
                .exists()
        );
    }
}

#[test]
fn bench_with_real_shapes_parses_what_the_run_ignores() {
    let work = tempfile::tempdir().expect("tempdir");
    let stdout = bench(&[300], 1, true, work.path());
    let population = work.path().join("synth-300-7-shapes");
    assert!(population.join("Procedure.ndjson").exists());
    let row: Vec<&str> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|r| r.first() == Some(&"300"))
        .unwrap_or_else(|| panic!("a row for 300 clients: {stdout}"));
    // The floor counts every line, the ignored types' too.
    let lines: usize = std::fs::read_dir(&population)
        .expect("population")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "ndjson"))
        .map(|e| {
            std::fs::read_to_string(e.path())
                .expect("read")
                .lines()
                .count()
        })
        .sum();
    assert_eq!(number(&row, 1), lines as f64, "{row:?}");
}

#[test]
fn run_stats_give_each_stage_its_time_cpu_and_peak_memory() {
    let work = tempfile::tempdir().expect("tempdir");
    let input = work.path().join("in");
    synth(2000, 7, Synth::Files(&input), &[]);
    let output = run_files(&input, &work.path().join("out"), &["--stats"]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let stats = stats_line(&stdout);
    let line = format!("{stats:?}");
    let field = |key: &str| -> f64 {
        *stats
            .get(key)
            .unwrap_or_else(|| panic!("{key}, a number, in {line}"))
    };
    assert_eq!(field("clients"), 2000.0, "{line}");
    assert!(field("fold_seconds") < field("seconds"), "{line}");
    assert!(field("fold_cpu_seconds") <= field("cpu_seconds"), "{line}");
    let (fold, write, peak) = (
        field("fold_peak_rss_bytes"),
        field("write_peak_rss_bytes"),
        field("peak_rss_bytes"),
    );
    // Each stage's peak is known on Linux, and the run's is the larger of the two.
    assert!(fold > 0.0 && write > 0.0, "{line}");
    assert_eq!(peak, fold.max(write), "{line}");
    for stage in ["read + fold", "evaluate + write"] {
        let row = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(stage))
            .unwrap_or_else(|| panic!("a {stage} row in {stdout}"));
        assert!(
            row.contains("/s") && row.contains("peak RSS") && row.contains(" MiB"),
            "{row}"
        );
    }
}
