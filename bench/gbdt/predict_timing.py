#!/usr/bin/env python3
"""Time the libraries' own predict on the models bench/gbdt/train_bench.py made.

Usage: $VERDICT_VENV_PYTHON bench/gbdt/predict_timing.py DIR [--json OUT] [--rounds N]
       [--seconds S]

What verdict's wasm scorer is set against (bench/imported-ratio.sh): each library's predict
as a Python service would call it, one thread (nthread / num_threads 1: verdict scores an
event on one core), one row per call and 64 per call:
  xgb inplace_predict  booster.inplace_predict(x), x a float32 (n, 8) array: XGBoost's
                       fastest path for a few rows (no DMatrix)
  xgb predict(DMatrix) booster.predict(xgb.DMatrix(x, ...)), the DMatrix made in the call
                       (as a user who predicts one event does)
  lgb predict          booster.predict(x, num_threads=1), x a float64 (n, 8) array

Per path, each the median over many timed blocks of calls:
  x1           ns per call of one row: what one event costs the caller, Python included;
  x64          ns per call of 64 rows (reported per row);
  marginal     (x64 - x1) / 63: what one more row in a call costs, the per-call overhead
               (Python, argument checks, the C API, allocating the output) cancelled out;
               the library's own tree walk of a row;
  1-tree x1    the same call on a 1-tree, depth-1 model of the same shape (train_bench.py's
               *_noop models): next to no tree work, so the fixed cost of a call;
  model-sized  x1 - 1-tree x1 - marginal: what a one-row call costs beyond its fixed cost
               and one row's walk, i.e. per-call work that grows with the model (XGBoost 3.2
               walks every tree to find its depth on each predict call, for one).

Each measurement cycles through the 4,096 rows (or their 64-row batches), as the criterion
bench does, so no single path is learned by the branch predictor. Measurements alternate in
ROUNDS rounds so the machine's drift hits all alike; the garbage collector is off while
timing (as timeit does). A block is several calls between two perf_counter_ns reads, so the
timer's own cost (tens of ns) is spread over them.
"""

import argparse
import gc
import json
import os
import statistics
import sys
import time

import numpy as np
import xgboost as xgb
import lightgbm as lgb

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_bench import XGB_DM  # noqa: E402  (the column types the models were trained with)

BATCH = 64
# Calls per timed block.
BLOCK = 16


def load(d, cols):
    rows = np.fromfile(os.path.join(d, "rows.f32"), dtype="<f4").reshape(-1, cols)
    assert rows.shape[0] % BATCH == 0, rows.shape
    return rows


def paths(d, rows):
    """(label, model file, one-call function, x1 inputs, x64 inputs) per library path."""
    singles32 = [np.ascontiguousarray(rows[i:i + 1]) for i in range(rows.shape[0])]
    batches32 = [np.ascontiguousarray(rows[i:i + BATCH]) for i in range(0, rows.shape[0], BATCH)]
    singles64 = [x.astype(np.float64) for x in singles32]
    batches64 = [x.astype(np.float64) for x in batches32]

    def xgb_booster(name):
        b = xgb.Booster(model_file=os.path.join(d, name))
        b.set_param({"nthread": 1})
        return b

    def lgb_booster(name):
        return lgb.Booster(model_file=os.path.join(d, name))

    out = []
    for suffix in ("", "_noop"):
        bx = xgb_booster(f"xgb{suffix}.json")
        bl = lgb_booster(f"lgb{suffix}.txt")
        out += [
            ("xgb", "inplace_predict", suffix, lambda x, b=bx: b.inplace_predict(x),
             singles32, batches32),
            # nthread=1 for the DMatrix too: building it is part of the call.
            ("xgb", "predict(DMatrix)", suffix,
             lambda x, b=bx: b.predict(xgb.DMatrix(x, missing=np.nan, nthread=1, **XGB_DM)),
             singles32, batches32),
            ("lgb", "predict", suffix, lambda x, b=bl: b.predict(x, num_threads=1),
             singles64, batches64),
        ]
    return out


def check(d, measured):
    """The timed calls must return what the library predicted at training (train_bench.py):
    the same model, the same rows, the same scores."""
    for model, path, suffix, f, singles, batches in measured:
        if suffix:
            continue
        expect = np.fromfile(os.path.join(d, f"{model}.expect.f64"), dtype="<f8")
        got = np.concatenate([f(x) for x in batches]).astype(np.float64)
        assert np.array_equal(got, expect), f"{model} {path}: batched scores differ"
        got = np.array([f(x)[0] for x in singles[:256]], dtype=np.float64)
        assert np.array_equal(got, expect[:256]), f"{model} {path}: single-row scores differ"


def time_blocks(f, inputs, seconds, start):
    """Per-call ns of blocks of BLOCK calls for about `seconds`; returns (samples, next)."""
    samples = []
    n = len(inputs)
    i = start
    deadline = time.perf_counter_ns() + int(seconds * 1e9)
    while True:
        block = [inputs[(i + k) % n] for k in range(BLOCK)]
        i = (i + BLOCK) % n
        t0 = time.perf_counter_ns()
        for x in block:
            f(x)
        t1 = time.perf_counter_ns()
        samples.append((t1 - t0) / BLOCK)
        if t1 >= deadline and len(samples) >= 20:
            return samples, i


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.2, help="per measurement per round")
    args = ap.parse_args()
    with open(os.path.join(args.dir, "meta.json")) as f:
        cols = json.load(f)["cols"]
    rows = load(args.dir, cols)
    measured = paths(args.dir, rows)
    check(args.dir, measured)

    keys = [(m, p, s, n) for m, p, s, *_ in measured for n in (1, BATCH)]
    samples = {k: [] for k in keys}
    cursor = {k: 0 for k in keys}
    gc.disable()
    try:
        # Round 0 warms up (allocator, caches, lazy library state) and is discarded.
        for r in range(args.rounds + 1):
            for model, path, suffix, f, singles, batches in measured:
                for n, inputs in ((1, singles), (BATCH, batches)):
                    k = (model, path, suffix, n)
                    s, cursor[k] = time_blocks(f, inputs, args.seconds if r else 0.05, cursor[k])
                    if r:
                        samples[k] += s
    finally:
        gc.enable()

    med = {k: statistics.median(v) for k, v in samples.items()}
    results = {}
    print(f"library predict, one thread, median ns per call over {args.rounds} rounds "
          f"(xgboost {xgb.__version__}, lightgbm {lgb.__version__}, numpy {np.__version__}):")
    print(f"  {'':26s} {'x1':>9s} {'x64/row':>9s} {'marginal':>9s} {'1-tree x1':>9s} "
          f"{'model-sized':>11s}")
    for model, path, suffix, *_ in measured:
        if suffix:
            continue
        t1, t64 = med[(model, path, "", 1)], med[(model, path, "", BATCH)]
        n1, n64 = med[(model, path, "_noop", 1)], med[(model, path, "_noop", BATCH)]
        r = {
            "x1_ns": t1,
            "x64_ns_per_row": t64 / BATCH,
            "marginal_ns_per_row": (t64 - t1) / (BATCH - 1),
            "noop_x1_ns": n1,
            "noop_x64_ns_per_row": n64 / BATCH,
            "noop_marginal_ns_per_row": (n64 - n1) / (BATCH - 1),
            "model_sized_ns": t1 - n1 - (t64 - t1) / (BATCH - 1),
            "samples": len(samples[(model, path, "", 1)]),
        }
        results.setdefault(model, {})[path] = r
        print(f"  {model + ' ' + path:26s} {t1:9.0f} {t64 / BATCH:9.0f} "
              f"{r['marginal_ns_per_row']:9.0f} {n1:9.0f} {r['model_sized_ns']:11.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"block_calls": BLOCK, "rounds": args.rounds, "results": results,
                       "versions": {"xgboost": xgb.__version__, "lightgbm": lgb.__version__,
                                    "numpy": np.__version__}}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
