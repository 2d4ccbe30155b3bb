#!/usr/bin/env bash
# Bootfleet's main job on one machine: every service in one process on the
# embedded store (`bootfleet up`), with the example configuration.
# Extra arguments go to `bootfleet up` (see `bootfleet up --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh build
cargo build --release --locked -p bootfleet

# The admin token the CLI needs for changes (created once, kept private).
mkdir -p .bootfleet/tftp
if [ ! -s .bootfleet/admin.token ]; then
  (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > .bootfleet/admin.token)
  echo "created .bootfleet/admin.token (use: --token-file .bootfleet/admin.token)"
fi
exec target/release/bootfleet up -c deploy/config/bootfleet.toml "$@"
