#!/bin/bash
# Runs COMMAND as systemd 252 would run it under the settings of
# dist/systemd/distcc-rs-PROFILE.service, on a machine where systemd is not
# PID 1: the same kernel mechanisms, applied by hand. Part of run.sh.
#
#   emulate.sh PROFILE STATE_DIR [OPTIONS] -- COMMAND...
#
# PROFILE is scheduler or node; STATE_DIR stands for the StateDirectory=
# (the only writable place) and is exported as $STATE_DIRECTORY. OPTIONS:
#   --with=ProtectKernelTunables,ProtectKernelLogs,ProcSubset
#       add settings the node unit leaves out on purpose (to see them fail)
#   --mdwe=seccomp|prctl|none, --skip=Setting,...   see seccomp_exec.py
#
# What is emulated: ProtectSystem=strict, ProtectHome, PrivateTmp,
# PrivateDevices, PrivateIPC, PrivateMounts, ProtectHostname (a UTS
# namespace), ProtectKernelModules, ProtectControlGroups, ProtectProc,
# ProcSubset, ProtectKernelTunables and ProtectKernelLogs (their mounts),
# PrivateUsers (scheduler), User=/Group=, NoNewPrivileges,
# CapabilityBoundingSet=, UMask=, a service's clean environment, and every
# seccomp-based setting (seccomp_exec.py). Not emulated: the device cgroup
# of PrivateDevices/ProtectClock, RemoveIPC, Restart=, KillMode=.
#
# Must live, with the binaries it runs, outside /tmp, /var/tmp, /home,
# /root and /run/user, which the units hide.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
profile=$1 state=$2
shift 2
py_opts=() with=""
while [[ $1 != -- ]]; do
    case $1 in
        --with=*) with=${1#--with=} ;;
        *) py_opts+=("$1") ;;
    esac
    shift
done
shift
case $profile in scheduler | node) ;; *) echo "unknown profile $profile" >&2; exit 2 ;; esac
mkdir -p "$state"
chown distcc-rs:distcc-rs "$state"
chmod 0750 "$state"

setup_mounts() {
    set -euo pipefail
    local w=",$with,"
    # ProtectSystem=strict: everything read-only but /dev, /proc and /sys.
    findmnt -rno TARGET | grep -Ev '^/(proc|sys|dev)(/|$)' | sort -u | while read -r m; do
        mount -o remount,bind,ro "$m" 2>/dev/null || true
    done
    # ProtectHome=yes
    for d in /home /root /run/user; do
        if [[ -d $d ]]; then mount -t tmpfs -o ro,mode=000 inaccessible "$d"; fi
    done
    # PrivateTmp=yes
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /var/tmp
    # StateDirectory=: the one writable directory.
    mount --bind "$state" "$state"
    mount -o remount,bind,rw "$state"
    # PrivateDevices=yes: a new /dev with the basic devices only.
    mkdir /tmp/.hostdev
    mount --bind /dev /tmp/.hostdev
    mount -t tmpfs -o mode=755,nosuid tmpfs /dev
    for n in null zero full random urandom tty; do
        touch /dev/$n
        mount --bind /tmp/.hostdev/$n /dev/$n
    done
    mkdir /dev/pts /dev/shm
    mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /dev/pts
    ln -s pts/ptmx /dev/ptmx
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
    ln -s /proc/self/fd /dev/fd
    ln -s /proc/self/fd/0 /dev/stdin
    ln -s /proc/self/fd/1 /dev/stdout
    ln -s /proc/self/fd/2 /dev/stderr
    umount /tmp/.hostdev
    rmdir /tmp/.hostdev
    # ProtectKernelModules=yes
    for d in /usr/lib/modules /lib/modules; do
        if [[ -d $d && ! -L $d ]]; then mount -t tmpfs -o ro,mode=000 inaccessible "$d"; fi
    done
    # ProtectControlGroups=yes
    findmnt -rno TARGET | grep -E '^/sys/fs/cgroup(/|$)' | while read -r m; do
        mount -o remount,bind,ro "$m"
    done
    # ProtectProc=invisible (both units), ProcSubset=pid (scheduler): a new
    # /proc instance in place of the old one, as systemd mounts it.
    local proc_opts=hidepid=invisible
    if [[ $profile == scheduler || $w == *,ProcSubset,* ]]; then proc_opts+=,subset=pid; fi
    umount -l /proc
    mount -t proc -o "nosuid,nodev,noexec,$proc_opts" proc /proc
    if [[ $profile == scheduler || $w == *,ProtectKernelTunables,* ]]; then
        # ProtectKernelTunables=yes: /proc/sys and friends, and /sys, read-only.
        for p in /proc/sys /proc/sysrq-trigger /proc/irq /proc/bus /proc/fs; do
            if [[ -e $p ]]; then mount --bind "$p" "$p" && mount -o remount,bind,ro "$p"; fi
        done
        mount -o remount,bind,ro /sys
    fi
    if [[ $profile == scheduler || $w == *,ProtectKernelLogs,* ]]; then
        # ProtectKernelLogs=yes: /proc/kmsg inaccessible.
        if [[ -e /proc/kmsg ]]; then mount --bind /dev/null /proc/kmsg; fi
    fi
}
export -f setup_mounts
export profile state with

# A system service's environment for User=distcc-rs.
service_env=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    HOME=/var/lib/distcc-rs USER=distcc-rs LOGNAME=distcc-rs SHELL=/usr/sbin/nologin
    STATE_DIRECTORY="$state" NO_COLOR=1 ${RUST_LOG:+RUST_LOG=$RUST_LOG})
# User=, Group=, NoNewPrivileges=yes, CapabilityBoundingSet= (empty).
drop=(setpriv --reuid=distcc-rs --regid=distcc-rs --clear-groups --no-new-privs
    --inh-caps=-all --bounding-set=-all)
# PrivateUsers=yes (scheduler): a user namespace that maps the service user
# only. (systemd maps root too, and creates it before the mount namespace.)
private_users=()
if [[ $profile == scheduler ]]; then
    private_users=(unshare --user --map-user=distcc-rs --map-group=distcc-rs --)
fi
# PrivateIPC=yes, ProtectHostname=yes, PrivateMounts=yes: IPC, UTS and
# mount namespaces; UMask=0077.
exec unshare --mount --uts --ipc --propagation private -- bash -c '
    setup_mounts && umask 0077 && exec "$@"' bash \
    "${service_env[@]}" "${drop[@]}" "${private_users[@]}" \
    /usr/bin/python3 "$here/seccomp_exec.py" "$profile" "${py_opts[@]}" -- "$@"
