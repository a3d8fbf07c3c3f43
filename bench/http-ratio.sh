#!/usr/bin/env bash
# HTTP/JSON port vs binary port in one run: one engine (one shard on cpu 0, started once with
# --http-port), and on cpu 1, in alternating rounds (the order flips every round, so the
# machine's drift hits both alike), `verdict-load` on the binary port and wrk
# (bench/http/post.lua, bench/http/pipeline.lua) on the HTTP port, each with the same
# connections x depth: unpipelined (32 x 1) and pipelined (8 x 16). Each measurement is 1 s
# of warm-up and 4 s measured. Prints every measurement, with the CPU use of the engine and
# of the load tool over it (whichever is near 100% was the limit; both under it: the machine
# was busy with other work, or the two waited on each other), the medians, and the
# HTTP/binary ratios of throughput, p50 and p99. Every HTTP answer must be 200 and every
# binary one a decision, or the script stops. Then bench/http/python_vs_requests.py (on
# cpu 1): the Python client sync and pipelined against a plain `requests` loop.
# About 80 s with the default ROUNDS=3. Run from the repository root after
#   cargo build --release -p verdict-engine -p verdict-bench
#   bench/http-ratio.sh [ROUNDS]    (default 3)
# Env: HTTP_PORT (default 7650; the HTTP port is fixed, 0 would mean off), PYTHON_N (events
# per Python mode per round, default 5000).
#
# wrk's depth is not quite verdict-load's: pipelined, wrk writes a connection's 16 requests
# at once and the next 16 when all 16 are answered, where verdict-load sends a new request
# as each answer comes. Latency is timed per request on both (see bench/http/events.lua for
# why wrk's own percentiles are not used).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
http_port=${HTTP_PORT:-7650}
python_n=${PYTHON_N:-5000}
command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
for bin in target/release/verdict target/release/verdict-load; do
    [ -x "$bin" ] || { echo "no $bin: cargo build --release -p verdict-engine -p verdict-bench" >&2; exit 1; }
done
source bench/one-shard.sh

start_engine target/release/verdict --admin-port 0 --no-probes --http-port "$http_port"
if [ -z "$engine_port" ]; then
    echo "the engine did not start:" >&2
    cat "$work/log" >&2
    exit 1
fi
status=$(curl -s -o "$work/probe.json" -w '%{http_code}' -X POST "http://127.0.0.1:$http_port/v1/decide" \
    -H 'Content-Type: application/json' \
    -d '{"event_id":"probe","timestamp_ms":1700000000000,"account_id":"acct-42","merchant_id":"m-7","amount_minor":129900,"currency":"USD","country":"US","channel":"web","device_id":"d-1","ip":"203.0.113.9","mcc":5411}')
[ "$status" = 200 ] || { echo "POST /v1/decide answered $status: $(cat "$work/probe.json")" >&2; exit 1; }
echo "engine pid $engine_pid on cpu 0: binary port $engine_port, HTTP port $http_port; load tools on cpu 1"

# The engine's CPU time so far, in clock ticks.
engine_ticks() { awk '{print $14 + $15}' "/proc/$engine_pid/stat"; }
hz=$(getconf CLK_TCK)
# Runs "$@", then prints the engine's CPU use over it, in % of one core.
with_cpu() {
    local t0 c0 t1 c1
    t0=$(date +%s.%N) c0=$(engine_ticks)
    "$@"
    t1=$(date +%s.%N) c1=$(engine_ticks)
    awk -v c="$((c1 - c0))" -v hz="$hz" -v t0="$t0" -v t1="$t1" \
        'BEGIN {printf "%.0f\n", 100 * c / hz / (t1 - t0)}'
}

# The load tool's CPU use (GNU time's %P: user + sys over its run, in % of one core).
client_time=(/usr/bin/time -f %P -o "$work/client.cpu")
client_cpu() { tr -d '%' < "$work/client.cpu"; }

# One measurement: "req/s p50 p99 engine_cpu% client_cpu%" of verdict-load on the binary
# port, $1 connections x depth $2.
binary() {
    taskset -c 1 "${client_time[@]}" target/release/verdict-load run --addr "127.0.0.1:$engine_port" --cpus 1 --connections "$1" \
        --depth "$2" --duration 4 --warmup 1 > "$work/load.out"
}
measure_binary() {
    local cpu row
    cpu=$(with_cpu binary "$1" "$2")
    row=$(awk -F'|' '/closed loop/ {gsub(/ /, ""); print $3, $7, $9, $4, $5, $6}' "$work/load.out")
    set -- $row
    if [ -z "$row" ] || [ "$4$5$6" != 000 ] || grep -q 'connection failures' "$work/load.out"; then
        echo "verdict-load: errors, timeouts or lost requests:" >&2
        cat "$work/load.out" >&2
        exit 1
    fi
    echo "$1 $2 $3 $cpu $(client_cpu)"
}
# The same on the HTTP port with wrk: 1 s of warm-up, then 4 s measured.
wrk_run() {
    local secs=$1 c=$2 d=$3
    if [ "$d" = 1 ]; then
        taskset -c 1 "${client_time[@]}" wrk -t1 -c"$c" -d"${secs}s" -s bench/http/post.lua \
            "http://127.0.0.1:$http_port"
    else
        taskset -c 1 "${client_time[@]}" wrk -t1 -c"$c" -d"${secs}s" -s bench/http/pipeline.lua \
            "http://127.0.0.1:$http_port" -- "$d"
    fi
}
wrk_measured() { wrk_run 4 "$1" "$2" > "$work/wrk.out"; }
check_wrk() {
    if grep -q 'NOT OK' "$1" || ! grep -q ' non200=0 connect_errors=0 read_errors=0 write_errors=0 timeouts=0' "$1"; then
        echo "wrk: non-200 answers or socket errors:" >&2
        cat "$1" >&2
        exit 1
    fi
}
measure_http() {
    local cpu line
    wrk_run 1 "$1" "$2" > "$work/wrk-warm.out"
    check_wrk "$work/wrk-warm.out"
    cpu=$(with_cpu wrk_measured "$1" "$2")
    check_wrk "$work/wrk.out"
    line=$(grep '^wrk-result' "$work/wrk.out")
    field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
    echo "$(field rps) $(field p50_us) $(field p99_us) $cpu $(client_cpu)"
}

median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
summary=()
for shape in "32 1" "8 16"; do
    set -- $shape
    : > "$work/results"
    echo "== $1 connections x depth $2: req/s, p50 us, p99 us, engine cpu %, load tool cpu % =="
    for r in $(seq "$rounds"); do
        order="binary http"
        [ $((r % 2)) = 0 ] && order="http binary"
        for port in $order; do
            m=$(measure_$port "$1" "$2")
            printf '%-6s %s\n' "$port" "$m" | tee -a "$work/results"
        done
    done
    col() { grep "^$1 " "$work/results" | awk -v c="$2" '{print $c}' | median; }
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
    b_rps=$(col binary 2) b_p50=$(col binary 3) b_p99=$(col binary 4)
    h_rps=$(col http 2) h_p50=$(col http 3) h_p99=$(col http 4)
    line="$1 x $2, medians of $rounds: binary $b_rps req/s (p50 $b_p50 us, p99 $b_p99 us, cpu: engine $(col binary 5)%, verdict-load $(col binary 6)%), HTTP $h_rps req/s (p50 $h_p50 us, p99 $h_p99 us, cpu: engine $(col http 5)%, wrk $(col http 6)%); HTTP/binary: throughput $(ratio "$h_rps" "$b_rps"), p50 $(ratio "$h_p50" "$b_p50"), p99 $(ratio "$h_p99" "$b_p99")"
    echo "$line"
    summary+=("$line")
done

echo "== Python: the client (binary port) against requests (HTTP port), python on cpu 1 =="
python=${VERDICT_VENV_PYTHON:-$HOME/.cache/verdict/venv/bin/python}
if ! "$python" -c 'import requests' 2>/dev/null; then
    source scripts/setup.sh
    verdict_venv
    python=$VERDICT_VENV_PYTHON
fi
PYTHONPATH=net/clients/python taskset -c 1 "$python" bench/http/python_vs_requests.py \
    --port "$engine_port" --http-port "$http_port" -n "$python_n" --rounds "$rounds"

echo "== summary =="
printf '%s\n' "${summary[@]}"
