#!/usr/bin/env bash
# The data-path benchmark: clean builds of two real workloads
# (benches/fixtures/webstack in the dev profile, benches/fixtures/rgdeps in
# release) three ways side by side, round by round, through a one-node farm
# on loopback:
#
#   plain    CARGO_INCREMENTAL=0 cargo build, no wrapper
#   farm     the same with RUSTC_WRAPPER=distcc-rs
#   nopipe   the farm with DISTCC_RS_PIPELINING=0: the wrapper holds the
#            .rmeta notification back until the remote rustc exits, so cargo
#            cannot start dependents early (sccache-dist's behaviour)
#
# and the bytes a farm build moves (the event log's bytes_sent and
# bytes_received), against a fresh node with a cold input store, against the
# same node again, and for rebuilds after touching and editing a leaf crate.
# Prints markdown tables and rewrites the "Data path" section of
# docs/BENCHMARKS.md.
#
#   BENCH_ROUNDS=2                      timed plain/farm/nopipe triples per workload
#   BENCH_WORKLOADS="webstack rgdeps"   which workloads to run
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${BENCH_ROUNDS:-2}
read -ra WORKLOADS <<<"${BENCH_WORKLOADS:-webstack rgdeps}"
DOC=$ROOT/docs/BENCHMARKS.md
BEGIN_MARK='<!-- BEGIN scripts/bench-datapath.sh output: generated, do not edit by hand -->'
END_MARK='<!-- END scripts/bench-datapath.sh output -->'
MODES=(plain farm nopipe)
# The crate the rebuild measurement touches, per workload (none: no rebuild).
declare -A TOUCH=([webstack]=leaf/src/lib.rs)
declare -A PROFILE=([webstack]=dev [rgdeps]=release)

case $ROUNDS in '' | *[!0-9]* | 0) echo "BENCH_ROUNDS must be a positive integer" >&2; exit 2 ;; esac
for w in "${WORKLOADS[@]}"; do
  [ -f "benches/fixtures/$w/Cargo.toml" ] || { echo "no workload benches/fixtures/$w" >&2; exit 2; }
done
RUN_START=$(date +%s%N)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

bash scripts/setup.sh

echo "== building distcc-rs (release)"
cargo build --release --workspace --bins --locked
BIN=$ROOT/target/release
# A wrapper that does not know the switch would silently pipeline anyway.
if grep -qa DISTCC_RS_PIPELINING "$BIN/distcc-rs"; then PIPELINING_SWITCH=1; else
  PIPELINING_SWITCH=0
  echo "warning: this distcc-rs does not read DISTCC_RS_PIPELINING; nopipe builds will pipeline" >&2
fi

WORK=$(mktemp -d /tmp/distcc-rs-bench-datapath.XXXXXX)
mkdir -p "$WORK/logs" "$WORK/events" "$WORK/src"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Keep logs and event files; drop the fixture copies, toolchain bundles
  # and node sandboxes.
  rm -rf "$WORK/src" "$WORK/cache" "$WORK/node" "$WORK/nodes" "$WORK/scheduler" 2>/dev/null || true
}
trap cleanup EXIT

source scripts/local-farm.sh
source scripts/bench-lib.sh
start_local_farm
NODE_PID=${PIDS[-1]}
NODE_NAME=node-1
NODE_DIR=$WORK/node
FRESH_NODES=0

# Replaces the farm's node with a new one whose work dir is empty: a cold
# input store (and no unpacked toolchain: it fetches the bundle from the
# scheduler, which keeps it, so the client uploads nothing again). With no
# certificate in its work dir, it enrolls with the farm's join token first.
fresh_node() {
  local old=$NODE_PID old_name=$NODE_NAME i p
  FRESH_NODES=$((FRESH_NODES + 1))
  NODE_NAME=node-fresh-$FRESH_NODES
  kill "$old"
  wait "$old" 2>/dev/null || true
  local kept=()
  for p in "${PIDS[@]}"; do [ "$p" = "$old" ] || kept+=("$p"); done
  PIDS=("${kept[@]}")
  rm -rf "$NODE_DIR"
  NODE_DIR=$WORK/nodes/$NODE_NAME
  mkdir -p "$WORK/nodes"
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$WORK" \
    "$BIN/distcc-rs-node" --scheduler "$SCHED" --listen 127.0.0.1:0 --no-mdns \
    --join-token "$TOKEN" --work-dir "$NODE_DIR" --name "$NODE_NAME" \
    >"$WORK/$NODE_NAME.out" 2>"$WORK/$NODE_NAME.log" &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
  wait_line "$WORK/$NODE_NAME.out" "registered" >/dev/null
  # Until the scheduler has dropped the old node it could still place jobs
  # there; wait until the new one is the only node.
  for i in $(seq 1 600); do
    if [ "$(farm_nodes)" = "$NODE_NAME" ]; then
      echo "   $old_name replaced by $NODE_NAME (empty work dir)"
      return 0
    fi
    sleep 0.1
  done
  echo "the scheduler still lists nodes '$(farm_nodes)' instead of only $NODE_NAME" >&2
  return 1
}

# The names of the registered nodes, space-separated.
farm_nodes() {
  "$BIN/distcc-rs" status --scheduler "$SCHED" --json 2>/dev/null |
    sed -nE 's/^ *"name": *"([^"]*)".*/\1/p' | sort | paste -sd' '
}

# One build; sets LAST_MS to the wall time of `cargo build` alone.
#   build MODE(plain|farm|nopipe) WORKLOAD TAG [clean|keep]
LAST_MS=0
build() {
  local mode=$1 name=$2 tag=$3 clean=${4:-clean}
  local dir=$WORK/src/$name log=$WORK/logs/$name-$mode-$tag.log
  local args=(build --locked)
  [ "${PROFILE[$name]}" = release ] && args+=(--release)
  local envs=(-u RUSTC_WRAPPER -u RUSTC_WORKSPACE_WRAPPER -u CARGO_BUILD_RUSTC_WRAPPER
    -u DISTCC_RS_PIPELINING CARGO_TARGET_DIR="$dir/target" CARGO_INCREMENTAL=0)
  if [ "$mode" != plain ]; then
    local events=$WORK/events/$name-$mode-$tag.events
    rm -f "$events"
    envs+=(RUSTC_WRAPPER="$BIN/distcc-rs" DISTCC_RS_SCHEDULER="$SCHED"
      DISTCC_RS_CACHE_DIR="$WORK/cache" DISTCC_RS_EVENTS="$events"
      DISTCC_RS_LOG_FILE="$WORK/logs/client.log")
    [ "$mode" = nopipe ] && envs+=(DISTCC_RS_PIPELINING=0)
  fi
  [ "$clean" = clean ] && rm -rf "$dir/target"
  local start end status=0
  start=$(date +%s%N)
  (cd "$dir" && env "${envs[@]}" cargo "${args[@]}") >"$log" 2>&1 || status=$?
  end=$(date +%s%N)
  if [ "$status" -ne 0 ]; then
    echo "$mode build of $name ($tag) failed ($status); last lines of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  LAST_MS=$(((end - start) / 1000000))
}

# Sets COUNTS to "remote/local/fallback" for a farm build's event file,
# prints `distcc-rs stats`'s totals (the counts line and, from versions that
# log traffic, the line after it) and the reasons of any fallback.
COUNTS=0/0/0
count_events() {
  local events=$1 summary last
  if [ ! -s "$events" ]; then COUNTS=0/0/0; return; fi
  summary=$("$BIN/distcc-rs" stats --events "$events")
  last=$(grep -E '^[0-9]+ compiles: ' <<<"$summary" | tail -n1)
  sed -n '/^[0-9]* compiles: /,$p' <<<"$summary" | sed 's/^/     /'
  COUNTS=$(sed -E 's/^[0-9]+ compiles: ([0-9]+) remote, ([0-9]+) local by choice, ([0-9]+) fell back to local$/\1\/\2\/\3/' <<<"$last")
  case $COUNTS in *[!0-9/]*) echo "cannot parse stats line: $last" >&2; exit 1 ;; esac
  if [ "${COUNTS##*/}" != 0 ]; then
    echo "     fallbacks:"
    grep -E '^[^ ]+ +fallback ' <<<"$summary" | sed 's/^/       /' || true
  fi
}

# Sets TRAFFIC to "sent received inputs blobs_sent", each summed over the
# events of a farm build ("-" where no event carries the field).
TRAFFIC="- - - -"
sum_traffic() {
  TRAFFIC=$(awk '
    function take(field,   re) {
      re = "\"" field "\":[0-9]+"
      if (match($0, re)) { seen[field] = 1; sum[field] += substr($0, RSTART + length(field) + 3, RLENGTH - length(field) - 3) }
    }
    { take("bytes_sent"); take("bytes_received"); take("inputs"); take("blobs_sent") }
    END {
      n = split("bytes_sent bytes_received inputs blobs_sent", f, " ")
      for (i = 1; i <= n; i++) printf "%s%s", (i > 1 ? " " : ""), (f[i] in seen ? sprintf("%.0f", sum[f[i]]) : "-")
      print ""
    }' "$1" 2>/dev/null || echo "- - - -")
}

# Median of a list of millisecond values.
# A byte count for humans ("-" stays "-").
human() {
  case $1 in
    -) echo - ;;
    *) awk -v b="$1" 'BEGIN {
         if (b >= 1048576) printf "%.1f MiB", b / 1048576
         else if (b >= 1024) printf "%.1f KiB", b / 1024
         else printf "%d B", b }' ;;
  esac
}

declare -A TIMES CNT
DATAPATH=()   # "workload|build|ms|sent|received|inputs|blobs|counts"

# Warm-up: one farm and one plain build, untimed, so crates are downloaded,
# the toolchain is packed, uploaded and unpacked, and the node's store holds
# what this workload sends.
warm_up() {
  local name=$1
  echo "== $name (${PROFILE[$name]}): warm-up, one farm and one plain build, untimed"
  build farm "$name" warmup
  echo "   farm   $(secs "$LAST_MS") s"
  count_events "$WORK/events/$name-farm-warmup.events"
  build plain "$name" warmup
  echo "   plain  $(secs "$LAST_MS") s"
}

# ROUNDS rounds of clean builds: plain, farm, nopipe.
timed_rounds() {
  local name=$1 round mode
  for round in $(seq 1 "$ROUNDS"); do
    echo "== $name (${PROFILE[$name]}): round $round/$ROUNDS"
    for mode in "${MODES[@]}"; do
      build "$mode" "$name" "r$round"
      TIMES[$name $mode]="${TIMES[$name $mode]:-} $LAST_MS"
      printf '   %-6s %7s s\n' "$mode" "$(secs "$LAST_MS")"
      if [ "$mode" != plain ]; then
        count_events "$WORK/events/$name-$mode-r$round.events"
        CNT[$name $mode]="${CNT[$name $mode]:-} $COUNTS"
      fi
    done
  done
}

# Farm builds for the bytes: the first against a fresh node, a second clean
# one against the same node and, where the workload names a leaf file, a
# rebuild after touching it (new mtime, same content) and one after an edit
# (a line appended).
data_path() {
  local name=$1 tag label file
  echo "== $name (${PROFILE[$name]}): bytes per farm build"
  fresh_node
  for tag in cold warm touch edit; do
    file=${TOUCH[$name]:-}
    case $tag in
      cold) label="first build, fresh node"; build farm "$name" "$tag" ;;
      warm) label="second clean build, same node"; build farm "$name" "$tag" ;;
      touch | edit)
        [ -n "$file" ] || continue
        if [ "$tag" = touch ]; then
          label="rebuild after touching $file"
          touch "$WORK/src/$name/$file"
        else
          label="rebuild after appending a line to $file"
          echo "pub const EDITED: bool = true;" >>"$WORK/src/$name/$file"
        fi
        build farm "$name" "$tag" keep
        ;;
    esac
    local events=$WORK/events/$name-farm-$tag.events
    sum_traffic "$events"
    local t
    read -ra t <<<"$TRAFFIC"
    printf '   %-45s %7s s, sent %s, received %s, inputs %s, blobs sent %s\n' "$label" \
      "$(secs "$LAST_MS")" "$(human "${t[0]}")" "$(human "${t[1]}")" "${t[2]}" "${t[3]}"
    count_events "$events"
    DATAPATH+=("$name|$label|$LAST_MS|${t[0]}|${t[1]}|${t[2]}|${t[3]}|$COUNTS")
  done
}

for name in "${WORKLOADS[@]}"; do
  rm -rf "$WORK/src/$name"
  cp -r "$ROOT/benches/fixtures/$name" "$WORK/src/$name"
  rm -rf "$WORK/src/$name/target"
  warm_up "$name"
  timed_rounds "$name"
  data_path "$name"
  rm -rf "$WORK/src/$name"
done

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
RUN_MS=$(($(date +%s%N) - RUN_START))
RUN_MS=$((RUN_MS / 1000000))
RUN_MIN=$(awk -v ms="$RUN_MS" 'BEGIN { printf "%.1f min", ms / 60000 }')

# Counts once when every round agrees, else per round.
counts_of() {
  local all
  all=$(tr ' ' '\n' <<<"$1" | grep . | sort -u | paste -sd' ')
  if [ "$(wc -w <<<"$all")" -gt 1 ]; then sed -E 's/^ //; s/ /, /g' <<<"$1"; else echo "$all"; fi
}

summary_table() {
  echo "| workload | profile | plain | farm | farm, no pipelining | farm/plain | nopipe/plain | pipelining gain (nopipe/farm) | remote / local / fallback (farm; nopipe) |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---|"
  local name p f n
  for name in "${WORKLOADS[@]}"; do
    p=$(median "${TIMES[$name plain]}")
    f=$(median "${TIMES[$name farm]}")
    n=$(median "${TIMES[$name nopipe]}")
    printf '| %s | %s | %s s | %s s | %s s | %s | %s | **%s** | %s; %s |\n' "$name" "${PROFILE[$name]}" \
      "$(secs "$p")" "$(secs "$f")" "$(secs "$n")" "$(ratio "$f" "$p")" "$(ratio "$n" "$p")" "$(ratio "$n" "$f")" \
      "$(counts_of "${CNT[$name farm]}")" "$(counts_of "${CNT[$name nopipe]}")"
  done
}

rounds_table() {
  echo "| workload | round | plain | farm | farm, no pipelining | farm/plain | nopipe/plain | nopipe/farm |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  local name i
  for name in "${WORKLOADS[@]}"; do
    read -ra ps <<<"${TIMES[$name plain]}"
    read -ra fs <<<"${TIMES[$name farm]}"
    read -ra ns <<<"${TIMES[$name nopipe]}"
    for i in "${!ps[@]}"; do
      printf '| %s | %d | %s s | %s s | %s s | %s | %s | %s |\n' "$name" "$((i + 1))" \
        "$(secs "${ps[$i]}")" "$(secs "${fs[$i]}")" "$(secs "${ns[$i]}")" \
        "$(ratio "${fs[$i]}" "${ps[$i]}")" "$(ratio "${ns[$i]}" "${ps[$i]}")" "$(ratio "${ns[$i]}" "${fs[$i]}")"
    done
  done
}

bytes_table() {
  echo "| workload | farm build | time | sent | received | sent + received | inputs | blobs sent | remote / local / fallback |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---|"
  local row name label ms sent recv inputs blobs counts total
  for row in "${DATAPATH[@]}"; do
    IFS='|' read -r name label ms sent recv inputs blobs counts <<<"$row"
    if [ "$sent" = - ] || [ "$recv" = - ]; then total=-; else total=$((sent + recv)); fi
    printf '| %s | %s | %s s | %s | %s | **%s** | %s | %s | %s |\n' "$name" "$label" "$(secs "$ms")" \
      "$(human "$sent")" "$(human "$recv")" "$(human "$total")" "$inputs" "$blobs" "$counts"
  done
}

SECTION=$WORK/section.md
{
  echo "$BEGIN_MARK"
  echo
  echo "### Results of the last run"
  echo
  machine_facts
  echo "- rounds: $ROUNDS timed plain / farm / farm-without-pipelining triples per workload, after one untimed farm and plain warm-up"
  echo "- load average (1, 5, 15 min) at start: $LOAD_START; at end: $LOAD_END"
  echo "- whole run, including building distcc-rs, the warm-ups and the byte counts: $RUN_MIN"
  if [ "$PIPELINING_SWITCH" = 0 ]; then
    echo "- **this distcc-rs did not read \`DISTCC_RS_PIPELINING\`**: the no-pipelining builds pipelined too"
  fi
  echo
  echo "Medians of wall-clock seconds of \`cargo build --locked\` from an empty target"
  echo "directory, with the default \`-j$(nproc)\` and \`CARGO_INCREMENTAL=0\`. Ratios above 1"
  echo "mean slower than the denominator; a pipelining gain above 1 is what"
  echo "pipelining saves."
  echo
  summary_table
  echo
  echo "Every timed build, in the order it ran (plain, farm, no pipelining):"
  echo
  rounds_table
  echo
  echo "Bytes per farm build: \`bytes_sent\` and \`bytes_received\` (and \`inputs\`,"
  echo "\`blobs_sent\`) summed over the build's event log. The first build goes to a"
  echo "node started with an empty work dir; the second is another clean build on"
  echo "that node; the rebuilds are incremental \`cargo build\`s after touching the"
  echo "file (new mtime, same bytes) and then after appending a line to it."
  echo "KiB and MiB are 1024 and 1024² bytes."
  echo
  bytes_table
  echo
  echo "Reproduce with \`bash scripts/bench-datapath.sh\` (\`BENCH_ROUNDS=3\` for more"
  echo "rounds); it rewrites this section."
  echo
  echo "$END_MARK"
} >"$SECTION"

echo
echo "== results ($ROUNDS rounds; load average at start $LOAD_START, at end $LOAD_END)"
summary_table
echo
bytes_table
echo

if ! replace_section "$DOC" "$BEGIN_MARK" "$END_MARK" "$SECTION"; then
  { echo; echo "## Data path"; echo; cat "$SECTION"; } >>"$DOC"
fi
echo "== wrote $DOC (whole run $RUN_MIN; logs and event files in $WORK)"
