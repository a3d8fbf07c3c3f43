#!/usr/bin/env bash
# Exact state across shards, what it costs, in one run: a two-shard engine (cpus 0 and 1)
# with `verdict-load` beside it, closed loop. Two rule sets with the same six velocity
# functions: multi-key (three of them by device, IP and merchant, whose windows live on the
# owner of each value's partition: the deciding shard gathers them over the mesh) and
# account-only (the same three keyed by account instead: no gathers). Two clients: naive
# (every connection on the shared port, so about half the events are forwarded to their
# account's owner) and shard-aware (each event straight to its owner). Pipelined
# (8 connections x depth 16) and unpipelined (32 x 1). A fresh engine per measurement,
# the cases alternating for ROUNDS rounds so drift hits all alike. Prints every
# measurement, then the medians and the ratios the README quotes:
#   naive / shard-aware (account-only rules), and multi-key / account-only (shard-aware).
# A one-shard engine (cpu 0, the generator pinned to cpu 1) runs both rule sets too: the
# multi-key set's own cost (more entities to look up), with no shard to ask.
# Bounded: ROUNDS x 12 x about 6 seconds. Run from the repository root after
#   cargo build --release -p verdict-engine -p verdict-bench
#   bench/exact-state.sh [ROUNDS]    (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
source bench/one-shard.sh
shards_file="$work/two.toml"
cat > "$shards_file" <<TOML
[listen]
address = "127.0.0.1"
port = 0
shard_port_base = 0
[[shard]]
cpu = 0
[[shard]]
cpu = 1
TOML
write_velocity_rules "$work"
# Extra topology lines (e.g. EXTRA_TOML=$'[runtime]\nspin_before_park_us = 50').
printf '%s\n' "${EXTRA_TOML:-}" >> "$shards_file"
# One measurement: "req/s p50 p99" with rules $1 (account|multikey), engine and client $2
# (naive|aware: two shards; one: one shard, the generator on cpu 1), $3 connections x
# depth $4.
measure() {
    local client=()
    local topology=$shards_file
    [ "$2" = aware ] && client=(--shard-aware)
    [ "$2" = one ] && topology="$work/shards.toml" client=(--cpus 1)
    shards_file=$topology start_engine target/release/verdict --admin-port 0 --no-probes \
        --rules "$work/$1.rules"
    target/release/verdict-load run --addr "127.0.0.1:$engine_port" --connections "$3" \
        --depth "$4" --duration 4 --warmup 1 "${client[@]}" |
        awk -F'|' '/closed loop/ {gsub(/ /, ""); print $3, $7, $9}'
    kill "$engine_pid"
    wait "$engine_pid" 2>/dev/null || true
}
median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
for shape in "8 16" "32 1"; do
    set -- $shape
    : > "$work/results"
    for _ in $(seq "$rounds"); do
        for case in "account naive" "account aware" "multikey aware" "multikey naive" \
            "account one" "multikey one"; do
            set -- $case "${shape% *}" "${shape#* }"
            echo "$1-$2 $(measure "$1" "$2" "$3" "$4")" | tee -a "$work/results"
        done
    done
    set -- $shape
    col() { grep "^$1 " "$work/results" | awk -v c="$2" '{print $c}' | median; }
    for case in account-naive account-aware multikey-aware multikey-naive account-one \
        multikey-one; do
        echo "$1 x $2: $case median $(col "$case" 2) req/s, p50 $(col "$case" 3) us, p99 $(col "$case" 4) us"
    done
    ratio() { awk -v a="$(col "$1" "$3")" -v b="$(col "$2" "$3")" 'BEGIN {printf "%.2f", a / b}'; }
    echo "$1 x $2, $rounds rounds: naive/shard-aware throughput $(ratio account-naive account-aware 2) (p99 $(ratio account-naive account-aware 4)x); multi-key/account-only (shard-aware) throughput $(ratio multikey-aware account-aware 2) (p99 $(ratio multikey-aware account-aware 4)x); multi-key naive/shard-aware $(ratio multikey-naive multikey-aware 2); one shard, no gathers: multi-key/account-only $(ratio multikey-one account-one 2)"
done
