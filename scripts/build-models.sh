#!/usr/bin/env bash
# Builds every example model (models/examples/<name>/wasm.rs) for wasm32-unknown-unknown,
# writing <name>.wasm beside its manifest (or into OUT_DIR if given: models/build.rs embeds
# them from there). The one place the wasm build flags live.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-}"
rustc="${RUSTC:-rustc}"
for src in "$here"/models/examples/*/wasm.rs; do
    dir="$(dirname "$src")"
    name="$(basename "$dir")"
    dest="${out:-$dir}/$name.wasm"
    # Flags meant for a host build must not leak into the wasm build.
    env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS "$rustc" --edition 2024 \
        --crate-type cdylib --crate-name "$name" --target wasm32-unknown-unknown \
        -C opt-level=3 -C target-feature=+simd128 -C panic=abort -C strip=symbols -C debuginfo=0 \
        -o "$dest" "$src"
done
