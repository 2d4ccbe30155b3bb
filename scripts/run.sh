#!/usr/bin/env bash
# Bootfleet's main job on one machine: every service in one process on the
# embedded store (`bootfleet up`), with the example configuration.
# Extra arguments go to `bootfleet up` (see `bootfleet up --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh build
cargo build --release --locked -p bootfleet
exec target/release/bootfleet up -c deploy/config/bootfleet.toml "$@"
