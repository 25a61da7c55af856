#!/usr/bin/env bash
# Installs what building and running distcc-rs needs on a Debian machine:
# bubblewrap (the node's sandbox), a C compiler (zstd-sys, ring, and the
# fixture workspace's build script) and iproute2 (the discovery tests run
# mDNS inside a network namespace made with `ip netns`). Safe to run again;
# does nothing when all is present.
set -euo pipefail

need=()
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v ar >/dev/null 2>&1 || need+=(binutils)
# `ip` often lives in /usr/sbin, which a user's PATH may lack.
PATH="$PATH:/usr/sbin:/sbin" command -v ip >/dev/null 2>&1 || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "setup: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing; install Rust 1.95 or newer (https://rustup.rs)" >&2
  exit 1
fi
