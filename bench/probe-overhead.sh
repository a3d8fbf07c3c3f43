#!/usr/bin/env bash
# The cost of the default eBPF probe set on engine throughput: the engine (one shard, cpu 0)
# is started with the probes and without (`--no-probes`), alternately, 3 rounds each, and
# `verdict-load` (cpu 1) measures closed-loop throughput unpipelined (16 connections x 1) and
# pipelined (4 x 32) against each. A fresh engine per measurement: probes are host-wide hooks
# (sched_switch runs for every task on the host), so "off" must mean not loaded at all.
# Reports each measurement, the medians and the ratio on/off. Bounded: about 90 seconds.
# Needs root (else the "on" runs have no probes either, and the script says so).
# Run from the repository root after a release build
# (cargo build --release -p verdict-engine -p verdict-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release
source bench/one-shard.sh
# One measurement: rps of `verdict-load run` against a fresh engine started with "$@".
measure() {
    local load=$1; shift
    start_engine "$bin/verdict" "$@"
    # shellcheck disable=SC2086
    "$bin/verdict-load" run --addr "127.0.0.1:$engine_port" --cpus 1 $load --duration 5 --warmup 1 \
        --json "$work/run.json" > /dev/null
    kill -INT "$engine_pid"; wait "$engine_pid" 2>/dev/null || true
    python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["achieved_rps"]))' "$work/run.json"
}
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
for load in "--connections 16 --depth 1" "--connections 4 --depth 32"; do
    on=(); off=()
    for round in 1 2 3; do
        on+=("$(measure "$load")")
        grep -q "4 of 5 groups active" "$work/log" \
            || echo "warning: the default probe groups did not all load (not root?): 'on' is not on" >&2
        off+=("$(measure "$load" --no-probes)")
        echo "[$load] round $round: probes on ${on[-1]} rps, off ${off[-1]} rps" >&2
    done
    m_on=$(median "${on[@]}"); m_off=$(median "${off[@]}")
    ratio=$(python3 -c "print(f'{$m_on / $m_off:.3f}')")
    echo "$load: probes on median $m_on rps, off $m_off rps, on/off = $ratio"
done
