#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine, then runs every check CI runs: formatting, clippy with
# warnings as errors, and every test in the workspace (unit, integration, end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
verdict_venv
# A one-shot build gains nothing from incremental state, which is gigabytes on disk.
export CARGO_INCREMENTAL=0
echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo test" >&2
cargo test --locked --workspace
