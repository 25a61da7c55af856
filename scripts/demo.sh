#!/usr/bin/env bash
# The main job: an all-in-one farm on this machine. Builds distcc-rs, starts a
# scheduler and a node on loopback, builds a real multi-crate workspace (and a
# crate with crates.io dependencies) through the farm, and prints what ran
# where.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
bash scripts/setup.sh

echo "== building distcc-rs (release)"
cargo build --release --workspace --bins --locked
BIN=$ROOT/target/release

WORK=$(mktemp -d /tmp/distcc-rs-demo.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

source scripts/local-farm.sh
start_local_farm

build() {
  local name=$1 dir=$WORK/$1
  cp -r "$ROOT/tests/fixtures/$name" "$dir"
  echo "== cargo build of tests/fixtures/$name through the farm"
  local start=$(date +%s%N)
  (cd "$dir" && CARGO_TARGET_DIR="$dir/target" CARGO_INCREMENTAL=0 \
     RUSTC_WRAPPER="$BIN/distcc-rs" DISTCC_RS_SCHEDULER="$SCHED" \
     DISTCC_RS_CACHE_DIR="$WORK/cache" DISTCC_RS_EVENTS="$WORK/$name.events" \
     DISTCC_RS_LOG=info DISTCC_RS_LOG_FILE="$WORK/client.log" \
     cargo build --quiet)
  local ms=$(( ($(date +%s%N) - start) / 1000000 ))
  "$BIN/distcc-rs" stats --events "$WORK/$name.events" | sed 's/^/   /'
  echo "   build took $((ms / 1000)).$(( (ms % 1000) / 100 )) s"
}
build workspace
build realdeps
echo "== farm status"
"$BIN/distcc-rs" status --scheduler "$SCHED"
