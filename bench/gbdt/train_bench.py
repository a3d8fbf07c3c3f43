#!/usr/bin/env python3
"""Train production-sized fraud models for bench/imported-ratio.sh.

Usage: $VERDICT_VENV_PYTHON bench/gbdt/train_bench.py OUTDIR

Writes into OUTDIR:
  xgb.json        XGBoost binary:logistic, 300 trees, max_depth 6 (hist)
  lgb.txt         LightGBM binary, 300 trees, num_leaves 63
  xgb_noop.json   the same shape (8 features, 2 categorical) with 1 tree of depth 1, and
  lgb_noop.txt    its LightGBM twin (2 leaves): predict_timing.py's fixed-overhead baseline
  rows.f32        4,096 evaluation rows, little-endian float32, row-major, 8 columns
  xgb.expect.f64  each library's own predict for those rows (little-endian float64), so the
  lgb.expect.f64  bench can check verdict scores what the library scores
  meta.json       {"rows", "cols", "features"}

The realistic-size models are what the comparison is about: a model of 40 shallow trees
(the tests') is cheap enough that per-call overhead hides the walk. Data is a made-up fraud
signal on 20,000 rows (six numeric features with ~10% NaN, two categorical ones of 12
codes), generated and trained with fixed seeds. Training takes a few seconds on 2 cores.
"""

import json
import os
import sys
import time

import numpy as np
import xgboost as xgb
import lightgbm as lgb

THREADS = 2
SEED = 7
N_TRAIN = 20_000
N_EVAL = 4096
TREES = 300
N_CATS = 12
NAN_RATE = 0.10
FEATURES = ["amount", "hour", "count_1h", "sum_24h", "distinct_ip", "count_dev", "mcc", "country"]
NUMERIC = 6
CAT_COLS = [6, 7]
# XGBoost needs the column types at training and in a DMatrix; inplace_predict reads them
# from the model.
XGB_DM = dict(enable_categorical=True, feature_types=["q"] * NUMERIC + ["c", "c"],
              feature_names=FEATURES)

MCC_EFFECT = np.array([1.2, -0.8, 0.0, 0.9, -1.1, 0.3, 1.5, -0.4, -1.3, 0.6, 0.1, -0.2])
COUNTRY_EFFECT = np.array([-0.5, 1.0, -1.2, 0.4, 0.0, 1.3, -0.7, 0.8, -0.1, 0.2, -0.9, 1.1])


def rows(rng, n):
    """(float32 features with NaNs, clean float64 signal): events as verdict would see them."""
    amount = rng.lognormal(3.5, 1.2, n)
    hour = rng.integers(0, 24, n).astype(np.float64)
    count_1h = rng.poisson(2.0, n).astype(np.float64)
    sum_24h = amount * rng.uniform(1.0, 8.0, n) + rng.lognormal(4.0, 1.0, n)
    distinct_ip = rng.integers(1, 6, n).astype(np.float64)
    count_dev = rng.normal(0.0, 1.0, n)
    mcc = rng.integers(0, N_CATS, n)
    country = rng.integers(0, N_CATS, n)
    # Nonlinear with interactions, so 300 deep trees have structure to fit, not only noise.
    s = (0.8 * (np.log1p(amount) - 3.5)
         + 0.7 * (hour < 6)
         + 0.35 * np.minimum(count_1h, 5) - 0.7
         - 0.4 * (np.log1p(sum_24h) - 5.5)
         + 0.5 * (distinct_ip >= 3) * (count_dev > 0)
         + 0.6 * np.sin(2.0 * count_dev)
         + 0.3 * np.log1p(amount) * (count_1h > 3)
         + MCC_EFFECT[mcc] + COUNTRY_EFFECT[country]
         - 2.0)  # a minority positive class, as fraud is
    X = np.column_stack([amount, hour, count_1h, sum_24h, distinct_ip, count_dev,
                         mcc, country]).astype(np.float32)
    num = X[:, :NUMERIC]
    num[rng.random(num.shape) < NAN_RATE] = np.nan
    return X, s


def labels(rng, s):
    p = 1.0 / (1.0 + np.exp(-(s + rng.normal(0.0, 0.5, s.shape))))
    return (rng.random(s.shape) < p).astype(np.float64)


def train_xgb(X, y, rounds, depth, path):
    params = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": depth,
              "eta": 0.1, "nthread": THREADS, "seed": SEED, "verbosity": 0,
              "max_cat_to_onehot": 1}
    booster = xgb.train(params, xgb.DMatrix(X, label=y, missing=np.nan, **XGB_DM),
                        num_boost_round=rounds)
    booster.save_model(path)
    return xgb.Booster(model_file=path)


def train_lgb(X, y, rounds, leaves, path):
    params = {"objective": "binary", "num_leaves": leaves, "learning_rate": 0.05,
              "verbose": -1, "deterministic": True, "num_threads": THREADS, "seed": SEED,
              "force_col_wise": True}
    data = lgb.Dataset(X.astype(np.float64), label=y, params=params,
                       categorical_feature=CAT_COLS, feature_name=FEATURES)
    booster = lgb.train(params, data, num_boost_round=rounds)
    booster.save_model(path)
    return lgb.Booster(model_file=path)


def main():
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUTDIR")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    start = time.monotonic()
    rng = np.random.default_rng(SEED)
    X, s = rows(rng, N_TRAIN)
    y = labels(rng, s)
    Xe, _ = rows(np.random.default_rng(SEED + 1), N_EVAL)

    t = time.monotonic()
    bx = train_xgb(X, y, TREES, 6, os.path.join(out, "xgb.json"))
    train_xgb(X, y, 1, 1, os.path.join(out, "xgb_noop.json"))
    t_xgb = time.monotonic() - t
    t = time.monotonic()
    bl = train_lgb(X, y, TREES, 63, os.path.join(out, "lgb.txt"))
    train_lgb(X, y, 1, 2, os.path.join(out, "lgb_noop.txt"))
    t_lgb = time.monotonic() - t

    # The libraries' own scores, by the models as saved (re-loaded above).
    px = bx.predict(xgb.DMatrix(Xe, missing=np.nan, **XGB_DM)).astype(np.float64)
    pl = bl.predict(Xe.astype(np.float64), num_threads=THREADS)
    assert np.array_equal(px, bx.inplace_predict(Xe).astype(np.float64)), "xgb paths disagree"
    Xe.astype("<f4").tofile(os.path.join(out, "rows.f32"))
    px.astype("<f8").tofile(os.path.join(out, "xgb.expect.f64"))
    pl.astype("<f8").tofile(os.path.join(out, "lgb.expect.f64"))
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump({"rows": N_EVAL, "cols": X.shape[1], "features": FEATURES}, f)
        f.write("\n")

    leaves = sum(tree.count("leaf") for tree in bx.get_dump())
    print(f"xgboost {xgb.__version__}: {TREES} trees, {leaves} leaves, {t_xgb:.1f}s; "
          f"lightgbm {lgb.__version__}: {bl.num_trees()} trees, {t_lgb:.1f}s; "
          f"positives {y.mean():.1%}; eval rows {N_EVAL}, "
          f"mean p xgb {px.mean():.3f} lgb {pl.mean():.3f}; {time.monotonic() - start:.1f}s")


if __name__ == "__main__":
    main()
