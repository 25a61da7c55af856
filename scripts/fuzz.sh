#!/usr/bin/env bash
# Runs the cargo-fuzz targets in tests/fuzz (see docs/FUZZING.md), each for
# FUZZ_SECONDS (default 60) on one core, and reports what each did. Exits
# non-zero on a finding (a panic, a failed assertion, a sanitizer report, a
# timeout or running out of memory) and names the file that reproduces it.
#
#   FUZZ_SECONDS=3600 bash scripts/fuzz.sh            # the long run
#   FUZZ_TARGETS=bundle_unpacker bash scripts/fuzz.sh # one target
#
# Needs the nightly toolchain (rustup) and cargo-fuzz, which it installs
# from crates.io when missing. The corpus each run grows is kept in
# tests/fuzz/corpus/<target> and seeds the next run; the committed seeds in
# tests/fuzz/seeds/<target> are read but never written.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
read -r -a targets <<<"${FUZZ_TARGETS:-frame_decoder manifest_validator bundle_unpacker}"
fuzz_dir=tests/fuzz

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is missing; install it with 'rustup toolchain install nightly'" >&2
  exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

# Debug assertions are on so that an arithmetic overflow is a finding too;
# building once up front keeps the build out of every target's time.
fuzz=(cargo +nightly fuzz)
opts=(--fuzz-dir "$fuzz_dir" --debug-assertions)
"${fuzz[@]}" build "${opts[@]}"

# The bundle target unpacks into a scratch directory of its own under
# TMPDIR; this one is removed afterwards, whatever happens.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$fuzz_dir/logs"

failed=0
for target in "${targets[@]}"; do
  corpus="$fuzz_dir/corpus/$target"
  artifacts="$fuzz_dir/artifacts/$target"
  log="$fuzz_dir/logs/$target.log"
  mkdir -p "$corpus" "$artifacts"
  marker="$scratch/started-$target"
  touch "$marker"
  echo "fuzz: $target for ${seconds}s (log: $log)" >&2
  # One process, one thread: one core. -timeout turns a hang (a FIFO
  # opened for reading, say) into a finding; -rss_limit_mb does the same
  # for unbounded allocation.
  extra=()
  if [ -f "$fuzz_dir/dicts/$target.dict" ]; then
    extra+=("-dict=$fuzz_dir/dicts/$target.dict")
  fi
  status=0
  TMPDIR="$scratch" "${fuzz[@]}" run "${opts[@]}" "$target" "$corpus" "$fuzz_dir/seeds/$target" -- \
    -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 "${extra[@]}" \
    >"$log" 2>&1 || status=$?
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
  # libFuzzer's last status line: edges covered and the features it tracks.
  cov="$(sed -n 's/^#[0-9]*[[:space:]]*DONE[[:space:]]*cov: \([0-9]*\) ft: \([0-9]*\).*/\1 edges, \2 features/p' "$log" | tail -n 1)"
  corpus_size="$(find "$corpus" -type f | wc -l)"
  findings="$(find "$artifacts" -type f -newer "$marker" | sort)"
  if [ "$status" -ne 0 ] || [ -n "$findings" ]; then
    failed=1
    echo "fuzz: $target FAILED (exit $status) after ${execs:-?} executions" >&2
    tail -n 40 "$log" >&2
    for f in $findings; do
      echo "fuzz: finding: $f" >&2
      echo "fuzz:   reproduce with: cargo +nightly fuzz run --fuzz-dir $fuzz_dir --debug-assertions $target $f" >&2
    done
  else
    echo "fuzz: $target ok: ${execs:-?} executions (${rate:-?}/s), ${cov:-coverage unknown}, corpus of $corpus_size inputs, no findings" >&2
  fi
done
exit "$failed"
