#!/usr/bin/env bash
# TLS on vs off in one run: the same engine binary, one shard on cpu 0, plaintext and TLS
# (a P-256 certificate made here with openssl) started in turn, `verdict-load` on cpu 1
# measuring closed-loop throughput and latency, alternating for ROUNDS rounds so the
# machine's drift hits both alike; pipelined (8 connections x depth 16) and unpipelined
# (32 x 1). Prints every measurement and the medians with their ratio. Bounded: ROUNDS x 4 x
# about 6 seconds. Run from the repository root after
#   cargo build --release -p verdict-engine -p verdict-bench
#   bench/tls-ratio.sh [ROUNDS]    (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
source bench/one-shard.sh
pki="$work/pki"
mkdir -p "$pki"
(
    cd "$pki"
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 1 -subj "/CN=bench CA" 2>/dev/null
    openssl req "${ec[@]}" -keyout server.key -out server.csr -subj "/CN=127.0.0.1" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
        -days 1 -extfile server.ext 2>/dev/null
)
cp "$work/shards.toml" "$work/shards-tls.toml"
printf '[tls]\ncert_file = "%s"\nkey_file = "%s"\n' "$pki/server.pem" "$pki/server.key" \
    >> "$work/shards-tls.toml"
# One measurement: "req/s p50 p99" of `verdict-load run` against a fresh engine, plaintext
# ($1 = plain) or TLS ($1 = tls), $2 connections x depth $3.
measure() {
    local tls_args=()
    if [ "$1" = tls ]; then
        shards_file="$work/shards-tls.toml"
        tls_args=(--tls-ca "$pki/ca.pem")
    else
        shards_file="$work/shards.toml"
    fi
    start_engine target/release/verdict --admin-port 0 --no-probes
    target/release/verdict-load run --addr "127.0.0.1:$engine_port" --cpus 1 --connections "$2" \
        --depth "$3" --duration 4 --warmup 1 "${tls_args[@]}" |
        awk -F'|' '/closed loop/ {gsub(/ /, ""); print $3, $7, $9}'
    kill "$engine_pid"
    wait "$engine_pid" 2>/dev/null || true
}
median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
for shape in "8 16" "32 1"; do
    set -- $shape
    : > "$work/results"
    for _ in $(seq "$rounds"); do
        echo "plain $(measure plain "$1" "$2")" | tee -a "$work/results"
        echo "tls   $(measure tls "$1" "$2")" | tee -a "$work/results"
    done
    col() { grep "^$1" "$work/results" | awk -v c="$2" '{print $c}' | median; }
    plain=$(col plain 2) tls=$(col tls 2)
    echo "$1 connections x depth $2, $rounds rounds, medians: plaintext $plain req/s (p50 $(col plain 3) us, p99 $(col plain 4) us), TLS $tls req/s (p50 $(col tls 3) us, p99 $(col tls 4) us); TLS/plaintext $(awk -v a="$tls" -v b="$plain" 'BEGIN {printf "%.2f", a / b}')"
done
