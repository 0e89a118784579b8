//! `cargo bench --bench national [-- --clients N ...]`: the national-scale benchmark, out of
//! the shipped binary. Under `cargo test` (no `--bench` flag) it only says how it is run; its
//! test is `tests/it/bench.rs`, which runs the same harness at a small size.

mod harness;

use std::path::PathBuf;

use clap::Parser;

/// The benchmark's flags.
#[derive(Debug, Parser)]
struct Args {
    /// Population sizes to measure (repeatable).
    #[arg(long = "clients", default_values_t = [100_000u64, 300_000, 1_000_000])]
    clients: Vec<u64>,
    /// Seed of the populations.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Where populations are generated and kept between benchmark runs.
    #[arg(long, default_value = "target/bench")]
    work_dir: PathBuf,
    /// How many times the floor and the run are timed per size; the medians are reported.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Populations with the shapes of real exports (`synth --real-shapes`): types no model
    /// reads, which the run ignores and the floor parses, voided and dual-coded resources.
    #[arg(long)]
    real_shapes: bool,
    /// Given by `cargo bench`; without it (`cargo test`) nothing is measured.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.bench {
        println!("the national benchmark runs under `cargo bench --bench national`");
        return Ok(());
    }
    let options = harness::Options {
        clients: args.clients,
        seed: args.seed,
        work_dir: args.work_dir,
        repeat: args.repeat,
        real_shapes: args.real_shapes,
    };
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_segmentti"));
    harness::bench(&options, &exe, &mut std::io::stdout().lock())
}
