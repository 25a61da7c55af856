#!/usr/bin/env bash
# Measures toolchain bundles, round by round on the same machine:
#
#   pack      `distcc-rs-pack create` at its default level (zstd -3, all cores)
#   sccache   what sccache-dist packs for a rustc toolchain: the sysroot's
#             bin/ and lib/ trees, tar + gzip -6 (`tar -czf`)
#   sysroot   the whole sysroot (docs included), `tar -czf`
#   unpack    `distcc-rs-pack unpack`: what a node does with a bundle it
#             fetched (hash, every file checked against the manifest, written)
#   verify    `distcc-rs-pack verify`: unpack plus the bundled rustc compiling
#             a small crate in the bubblewrap sandbox
#   node      a real `distcc-rs-node` started with an empty work dir against
#             a scheduler that already stores the bundle: from the node's
#             start to its registration, to holding the unpacked toolchain
#             (fetched for the first job a client sends it), and to that
#             job's end
#
# Prints the tables and rewrites the toolchain section of docs/BENCHMARKS.md.
#
#   BENCH_ROUNDS=3   timed rounds (medians reported)
#   BENCH_NODE=1     also time a real node (0: skip; it needs the whole
#                    workspace built in release mode)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${BENCH_ROUNDS:-3}
NODE=${BENCH_NODE:-1}
DOC=$ROOT/docs/BENCHMARKS.md
BEGIN_MARK='<!-- bench-toolchain:begin -->'
END_MARK='<!-- bench-toolchain:end -->'
case $ROUNDS in '' | *[!0-9]* | 0) echo "BENCH_ROUNDS must be a positive integer" >&2; exit 2 ;; esac
RUN_START=$(date +%s%N)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

bash scripts/setup.sh
source scripts/bench-lib.sh

echo "== building distcc-rs (release)"
if [ "$NODE" != 0 ]; then
  cargo build --release --locked --bins -p distcc-rs-pack -p distcc-rs -p distcc-rs-scheduler -p distcc-rs-node
else
  cargo build --release --locked --bins -p distcc-rs-pack
fi
BIN=$ROOT/target/release
SYSROOT=$(rustc --print sysroot)

WORK=$(mktemp -d /tmp/distcc-rs-bench-toolchain.XXXXXX)
mkdir -p "$WORK/logs"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Keep the logs; drop bundles, archives and unpacked toolchains (GiBs).
  find "$WORK" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} + 2>/dev/null || true
}
trap cleanup EXIT

now() { date +%s%N; }
ms_since() { echo $(( ($(now) - $1) / 1000000 )); }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f%%", 100 * a / b }'; }
# The value of a `key: value` line of distcc-rs-pack's output.
field() { sed -n "s/^$2: *//p" "$1" | head -n1; }
# Regular files and their total size under the given directories.
tree_stats() { find "$@" -type f -printf '%s\n' | awk '{ n++; s += $1 } END { print n, s }'; }
# "median s (min–max s)" of a list of milliseconds.
spread() { echo "$(secs "$(median "$1")") s ($(secs "$(minimum "$1")")–$(secs "$(maximum "$1")") s)"; }

if command -v bwrap >/dev/null 2>&1; then VERIFY_ARGS=(); SANDBOX="in the bubblewrap sandbox"; else
  VERIFY_ARGS=(--no-sandbox); SANDBOX="without a sandbox (bwrap missing)"
fi

read -r SCC_FILES SCC_RAW < <(tree_stats "$SYSROOT/bin" "$SYSROOT/lib")
read -r ALL_FILES ALL_RAW < <(tree_stats "$SYSROOT")

# Read the whole sysroot once so every method starts from the page cache.
echo "== warming the page cache with $SYSROOT ($(mib "$ALL_RAW"))"
tar -cf - -C "$SYSROOT" . >/dev/null

PACK="" SCC="" ALL="" UNPACK="" VERIFY=""
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round/$ROUNDS"
  rm -rf "$WORK/pack"
  t=$(now)
  "$BIN/distcc-rs-pack" create --out "$WORK/pack" >"$WORK/logs/create-$round.out" 2>"$WORK/logs/create-$round.err"
  ms=$(ms_since "$t"); PACK+=" $ms"
  out=$WORK/logs/create-$round.out
  if [ "$round" = 1 ]; then
    ID=$(field "$out" id)
    BUNDLE=$WORK/$ID.tar.zst
    mv "$(field "$out" path)" "$BUNDLE"
    PACK_FILES=$(field "$out" files)
    PACK_RAW=$(field "$out" "raw size" | sed -E 's/.*\(([0-9]+) bytes\).*/\1/')
    PACK_SIZE=$(stat -c %s "$BUNDLE")
    PACK_THREADS=$(sed -n 's/.* on \([0-9]*\) threads.*/\1/p' "$WORK/logs/create-$round.err")
    SAME=yes
  else
    # Reproducibility, at full size: every round must give the same bytes.
    [ "$(field "$out" id)" = "$ID" ] && cmp -s "$(field "$out" path)" "$BUNDLE" || SAME=no
  fi
  echo "   pack     $(secs "$ms") s"

  t=$(now)
  tar -czf "$WORK/sccache.tar.gz" -C "$SYSROOT" bin lib
  ms=$(ms_since "$t"); SCC+=" $ms"
  SCC_SIZE=$(stat -c %s "$WORK/sccache.tar.gz")
  echo "   sccache  $(secs "$ms") s"

  t=$(now)
  tar -czf "$WORK/sysroot.tar.gz" -C "$SYSROOT" .
  ms=$(ms_since "$t"); ALL+=" $ms"
  ALL_SIZE=$(stat -c %s "$WORK/sysroot.tar.gz")
  rm -f "$WORK/sccache.tar.gz" "$WORK/sysroot.tar.gz"
  echo "   sysroot  $(secs "$ms") s"

  rm -rf "$WORK/unpacked"
  t=$(now)
  "$BIN/distcc-rs-pack" unpack "$BUNDLE" "$WORK/unpacked" >"$WORK/logs/unpack-$round.out"
  ms=$(ms_since "$t"); UNPACK+=" $ms"
  rm -rf "$WORK/unpacked"
  echo "   unpack   $(secs "$ms") s"

  t=$(now)
  "$BIN/distcc-rs-pack" verify "${VERIFY_ARGS[@]}" --scratch "$WORK" "$BUNDLE" >"$WORK/logs/verify-$round.out"
  ms=$(ms_since "$t"); VERIFY+=" $ms"
  echo "   verify   $(secs "$ms") s"
done

# A fresh node against a scheduler that holds the bundle. Polls at 10 ms.
# Waits until file $1 has a line matching $2, or path $2 exists with -e.
wait_for() {
  local _
  for _ in $(seq 1 6000); do
    if [ "$1" = -e ]; then [ -e "$2" ] && return 0; elif grep -q "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.01
  done
  echo "timed out waiting for $*" >&2; return 1
}
REGISTER="" HOLD="" FIRST="" NODE_SECS=""
if [ "$NODE" != 0 ]; then
  # Daemons of this run must not announce themselves to, or find, the
  # machine's other farms.
  MDNS=()
  if "$BIN/distcc-rs-scheduler" --help | grep -q -- --no-mdns; then MDNS=(--no-mdns); fi
  # A node running as root runs each job as the job user (nobody), which
  # must be able to reach the node's work dir: mktemp -d made $WORK 0700.
  if [ "$(id -u)" = 0 ]; then chmod o+x "$WORK"; fi
  mkdir -p "$WORK/scheduler/toolchains"
  cp "$BUNDLE" "$WORK/scheduler/toolchains/"
  "$BIN/distcc-rs-scheduler" --listen 127.0.0.1:0 --state-dir "$WORK/scheduler" "${MDNS[@]}" \
    >"$WORK/logs/scheduler.out" 2>"$WORK/logs/scheduler.log" &
  PIDS+=($!)
  wait_for "$WORK/logs/scheduler.out" "listening on"
  SCHED=$(grep -m1 "listening on" "$WORK/logs/scheduler.out" | awk '{print $NF}')
  # A farm with mutual TLS: nodes and the client enroll with the join token
  # the scheduler made on its first start (each fresh node once, so "start
  # → registered" includes its enrollment). Older builds have no token.
  JOIN=() CLIENT_JOIN=()
  if "$BIN/distcc-rs-scheduler" --help | grep -qE '^ +token '; then
    TOKEN=$("$BIN/distcc-rs-scheduler" --config /dev/null token --state-dir "$WORK/scheduler" \
      2>"$WORK/logs/token.log") || { cat "$WORK/logs/token.log" >&2; exit 1; }
    JOIN=(--join-token "$TOKEN")
    CLIENT_JOIN=(DISTCC_RS_JOIN_TOKEN="$TOKEN" DISTCC_RS_IDENTITY_DIR="$WORK/client-identity")
  fi

  # One library crate, compiled through the wrapper.
  mkdir -p "$WORK/crate/src"
  printf '[package]\nname = "bench_toolchain_smoke"\nversion = "0.1.0"\nedition = "2021"\n\n[workspace]\n' \
    >"$WORK/crate/Cargo.toml"
  printf 'pub fn answer() -> u32 {\n    42\n}\n' >"$WORK/crate/src/lib.rs"
  farm_build() {
    (cd "$WORK/crate" && rm -rf target && env -u RUSTC_WORKSPACE_WRAPPER -u CARGO_BUILD_RUSTC_WRAPPER \
      CARGO_INCREMENTAL=0 RUSTC_WRAPPER="$BIN/distcc-rs" DISTCC_RS_SCHEDULER="$SCHED" DISTCC_RS_MDNS=0 \
      DISTCC_RS_CACHE_DIR="$WORK/cache" DISTCC_RS_LOG_FILE="$WORK/logs/client.log" "${CLIENT_JOIN[@]}" \
      cargo build --offline) >"$WORK/logs/$1.log" 2>&1
  }
  # With no node yet, the client packs its toolchain into its cache and
  # compiles locally, so the timed builds below find the bundle cached.
  farm_build warmup
  # Packing is reproducible, so the client's bundle is the one the
  # scheduler already stores; if not, the timings would include an upload.
  if [ ! -f "$WORK/cache/toolchains/bundles/$ID.tar.zst" ]; then
    echo "the client did not pack bundle $ID; see $WORK/logs/warmup.log and client.log" >&2
    ls -l "$WORK/cache/toolchains/bundles" >&2 || true
    exit 1
  fi

  for round in $(seq 1 "$ROUNDS"); do
    rm -rf "$WORK/node"
    : >"$WORK/logs/node-$round.out"
    t=$(now)
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$WORK" \
      "$BIN/distcc-rs-node" --scheduler "$SCHED" --listen 127.0.0.1:0 "${MDNS[@]}" "${JOIN[@]}" \
      --work-dir "$WORK/node" --name fresh-node >"$WORK/logs/node-$round.out" 2>"$WORK/logs/node-$round.log" &
    node_pid=$!
    PIDS+=("$node_pid")
    wait_for "$WORK/logs/node-$round.out" "registered"
    reg=$(ms_since "$t")
    farm_build "build-$round" &
    build_pid=$!
    wait_for -e "$WORK/node/toolchains/$ID"
    hold=$(ms_since "$t")
    wait "$build_pid" || { echo "farm build failed; see $WORK/logs/build-$round.log" >&2; exit 1; }
    first=$(ms_since "$t")
    kill "$node_pid"; wait "$node_pid" 2>/dev/null || true
    log=$(sed -E 's/\x1b\[[0-9;]*m//g' "$WORK/logs/node-$round.log")
    # The compile must have run on the node, not fallen back to local.
    if ! grep -q 'job finished.*exit_code: 0' <<<"$log"; then
      echo "the node did not compile the crate; see $WORK/logs/node-$round.log" >&2
      exit 1
    fi
    REGISTER+=" $reg"; HOLD+=" $hold"; FIRST+=" $first"
    # The node's own figure for fetching and unpacking, from its log.
    NODE_SECS+=" $(sed -n 's/.*toolchain ready.*secs=\([0-9.]*\).*/\1/p' <<<"$log" | head -n1 |
      awk '{ printf "%.2f", $1 }')"
    echo "   node round $round/$ROUNDS: registered $(secs "$reg") s, toolchain $(secs "$hold") s, first job done $(secs "$first") s"
  done
fi

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
RUN_MS=$(( ($(now) - RUN_START) / 1000000 ))

pack_table() {
  echo "| bundle | files | raw | compressed | compressed/raw | time, median (min–max) |"
  echo "|---|---:|---:|---:|---:|---|"
  echo "| \`distcc-rs-pack create\` (zstd -3 on $PACK_THREADS threads) | $PACK_FILES | $(mib "$PACK_RAW") | **$(mib "$PACK_SIZE")** | $(pct "$PACK_SIZE" "$PACK_RAW") | **$(spread "$PACK")** |"
  echo "| sccache-style: sysroot \`bin/\` + \`lib/\`, \`tar -czf\` (gzip -6, 1 thread) | $SCC_FILES | $(mib "$SCC_RAW") | $(mib "$SCC_SIZE") | $(pct "$SCC_SIZE" "$SCC_RAW") | $(spread "$SCC") |"
  echo "| whole sysroot, \`tar -czf\` (gzip -6, 1 thread) | $ALL_FILES | $(mib "$ALL_RAW") | $(mib "$ALL_SIZE") | $(pct "$ALL_SIZE" "$ALL_RAW") | $(spread "$ALL") |"
}

node_table() {
  echo "| step | time, median (min–max) |"
  echo "|---|---|"
  echo "| \`distcc-rs-pack unpack\` into an empty directory (hash and every file checked) | $(spread "$UNPACK") |"
  echo "| \`distcc-rs-pack verify\`: unpack, then \`rustc -vV\` and a small crate $SANDBOX | $(spread "$VERIFY") |"
  if [ "$NODE" != 0 ]; then
    echo "| real node, start → registered with the scheduler | $(spread "$REGISTER") |"
    echo "| real node, start → toolchain fetched, checked and unpacked (for the first job) | **$(spread "$HOLD")** |"
    echo "| real node, start → first remote compile done | $(spread "$FIRST") |"
    echo "| the node's own log: fetch + unpack (\`toolchain ready\`, per round) | $(sed -E 's/^ //; s/ /, /g' <<<"$NODE_SECS") s |"
  fi
}

SECTION=$WORK/logs/section.md
{
  echo "$BEGIN_MARK"
  echo
  machine_facts
  echo "- sysroot: \`$SYSROOT\`, $ALL_FILES files, $(mib "$ALL_RAW") ($SCC_FILES files, $(mib "$SCC_RAW") in \`bin/\` and \`lib/\`)"
  echo "- rounds: $ROUNDS; every method reads the toolchain from the page cache (warmed once before the first round)"
  echo "- load average (1, 5, 15 min) at start: $LOAD_START; at end: $LOAD_END"
  echo "- whole run, including the release build: $(awk -v ms="$RUN_MS" 'BEGIN { printf "%.1f min", ms / 60000 }')"
  echo "- bundle id: \`$ID\`; identical bytes in every round: **$SAME**"
  echo
  pack_table
  echo
  echo "sccache-dist packs the sysroot's \`bin/\` and \`lib/\` (every tool and every"
  echo "installed target) plus rustc's \`ldd\` closure (a few MiB, left out here), on"
  echo "all cores with parallel gzip: its time is at best the one-thread time divided"
  echo "by the core count, at the same size."
  echo
  node_table
  echo
  echo "Reproduce with \`bash scripts/bench-toolchain.sh\` (\`BENCH_ROUNDS=5\` for more"
  echo "rounds, \`BENCH_NODE=0\` to skip the real node); it rewrites this section."
  echo
  echo "$END_MARK"
} >"$SECTION"

echo
pack_table
echo
node_table
echo
if replace_section "$DOC" "$BEGIN_MARK" "$END_MARK" "$SECTION"; then
  echo "== wrote $DOC (whole run $(awk -v ms="$RUN_MS" 'BEGIN { printf "%.1f min", ms / 60000 }'); logs in $WORK/logs)"
else
  echo "== $DOC lacks the markers $BEGIN_MARK / $END_MARK; section left in $SECTION" >&2
  exit 1
fi
