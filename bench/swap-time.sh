#!/usr/bin/env bash
# Measures a model hot swap end to end: `verdict reload` -> every core deciding with the new
# epoch (the `swap_us` the engine reports, from the shards' own timestamps), 20 reloads with
# the fraud_lr model changed (its manifest alternates deadline_us, so every core builds a new
# pool) and 20 with nothing changed (cores keep their warm pools), under a closed-loop load
# on 127.0.0.1. Bounded: about 25 seconds. Run from the repository root after a release build
# (cargo build --release -p verdict-engine -p verdict-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release
models=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$models"' EXIT
bash scripts/build-models.sh
cp -r models/examples/. "$models"/
"$bin/verdict" serve --port 0 --shard-port-base 0 --models "$models" > "$models/ready" 2>/dev/null &
for _ in $(seq 50); do grep -q "verdict ready" "$models/ready" 2>/dev/null && break; sleep 0.1; done
port=$(grep -o 'port=[0-9]*' "$models/ready" | head -1 | cut -d= -f2)
addr="127.0.0.1:$port"
"$bin/verdict-load" run --addr "$addr" --shard-aware --connections 4 --depth 8 --duration 20 --warmup 1 > "$models/load" 2>&1 &
sleep 2
swap() { "$bin/verdict" reload --addr "$addr" | grep -o "every shard deciding with it [0-9]* us" | awk '{print $6}'; }
changed=$(for i in $(seq 20); do
    sed -i "s/^deadline_us = .*/deadline_us = $((2000 + i % 2))/" "$models/fraud_lr/manifest.toml"
    swap
done | sort -n)
same=$(for _ in $(seq 20); do swap; done | sort -n)
median() { sed -n "$(( $(wc -l <<<"$1") / 2 + 1 ))p" <<<"$1"; }
echo "model changed:   median $(median "$changed") us, max $(tail -1 <<<"$changed") us (20 reloads)"
echo "nothing changed: median $(median "$same") us, max $(tail -1 <<<"$same") us (20 reloads)"
wait %2 || true
echo "load during the reloads: $(tail -1 "$models/load")"
