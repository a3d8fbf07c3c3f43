#!/usr/bin/env bash
# Imported tree models against their own libraries, in one run:
# 1. bench/gbdt/train_bench.py trains a production-sized XGBoost (binary:logistic, 300 trees,
#    depth 6) and LightGBM (binary, 300 trees, 63 leaves) fraud model on 20,000 generated
#    rows (8 features, 2 categorical, ~10% NaN), seeded, plus 4,096 evaluation rows;
# 2. `verdict model import` turns each into a verdict model (wasm, ABI v1);
# 3. the `imported` criterion bench scores the rows with the native build of the scorer and
#    with the wasm module through the engine's Pool, 1 and 64 rows per call (it first checks
#    the four give the same bits, and the library's scores);
# 4. bench/gbdt/predict_timing.py times the libraries' own predict (one thread) on the same
#    rows, 1 and 64 per call, and a 1-tree model of the same shape for their fixed cost;
# then one table of ns per row and the ratios: wasm/native (the target is at most 1.25x at
# 64 rows) and the library's single-row predict over verdict's single-row wasm call (the
# target: above 1x). The models are imported with a 1 s deadline: a shared machine can
# deschedule a call past the default 5 ms, and the deadline's cost does not depend on its
# length. Criterion and Python run on cpu 1 (taskset, if there is one). Scratch files live in
# a temporary directory, removed at the end. Bounded: a release build (minutes the first
# time), a few seconds of training, 4 x 2 x (1 + SAMPLE_SECS) s of criterion, ~25 s of Python.
# Needs the venv scripts/setup.sh makes. From the repository root:
#   bench/imported-ratio.sh [SAMPLE_SECS]    (default 3: criterion's --measurement-time)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
py=${VERDICT_VENV_PYTHON:-$HOME/.cache/verdict/venv/bin/python}
[ -x "$py" ] || { echo "no python at $py: run scripts/setup.sh (or set VERDICT_VENV_PYTHON)" >&2; exit 1; }
pin=()
if command -v taskset > /dev/null && [ "$(nproc)" -gt 1 ]; then pin=(taskset -c 1); fi
work=$(mktemp -d -t imported-ratio.XXXXXX)
trap 'rm -rf "$work"' EXIT
started=$(date +%s)

cargo build -q --release -p verdict-engine --bin verdict
cargo bench -q -p verdict-bench --bench imported --no-run
"$py" bench/gbdt/train_bench.py "$work"
features=$(seq -s, 0 7 | sed 's/\([0-9]\)/features[\1]/g; s/,/, /g')
for m in xgb:xgboost:json lgb:lightgbm:txt; do
    IFS=: read -r name format ext <<< "$m"
    target/release/verdict model import "$work/$name.$ext" --format "$format" --name "$name" \
        --features "$features" --deadline-us 1000000 --out "$work/$name" | sed -n 1p
    target/release/verdict model inspect "$work/$name" | grep '^  trees:'
done

# Criterion's own record of each benchmark (not its text): new/benchmark.json names it,
# new/estimates.json holds the median. Only files newer than this marker count.
touch "$work/marker"
VERDICT_BENCH_IMPORTED="$work" "${pin[@]}" cargo bench -q -p verdict-bench --bench imported -- \
    --noplot --warm-up-time 1 --measurement-time "$secs" > "$work/criterion.txt" 2>&1 ||
    { cat "$work/criterion.txt"; exit 1; }
grep -E '^imported/|time:' "$work/criterion.txt"
"${pin[@]}" "$py" bench/gbdt/predict_timing.py "$work" --json "$work/library.json"

"$py" - "$work" target/criterion "$(( $(date +%s) - started ))" <<'PY'
import glob, json, os, sys
work, criterion, elapsed = sys.argv[1], sys.argv[2], sys.argv[3]
marker = os.path.getmtime(os.path.join(work, "marker"))
ns = {}  # (model, "native x1") -> median ns per call
for path in glob.glob(os.path.join(criterion, "**", "new", "benchmark.json"), recursive=True):
    b = json.load(open(path))
    est = os.path.join(os.path.dirname(path), "estimates.json")
    if b["group_id"].startswith("imported/") and os.path.getmtime(est) >= marker:
        ns[(b["group_id"].split("/", 1)[1], b["function_id"])] = \
            json.load(open(est))["median"]["point_estimate"]
lib = json.load(open(os.path.join(work, "library.json")))["results"]
paths = [("xgb", "xgboost", "inplace_predict"), ("xgb", "xgboost", "predict(DMatrix)"),
         ("lgb", "lightgbm", "predict")]
missing = [(m, f"{w} x{n}") for m in ("xgb", "lgb") for w in ("native", "wasm") for n in (1, 64)
           if (m, f"{w} x{n}") not in ns]
if missing:
    sys.exit(f"no criterion estimates from this run for {missing}")
print(f"\nns per row, median (x1: one row per call; x64: a 64-row call / 64; marginal: "
      f"(x64 call - x1 call) / 63; 1-tree: the library's call on a 1-tree model), one core:\n")
head = ["model", "native x1", "native x64", "wasm x1", "wasm x64", "wasm/native x1",
        "wasm/native x64", "library path", "lib x1", "lib x64", "lib marginal", "lib 1-tree x1",
        "lib x1 / wasm x1"]
print("| " + " | ".join(head) + " |")
print("|" + "|".join(["---"] + ["---:"] * 6 + ["---"] + ["---:"] * 5) + "|")
x64, single = {}, []
for model, library, path in paths:
    n1, n64 = ns[(model, "native x1")], ns[(model, "native x64")] / 64
    w1, w64 = ns[(model, "wasm x1")], ns[(model, "wasm x64")] / 64
    r = lib[model][path]
    x64[model] = w64 / n64
    single.append((f"{library} {path}", r["x1_ns"] / w1))
    print(f"| {model} | {n1:,.0f} | {n64:,.0f} | {w1:,.0f} | {w64:,.0f} | {w1 / n1:.2f}x | "
          f"{w64 / n64:.2f}x | {library} {path} | {r['x1_ns']:,.0f} | "
          f"{r['x64_ns_per_row']:,.0f} | {r['marginal_ns_per_row']:,.0f} | "
          f"{r['noop_x1_ns']:,.0f} | {r['x1_ns'] / w1:.1f}x |")
print("\ntarget wasm/native x64 <= 1.25x: " + "; ".join(
    f"{m} {v:.2f}x {'met' if v <= 1.25 else 'NOT met'}" for m, v in x64.items()))
print("target verdict wasm x1 faster than the library's single-row predict: " + "; ".join(
    f"{p} {v:.1f}x {'met' if v > 1 else 'NOT met'}" for p, v in single))
print(f"({elapsed} s)")
PY
