#!/usr/bin/env bash
# A/B of two engine builds: each is started in turn (one shard on cpu 0, a fresh process per
# measurement) and `verdict-load` on cpu 1 measures closed-loop throughput against it, the
# two alternating for ROUNDS rounds so the machine's drift hits both alike. Prints every
# measurement and each build's median. Bounded: ROUNDS x 2 x about 6 seconds.
#   bench/ab.sh A_BINARY B_BINARY [CONNECTIONS] [DEPTH] [ROUNDS]    (defaults 32 1 3)
# e.g. cp target/release/verdict /tmp/verdict-a; (change, rebuild); bench/ab.sh /tmp/verdict-a
# target/release/verdict 8 16. Run from the repository root after a release build of
# verdict-bench (cargo build --release -p verdict-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1 b=$2 conns=${3:-32} depth=${4:-1} rounds=${5:-3}
source bench/one-shard.sh
# One measurement: req/s of `verdict-load run` against a fresh engine from binary $1 (its
# shard pinned to cpu 0 by the topology).
measure() {
    start_engine "$1" --admin-port 0
    target/release/verdict-load run --addr "127.0.0.1:$engine_port" --cpus 1 --connections "$conns" \
        --depth "$depth" --duration 4 --warmup 1 | awk -F'|' '/closed loop/ {gsub(/ /, "", $3); print $3}'
    kill "$engine_pid"
    wait "$engine_pid" 2>/dev/null || true
}
median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
for _ in $(seq "$rounds"); do
    echo "A $(measure "$a")" | tee -a "$work/results"
    echo "B $(measure "$b")" | tee -a "$work/results"
done
echo "$conns connections x depth $depth, $rounds rounds: median A $(grep '^A' "$work/results" | cut -d' ' -f2 | median) req/s, B $(grep '^B' "$work/results" | cut -d' ' -f2 | median) req/s"
