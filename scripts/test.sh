#!/usr/bin/env bash
# The whole test suite, from a bare Debian 12 machine (run as root):
# installs dependencies, checks formatting and lints, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh test
# QEMU, OVMF, iPXE loaders, a Debian kernel and a busybox initramfs for the
# end-to-end boots (target/boot-assets).
scripts/boot-assets.sh
# From PyPI: the Kubernetes schema validator the manifest test uses, a
# podman-compose that honours network_mode (Debian's 1.0.3 does not), and
# grpcio-reflection for the CLI test's generic gRPC client (Debian has
# grpcio but not its reflection client).
[ -x target/venv/bin/pip ] || python3 -m venv target/venv
target/venv/bin/pip install -q kubernetes-validate==1.37.0 podman-compose==1.0.6 \
  grpcio==1.85.1 grpcio-reflection==1.85.1 protobuf==7.36.2

export CARGO_TERM_COLOR=never
# A clean run gains nothing from incremental state; it only costs disk.
export CARGO_INCREMENTAL=0
# Disk use in the log: a clean build plus the images is several GB.
trap 'du -sh target 2>/dev/null; df -h . | tail -1' EXIT
cargo fmt --all -- --check
# Licenses, banned crates and registries of every dependency (deny.toml).
cargo deny --log-level error check --hide-inclusion-graph licenses bans sources
cargo clippy --workspace --all-targets --locked -- -D warnings
# The protocol cores build without their I/O shells (sans-IO, enforced).
for crate in bootfleet-rules-engine bootfleet-tftp-server bootfleet-dhcp-responder bootfleet-nbd; do
  cargo check --locked -p "$crate" --no-default-features
done
# The end-to-end and container tests run every service's binary; cargo builds
# a package's binaries only for that package's own tests, so build them all.
cargo build --workspace --bins --locked
cargo nextest run --workspace --locked --profile ci
