# Sourced by the bench scripts that measure engine processes: a scratch directory (removed,
# with any engine still running, on exit), a one-shard topology on cpu 0 with free ports,
# and `start_engine BINARY [SERVE ARGS...]`, which starts `BINARY serve` on it (or on the
# topology file in $shards_file, when set), waits for the ready line (at most 10 s) and sets
# `engine_pid` and `engine_port`; and `write_velocity_rules DIR` (below).
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

# Writes the two rule sets the exact-state and cluster benches compare into $1: both with
# the same six velocity functions, multikey.rules with three of them by device, IP and
# merchant (windows kept by each value's owner, so gathered), account.rules with those
# three by account instead (no gathers).
write_velocity_rules() {
    local common='rule burst { when count(account, 60s) >= 10 or sum(amount, account, 1h) > 20000.00  score 50 }
rule many_devices { when distinct(device, account, 24h) >= 5  score 30 }
policy { deny when score >= 80; review when score >= 40; otherwise allow }'
    cat > "$1/multikey.rules" <<RULES
$common
rule device_burst { when count(device, 10m) >= 5  score 30 }
rule ip_spend { when sum(amount, ip, 1h) > 5000.00  score 20 }
rule merchant_spread { when distinct(account, merchant, 1h) >= 50  score 10 }
RULES
    cat > "$1/account.rules" <<RULES
$common
rule device_burst { when count(account, 10m) >= 5  score 30 }
rule ip_spend { when sum(amount, account, 1h) > 5000.00  score 20 }
rule merchant_spread { when distinct(merchant, account, 1h) >= 50  score 10 }
RULES
}
