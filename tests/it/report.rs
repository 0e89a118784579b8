//! `segmentti report` over two real runs of the same population, half a year apart: the
//! transitions add up to the clients, every client is in a service-area row, every chart is in
//! the page, and the page renders in
//! headless Chromium (Debian's `chromium`, installed by scripts/test.sh) without console
//! errors and without touching the network.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::{Synth, run_files, segmentti, synth, text};

/// The ids of the built-in model's charts and tables the page must have.
const CHARTS: [&str; 6] = [
    "dist-paijat-sote",
    "age-paijat-sote",
    "area-paijat-sote",
    "area-table-paijat-sote",
    "lorenz-paijat-sote",
    "transitions-paijat-sote",
];

fn ok(output: &std::process::Output) {
    let (stdout, stderr) = text(output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn a_report_of_two_runs_shows_every_chart_and_renders_in_chromium() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input");
    synth(1500, 4, Synth::Files(&input), &[]);
    let (before, now) = (dir.path().join("before"), dir.path().join("now"));
    ok(&segmentti(&[
        "run",
        "--input",
        path(&input),
        "--as-of",
        "2025-07-01",
        "--out",
        path(&before),
        "--progress",
        "off",
    ]));
    ok(&run_files(&input, &now, &["--progress", "off"]));
    let out = dir.path().join("report");
    ok(&segmentti(&[
        "report",
        path(&now),
        path(&before),
        "--out",
        path(&out),
    ]));

    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("report.json")).expect("report.json"),
    )
    .expect("JSON");
    let model = &report["models"][0];
    let t = &model["transitions"];
    let moved: u64 = t["matrix"]
        .as_array()
        .expect("matrix")
        .iter()
        .flat_map(|row| row.as_array().expect("row").iter())
        .map(|v| v.as_u64().expect("count"))
        .sum();
    // Children born between the two dates were not assessed at the first: they are new.
    let new = t["new"].as_u64().expect("new");
    assert!(new < 20, "{t}");
    assert_eq!(moved + new, 1500, "every client is in one cell or new: {t}");
    let counted: u64 = ["lighter", "same", "heavier"]
        .iter()
        .map(|k| t[k].as_u64().expect("n"))
        .sum();
    assert_eq!(counted, moved);
    assert!(
        t["lighter"].as_u64() > Some(0) && t["heavier"].as_u64() > Some(0),
        "{t}"
    );
    let top10 = model["cost_concentration"]["top_10"]
        .as_f64()
        .expect("top 10 %");
    assert!(
        top10 > 0.6,
        "the synthetic population's cost is concentrated: {top10}"
    );
    let csv = std::fs::read_to_string(out.join("transitions.csv")).expect("csv");
    assert_eq!(
        csv.lines().count(),
        1 + 36,
        "a header and 6 × 6 cells: {csv}"
    );

    let areas = model["service_areas"].as_array().expect("service areas");
    let codes: Vec<&str> = areas
        .iter()
        .map(|a| a["area"].as_str().expect("code"))
        .collect();
    assert_eq!(codes, ["health", "social", "oral", "none"]);
    let totals: Vec<u64> = areas
        .iter()
        .map(|a| {
            let counts = a["counts"].as_array().expect("counts");
            assert_eq!(counts.len(), 6, "a count per segment: {a}");
            counts.iter().map(|n| n.as_u64().expect("count")).sum()
        })
        .collect();
    // A client is in every area they used, or in `none`: no row exceeds the population, and
    // together the rows hold everyone at least once.
    assert!(totals.iter().all(|&n| n > 0 && n <= 1500), "{totals:?}");
    assert!(totals.iter().sum::<u64>() >= 1500, "{totals:?}");
    assert!(
        totals[0] > totals[1] && totals[0] > totals[2],
        "health is the largest: {totals:?}"
    );
    let csv = std::fs::read_to_string(out.join("service_areas.csv")).expect("csv");
    assert!(
        csv.starts_with("model,service_area,segment,clients\n"),
        "{csv}"
    );
    assert_eq!(
        csv.lines().count(),
        1 + 4 * 6,
        "a header and 4 areas × 6 segments: {csv}"
    );

    let html = std::fs::read_to_string(out.join("report.html")).expect("html");
    for chart in CHARTS {
        assert!(html.contains(&format!("id=\"{chart}\"")), "{chart} missing");
    }
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("<script"));

    let chromium = Command::new("chromium")
        .args([
            "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
            "--virtual-time-budget=2000", "--dump-dom",
        ])
        .arg(format!("file://{}", path(&out.join("report.html"))))
        .output()
        .unwrap_or_else(|e| {
            panic!("headless Chromium does not start ({e})\nhint: install Debian's chromium package (scripts/test.sh does)")
        });
    let (dom, log) = text(&chromium);
    assert!(chromium.status.success(), "{log}");
    for chart in CHARTS {
        assert!(
            dom.contains(&format!("id=\"{chart}\"")),
            "{chart} not rendered"
        );
    }
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
}
