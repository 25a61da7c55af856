# Sourced by bench.sh and bench-datapath.sh: number formatting, the facts
# every result section starts with, and replacing a section of
# docs/BENCHMARKS.md between its markers. Expects ROOT (the repository).

secs() { awk -v ms="$1" 'BEGIN { printf "%.2f", ms / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
minimum() { tr ' ' '\n' <<<"$1" | grep . | sort -n | head -n1; }
maximum() { tr ' ' '\n' <<<"$1" | grep . | sort -n | tail -n1; }

# Prints the bullet lines naming when, on what and with which code a run was
# made.
machine_facts() {
  local commit cpu
  commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    commit+=" (with uncommitted changes)"
  fi
  cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //' || echo unknown)
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- \`rustc -V\`: $(rustc -V)"
  echo "- \`nproc\`: $(nproc) ($cpu)"
  echo "- distcc-rs commit: $commit"
}

# replace_section DOC BEGIN_MARK END_MARK SECTION_FILE: puts the section
# file in place of the lines from BEGIN_MARK to END_MARK. Returns 1, changing
# nothing, when DOC lacks the markers.
replace_section() {
  local doc=$1 begin=$2 end=$3 section=$4
  [ -f "$doc" ] && grep -qF "$begin" "$doc" && grep -qF "$end" "$doc" || return 1
  awk -v b="$begin" -v e="$end" -v f="$section" '
    $0 == b { while ((getline line < f) > 0) print line; skip = 1; next }
    $0 == e { skip = 0; next }
    !skip { print }' "$doc" >"$doc.tmp"
  mv "$doc.tmp" "$doc"
}
