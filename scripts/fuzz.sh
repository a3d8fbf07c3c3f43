#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), one after another, under nice: cargo
# fuzz (libFuzzer, AddressSanitizer) on the crates net/fuzz, rules/fuzz, models/fuzz and
# engine/fuzz. Prints each target's executions and whether it found anything; exits 1 if any
# target crashed (the input is in <crate>/fuzz/artifacts/<target>/, the log in
# target/fuzz-logs/).
#
#   scripts/fuzz.sh [SECONDS] [CRATE/TARGET ...]    e.g. scripts/fuzz.sh 600 rules/syntax
#
# Each target starts from its committed seeds (<crate>/fuzz/corpus/<target>/) and crash
# reproducers (<crate>/fuzz/regressions/<target>/); what it learns goes to
# target/fuzz-corpus/<crate>/<target>/, kept between runs and never committed. `cargo test`
# replays the committed files (each crate's tests/fuzz_corpus.rs); to reproduce a crash:
# cd <crate> && RUSTC_BOOTSTRAP=1 cargo fuzz run --target-dir ../target/fuzz <target> <file>.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
source "$here/scripts/setup.sh"

seconds="${1:-60}"
shift || true
crates=(net rules models engine)
# cargo fuzz passes -Zsanitizer and other nightly-only flags; RUSTC_BOOTSTRAP=1 lets the
# stable toolchain accept them.
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
build="$here/target/fuzz"
mkdir -p "$here/target/fuzz-logs"

targets=("$@")
if ((${#targets[@]} == 0)); then
    for crate in "${crates[@]}"; do
        for t in $(cd "$here/$crate" && cargo fuzz list); do targets+=("$crate/$t"); done
    done
fi

crashed=0
for ct in "${targets[@]}"; do
    crate="${ct%%/*}" target="${ct#*/}"
    log="$here/target/fuzz-logs/$crate-$target.log"
    learned="$here/target/fuzz-corpus/$crate/$target"
    mkdir -p "$learned"
    inputs=("$learned" "fuzz/corpus/$target")
    [ -d "$here/$crate/fuzz/regressions/$target" ] && inputs+=("fuzz/regressions/$target")
    status="found nothing in ${seconds}s"
    if ! (cd "$here/$crate" && nice -n 19 cargo fuzz run --target-dir "$build" "$target" \
        "${inputs[@]}" -- -max_total_time="$seconds" -timeout=30 -print_final_stats=1) \
        >"$log" 2>&1; then
        artifact=$(grep -ao 'Test unit written to [^ ]*' "$log" | tail -1 | cut -d' ' -f5)
        if grep -aq '^INFO: Seed:' "$log"; then
            status="FOUND A CRASH: ${artifact:-see $log}"
        else
            status="DID NOT RUN (build failed?): see $log"
        fi
        crashed=1
    fi
    execs=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' ||
        grep -aoE '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
    printf '%-18s %10s executions  %s\n' "$ct" "${execs:-?}" "$status"
done
exit "$crashed"
