#!/usr/bin/env bash
# The whole test suite, from a bare Debian 12 machine (run as root):
# installs dependencies, checks formatting and lints, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh test

export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo nextest run --workspace --locked --profile ci
