#!/usr/bin/env bash
# Measures the scheduler: placement decisions per second of the pure core
# (scheduler/benches/placement.rs, up to 10,000 simulated nodes) and the
# round trip of an allocation over QUIC on loopback against a real
# in-process scheduler (scheduler/benches/allocation.rs). Prints the lines
# the benches print and rewrites the generated section of docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DOC=$ROOT/docs/BENCHMARKS.md
BEGIN_MARK='<!-- BEGIN scripts/bench-placement.sh output: generated, do not edit by hand -->'
END_MARK='<!-- END scripts/bench-placement.sh output -->'
source scripts/bench-lib.sh

bash scripts/setup.sh

echo "== building the scheduler benches (release)"
cargo bench -p distcc-rs-scheduler --locked --no-run --bench placement --bench allocation

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
OUT=$(mktemp)
trap 'rm -f "$OUT" "$OUT.section"' EXIT
for bench in placement allocation; do
  echo "== $bench"
  cargo bench -p distcc-rs-scheduler --locked --bench "$bench" 2>/dev/null | tee -a "$OUT"
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

{
  echo "$BEGIN_MARK"
  echo
  machine_facts
  echo "- load average (1, 5, 15 min) before: $LOAD_START; after: $LOAD_END"
  echo
  echo "Placement (\`scheduler/benches/placement.rs\`): the pure core choosing a node for"
  echo "each request while random jobs finish, at steady state; \"full\" means every slot"
  echo "busy with requests waiting, each cycle finishing a job, granting a waiter and"
  echo "queueing a new request."
  echo
  echo '```text'
  grep '^placement:' "$OUT"
  echo '```'
  echo
  echo "Allocation round trip (\`scheduler/benches/allocation.rs\`): a real scheduler on"
  echo "127.0.0.1 with fake nodes registered over the protocol; each request is an"
  echo "\`Allocate\` answered with an assignment (the release that follows is not timed)."
  echo "The wrapper runs once per rustc, so \"a new connection per request\" is what a"
  echo "build sees. Every connection is mutually authenticated: the client presents its"
  echo "farm certificate and the scheduler checks it against the CA and the revocation"
  echo "list, with no TLS session resumption."
  echo
  echo '```text'
  grep '^allocation:' "$OUT"
  echo '```'
  echo
  echo "$END_MARK"
} >"$OUT.section"

if replace_section "$DOC" "$BEGIN_MARK" "$END_MARK" "$OUT.section"; then
  echo "== updated $DOC"
else
  echo "== $DOC has no section markers for this script; add these lines where the section belongs:" >&2
  echo "$BEGIN_MARK" >&2
  echo "$END_MARK" >&2
fi
