#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine, builds verdict in release mode and serves with the
# repository's shards.toml and the shipped rules (rules/default.rules, so rules.dir is
# rules/ and reloads name files there). Extra arguments go to `verdict serve` (e.g. --port 0,
# --admin-token-file admin.token).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --locked -p verdict-engine --bin verdict
exec target/release/verdict serve --shards shards.toml --rules rules/default.rules "$@"
