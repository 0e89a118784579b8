#!/usr/bin/env bash
# The project's test command (the README's second command; CI runs exactly this).
# Installs what the tests need (rustfmt, clippy, the pinned Helios FHIR Server), then checks
# formatting, lints and the API docs and runs every test: unit, integration (against a real
# FHIR server on loopback) and the cases of every model.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup component add rustfmt clippy >/dev/null 2>&1 || true

# Headless Chromium renders the population report in its test (Debian's package).
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium for the report test (one time)" >&2
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_ apt-get install -y -q chromium >/dev/null 2>&1 \
    || { $sudo_ apt-get update -q >/dev/null && $sudo_ apt-get install -y -q chromium >/dev/null; }
fi

# openssl makes the certificates and runs the TLS endpoint of the mutual-TLS test.
if ! command -v openssl >/dev/null 2>&1; then
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get install -y -q openssl >/dev/null 2>&1 \
    || { $sudo_ apt-get update -q >/dev/null && $sudo_ apt-get install -y -q openssl >/dev/null; }
fi

SEGMENTTI_HFS=$(bash scripts/install-hfs.sh)
export SEGMENTTI_HFS

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# The API docs build with no broken or private links (deps as checked by clippy just now).
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked
cargo test --all-targets --locked
bash scripts/fuzz.sh
