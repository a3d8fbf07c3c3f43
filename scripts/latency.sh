#!/usr/bin/env bash
# The latency baseline: builds what it needs, then `verdict-load sweep` starts the reference
# echo server and the engine (pinned to cpu 0, the generator to cpu 1), measures both and
# writes bench/results/<timestamp>/{summary.md,summary.json,latency.png,*.hgrm}.
#   scripts/latency.sh           full sweep (a few minutes)
#   scripts/latency.sh --quick   under a minute
# On a 2-core machine the engine gets one core and the generator the other.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --locked -p verdict-engine --bin verdict -p verdict-bench --bin verdict-load --bin verdict-echo
exec target/release/verdict-load sweep --verdict target/release/verdict --echo target/release/verdict-echo "$@"
