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

# Waits for a line matching $2 in file $1 and prints it.
wait_line() {
  local file=$1 pattern=$2 i
  for i in $(seq 1 600); do
    if grep -q "$pattern" "$file" 2>/dev/null; then grep -m1 "$pattern" "$file"; return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for '$pattern' in $file" >&2; cat "$file" >&2; return 1
}

echo "== starting a scheduler and a node on loopback (logs in $WORK)"
"$BIN/distcc-rs-scheduler" --listen 127.0.0.1:0 --state-dir "$WORK/scheduler" \
  >"$WORK/scheduler.out" 2>"$WORK/scheduler.log" &
PIDS+=($!)
SCHED=$(wait_line "$WORK/scheduler.out" "listening on" | awk '{print $NF}')
# The node gets no Rust in its environment: it runs the toolchain bundle it
# fetches from the scheduler.
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$WORK" \
  "$BIN/distcc-rs-node" --scheduler "$SCHED" --listen 127.0.0.1:0 \
  --work-dir "$WORK/node" --name node-1 >"$WORK/node.out" 2>"$WORK/node.log" &
PIDS+=($!)
wait_line "$WORK/node.out" "registered" >/dev/null
echo "   scheduler at $SCHED, node-1 registered"

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
