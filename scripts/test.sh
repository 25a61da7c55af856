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
