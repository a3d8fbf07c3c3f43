#!/usr/bin/env bash
# Where the HTTP path's time goes, beside the binary port's: one engine (one shard on cpu 0,
# --http-port), loaded from cpu 1 in turn by wrk (bench/http/post.lua, 32 connections x 1;
# bench/http/pipeline.lua, 8 x 16) and by verdict-load on the binary port (the same shapes);
# during each 6 s run, `perf record --call-graph dwarf` samples the engine for 3 s, and
# bench/http/perf_split.py groups the samples: kernel (syscalls, io_uring, loopback TCP),
# socket/ring glue, the pipeline (the decision, and the frame check / response encode /
# stats), and the HTTP translation: httparse, serde_json event parse, rkyv encode of the
# request frame, rkyv access + deserialize of the response, building the decision's
# serde_json::Value, serde_json's write, the response head. perf slows the engine (it copies
# 16 KiB of stack per sample), so the req/s printed here are not the benchmark's.
# About 40 s. Run from the repository root after
#   cargo build --release -p verdict-engine -p verdict-bench
#   bench/http/profile.sh
# Env: HTTP_PORT (default 7650), PERF_FREQ (samples/s, default 1999).
set -euo pipefail
cd "$(dirname "$0")/../.."
http_port=${HTTP_PORT:-7650}
freq=${PERF_FREQ:-1999}
command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
command -v perf >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
source bench/one-shard.sh
if ! perf record -e cpu-clock -o "$work/probe.data" -- true >/dev/null 2>&1; then
    echo "perf cannot record here (perf_event_paranoid $(cat /proc/sys/kernel/perf_event_paranoid)," \
        "or no perf_event_open in this container)" >&2
    exit 1
fi
start_engine target/release/verdict --admin-port 0 --no-probes --http-port "$http_port"
[ -n "$engine_port" ] || { cat "$work/log" >&2; exit 1; }

# Profiles the engine during "$@" (a 6 s load on cpu 1): 3 s from its 1.5 s mark.
profile() {
    local name=$1; shift
    "$@" > "$work/$name.load" &
    local load=$!
    sleep 1.5
    taskset -c 1 perf record -e cpu-clock -F "$freq" --call-graph dwarf,16384 -p "$engine_pid" \
        -o "$work/$name.data" -- sleep 3 > "$work/$name.perf" 2>&1 || true
    wait "$load"
    [ -s "$work/$name.data" ] || { echo "perf record failed:" >&2; cat "$work/$name.perf" >&2; exit 1; }
    local rps
    rps=$(grep -ho 'rps=[0-9]*' "$work/$name.load" || awk -F'|' '/closed loop/ {gsub(/ /, ""); print "rps=" $3}' "$work/$name.load")
    if grep -q 'NOT OK' "$work/$name.load"; then cat "$work/$name.load" >&2; exit 1; fi
    echo "== $name ($rps under perf) =="
    taskset -c 1 perf script -i "$work/$name.data" -F tid,period,ip,sym,dso --no-inline 2>/dev/null |
        taskset -c 1 python3 bench/http/perf_split.py
    rm -f "$work/$name.data"
}
wrk_load() {
    taskset -c 1 wrk -t1 -c"$1" -d6s -s "bench/http/$2" "http://127.0.0.1:$http_port" -- "${@:3}"
}
binary_load() {
    taskset -c 1 target/release/verdict-load run --addr "127.0.0.1:$engine_port" --cpus 1 \
        --connections "$1" --depth "$2" --duration 5 --warmup 1
}
wrk_load 32 post.lua > /dev/null   # warm-up
profile "http-32x1" wrk_load 32 post.lua
profile "binary-32x1" binary_load 32 1
profile "http-8x16" wrk_load 8 pipeline.lua 16
profile "binary-8x16" binary_load 8 16
