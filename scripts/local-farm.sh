# Sourced by demo.sh and bench.sh: starts an all-in-one farm on loopback.
#
# Expects BIN (the directory with the distcc-rs binaries) and WORK (a scratch
# directory). Sets SCHED to the scheduler's address and appends the daemons'
# process ids to PIDS; the caller's EXIT trap kills them.

# Waits for a line matching $2 in file $1 and prints it.
wait_line() {
  local file=$1 pattern=$2 i
  for i in $(seq 1 600); do
    if grep -q "$pattern" "$file" 2>/dev/null; then grep -m1 "$pattern" "$file"; return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for '$pattern' in $file" >&2; cat "$file" >&2; return 1
}

# Starts a scheduler and one node, and waits until the node is registered.
start_local_farm() {
  echo "== starting a scheduler and a node on loopback (logs in $WORK)"
  # --no-mdns: the daemons find each other by address here, and mDNS would
  # join multicast groups on every interface of this machine.
  "$BIN/distcc-rs-scheduler" --listen 127.0.0.1:0 --state-dir "$WORK/scheduler" --no-mdns \
    >"$WORK/scheduler.out" 2>"$WORK/scheduler.log" &
  PIDS+=($!)
  SCHED=$(wait_line "$WORK/scheduler.out" "listening on" | awk '{print $NF}')
  # The node gets no Rust in its environment: it runs the toolchain bundle
  # it fetches from the scheduler.
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$WORK" \
    "$BIN/distcc-rs-node" --scheduler "$SCHED" --listen 127.0.0.1:0 --no-mdns \
    --work-dir "$WORK/node" --name node-1 >"$WORK/node.out" 2>"$WORK/node.log" &
  PIDS+=($!)
  wait_line "$WORK/node.out" "registered" >/dev/null
  echo "   scheduler at $SCHED, node-1 registered"
}
