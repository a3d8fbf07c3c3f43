#!/usr/bin/env bash
# Builds every example model (models/examples/<name>/wasm.rs) for wasm32-unknown-unknown,
# writing <name>.wasm beside its manifest (or into OUT_DIR if given: models/build.rs embeds
# them from there). The one place the wasm build flags live.
#
# A model whose .wasm is newer than every file it is built from (and this script) is left
# alone: models/build.rs watches models/examples, so rewriting an up-to-date .wasm would
# rebuild the models crate and the engine on every `scripts/serve.sh`.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-}"
rustc="${RUSTC:-rustc}"
for src in "$here"/models/examples/*/wasm.rs; do
    dir="$(dirname "$src")"
    name="$(basename "$dir")"
    dest="${out:-$dir}/$name.wasm"
    stale=0
    [ -f "$dest" ] || stale=1
    for input in "$dir"/*.rs "$here"/models/examples/*.rs "$here/scripts/build-models.sh"; do
        [ "$input" -nt "$dest" ] && stale=1
    done
    ((stale)) || continue
    # Written aside and moved into place, so an interrupted build leaves no half file that
    # looks up to date.
    # Flags meant for a host build must not leak into the wasm build.
    env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS "$rustc" --edition 2024 \
        --crate-type cdylib --crate-name "$name" --target wasm32-unknown-unknown \
        -C opt-level=3 -C target-feature=+simd128 -C panic=abort -C strip=symbols -C debuginfo=0 \
        -o "$dest.partial" "$src"
    mv -f "$dest.partial" "$dest"
done
# The scorer template of imported models (models/trees): only embedded, never a file beside
# a manifest, so only built into OUT_DIR.
if [ -n "$out" ]; then
    dest="$out/trees.wasm"
    stale=0
    [ -f "$dest" ] || stale=1
    for input in "$here"/models/trees/*.rs "$here"/models/examples/abi_v1.rs "$here/scripts/build-models.sh"; do
        [ "$input" -nt "$dest" ] && stale=1
    done
    if ((stale)); then
        env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS "$rustc" --edition 2024 \
            --crate-type cdylib --crate-name trees --target wasm32-unknown-unknown \
            -C opt-level=3 -C target-feature=+simd128 -C panic=abort -C strip=symbols -C debuginfo=0 \
            -o "$dest.partial" "$here/models/trees/wasm.rs"
        mv -f "$dest.partial" "$dest"
    fi
fi
