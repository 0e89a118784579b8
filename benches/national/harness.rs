//! The national-scale benchmark: it generates its own populations (kept between runs), times
//! the parse-only floor in this process and a real `segmentti run` in a child process (so its
//! peak memory is its own), sizes taking turns over rounds, and prints the figures the floors of
//! `docs/benchmarks.md` are judged by, down to the shard count for the country. Run by
//! `cargo bench --bench national`; `tests/it/bench.rs` runs it at a small size.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use segmentti::source::synth::{self, CodeFlavor, SynthFormat, SynthOptions};
use segmentti::source::synthetic::DEFAULT_AS_OF as AS_OF;

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Population sizes.
    pub clients: Vec<u64>,
    /// Seed of the populations.
    pub seed: u64,
    /// Where populations are generated and kept between benchmark runs.
    pub work_dir: PathBuf,
    /// How many rounds; the medians are reported.
    pub repeat: usize,
    /// Populations with the shapes of real exports (`synth --real-shapes`).
    pub real_shapes: bool,
}

/// Runs the benchmark with `exe` as the segmentti binary, writing its table to `out`.
pub fn bench(args: &Options, exe: &Path, out: &mut dyn Write) -> Result<()> {
    let repeat = args.repeat.max(1);
    writeln!(
        out,
        "{:>9} {:>11} {:>8} {:>9} {:>12} {:>9} {:>13} {:>12} {:>7} {:>9} {:>10}",
        "clients",
        "resources",
        "MiB",
        "floor s",
        "floor res/s",
        "run s",
        "run range s",
        "run res/s",
        "ratio",
        "run CPU s",
        "peak RSS"
    )?;
    let mut sizes = args.clients.clone();
    sizes.sort_unstable();
    let dirs: Vec<PathBuf> = sizes
        .iter()
        .map(|clients| {
            let shapes = if args.real_shapes { "-shapes" } else { "" };
            args.work_dir
                .join(format!("synth-{clients}-{}{shapes}", args.seed))
        })
        .collect();
    let mut timings: Vec<Timings> = Vec::new();
    for (&clients, dir) in sizes.iter().zip(&dirs) {
        let marker = dir.join(".complete");
        if !marker.exists() {
            eprintln!("generating {clients} clients into {} ...", dir.display());
            let opts = SynthOptions {
                clients,
                seed: args.seed,
                flavor: CodeFlavor::Finnish,
                as_of: AS_OF.parse().map_err(anyhow::Error::msg)?,
                area: None,
                bills: synth::Bills::None,
                records: false,
                shapes: args.real_shapes,
            };
            synth::write_dir(&opts, SynthFormat::Ndjson, dir)?;
            std::fs::write(&marker, "")?;
        }
        timings.push(Timings::default());
    }
    // Sizes take turns within each repeat, so a slow spell of the host (minutes long on a
    // shared virtual machine) falls on every size alike, and the growth from one size to the
    // next is measured in pairs, one per repeat, rather than between one size's spell and
    // another's.
    for round in 0..repeat {
        for ((&clients, dir), t) in sizes.iter().zip(&dirs).zip(&mut timings) {
            for other in dirs
                .iter()
                .filter(|d| *d != dir && d.join(".complete").exists())
            {
                segmentti::run::bench::evict(other)?;
            }
            // One untimed pass puts the files in the page cache, so no measurement pays for
            // the disk; with one size they stay there from the first round on.
            if round == 0 || sizes.len() > 1 {
                segmentti::run::bench::parse_floor(dir)?;
            }
            let run_out = args.work_dir.join(format!("out-{clients}"));
            // Floor and run take turns, so a slow spell of the host falls on both alike.
            let floor = segmentti::run::bench::parse_floor(dir)?;
            (t.resources, t.bytes) = (floor.resources, floor.bytes);
            t.floors.push(floor.elapsed.as_secs_f64());
            let (elapsed, stdout) = timed(exe, dir, &run_out, &[])?;
            t.runs.push(elapsed);
            t.cpus.push(stat(&stdout, "cpu_seconds"));
            t.rss = t.rss.max(stat(&stdout, "peak_rss_bytes"));
        }
    }
    // Before the medians sort the repeats: round i of one size beside round i of the next.
    let growths: Vec<Growth> = timings
        .windows(2)
        .map(|pair| Growth::paired(&pair[0], &pair[1]))
        .collect();
    let mut measured: Vec<Measured> = Vec::new();
    for (&clients, t) in sizes.iter().zip(&mut timings) {
        let (floor_s, run_s) = (median(&mut t.floors), median(&mut t.runs));
        let cpu_s = median(&mut t.cpus);
        let resources = t.resources as f64;
        writeln!(
            out,
            "{:>9} {:>11} {:>8.0} {:>9.2} {:>12.0} {:>9.2} {:>13} {:>12.0} {:>7.2} {:>9.1} {:>6.0} MiB",
            clients,
            t.resources,
            t.bytes as f64 / 1048576.0,
            floor_s,
            resources / floor_s,
            run_s,
            format!("{:.2}-{:.2}", t.runs[0], t.runs[t.runs.len() - 1]),
            resources / run_s,
            floor_s / run_s,
            cpu_s,
            t.rss / 1048576.0
        )?;
        measured.push(Measured {
            clients,
            run: run_s,
        });
    }
    writeln!(
        out,
        "ratio = parse-only floor time / run time (1.0 = as fast as merely parsing the JSON; the floor uses one thread, the run both cores)"
    )?;
    writeln!(
        out,
        "times are medians of {repeat} runs (--repeat), the sizes taking turns, each measured with the others dropped from the page cache; peak RSS is the largest of a size's runs"
    )?;
    // The floor's growth and the run's CPU time beside the run's wall time: on a shared virtual
    // machine, stolen time, a page cache that fills more of memory and the disk's waits slow one
    // run and not another, and that is the machine's, not the run's. CPU time is the work done.
    for (pair, mut growth) in measured.windows(2).zip(growths) {
        let (a, b) = (&pair[0], &pair[1]);
        let run = median(&mut growth.runs);
        writeln!(
            out,
            "linearity: {} clients took {:.2}x the time of {} ({:.2}x the clients; median of {repeat} rounds, {:.2}-{:.2}; the run's CPU time {:.2}x, the floor {:.2}x)",
            b.clients,
            run,
            a.clients,
            b.clients as f64 / a.clients as f64,
            growth.runs[0],
            growth.runs[growth.runs.len() - 1],
            median(&mut growth.cpus),
            median(&mut growth.floors)
        )?;
    }
    if let (Some(last), Some(dir), Some(t)) = (measured.last(), dirs.last(), timings.last()) {
        extrapolate(out, args, exe, last.clients, dir, last.run, t.rss)?;
    }
    Ok(())
}

/// What `bench` measured of one population size, over its repeats.
#[derive(Debug, Default)]
struct Timings {
    resources: u64,
    bytes: u64,
    floors: Vec<f64>,
    runs: Vec<f64>,
    /// The runs' own CPU time, user and system, as `run --stats` reports it.
    cpus: Vec<f64>,
    rss: f64,
}

/// How much longer one size took than the next smaller one, per round of the benchmark.
#[derive(Debug)]
struct Growth {
    runs: Vec<f64>,
    cpus: Vec<f64>,
    floors: Vec<f64>,
}

impl Growth {
    /// Round by round, `larger` over `smaller`.
    fn paired(smaller: &Timings, larger: &Timings) -> Self {
        let over = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| b / a).collect();
        Self {
            runs: over(&smaller.runs, &larger.runs),
            cpus: over(&smaller.cpus, &larger.cpus),
            floors: over(&smaller.floors, &larger.floors),
        }
    }
}

/// One population size and its median run time, in seconds.
#[derive(Debug)]
struct Measured {
    clients: u64,
    run: f64,
}

/// The median of `values` (sorted in place); the upper one of an even count.
fn median(values: &mut [f64]) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Shards of one population, for the national extrapolation: every shard reads the whole input
/// and keeps its own clients, so a shard costs a fixed part (reading) plus a part that shrinks
/// with the shard count. A shard of four of the largest size separates the two.
fn extrapolate(
    out: &mut dyn Write,
    args: &Options,
    exe: &Path,
    clients: u64,
    dir: &Path,
    full: f64,
    rss: f64,
) -> Result<()> {
    const SHARDS: u64 = 4;
    const MEMORY_PER_SHARD: f64 = 1024.0 * 1024.0 * 1024.0;
    const COUNTRY: f64 = 5_500_000.0;
    const TARGET_S: f64 = 600.0;
    let thresholds = args.work_dir.join(format!("thresholds-{clients}.json"));
    let shard_out = args.work_dir.join(format!("out-{clients}-shard"));
    let shard = format!("0/{SHARDS}");
    let given = thresholds.display().to_string();
    let (mut passes, mut shards) = (Vec::new(), Vec::new());
    // Timed as many times as the sizes were, for the same reason: one slow spell of the host
    // would otherwise decide the split between what every shard pays and what shards divide.
    for _ in 0..args.repeat.max(1) {
        let started = std::time::Instant::now();
        let output = std::process::Command::new(exe)
            .args(["thresholds", "--input"])
            .arg(dir)
            .args(["--as-of", AS_OF, "--out"])
            .arg(&thresholds)
            .output()?;
        if !output.status.success() {
            bail!(
                "the thresholds pass failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        passes.push(started.elapsed().as_secs_f64());
        let (one, _) = timed(
            exe,
            dir,
            &shard_out,
            &["--shard", &shard, "--thresholds", &given],
        )?;
        shards.push(one);
    }
    let (first_pass, one) = (median(&mut passes), median(&mut shards));
    // t(N) = fixed + rest / N, through t(1) = full and t(SHARDS) = one.
    let n = SHARDS as f64;
    let fixed = ((n * one - full) / (n - 1.0)).max(0.0);
    let rest = (full - fixed).max(0.0);
    let scale = COUNTRY / clients as f64;
    writeln!(
        out,
        "shards: thresholds pass {first_pass:.2} s; shard {shard} of {clients} clients {one:.2} s (fixed part {fixed:.2} s, divisible part {rest:.2} s)"
    )?;
    let country_fixed = fixed * scale;
    let country_rest = rest * scale;
    writeln!(
        out,
        "5.5 M clients: one process ≈ {:.0} s; thresholds pass ≈ {:.0} s",
        country_fixed + country_rest,
        first_pass * scale
    )?;
    // Memory grows with the clients a shard folds: enough shards that each stays under 1 GiB.
    let by_memory = (rss * scale / MEMORY_PER_SHARD).ceil().max(1.0);
    if country_fixed + first_pass * scale >= TARGET_S {
        writeln!(
            out,
            "10 minutes cannot be met by sharding one shared input: every shard reads it all ({country_fixed:.0} s); split the export per shard (one Group per shard)"
        )?;
    } else {
        let by_time = (country_rest / (TARGET_S - first_pass * scale - country_fixed))
            .ceil()
            .max(1.0);
        let shards = by_time.max(by_memory);
        writeln!(
            out,
            "10 minutes for 5.5 M clients: {shards:.0} shard(s) of this machine's size (2 cores, at most 1 GiB each: {by_memory:.0} for memory, {by_time:.0} for time), each ≈ {:.0} s after the thresholds pass ({:.0} s)",
            country_fixed + country_rest / shards,
            first_pass * scale
        )?;
    }
    Ok(())
}

/// Runs `segmentti run` on `dir` into `out` with `--stats`; its wall time and stdout.
fn timed(exe: &Path, dir: &Path, out: &Path, extra: &[&str]) -> Result<(f64, String)> {
    let started = std::time::Instant::now();
    let output = std::process::Command::new(exe)
        .args(["run", "--progress", "off", "--input"])
        .arg(dir)
        .args(["--as-of", AS_OF, "--stats", "--out"])
        .arg(out)
        .args(extra)
        .output()?;
    let elapsed = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "the benchmark run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok((
        elapsed,
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}

/// A `key=value` of the `stats:` line `run --stats` prints.
fn stat(stdout: &str, key: &str) -> f64 {
    stdout
        .lines()
        .find(|l| l.starts_with("stats: "))
        .and_then(|l| {
            l.split_whitespace().find_map(|kv| {
                kv.strip_prefix(&format!("{key}="))
                    .and_then(|v| v.parse().ok())
            })
        })
        .unwrap_or(f64::NAN)
}
