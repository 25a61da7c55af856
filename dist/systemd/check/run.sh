#!/bin/bash
# Checks the systemd units in dist/systemd on a machine where systemd is
# not PID 1 (a container, a CI runner): it never starts systemd.
#
#   bash dist/systemd/check/run.sh [--mdwe=seccomp|prctl]
#
# As root, with bubblewrap, systemd (for systemd-analyze and
# systemd-sysusers, not running), python3-seccomp and a built workspace
# (cargo build --workspace --bins). It
#   1. runs `systemd-analyze verify` and `systemd-analyze security` on the units;
#   2. creates the distcc-rs user from dist/systemd/distcc-rs.conf with
#      systemd-sysusers if it does not exist (and removes it at the end
#      unless KEEP_USER=1);
#   3. shows that bubblewrap works under the node unit's settings, that the
#      settings the node unit leaves out would break it, and that jobs
#      inherit MemoryDenyWriteExecute;
#   4. starts a scheduler and a node under the units' settings (emulate.sh)
#      on 127.0.0.1 with --no-mdns, the node enrolling with the join token
#      from a node.toml readable only by root and the distcc-rs group, as
#      /etc/distcc-rs/node.toml would be; builds tests/fixtures/workspace
#      through them with a client that enrolls on its first compile, and
#      requires every library crate to have compiled remotely.
# Everything it starts is stopped, and its files removed, when it exits.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../../.." && pwd)
mdwe=${1:---mdwe=seccomp}
bin=$repo/target/debug
for b in distcc-rs distcc-rs-scheduler distcc-rs-node; do
    [[ -x $bin/$b ]] || { echo "build first: cargo build --workspace --bins" >&2; exit 1; }
done
for tool in bwrap systemd-analyze systemd-sysusers setpriv unshare; do
    command -v $tool >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
/usr/bin/python3 -c 'import seccomp' || { echo "missing: python3-seccomp" >&2; exit 1; }

# The units hide /tmp and /home, so everything the daemons run lives here.
work=$(mktemp -d /opt/distcc-rs-check.XXXXXX)
chmod 0755 "$work"
pids=() created_user=0
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
    rm -rf "$work"
    if [[ $created_user == 1 && ${KEEP_USER:-0} != 1 ]]; then
        userdel distcc-rs || echo "the distcc-rs user was left in place" >&2
        groupdel distcc-rs 2>/dev/null || true
    fi
}
trap cleanup EXIT
mkdir "$work/bin" "$work/check"
cp "$bin/distcc-rs-scheduler" "$bin/distcc-rs-node" "$work/bin/"
cp "$repo/dist/systemd/check/emulate.sh" "$repo/dist/systemd/check/seccomp_exec.py" "$work/check/"
em_sh=$work/check/emulate.sh
em() { bash "$em_sh" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

echo "== 1. systemd-analyze verify and security"
mkdir "$work/units"
for u in scheduler node; do
    sed "s#/usr/local/bin/#$work/bin/#" "$repo/dist/systemd/distcc-rs-$u.service" \
        >"$work/units/distcc-rs-$u.service"
done
out=$(systemd-analyze verify --man=no "$work"/units/*.service 2>&1) || fail "verify: $out"
[[ -z $out ]] || fail "verify warned: $out"
echo "verify: no warnings"
for u in scheduler node; do
    systemd-analyze security --offline=true "$work/units/distcc-rs-$u.service" 2>&1 | tail -1
done

echo "== 2. the distcc-rs user"
if ! getent passwd distcc-rs >/dev/null; then
    systemd-sysusers "$repo/dist/systemd/distcc-rs.conf"
    created_user=1
fi
getent passwd distcc-rs

echo "== 3. bubblewrap under the node unit's settings"
probe=(bwrap --die-with-parent --new-session --unshare-all --ro-bind / / --proc /proc --dev /dev
    -- /bin/sh -c 'echo sandbox started')
em node "$work/probe" "$mdwe" -- "${probe[@]}" || fail "bwrap does not start under the node unit"
for extra in ProtectKernelTunables ProtectKernelLogs ProcSubset; do
    if em node "$work/probe" --with=$extra "$mdwe" -- "${probe[@]}" 2>"$work/err"; then
        echo "note: with $extra=, bwrap starts too on this kernel"
    else
        echo "with $extra= the sandbox fails, as the unit says: $(head -1 "$work/err")"
    fi
done
wx='import mmap
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC); print("allowed")
except OSError as e:
    print("refused:", e)'
echo "a W+X mapping inside the job sandbox: $(em node "$work/probe" "$mdwe" -- \
    bwrap --die-with-parent --unshare-all --ro-bind / / --proc /proc --dev /dev \
    -- /usr/bin/python3 -c "$wx")"

echo "== 4. a scheduler, a node and a build"
# Started without the em function, so that $! is the daemon itself: every
# step of emulate.sh execs the next one.
bash "$em_sh" scheduler "$work/state/scheduler" "$mdwe" -- \
    "$work/bin/distcc-rs-scheduler" --listen 127.0.0.1:0 --no-mdns \
    >"$work/scheduler.out" 2>"$work/scheduler.log" &
pids+=($!)
wait_line() { # FILE PATTERN PID
    for _ in $(seq 600); do
        if grep -qs "$2" "$1"; then return 0; fi
        kill -0 "$3" 2>/dev/null || break
        sleep 0.1
    done
    cat "${1%.out}.log" >&2
    fail "no '$2' line in $1"
}
wait_line "$work/scheduler.out" "listening on" "${pids[0]}"
sched=$(sed -n 's/.*listening on //p' "$work/scheduler.out")
# The scheduler made the farm CA in <StateDirectory>/pki on its first
# start. Admin commands run as the scheduler's user, on the same directory.
ls -l "$work/state/scheduler/pki"
token=$(setpriv --reuid=distcc-rs --regid=distcc-rs --clear-groups \
    "$work/bin/distcc-rs-scheduler" --config /dev/null token --state-dir "$work/state/scheduler" \
    2>"$work/token.log") || { cat "$work/token.log" >&2; fail "cannot read the join token"; }
# The node takes the token from its configuration file, as the unit's
# /etc/distcc-rs/node.toml (root:distcc-rs, 0640).
printf 'join_token = "%s"\n' "$token" >"$work/node.toml"
chown root:distcc-rs "$work/node.toml"
chmod 0640 "$work/node.toml"
# The unit runs the node with its default --work-dir, the StateDirectory,
# where it keeps its certificate (identity/).
bash "$em_sh" node "$work/state/node" "$mdwe" -- \
    "$work/bin/distcc-rs-node" --config "$work/node.toml" --scheduler "$sched" \
    --listen 127.0.0.1:0 --no-mdns --name hardened-node --work-dir "$work/state/node" \
    >"$work/node.out" 2>"$work/node.log" &
pids+=($!)
wait_line "$work/node.out" "registered with" "${pids[1]}"
echo "scheduler: $(cat "$work/scheduler.out")"
echo "node: $(cat "$work/node.out")"
echo "daemons run as: $(ps -o user= -p "${pids[0]}") and $(ps -o user= -p "${pids[1]}")"

cp -r "$repo/tests/fixtures/workspace" "$work/ws"
rm -rf "$work/ws/target"
(cd "$work/ws" && RUSTC_WRAPPER=$bin/distcc-rs DISTCC_RS_SCHEDULER=$sched DISTCC_RS_MDNS=0 \
    DISTCC_RS_JOIN_TOKEN=$token DISTCC_RS_IDENTITY_DIR=$work/client-identity \
    DISTCC_RS_EVENTS=$work/events.jsonl CARGO_INCREMENTAL=0 cargo build --offline --quiet)
"$bin/distcc-rs" stats --events "$work/events.jsonl"
remote=$(grep -c '"where":"remote"' "$work/events.jsonl" || true)
fallback=$(grep -c '"where":"fallback"' "$work/events.jsonl" || true)
[[ $remote -ge 3 && $fallback == 0 ]] || {
    cat "$work/node.log" >&2
    fail "expected the 3 library crates remote and no fallback, got $remote remote, $fallback fallback"
}
echo "farm members:"
setpriv --reuid=distcc-rs --regid=distcc-rs --clear-groups \
    "$work/bin/distcc-rs-scheduler" --config /dev/null certs --state-dir "$work/state/scheduler"
echo "PASS: $remote compiles ran on the hardened node, none fell back"
