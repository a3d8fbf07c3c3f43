#!/usr/bin/env bash
# Cluster scaling and cross-node forwarding, in one run, closed loop. Every measurement gets
# a fresh single nats-server (JetStream, a fresh store, a free port; `[cluster] replicas = 1`)
# and fresh single-shard nodes:
#   one:   one node (cpu 0) owning all 4096 partitions (map epoch 1), `verdict-load
#          --cluster-aware` pinned to cpu 1: the reference (the same as a direct client).
#   aware: three nodes a, b, c (cpus 0, 1, 0) after `verdict cluster rebalance` (each node's
#          log says `routes by map epoch 2`), `--cluster-aware` (each event straight to the
#          node and shard owning its account; connection i goes to node i % 3), generator
#          unpinned (the nodes take both CPUs).
#   naive: the same three nodes, every connection on node a's port: about 2/3 of the events
#          are forwarded to b or c over TCP and their answers relayed.
# Two rule sets with the same six velocity functions (bench/exact-state.sh's): account-only
# (no gathers) and multi-key (device, IP and merchant windows live on the node owning each
# value's partition: about 2/3 of those keys are gathered from another node).
# Pipelined (9 connections x depth 16) and unpipelined (15 x 1): multiples of 3 so the
# aware client spreads its connections evenly (each connection's batch holds one link to
# each node it needs while it waits: cluster.peer_connections_max bounds them). The cases
# alternate for
# ROUNDS rounds so drift hits all alike. Prints every measurement (req/s p50 p99 errors
# timeouts), then the medians and the ratios:
#   scaling = aware (3 nodes) / one (1 node), per rule set;
#   forwarding = naive / aware (3 nodes), per rule set;
#   gathers = multi-key / account-only, on 3 nodes (aware) and on 1.
# On a 2-core machine three nodes and the generator share two cores: scaling < 1 is
# expected there; the ratios say what the cluster's hops cost per event, not how it scales.
# Any `errors by code` the generator prints, a node that died and a map epoch past the one
# measured (a membership flap under the load) are collected and printed at the end.
# Bounded: ROUNDS x 12 x about 7 seconds (each load is bounded by `timeout`). Run from the
# repository root after
#   cargo build --release -p verdict-engine -p verdict-bench
#   source scripts/setup.sh && verdict_venv       # the pinned nats-server
#   bench/cluster-ratio.sh [ROUNDS]    (default 3; DURATION, WARMUP seconds: default 5, 1;
#                                       SHAPES: default "9x16 15x1"; VERDICT, VERDICT_LOAD:
#                                       the binaries, default target/release/...)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
duration=${DURATION:-5}
warmup=${WARMUP:-1}
shapes=${SHAPES:-9x16 15x1}
nats_server=${NATS_SERVER:-$HOME/.cache/verdict/venv/bin/nats-server}
verdict=${VERDICT:-target/release/verdict}
verdict_load=${VERDICT_LOAD:-target/release/verdict-load}
[ -x "$nats_server" ] || {
    echo "no nats-server at $nats_server: source scripts/setup.sh && verdict_venv" >&2
    exit 1
}
source bench/one-shard.sh # $work, and its trap (replaced below)
# Every process this script starts, stopped at exit: nodes first (a clean stop tells NATS),
# then the nats-server; whatever is still there after 10 s gets SIGKILL. Only these PIDs.
node_pids=()
node_names=()
nats_pid=
stop_pids() {
    [ $# -gt 0 ] || return 0
    kill "$@" 2>/dev/null || true
    for _ in $(seq 100); do
        local alive=0
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    kill -9 "$@" 2>/dev/null || true
    for p in "$@"; do wait "$p" 2>/dev/null || true; done
}
stop_all() {
    stop_pids "${node_pids[@]}"
    node_pids=()
    node_names=()
    [ -n "$nats_pid" ] && stop_pids "$nats_pid"
    nats_pid=
}
trap 'stop_all; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
write_velocity_rules "$work"
die() {
    echo "cluster-ratio: $*" >&2
    for f in "$work"/node-*.log "$work/nats.log"; do
        [ -f "$f" ] && { echo "--- $f" >&2; tail -20 "$f" >&2; }
    done
    exit 1
}
# Waits (at most $2 tenths of a second) for the file $1 to hold the text $3.
wait_for() {
    for _ in $(seq "$2"); do grep -q -- "$3" "$1" 2>/dev/null && return 0; sleep 0.1; done
    return 1
}
# A fresh nats-server on a free port; sets nats_url.
start_nats() {
    rm -rf "$work/nats" "$work/nats.log" # not the last one's lines
    "$nats_server" -js -a 127.0.0.1 -p -1 -sd "$work/nats" > "$work/nats.log" 2>&1 &
    nats_pid=$!
    wait_for "$work/nats.log" 100 "Server is ready" || die "nats-server did not start"
    nats_url=nats://$(grep -o 'client connections on 127.0.0.1:[0-9]*' "$work/nats.log" |
        grep -o '127.0.0.1:[0-9]*')
}
# start_node NAME CPU RULES [SERVE ARGS...]: a single-shard cluster node (with the
# sections in $node_toml before [cluster], the keys in $cluster_toml in it); waits for its
# ready line and for it to route by the first map; sets port_NAME.
start_node() {
    cat > "$work/node-$1.toml" <<TOML
[listen]
address = "127.0.0.1"
port = 0
shard_port_base = 0
[[shard]]
cpu = $2
${node_toml:-}
[cluster]
urls = ["$nats_url"]
node = "$1"
replicas = 1
heartbeat_ms = 200
node_ttl_ms = 3000
${cluster_toml:-}
TOML
    rm -f "$work/node-$1.ready" "$work/node-$1.log"
    "$verdict" serve --shards "$work/node-$1.toml" --admin-port 0 --no-probes \
        --rules "$work/$3.rules" "${@:4}" > "$work/node-$1.ready" 2> "$work/node-$1.log" &
    node_pids+=($!)
    node_names+=("$1")
    wait_for "$work/node-$1.ready" 100 "verdict ready" || die "node $1 did not start"
    wait_for "$work/node-$1.log" 100 "routes by map epoch 1" || die "node $1 has no map"
    printf -v "port_$1" '%s' "$(grep -o ' port=[0-9]*' "$work/node-$1.ready" | cut -d= -f2)"
}
# One measurement, in this shell (so the exit trap knows its PIDs): "req/s p50 p99 errors
# timeouts" in $work/row, with rules $1 (account|multikey), case $2 (one|aware|naive), $3
# connections x depth $4.
measure() {
    local client=(--cluster-aware) epoch=1 i n
    start_nats
    start_node a 0 "$1"
    if [ "$2" = one ]; then
        client+=(--cpus 1)
    else
        start_node b 1 "$1"
        start_node c 0 "$1"
        for _ in $(seq 100); do
            [ "$("$verdict" cluster status --cluster "$nats_url" | grep -c ' yes ')" = 3 ] && break
            sleep 0.1
        done
        "$verdict" cluster rebalance --cluster "$nats_url" > "$work/rebalance" ||
            die "rebalance failed: $(cat "$work/rebalance")"
        grep -q '^epoch 2:' "$work/rebalance" || die "rebalance: $(cat "$work/rebalance")"
        for n in a b c; do
            wait_for "$work/node-$n.log" 100 "routes by map epoch 2" ||
                die "node $n does not route by epoch 2"
        done
        epoch=2
        if [ "$2" = naive ]; then client=(); fi
    fi
    timeout -k 5 $((duration + warmup + 60)) "$verdict_load" run --addr "127.0.0.1:$port_a" \
        --connections "$3" --depth "$4" --duration "$duration" --warmup "$warmup" \
        "${client[@]}" > "$work/load.out" 2>&1 || {
        echo "$1-$2 $3x$4: verdict-load exited $? (hang?)" >> "$work/errors"
        cat "$work/load.out" >&2
    }
    grep -E '^(errors by code|connection failures)' "$work/load.out" |
        sed "s/^/$1-$2 $3x$4: /" >> "$work/errors" || true
    # A node gone, or a map past the one measured (a node's record expired under the load
    # and the others took its partitions: a membership flap), taints the measurement.
    for i in "${!node_pids[@]}"; do
        n=${node_names[$i]}
        kill -0 "${node_pids[$i]}" 2>/dev/null || echo "$1-$2 $3x$4: node $n died" >> "$work/errors"
        grep -o 'routes by map epoch [0-9]*' "$work/node-$n.log" |
            awk -v want="$epoch" -v at="$1-$2 $3x$4: node $n" '$5 > want {
                print at, $0, "during the load (the map moved: a membership flap)"}' |
            tail -1 >> "$work/errors"
    done
    awk -F'|' '/closed loop/ {gsub(/ /, ""); print $3, $7, $9, $4, $5}' "$work/load.out" \
        > "$work/row"
    stop_all
}
median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
: > "$work/errors"
cases="account-one account-aware account-naive multikey-naive multikey-aware multikey-one"
for shape in $shapes; do
    conns=${shape%x*} depth=${shape#*x}
    : > "$work/results"
    for _ in $(seq "$rounds"); do
        for case in $cases; do
            measure "${case%-*}" "${case#*-}" "$conns" "$depth"
            echo "$case $(cat "$work/row")" | tee -a "$work/results"
        done
    done
    col() { grep "^$1 " "$work/results" | awk -v c="$2" '{print $c}' | median; }
    for case in $cases; do
        echo "$conns x $depth: $case median $(col "$case" 2) req/s, p50 $(col "$case" 3) us, p99 $(col "$case" 4) us"
    done
    ratio() { awk -v a="$(col "$1" "$3")" -v b="$(col "$2" "$3")" 'BEGIN {printf "%.2f", a / b}'; }
    echo "$conns x $depth, $rounds rounds: scaling 3 nodes/1 node: account-only $(ratio account-aware account-one 2), multi-key $(ratio multikey-aware multikey-one 2); forwarding naive/aware (3 nodes): account-only $(ratio account-naive account-aware 2) (p99 $(ratio account-naive account-aware 4)x), multi-key $(ratio multikey-naive multikey-aware 2) (p99 $(ratio multikey-naive multikey-aware 4)x); gathers multi-key/account-only: 3 nodes $(ratio multikey-aware account-aware 2), 1 node $(ratio multikey-one account-one 2)"
done

# The decision stream under load (one node, account-only rules, the generator on cpu 1):
#   stream: [log] dir with the default sync; the lag = events the node has decided
#           (`verdict stats`) minus messages in VERDICT_DECISIONS (`verdict cluster status
#           --json`), sampled about every 250 ms during the load, and how long after the
#           load it takes to reach 0.
#   sync:   log.sync = "always" (answers wait for the disk);
#   wait:   the same plus cluster.wait_for_append: answers also wait for both streams.
#   The cost of the mode: wait / sync (req/s, p50), unpipelined and pipelined.
# APPEND=0 skips it.
unshipped() {
    local decided held
    decided=$("$verdict" stats --addr "127.0.0.1:$port_a" --json 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["total"]["events"])' 2>/dev/null) || return 0
    held=$("$verdict" cluster status --cluster "$nats_url" --json 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["streams"].get("VERDICT_DECISIONS", 0))' 2>/dev/null) ||
        return 0
    echo $((decided - held))
}
measure_append() {
    local mode=$1 conns=$2 depth=$3
    start_nats
    node_toml= cluster_toml=
    rm -rf "$work/log-a"
    case $mode in
        sync) node_toml=$'[log]\nsync = "always"' ;;
        wait) node_toml=$'[log]\nsync = "always"' cluster_toml='wait_for_append = true' ;;
    esac
    start_node a 0 account --log-dir "$work/log-a"
    # With a log the node replays its partitions' history (none here) before serving them.
    wait_for "$work/node-a.log" 300 "caught up on" || die "node a never caught up"
    node_toml= cluster_toml=
    : > "$work/lag"
    (while :; do unshipped >> "$work/lag"; sleep 0.25; done) &
    local sampler=$!
    timeout -k 5 $((duration + warmup + 60)) "$verdict_load" run --addr "127.0.0.1:$port_a" \
        --connections "$conns" --depth "$depth" --duration "$duration" --warmup "$warmup" \
        --cluster-aware --cpus 1 > "$work/load.out" 2>&1 ||
        echo "append-$mode $conns x$depth: verdict-load exited $?" >> "$work/errors"
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
    grep -E '^(errors by code|connection failures)' "$work/load.out" |
        sed "s/^/append-$mode $conns x$depth: /" >> "$work/errors" || true
    local drained=-1 t0=$SECONDS
    for _ in $(seq 120); do
        [ "$(unshipped)" = 0 ] && { drained=$((SECONDS - t0)); break; }
        sleep 0.25
    done
    local max p50
    max=$(sort -n "$work/lag" | tail -1)
    p50=$(median < "$work/lag")
    awk -F'|' -v m="${max:-0}" -v p="${p50:-0}" -v d="$drained" '/closed loop/ {gsub(/ /, "");
        print $3, $7, $9, m, p, d}' "$work/load.out" > "$work/row"
    stop_all
}
if [ "${APPEND:-1}" = 1 ]; then
    for shape in 15x1 9x16; do
        conns=${shape%x*} depth=${shape#*x}
        : > "$work/results"
        for _ in $(seq "$rounds"); do
            for mode in stream sync wait; do
                measure_append "$mode" "$conns" "$depth"
                echo "$mode $(cat "$work/row")" | tee -a "$work/results"
            done
        done
        col() { grep "^$1 " "$work/results" | awk -v c="$2" '{print $c}' | median; }
        for mode in stream sync wait; do
            echo "append $conns x $depth: $mode median $(col "$mode" 2) req/s, p50 $(col "$mode" 3) us, p99 $(col "$mode" 4) us, unshipped max $(col "$mode" 5) p50 $(col "$mode" 6), drained in $(col "$mode" 7) s"
        done
        ratio() { awk -v a="$(col "$1" "$3")" -v b="$(col "$2" "$3")" 'BEGIN {printf "%.2f", a / b}'; }
        echo "append $conns x $depth, $rounds rounds: wait-for-append / sync always: req/s $(ratio wait sync 2), p50 $(ratio wait sync 3)x, p99 $(ratio wait sync 4)x"
    done
fi
if [ -s "$work/errors" ]; then
    echo "errors:"
    cat "$work/errors"
else
    echo "errors: none"
fi
echo "wall time: ${SECONDS}s"
