# Sourced by demo.sh, bench.sh and bench-datapath.sh: starts an all-in-one
# farm on loopback.
#
# Expects BIN (the directory with the distcc-rs binaries) and WORK (a scratch
# directory). Sets SCHED to the scheduler's address and TOKEN to the farm's
# join token, appends the daemons' process ids to PIDS (the caller's EXIT
# trap kills them), and exports DISTCC_RS_JOIN_TOKEN and
# DISTCC_RS_IDENTITY_DIR, so that the first client compile (or `distcc-rs
# status`) enrolls in this farm and keeps its certificate in
# $WORK/client-identity rather than in the user's ~/.config.

# Waits for a line matching $2 in file $1 and prints it; gives up early if
# the process $3 (optional) has exited.
wait_line() {
  local file=$1 pattern=$2 pid=${3:-}
  for _ in $(seq 1 600); do
    if grep -q "$pattern" "$file" 2>/dev/null; then grep -m1 "$pattern" "$file"; return 0; fi
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      grep -m1 "$pattern" "$file" 2>/dev/null && return 0
      break
    fi
    sleep 0.1
  done
  echo "no '$pattern' line in $file" >&2; cat "$file" >&2
  # The daemon's log says why (for a node, often its enrollment).
  if [ -f "${file%.out}.log" ]; then tail -n 20 "${file%.out}.log" >&2; fi
  return 1
}

# Prints the join token of the farm whose state is in directory $1 (the
# scheduler made its CA there before it printed its "listening on" line).
farm_token() {
  local state=$1 token
  if ! token=$("$BIN/distcc-rs-scheduler" --config /dev/null token --state-dir "$state" 2>"$WORK/token.log"); then
    echo "cannot read the join token in $state:" >&2; cat "$WORK/token.log" >&2; return 1
  fi
  echo "$token"
}

# Starts a scheduler and one node, and waits until the node is registered.
start_local_farm() {
  echo "== starting a scheduler and a node on loopback (logs in $WORK)"
  # A node running as root runs each job as the job user (nobody), which
  # must be able to reach the node's work dir: mktemp -d made $WORK 0700.
  if [ "$(id -u)" = 0 ]; then chmod o+x "$WORK"; fi
  # --no-mdns: the daemons find each other by address here, and mDNS would
  # join multicast groups on every interface of this machine.
  "$BIN/distcc-rs-scheduler" --listen 127.0.0.1:0 --state-dir "$WORK/scheduler" --no-mdns \
    >"$WORK/scheduler.out" 2>"$WORK/scheduler.log" &
  PIDS+=($!)
  SCHED=$(wait_line "$WORK/scheduler.out" "listening on" "${PIDS[-1]}" | awk '{print $NF}')
  # The scheduler made the farm's CA and join token on its first start.
  # The node enrolls with the token once (its certificate goes to
  # $WORK/node/identity); clients enroll on their first farm compile.
  TOKEN=$(farm_token "$WORK/scheduler")
  export DISTCC_RS_JOIN_TOKEN=$TOKEN
  export DISTCC_RS_IDENTITY_DIR=$WORK/client-identity
  # The node gets no Rust in its environment: it runs the toolchain bundle
  # it fetches from the scheduler.
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$WORK" \
    "$BIN/distcc-rs-node" --scheduler "$SCHED" --listen 127.0.0.1:0 --no-mdns \
    --join-token "$TOKEN" --work-dir "$WORK/node" --name node-1 \
    >"$WORK/node.out" 2>"$WORK/node.log" &
  PIDS+=($!)
  wait_line "$WORK/node.out" "registered" "${PIDS[-1]}" >/dev/null
  echo "   scheduler at $SCHED, node-1 enrolled and registered"
}
