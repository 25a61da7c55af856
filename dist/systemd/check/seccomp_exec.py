#!/usr/bin/python3
"""Installs the seccomp filters that systemd 252 installs for the settings
of dist/systemd/distcc-rs-PROFILE.service, then execs COMMAND. Part of
the check in run.sh; emulate.sh runs it after dropping privileges.

  seccomp_exec.py PROFILE [--mdwe=seccomp|prctl|none] [--skip=Setting,...] -- COMMAND...

PROFILE is `scheduler` or `node`. Each setting becomes its own filter, as
in systemd; the syscall groups (@system-service...) are expanded with the
installed `systemd-analyze syscall-filter`. --mdwe picks how
MemoryDenyWriteExecute= is enforced: seccomp (systemd 252) or
prctl(PR_SET_MDWE) (what newer systemd uses where the kernel has it).
Needs Debian's python3-seccomp, hence /usr/bin/python3.

The settings are mirrored by hand: keep them in step with the units.
"""
import ctypes
import errno
import os
import subprocess
import sys

import seccomp as S

NATIVE = S.Arch.NATIVE


def group(name, seen=None):
    """Expands a systemd syscall group (e.g. @system-service) with the
    group lists of the installed systemd-analyze."""
    seen = seen if seen is not None else set()
    if name in seen:
        return set()
    seen.add(name)
    out = subprocess.run(["systemd-analyze", "syscall-filter", name],
                         capture_output=True, text=True, check=True).stdout
    calls = set()
    for line in out.splitlines()[1:]:
        w = line.strip()
        if not w or w.startswith("#"):
            continue
        if w.startswith("@"):
            calls |= group(w, seen)
        else:
            calls.add(w)
    return calls


def resolvable(names):
    ok = []
    for n in sorted(names):
        try:
            if S.resolve_syscall(NATIVE, n) >= 0:
                ok.append(n)
        except Exception:
            pass
    return ok


def deny(names, err=errno.EPERM):
    f = S.SyscallFilter(S.ALLOW)
    for n in resolvable(names):
        f.add_rule(S.ERRNO(err), n)
    return f


def allowlist(allowed, denied=()):
    f = S.SyscallFilter(S.ERRNO(errno.EPERM))
    for n in resolvable(set(allowed) - set(denied)):
        f.add_rule(S.ALLOW, n)
    return f


def mdwe_seccomp():
    PROT_WRITE, PROT_EXEC, SHM_EXEC = 2, 4, 0o100000
    f = S.SyscallFilter(S.ALLOW)
    f.add_rule(S.ERRNO(errno.EPERM), "mmap",
               S.Arg(2, S.MASKED_EQ, PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC))
    f.add_rule(S.ERRNO(errno.EPERM), "mprotect", S.Arg(2, S.MASKED_EQ, PROT_EXEC, PROT_EXEC))
    f.add_rule(S.ERRNO(errno.EPERM), "pkey_mprotect", S.Arg(2, S.MASKED_EQ, PROT_EXEC, PROT_EXEC))
    f.add_rule(S.ERRNO(errno.EPERM), "shmat", S.Arg(2, S.MASKED_EQ, SHM_EXEC, SHM_EXEC))
    return f


def restrict_address_families(allowed):
    # AF_UNIX 1, AF_INET 2, AF_INET6 10, AF_NETLINK 16; AF_MAX is 46.
    f = S.SyscallFilter(S.ALLOW)
    for fam in range(0, 64):
        if fam not in allowed:
            f.add_rule(S.ERRNO(errno.EAFNOSUPPORT), "socket", S.Arg(0, S.EQ, fam))
    return f


def restrict_namespaces_all():
    # RestrictNamespaces=yes: no namespace of any kind; clone3 hides its
    # flags in a struct, so systemd answers it with ENOSYS.
    flags = (0x02000000, 0x08000000, 0x40000000, 0x00020000, 0x20000000, 0x10000000, 0x04000000)
    f = S.SyscallFilter(S.ALLOW)
    for flag in flags:
        f.add_rule(S.ERRNO(errno.EPERM), "unshare", S.Arg(0, S.MASKED_EQ, flag, flag))
        f.add_rule(S.ERRNO(errno.EPERM), "clone", S.Arg(0, S.MASKED_EQ, flag, flag))
    f.add_rule(S.ERRNO(errno.EPERM), "setns")
    f.add_rule(S.ERRNO(errno.ENOSYS), "clone3")
    return f


def lock_personality():
    f = S.SyscallFilter(S.ALLOW)
    f.add_rule(S.ERRNO(errno.EPERM), "personality", S.Arg(0, S.NE, 0))  # PER_LINUX
    return f


def restrict_realtime():
    f = S.SyscallFilter(S.ALLOW)
    for policy in (1, 2, 6):  # SCHED_FIFO, SCHED_RR, SCHED_DEADLINE
        f.add_rule(S.ERRNO(errno.EPERM), "sched_setscheduler", S.Arg(1, S.EQ, policy))
    return f


def restrict_suid_sgid():
    SUID = 0o4000 | 0o2000
    f = S.SyscallFilter(S.ALLOW)
    for pos, call in ((1, "chmod"), (1, "fchmod"), (2, "fchmodat")):
        for bit in (0o4000, 0o2000):
            f.add_rule(S.ERRNO(errno.EPERM), call, S.Arg(pos, S.MASKED_EQ, bit, bit))
    O_CREAT = 0o100
    for bit in (0o4000, 0o2000):
        f.add_rule(S.ERRNO(errno.EPERM), "open", S.Arg(1, S.MASKED_EQ, O_CREAT, O_CREAT),
                   S.Arg(2, S.MASKED_EQ, bit, bit))
        f.add_rule(S.ERRNO(errno.EPERM), "openat", S.Arg(2, S.MASKED_EQ, O_CREAT, O_CREAT),
                   S.Arg(3, S.MASKED_EQ, bit, bit))
    return f


def main():
    args = sys.argv[1:]
    profile = args.pop(0)
    mdwe = "seccomp"
    skip = set()
    while args[0] != "--":
        a = args.pop(0)
        if a.startswith("--mdwe="):
            mdwe = a.split("=", 1)[1]
        elif a.startswith("--skip="):
            skip |= set(a.split("=", 1)[1].split(","))
    args.pop(0)
    filters = {}
    if profile == "scheduler":
        filters["SystemCallFilter"] = allowlist(group("@system-service"),
                                                group("@privileged") | group("@resources"))
        filters["RestrictNamespaces"] = restrict_namespaces_all()
        filters["ProtectKernelLogs"] = deny({"syslog"})
    elif profile == "node":
        filters["SystemCallFilter"] = allowlist(group("@system-service") | group("@mount"))
        # RestrictNamespaces=user mnt pid net ipc uts cgroup allows every
        # kind systemd 252 knows: it installs no filter.
    else:
        sys.exit(f"unknown profile {profile}")
    filters["RestrictAddressFamilies"] = restrict_address_families({1, 2, 10, 16})
    filters["RestrictRealtime"] = restrict_realtime()
    filters["RestrictSUIDSGID"] = restrict_suid_sgid()
    filters["LockPersonality"] = lock_personality()
    filters["ProtectClock"] = deny(group("@clock"))
    filters["ProtectKernelModules"] = deny(group("@module"))
    filters["PrivateDevices"] = deny(group("@raw-io"))
    filters["ProtectHostname"] = deny({"sethostname", "setdomainname"})
    if mdwe == "seccomp":
        filters["MemoryDenyWriteExecute"] = mdwe_seccomp()
    elif mdwe == "prctl":
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            sys.exit(f"prctl(PR_SET_MDWE): {os.strerror(ctypes.get_errno())}")
    # SystemCallArchitectures=native: every filter above is for the native
    # architecture only; libseccomp kills on any other.
    # The allow list last: it does not allow seccomp() itself.
    order = [n for n in filters if n != "SystemCallFilter"] + ["SystemCallFilter"]
    for name in order:
        f = filters[name]
        if name in skip:
            continue
        f.set_attr(S.Attr.CTL_NNP, 0)  # no_new_privs is set by setpriv before us
        f.load()
    os.execvp(args[0], args)


main()
