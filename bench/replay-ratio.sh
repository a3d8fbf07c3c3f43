#!/usr/bin/env bash
# Replay throughput against the engine's own decision rate, in one run:
# 1. a decision log of at least EVENTS decisions (default 10,000,000): a two-shard engine
#    (cpus 0 and 1), the shipped rules and model, `log.sync = "off"`, fed by `verdict-load`
#    (its seeded generator, shared port, 16 x depth 16, each event stamped with the time it
#    is sent) in 10-second runs until the engine's stats count EVENTS logged decisions;
# 2. `verdict replay` of that log under the same rules, `--threads 2`, ROUNDS times: events
#    per second per thread, read to report;
# 3. the `hot_path` bench's "decision/full: validate + decide + encode" on cpu 1 (criterion):
#    one core's decision rate;
# then the ratio of the median replay rate per thread to the hot_path rate (the target is
# at least 0.5x). The log lives under target/ and is removed at the end. Bounded: about
# EVENTS / 300,000 seconds of load, ROUNDS replays, one criterion run. From the repository
# root, after
#   cargo build --release -p verdict-engine -p verdict-bench
#   bench/replay-ratio.sh [EVENTS] [ROUNDS]    (defaults 10000000 and 3)
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-10000000}
rounds=${2:-3}
source bench/one-shard.sh
logs=$(mktemp -d -p "$PWD/target" replay-ratio.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work" "$logs"' EXIT
shards_file="$work/two.toml"
cp "$work/shards.toml" "$shards_file"
printf '[[shard]]\ncpu = 1\n[log]\nsync = "off"\nsegment_bytes_max = 268435456\n' >> "$shards_file"
start_engine target/release/verdict --admin-port 0 --no-probes --log-dir "$logs/log"
logged() {
    target/release/verdict stats --addr "127.0.0.1:$engine_port" --json |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["total"]["log"]["records"])'
}
while [ "$(logged)" -lt "$events" ]; do
    target/release/verdict-load run --addr "127.0.0.1:$engine_port" --connections 16 \
        --depth 16 --duration 10 --warmup 0 --seed "$RANDOM" --stamp-now > /dev/null
    echo "logged: $(logged) decisions"
done
kill "$engine_pid"
wait "$engine_pid" 2>/dev/null || true
du -sh "$logs/log"
: > "$work/replays"
for _ in $(seq "$rounds"); do
    target/release/verdict replay "$logs/log" --rules rules/default.rules --threads 2 --json \
        > "$work/report.json"
    python3 - "$work/report.json" <<'PY' | tee -a "$work/replays"
import json, sys
r = json.load(open(sys.argv[1]))
t = r["timing"]
print(f'{t["events_per_s"] / t["threads"]:.0f} events/s per thread; {r["events"]} events, '
      f'{t["threads"]} threads: read {t["read_ms"]} ms, velocity {t["velocity_ms"]} ms, '
      f'decide {t["decide_ms"]} ms; identical {r["identical"]}, velocity_differs '
      f'{r["velocity_differs"]}, skipped {r["log"]["skipped"]["bad_decisions"]}')
PY
done
replay=$(awk '{print $1}' "$work/replays" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}')
# criterion prints "time:   [low estimate high]" after the benchmark's name.
taskset -c 1 cargo bench -q -p verdict-bench --bench hot_path -- "decision/full" 2>/dev/null |
    tee "$work/hot_path"
ns=$(awk '/time:/ {gsub(/\[/, ""); v = $4; u = $5} END {
    if (u == "ns") print v; else if (u == "µs" || u == "us") print v * 1000; else print v * 1e6 }' \
    "$work/hot_path")
awk -v r="$replay" -v ns="$ns" 'BEGIN {
    h = 1e9 / ns
    printf "replay %.0f events/s per thread (median of its rounds); hot_path full decision %.1f ns = %.0f events/s on one core; replay/hot_path %.2fx\n", r, ns, h, r / h
}'
