# Sourced by the bench scripts that measure engine processes: a scratch directory (removed,
# with any engine still running, on exit), a one-shard topology on cpu 0 with free ports,
# and `start_engine BINARY [SERVE ARGS...]`, which starts `BINARY serve` on it (or on the
# topology file in $shards_file, when set), waits for the ready line (at most 10 s) and sets
# `engine_pid` and `engine_port`.
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/shards.toml" <<TOML
[listen]
address = "127.0.0.1"
port = 0
shard_port_base = 0
[[shard]]
cpu = 0
TOML
start_engine() {
    local binary=$1; shift
    "$binary" serve --shards "${shards_file:-$work/shards.toml}" "$@" > "$work/ready" 2> "$work/log" &
    engine_pid=$!
    for _ in $(seq 100); do grep -q "verdict ready" "$work/ready" 2>/dev/null && break; sleep 0.1; done
    engine_port=$(grep -o ' port=[0-9]*' "$work/ready" | cut -d= -f2)
}
