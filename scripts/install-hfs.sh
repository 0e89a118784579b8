#!/usr/bin/env bash
# Installs the pinned Helios FHIR Server (the integration tests' real FHIR server) once into
# the tools folder and prints the binary's path. Reused when already there.
#
# The debug build with only R4 + sqlite takes ~8 min on 2 cores instead of ~27 min for the
# default release build; its writes are ~2.6x slower, which is plenty for tests.
set -euo pipefail
HFS_VERSION=0.2.7
root_dir=$(cd "$(dirname "$0")/.." && pwd)
tools=${SEGMENTTI_TOOLS:-$root_dir/.tools}
bin="$tools/hfs-$HFS_VERSION/bin/hfs"
if [ ! -x "$bin" ]; then
  echo "installing helios-hfs $HFS_VERSION into $tools (one time, ~8 min on 2 cores)" >&2
  cargo install helios-hfs --version "$HFS_VERSION" --locked \
    --no-default-features --features R4,sqlite --debug \
    --root "$tools/hfs-$HFS_VERSION" --target-dir "$tools/hfs-build" >&2
  rm -rf "$tools/hfs-build"
fi
echo "$bin"
