#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test verdict. Sourced by
# serve.sh and test.sh; safe to run again (it only installs what is missing).
set -euo pipefail

# Debian packages: hwloc + udev for hwlocality, a C toolchain and git for glommio's bundled
# liburing, pkg-config to find them, clang + libbpf headers for the eBPF probes, DejaVu for
# latency plots, Debian's Python Prometheus client (the tests parse /metrics with it), openssl (the
# TLS tests make their certificates with it).
VERDICT_APT_PACKAGES=(build-essential pkg-config git libhwloc-dev libudev-dev clang libbpf-dev
    fonts-dejavu-core python3-prometheus-client openssl)
# Rust components the scripts use, and the target the example models are built for.
VERDICT_RUST_COMPONENTS=(rustfmt clippy)
VERDICT_RUST_TARGETS=(wasm32-unknown-unknown)

verdict_setup() {
    local missing=()
    for p in "${VERDICT_APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        echo "setup: installing ${missing[*]}" >&2
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "setup: no Rust toolchain. Install rustup (https://rustup.rs), then run this again." >&2
        echo "       verdict needs Rust 1.95 or newer (edition 2024)." >&2
        return 1
    fi
    if command -v rustup >/dev/null 2>&1; then
        local have
        have=$(rustup component list --installed 2>/dev/null || true)
        for c in "${VERDICT_RUST_COMPONENTS[@]}"; do
            grep -q "^$c" <<<"$have" || rustup component add "$c" >&2
        done
        have=$(rustup target list --installed 2>/dev/null || true)
        for t in "${VERDICT_RUST_TARGETS[@]}"; do
            grep -qx "$t" <<<"$have" || rustup target add "$t" >&2
        done
    fi
}

verdict_setup

# The example models as files beside their manifests, so `--models models/examples` works.
# (The binary embeds its own copies; models/build.rs builds those.)
bash "$(dirname "${BASH_SOURCE[0]}")/build-models.sh"
