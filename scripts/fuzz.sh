#!/usr/bin/env bash
# The fuzz stage of scripts/test.sh: installs cargo-fuzz (pinned, once, into the tools
# folder), builds the targets in fuzz/ and runs each for a bounded time from a scratch copy
# of its committed corpus, so a run never changes the tree. Any crash, timeout or memory blow-up
# fails the stage; the input is left in fuzz/artifacts/<target>/ and libFuzzer prints how to
# reproduce it.
#
# The machine's one stable toolchain is enough: without a sanitizer (`-s none`) cargo-fuzz
# needs no nightly flag, and safe Rust (the crate forbids unsafe code) has nothing for
# AddressSanitizer to find beyond what a panic or libFuzzer's own limits already catch.
# Each stage prints its time.
#
# CI builds the targets unoptimised (`--dev`): the instrumented build of the crate and all its
# dependencies then takes about half as long, for about a fifth of the executions per second,
# which a short run from the committed corpus can spare. For a long hunt, build optimised.
#
#   FUZZ_SECONDS  time per target (default 30)
#   FUZZ_TARGETS  targets to run (default: all in fuzz/fuzz_targets/)
#   FUZZ_RELEASE  1 to build the targets optimised (the release profile of fuzz/Cargo.toml)
set -euo pipefail
CARGO_FUZZ_VERSION=0.13.2
root_dir=$(cd "$(dirname "$0")/.." && pwd)
cd "$root_dir"
tools=${SEGMENTTI_TOOLS:-$root_dir/.tools}
seconds=${FUZZ_SECONDS:-30}
targets=${FUZZ_TARGETS:-$(cd fuzz/fuzz_targets && ls -- *.rs | sed 's/\.rs$//')}
# Apart from the shared target/ profiles: the instrumented build has flags of its own.
target_dir="$root_dir/target/fuzz"
# Flags of both `build` and `run`, so that `run` finds the build up to date.
flags=(-s none -a --codegen-units 16 --target-dir "$target_dir")
[ "${FUZZ_RELEASE:-0}" = 1 ] || flags+=(--dev)

stage_start=$SECONDS
stage() {
  echo "fuzz: $1 took $((SECONDS - stage_start)) s" >&2
  stage_start=$SECONDS
}

fuzz_bin="$tools/cargo-fuzz-$CARGO_FUZZ_VERSION/bin"
if [ ! -x "$fuzz_bin/cargo-fuzz" ]; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into $tools (one time, ~1 min)" >&2
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked \
    --root "$tools/cargo-fuzz-$CARGO_FUZZ_VERSION" --target-dir "$tools/cargo-fuzz-build" >&2
  rm -rf "$tools/cargo-fuzz-build"
fi
export PATH="$fuzz_bin:$PATH"
stage "installing cargo-fuzz"

cargo fuzz build "${flags[@]}"
stage "building the targets"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $targets; do
  mkdir -p "$scratch/$target"
  # New inputs go to the scratch folder (the first); the committed corpus is only read.
  # -timeout: one input taking longer is a hang; -rss_limit_mb: memory beyond that is a leak
  # or an unbounded allocation; both are failures.
  cargo fuzz run "${flags[@]}" "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    2>"$scratch/$target.log" || {
    tail -n 60 "$scratch/$target.log" >&2
    echo "fuzz: target $target failed; the input is in fuzz/artifacts/$target/; add it to" \
      "fuzz/corpus/$target/ and a test to tests/it/fuzz_regressions.rs with the fix" >&2
    exit 1
  }
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$target.log")
  found=$(find "$scratch/$target" -type f | wc -l)
  echo "fuzz: $target: ${runs:-?} executions, $found new corpus inputs, no crash" >&2
  stage "fuzzing $target"
done
