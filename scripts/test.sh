#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit tests and the end-to-end
# tests, which start real schedulers and nodes on loopback and build real
# workspaces through the farm.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests run the daemons and the wrapper as real binaries.
cargo build --workspace --bins --locked
cargo test --workspace --locked -- --test-threads=1

# The slow tier, only with DISTCC_RS_SLOW_TESTS=1 (CI leaves it out): a short
# run of every fuzz target. It needs nightly and cargo-fuzz, and its first
# build takes about ten minutes. docs/FUZZING.md has the longer run.
if [ "${DISTCC_RS_SLOW_TESTS:-0}" = 1 ]; then
  FUZZ_SECONDS="${FUZZ_SECONDS:-20}" bash scripts/fuzz.sh
fi
