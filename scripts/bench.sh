#!/usr/bin/env bash
# Measures what the farm costs: clean builds of the fixture workspaces with
# plain cargo and through a one-node farm on loopback, alternated round by
# round so both see the same machine load, and reported as farm/plain ratios.
# Prints a markdown table and rewrites the generated section of
# docs/BENCHMARKS.md.
#
#   BENCH_ROUNDS=3    timed plain/farm pairs per fixture and profile
#   BENCH_RELEASE=1   also time a --release pair per round for realdeps (0: skip)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${BENCH_ROUNDS:-3}
RELEASE=${BENCH_RELEASE:-1}
DOC=$ROOT/docs/BENCHMARKS.md
BEGIN_MARK='<!-- BEGIN scripts/bench.sh output: generated, do not edit by hand -->'
END_MARK='<!-- END scripts/bench.sh output -->'
case $ROUNDS in '' | *[!0-9]* | 0) echo "BENCH_ROUNDS must be a positive integer" >&2; exit 2 ;; esac
RUN_START=$(date +%s%N)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

bash scripts/setup.sh

echo "== building distcc-rs (release)"
cargo build --release --workspace --bins --locked
BIN=$ROOT/target/release

WORK=$(mktemp -d /tmp/distcc-rs-bench.XXXXXX)
mkdir -p "$WORK/logs" "$WORK/events"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Keep logs and event files; drop the bulky fixture copies, toolchain
  # bundles and node sandboxes.
  rm -rf "$WORK/src" "$WORK/cache" "$WORK/node" "$WORK/scheduler" 2>/dev/null || true
}
trap cleanup EXIT

source scripts/local-farm.sh
source scripts/bench-lib.sh
start_local_farm

# One clean build; sets LAST_MS to the wall time of `cargo build` alone.
#   build MODE(plain|farm) FIXTURE PROFILE(dev|release) TAG
LAST_MS=0
build() {
  local mode=$1 name=$2 profile=$3 tag=$4
  local dir=$WORK/src/$name log=$WORK/logs/$name-$profile-$mode-$tag.log
  local events=$WORK/events/$name-$profile-$tag.events
  local args=(build --locked)
  [ "$profile" = release ] && args+=(--release)
  rm -rf "$dir/target"
  local start end status=0
  start=$(date +%s%N)
  if [ "$mode" = plain ]; then
    (cd "$dir" && env -u RUSTC_WRAPPER -u RUSTC_WORKSPACE_WRAPPER -u CARGO_BUILD_RUSTC_WRAPPER \
       CARGO_TARGET_DIR="$dir/target" CARGO_INCREMENTAL=0 cargo "${args[@]}") >"$log" 2>&1 || status=$?
  else
    rm -f "$events"
    (cd "$dir" && env -u RUSTC_WORKSPACE_WRAPPER -u CARGO_BUILD_RUSTC_WRAPPER \
       CARGO_TARGET_DIR="$dir/target" CARGO_INCREMENTAL=0 \
       RUSTC_WRAPPER="$BIN/distcc-rs" DISTCC_RS_SCHEDULER="$SCHED" \
       DISTCC_RS_CACHE_DIR="$WORK/cache" DISTCC_RS_EVENTS="$events" \
       DISTCC_RS_LOG_FILE="$WORK/logs/client.log" \
       cargo "${args[@]}") >"$log" 2>&1 || status=$?
  fi
  end=$(date +%s%N)
  if [ "$status" -ne 0 ]; then
    echo "$mode $profile build of $name failed ($status); last lines of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  LAST_MS=$(( (end - start) / 1000000 ))
}

# Sets COUNTS to "remote local fallback" for a farm build's event file and
# shows the reasons of any fallback.
COUNTS="0 0 0"
count_events() {
  local events=$1 summary last
  if [ ! -s "$events" ]; then COUNTS="0 0 0"; return; fi
  summary=$("$BIN/distcc-rs" stats --events "$events")
  # The counts line, wherever it is in the summary (a traffic line follows it).
  last=$(grep -E '^[0-9]+ compiles: ' <<<"$summary" | tail -n1)
  COUNTS=$(sed -E 's/^[0-9]+ compiles: ([0-9]+) remote, ([0-9]+) local by choice, ([0-9]+) fell back to local$/\1 \2 \3/' <<<"$last")
  case $COUNTS in *[!0-9\ ]*) echo "cannot parse stats line: $last" >&2; exit 1 ;; esac
  if [ "$(cut -d' ' -f3 <<<"$COUNTS")" != 0 ]; then
    echo "   fallbacks in $events:"
    grep -E '^[^ ]+ +fallback ' <<<"$summary" | sed 's/^/     /' || true
  fi
}

# Median, min and max of a list of millisecond values.

FIXTURES=(workspace realdeps)
profiles_of() {
  if [ "$1" = realdeps ] && [ "$RELEASE" != 0 ]; then echo "dev release"; else echo dev; fi
}

declare -A PLAIN FARM CNT
ROWS=()
for name in "${FIXTURES[@]}"; do
  rm -rf "$WORK/src/$name"
  mkdir -p "$WORK/src"
  cp -r "$ROOT/tests/fixtures/$name" "$WORK/src/$name"
  rm -rf "$WORK/src/$name/target"
  for profile in $(profiles_of "$name"); do
    echo "== warm-up: $name ($profile), one farm and one plain build, untimed"
    build farm "$name" "$profile" warmup
    count_events "$WORK/events/$name-$profile-warmup.events"
    echo "   farm  $(secs "$LAST_MS") s  (remote/local/fallback: ${COUNTS// //})"
    build plain "$name" "$profile" warmup
    echo "   plain $(secs "$LAST_MS") s"
    ROWS+=("$name $profile")
  done
  for round in $(seq 1 "$ROUNDS"); do
    for profile in $(profiles_of "$name"); do
      key="$name $profile"
      build plain "$name" "$profile" "r$round"
      p=$LAST_MS
      build farm "$name" "$profile" "r$round"
      f=$LAST_MS
      count_events "$WORK/events/$name-$profile-r$round.events"
      PLAIN[$key]="${PLAIN[$key]:-} $p"
      FARM[$key]="${FARM[$key]:-} $f"
      CNT[$key]="${CNT[$key]:-} ${COUNTS// //}"
      printf '   %-9s %-7s round %d/%d: plain %6s s, farm %6s s, farm/plain %s, remote/local/fallback %s\n' \
        "$name" "$profile" "$round" "$ROUNDS" "$(secs "$p")" "$(secs "$f")" "$(ratio "$f" "$p")" "${COUNTS// //}"
    done
  done
  rm -rf "$WORK/src/$name/target"
done

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
RUN_MS=$(( ($(date +%s%N) - RUN_START) / 1000000 ))

# The summary table, one row per fixture and profile.
table() {
  echo "| fixture | profile | plain median | plain min–max | farm median | farm min–max | farm/plain (medians) | farm/plain per round | remote / local / fallback per farm round |"
  echo "|---|---|---:|---:|---:|---:|---:|---|---|"
  local key pm fm per i p f
  for key in "${ROWS[@]}"; do
    pm=$(median "${PLAIN[$key]}")
    fm=$(median "${FARM[$key]}")
    read -ra ps <<<"${PLAIN[$key]}"
    read -ra fs <<<"${FARM[$key]}"
    per=""
    for i in "${!ps[@]}"; do per+="${per:+, }$(ratio "${fs[$i]}" "${ps[$i]}")"; done
    # Show the counts once when every round agrees.
    local counts
    counts=$(tr ' ' '\n' <<<"${CNT[$key]}" | grep . | sort -u | paste -sd' ')
    if [ "$(wc -w <<<"$counts")" -gt 1 ]; then counts=$(sed -E 's/^ //; s/ /, /g' <<<"${CNT[$key]}"); fi
    printf '| %s | %s | %s s | %s–%s s | %s s | %s–%s s | **%s** | %s | %s |\n' \
      "${key% *}" "${key#* }" \
      "$(secs "$pm")" "$(secs "$(minimum "${PLAIN[$key]}")")" "$(secs "$(maximum "${PLAIN[$key]}")")" \
      "$(secs "$fm")" "$(secs "$(minimum "${FARM[$key]}")")" "$(secs "$(maximum "${FARM[$key]}")")" \
      "$(ratio "$fm" "$pm")" "$per" "$counts"
  done
}

# Every timed build, in the order it ran.
raw_table() {
  echo "| fixture | profile | round | plain | farm | farm/plain | remote / local / fallback |"
  echo "|---|---|---:|---:|---:|---:|---|"
  local key i
  for key in "${ROWS[@]}"; do
    read -ra ps <<<"${PLAIN[$key]}"
    read -ra fs <<<"${FARM[$key]}"
    read -ra cs <<<"${CNT[$key]}"
    for i in "${!ps[@]}"; do
      printf '| %s | %s | %d | %s s | %s s | %s | %s |\n' "${key% *}" "${key#* }" "$((i + 1))" \
        "$(secs "${ps[$i]}")" "$(secs "${fs[$i]}")" "$(ratio "${fs[$i]}" "${ps[$i]}")" "${cs[$i]}"
    done
  done
}

SECTION=$WORK/section.md
{
  echo "$BEGIN_MARK"
  echo
  echo "## Results of the last run"
  echo
  machine_facts
  echo "- rounds: $ROUNDS timed plain/farm pairs per row, after one untimed warm-up pair"
  echo "- load average (1, 5, 15 min) at start: $LOAD_START; at end: $LOAD_END"
  echo "- whole run, including building distcc-rs and the warm-ups: $(awk -v ms="$RUN_MS" 'BEGIN { printf "%.1f min", ms / 60000 }')"
  echo
  echo "Times are wall-clock seconds of \`cargo build\` from an empty target directory,"
  echo "with the default \`-j$(nproc)\` and \`CARGO_INCREMENTAL=0\`. farm/plain above 1 means"
  echo "the farm is slower. The counts are compiles placed remotely on node-1,"
  echo "kept local by choice (binaries, proc-macros, build scripts) and fallen back"
  echo "to local, as \`distcc-rs stats\` reports them."
  echo
  table
  echo
  echo "Every timed pair, in the order it ran (plain first, then farm):"
  echo
  raw_table
  echo
  echo "Reproduce with \`bash scripts/bench.sh\` (\`BENCH_ROUNDS=5\` for more rounds,"
  echo "\`BENCH_RELEASE=0\` to skip the release pair); it rewrites this section."
  echo
  echo "$END_MARK"
} >"$SECTION"

echo
echo "== results ($ROUNDS rounds; load average at start $LOAD_START, at end $LOAD_END)"
table
echo

mkdir -p "$(dirname "$DOC")"
if replace_section "$DOC" "$BEGIN_MARK" "$END_MARK" "$SECTION"; then
  :
elif [ -f "$DOC" ]; then
  { echo; cat "$SECTION"; } >>"$DOC"
else
  { echo "# Benchmarks"; echo; cat "$SECTION"; } >"$DOC"
fi
echo "== wrote $DOC (whole run $(awk -v ms="$RUN_MS" 'BEGIN { printf "%.1f min", ms / 60000 }'); logs and event files in $WORK)"
