#!/usr/bin/env bash
# Installs what Bootfleet needs on a bare Debian 12 machine (run as root).
#   scripts/install-deps.sh build   protoc for etcd-client's build script
#   scripts/install-deps.sh test    + etcd, iproute2 and clients the tests use
set -euo pipefail

need=(protobuf-compiler libprotobuf-dev)
if [ "${1:-build}" = test ]; then
  need+=(etcd-server etcd-client iproute2 iputils-ping tftp-hpa atftp curl strace udhcpc dnsmasq-base podman runc python3-venv)
  # NBD clients and peers: nbdinfo, nbdcopy (libnbd-bin), qemu-img, qemu-io,
  # qemu-nbd (qemu-utils), nbdkit, and fio with its nbd engine.
  need+=(libnbd-bin qemu-utils nbdkit fio)
  # Bootstrap media (bootfleet bootstrap): the hybrid ISO (xorriso, isolinux,
  # syslinux-common's ldlinux.c32) and the EFI system partition (mtools, dosfstools).
  need+=(xorriso isolinux syslinux-common mtools dosfstools)
fi

missing=()
for pkg in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts an etcd service on install; tests run their own members on
# free loopback ports, so the packaged one is left alone.
# The test runner: part of this project's build machines, built from
# crates.io on one that lacks it.
if [ "${1:-build}" = test ] && ! command -v cargo-nextest >/dev/null; then
  cargo install --locked cargo-nextest@0.9.143
fi
# The dependency policy check (deny.toml); without default features it
# skips the advisory database's network client, which tests do not use.
if [ "${1:-build}" = test ] && ! command -v cargo-deny >/dev/null; then
  cargo install --locked --no-default-features cargo-deny@0.20.2
fi
