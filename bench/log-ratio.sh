#!/usr/bin/env bash
# The decision log's cost, in one run: the same engine binary, one shard on cpu 0, the
# shipped rules and model, `verdict-load` on cpu 1, closed loop; no log, then the log with
# `sync = "off"`, `"interval"` and `"always"`, alternating for ROUNDS rounds so the machine's
# drift hits all alike; pipelined (8 connections x depth 16) and unpipelined (32 x 1). The
# log goes to a scratch directory on the same disk as the repository, bounded by retention
# (64 MiB segments, 256 MiB per shard), and is removed at the end. Prints every measurement,
# then the medians, the ratios to no log, and `always`'s p50/p99. Bounded: ROUNDS x 8 x
# about 6 seconds. Run from the repository root after
#   cargo build --release -p verdict-engine -p verdict-bench
#   bench/log-ratio.sh [ROUNDS]    (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
source bench/one-shard.sh
logs=$(mktemp -d -p "$PWD/target" log-ratio.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work" "$logs"' EXIT
# One measurement: "req/s p50 p99" with log mode $1 (none|off|interval|always), $2
# connections x depth $3.
measure() {
    local args=()
    shards_file="$work/shards-$1.toml"
    cp "$work/shards.toml" "$shards_file"
    if [ "$1" != none ]; then
        rm -rf "$logs/$1"
        printf '[log]\nsync = "%s"\nsegment_bytes_max = 67108864\nretention_bytes_max = 268435456\n' \
            "$1" >> "$shards_file"
        args=(--log-dir "$logs/$1")
    fi
    start_engine target/release/verdict --admin-port 0 --no-probes "${args[@]}"
    target/release/verdict-load run --addr "127.0.0.1:$engine_port" --cpus 1 --connections "$2" \
        --depth "$3" --duration 4 --warmup 1 |
        awk -F'|' '/closed loop/ {gsub(/ /, ""); print $3, $7, $9}'
    kill "$engine_pid"
    wait "$engine_pid" 2>/dev/null || true
    rm -rf "$logs/$1"
}
median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
for shape in "8 16" "32 1"; do
    set -- $shape
    : > "$work/results"
    for _ in $(seq "$rounds"); do
        for mode in none off interval always; do
            echo "$mode $(measure "$mode" "$1" "$2")" | tee -a "$work/results"
        done
    done
    col() { grep "^$1 " "$work/results" | awk -v c="$2" '{print $c}' | median; }
    ratio() { awk -v a="$(col "$1" 2)" -v b="$(col none 2)" 'BEGIN {printf "%.2f", a / b}'; }
    echo "$1 x $2, $rounds rounds, medians: no log $(col none 2) req/s (p50 $(col none 3) us, p99 $(col none 4) us); off $(ratio off)x, interval $(ratio interval)x, always $(ratio always)x of no log; always p50 $(col always 3) us, p99 $(col always 4) us"
done
