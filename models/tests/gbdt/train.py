#!/usr/bin/env python3
"""Train small XGBoost / LightGBM models and write reference predictions.

Usage: $VERDICT_VENV_PYTHON models/tests/gbdt/train.py OUTDIR

For every case NAME this writes into OUTDIR:
  NAME.json | NAME.txt  the model, saved by the library itself
  NAME.rows.f32         evaluation rows, little-endian float32, row-major, rows x cols
  NAME.expect.f64       the library's own prediction per row, little-endian float64
  NAME.meta.json        {"format", "objective", "cols", "rows", "class", "categorical"}
and OUTDIR/cases.json, the list of case names.

The reference predictions are made by a booster re-loaded from the saved file (and
checked against the in-memory booster), so they describe exactly what the file holds.
Evaluation rows are built as float32 (what verdict feeds models); LightGBM gets them
widened to float64, XGBoost gets the float32 array. Everything is seeded, so the output
is deterministic. Set VERDICT_GBDT_VERBOSE=1 to let the libraries print their warnings.
"""

import json
import os
import sys
import time
import warnings

import numpy as np
import xgboost as xgb
import lightgbm as lgb

VERBOSE = os.environ.get("VERDICT_GBDT_VERBOSE") == "1"
THREADS = 2
N_TRAIN = 2000
N_CATS = 12
FEATURES = ["amount", "hour", "count_1h", "sum_24h", "distinct_ip", "count_dev", "mcc", "country"]
NUMERIC = 6
CAT_COLS = [6, 7]

F32 = np.float32
# Extreme / edge values for numeric columns. 1e-35 is LightGBM's kZeroThreshold (as
# float32); values inside (-1e-35, 1e-35) count as zero there.
ZT = F32(1e-35)
NUMERIC_SPECIALS = [
    F32(1e30), F32(-1e30), F32(3.0e38), F32(-3.0e38),
    F32(1e-38), F32(-1e-38), F32(0.0), F32(-0.0),
    F32(1e-36), F32(-1e-36), ZT, -ZT,
    np.nextafter(ZT, F32(np.inf)), np.nextafter(-ZT, F32(-np.inf)),
]
# Edge codes for categorical columns: unseen, negative, fractional, zero, missing, huge.
CAT_SPECIALS = [
    F32(12), F32(40), F32(1000), F32(-1), F32(-0.5), F32(2.7), F32(0.0), F32(-0.0),
    F32(11), F32(11.5), F32(0.5), F32(np.nan), F32(1e30), F32(3.0e38), F32(-3.0e38),
    F32(1e-38), F32(16777216), F32(2147483648.0),
]


# ---------------------------------------------------------------- data

def features(rng, n, categorical):
    """Clean float32 features, shape (n, 8) or (n, 6)."""
    amount = rng.lognormal(3.5, 1.2, n)
    hour = rng.integers(0, 24, n).astype(np.float64)
    count_1h = rng.poisson(2.0, n).astype(np.float64)
    sum_24h = amount * rng.uniform(1.0, 8.0, n) + rng.lognormal(4.0, 1.0, n)
    distinct_ip = rng.integers(1, 6, n).astype(np.float64)
    count_dev = rng.normal(0.0, 1.0, n)
    cols = [amount, hour, count_1h, sum_24h, distinct_ip, count_dev]
    if categorical:
        cols += [rng.integers(0, N_CATS, n).astype(np.float64),
                 rng.integers(0, N_CATS, n).astype(np.float64)]
    return np.column_stack(cols).astype(F32)


MCC_EFFECT = np.array([1.2, -0.8, 0.0, 0.9, -1.1, 0.3, 1.5, -0.4, -1.3, 0.6, 0.1, -0.2])
COUNTRY_EFFECT = np.array([-0.5, 1.0, -1.2, 0.4, 0.0, 1.3, -0.7, 0.8, -0.1, 0.2, -0.9, 1.1])


def signal(X):
    """A nonlinear score of clean features (no NaN)."""
    X = X.astype(np.float64)
    s = (0.8 * (np.log1p(X[:, 0]) - 3.5)
         + 0.7 * (X[:, 1] < 6)
         + 0.35 * np.minimum(X[:, 2], 5) - 0.7
         - 0.4 * (np.log1p(X[:, 3]) - 5.5)
         + 0.5 * (X[:, 4] >= 3) * (X[:, 5] > 0)
         + 0.6 * np.sin(2.0 * X[:, 5]))
    if X.shape[1] > NUMERIC:
        s = s + MCC_EFFECT[X[:, 6].astype(int)] + COUNTRY_EFFECT[X[:, 7].astype(int)]
    return s


def inject(rng, X, numeric_rate, cat_rate=0.0, zero_rate=0.0):
    X = X.copy()
    num = X[:, :NUMERIC]
    if zero_rate:
        num[rng.random(num.shape) < zero_rate] = 0.0
    if numeric_rate:
        num[rng.random(num.shape) < numeric_rate] = np.nan
    X[:, :NUMERIC] = num
    if cat_rate and X.shape[1] > NUMERIC:
        cat = X[:, NUMERIC:]
        cat[rng.random(cat.shape) < cat_rate] = np.nan
        X[:, NUMERIC:] = cat
    return X


def training_data(seed, kind, categorical, nan_rate=0.10, cat_nan=0.0, zero_rate=0.0):
    rng = np.random.default_rng(seed)
    X = features(rng, N_TRAIN, categorical)
    s = signal(X)
    noise = rng.normal(0.0, 0.5, N_TRAIN)
    if kind == "binary":
        y = (rng.random(N_TRAIN) < 1.0 / (1.0 + np.exp(-(s + noise)))).astype(np.float64)
    elif kind == "regression":
        y = s + 0.3 * noise
    elif kind == "unit":  # continuous labels in [0, 1]
        y = 1.0 / (1.0 + np.exp(-(s + noise)))
    elif kind == "multiclass":
        t = s + noise
        lo, hi = np.quantile(t, [1 / 3, 2 / 3])
        y = np.where(t < lo, 0, np.where(t < hi, 1, 2)).astype(np.float64)
        # not purely ordinal: a pocket of class 0 in the middle of the score range
        y[(np.abs(X[:, 5]) > 1.5) & (y == 1)] = 0
    else:
        raise ValueError(kind)
    X = inject(rng, X, nan_rate, cat_nan, zero_rate)
    return X, y


# ---------------------------------------------------------------- thresholds

def xgb_thresholds(path):
    """(feature, float32 threshold) of every numerical split in an XGBoost JSON model."""
    with open(path) as f:
        model = json.load(f)
    gb = model["learner"]["gradient_booster"]
    trees = gb["gbtree"]["model"]["trees"] if gb["name"] == "dart" else gb["model"]["trees"]
    out = set()
    for t in trees:
        for left, st, feat, cond in zip(t["left_children"], t["split_type"],
                                        t["split_indices"], t["split_conditions"]):
            if left != -1 and st == 0:
                out.add((int(feat), F32(cond).item()))
    return sorted(out)


def lgb_thresholds(path):
    """(feature, threshold) of every numerical split in a LightGBM text model."""
    out = set()
    with open(path) as f:
        text = f.read()
    for block in text.split("\nTree=")[1:]:
        kv = {}
        for line in block.split("\n"):
            if "=" in line:
                k, v = line.split("=", 1)
                kv[k] = v
        if "split_feature" not in kv:
            continue  # a single-leaf tree
        feats = [int(v) for v in kv["split_feature"].split()]
        thrs = [float(v) for v in kv["threshold"].split()]
        dts = [int(v) for v in kv["decision_type"].split()]
        for feat, thr, dt in zip(feats, thrs, dts):
            if dt & 1 == 0:
                out.add((feat, thr))
    return sorted(out)


# ---------------------------------------------------------------- evaluation rows

def eval_rows(seed, ncols, thresholds, n_plain=240, n_thr=70):
    rng = np.random.default_rng(seed)
    categorical = ncols > NUMERIC
    base = features(rng, n_plain, categorical)
    parts = [base]

    # NaN: each column alone, random subsets, all-NaN rows
    nan_rows = []
    for c in range(ncols):
        for k in range(2):
            r = base[rng.integers(n_plain)].copy()
            r[c] = np.nan
            nan_rows.append(r)
    for _ in range(40):
        r = base[rng.integers(n_plain)].copy()
        r[rng.random(ncols) < 0.4] = np.nan
        nan_rows.append(r)
    numeric_nan = base[rng.integers(n_plain)].copy()
    numeric_nan[:NUMERIC] = np.nan
    nan_rows.append(numeric_nan)
    nan_rows += [np.full(ncols, np.nan, dtype=F32)] * 4
    parts.append(np.array(nan_rows, dtype=F32))

    # exactly on split thresholds, and one float32 ulp either side
    thr_rows = []
    if thresholds:
        pick = rng.choice(len(thresholds), size=min(n_thr, len(thresholds)), replace=False)
        for i in sorted(pick):
            feat, thr = thresholds[i]
            t32 = F32(thr)
            r = base[rng.integers(n_plain)]
            for v in (t32, np.nextafter(t32, F32(np.inf)), np.nextafter(t32, F32(-np.inf))):
                row = r.copy()
                row[feat] = v
                thr_rows.append(row)
    if thr_rows:
        parts.append(np.array(thr_rows, dtype=F32))

    # extreme numeric values: one column at a time, and whole numeric block at once
    ext_rows = []
    for c in range(NUMERIC):
        for v in NUMERIC_SPECIALS:
            row = base[rng.integers(n_plain)].copy()
            row[c] = v
            ext_rows.append(row)
    for v in NUMERIC_SPECIALS:
        row = base[rng.integers(n_plain)].copy()
        row[:NUMERIC] = v
        ext_rows.append(row)
    parts.append(np.array(ext_rows, dtype=F32))

    # categorical edge codes
    if categorical:
        cat_rows = []
        for c in CAT_COLS:
            for v in CAT_SPECIALS:
                row = base[rng.integers(n_plain)].copy()
                row[c] = v
                cat_rows.append(row)
        for v in CAT_SPECIALS:
            row = base[rng.integers(n_plain)].copy()
            row[CAT_COLS] = v
            cat_rows.append(row)
        for code in range(N_CATS):  # every seen code in both columns, numeric NaN
            row = base[rng.integers(n_plain)].copy()
            row[CAT_COLS] = F32(code)
            row[rng.integers(NUMERIC)] = np.nan
            cat_rows.append(row)
        parts.append(np.array(cat_rows, dtype=F32))

    X = np.concatenate(parts).astype(F32)
    assert X.shape[1] == ncols and X.dtype == F32
    return X


# ---------------------------------------------------------------- writing

def write_case(outdir, name, fmt, objective, X, pred, klass, categorical):
    pred = np.asarray(pred, dtype=np.float64)
    if klass is not None:
        assert pred.ndim == 2, pred.shape
        pred = pred[:, klass]
    assert pred.shape == (X.shape[0],), (name, pred.shape)
    with open(os.path.join(outdir, name + ".rows.f32"), "wb") as f:
        f.write(np.ascontiguousarray(X, dtype="<f4").tobytes())
    with open(os.path.join(outdir, name + ".expect.f64"), "wb") as f:
        f.write(np.ascontiguousarray(pred, dtype="<f8").tobytes())
    meta = {"format": fmt, "objective": objective, "cols": int(X.shape[1]),
            "rows": int(X.shape[0]), "class": klass, "categorical": list(categorical)}
    with open(os.path.join(outdir, name + ".meta.json"), "w") as f:
        json.dump(meta, f)
        f.write("\n")
    return pred


def report(name, model_file, X, pred):
    print(f"{name:18s} {os.path.basename(model_file):24s} rows={X.shape[0]:4d} "
          f"pred=[{pred.min():.6g}, {pred.max():.6g}]")


# ---------------------------------------------------------------- XGBoost

def xgb_case(outdir, name, seed, objective, kind, rounds=40, depth=5, categorical=False,
             klass=None, extra=None):
    X, y = training_data(seed, kind, categorical, nan_rate=0.10,
                         cat_nan=0.05 if categorical else 0.0)
    ncols = X.shape[1]
    if categorical:
        dm_kw = dict(enable_categorical=True, feature_types=["q"] * NUMERIC + ["c", "c"],
                     feature_names=FEATURES)
    else:
        dm_kw = {}
    params = {"objective": objective, "tree_method": "hist", "max_depth": depth, "eta": 0.3,
              "nthread": THREADS, "seed": seed, "verbosity": 1 if VERBOSE else 0}
    if categorical:
        params["max_cat_to_onehot"] = 1
    params.update(extra or {})
    dtrain = xgb.DMatrix(X, label=y, missing=np.nan, **dm_kw)
    booster = xgb.train(params, dtrain, num_boost_round=rounds)
    path = os.path.join(outdir, name + ".json")
    booster.save_model(path)

    Xe = eval_rows(seed + 1000, ncols, xgb_thresholds(path))
    loaded = xgb.Booster(model_file=path)
    loaded.set_param({"nthread": THREADS})
    pred = loaded.predict(xgb.DMatrix(Xe, missing=np.nan, **dm_kw))
    mem = booster.predict(xgb.DMatrix(Xe, missing=np.nan, **dm_kw))
    assert np.array_equal(pred, mem, equal_nan=True), f"{name}: reloaded model predicts differently"
    assert pred.dtype == np.float32, pred.dtype
    pred = write_case(outdir, name, "xgboost", objective, Xe, pred, klass,
                      CAT_COLS if categorical else [])
    report(name, path, Xe, pred)


# ---------------------------------------------------------------- LightGBM

def lgb_case(outdir, name, seed, objective, kind, rounds=40, leaves=31, categorical=False,
             klass=None, extra=None, nan_rate=0.10, zero_rate=0.0):
    X, y = training_data(seed, kind, categorical, nan_rate=nan_rate,
                         cat_nan=0.03 if categorical else 0.0, zero_rate=zero_rate)
    X64 = X.astype(np.float64)
    ncols = X.shape[1]
    params = {"objective": objective, "num_leaves": leaves, "learning_rate": 0.1,
              "min_data_in_leaf": 5, "verbose": 1 if VERBOSE else -1, "deterministic": True,
              "num_threads": THREADS, "seed": seed, "force_col_wise": True}
    params.update(extra or {})
    ds_kw = {}
    if categorical:
        ds_kw = dict(categorical_feature=CAT_COLS, feature_name=FEATURES)
    dtrain = lgb.Dataset(X64, label=y, params=params, free_raw_data=False, **ds_kw)
    booster = lgb.train(params, dtrain, num_boost_round=rounds)
    path = os.path.join(outdir, name + ".txt")
    booster.save_model(path)

    Xe = eval_rows(seed + 1000, ncols, lgb_thresholds(path))
    Xe64 = Xe.astype(np.float64)
    loaded = lgb.Booster(model_file=path)
    pred = loaded.predict(Xe64, num_threads=THREADS)
    mem = booster.predict(Xe64, num_threads=THREADS)
    assert np.array_equal(pred, mem, equal_nan=True), f"{name}: reloaded model predicts differently"
    pred = write_case(outdir, name, "lightgbm", objective, Xe, pred, klass,
                      CAT_COLS if categorical else [])
    report(name, path, Xe, pred)


# ---------------------------------------------------------------- main

CASES = [
    ("xgb_logistic", lambda o: xgb_case(o, "xgb_logistic", 11, "binary:logistic", "binary",
                                        rounds=40, depth=5, categorical=True)),
    ("xgb_logitraw", lambda o: xgb_case(o, "xgb_logitraw", 12, "binary:logitraw", "binary",
                                        rounds=30, depth=4)),
    ("xgb_squarederror", lambda o: xgb_case(o, "xgb_squarederror", 13, "reg:squarederror",
                                            "regression", rounds=50, depth=6)),
    ("xgb_reg_logistic", lambda o: xgb_case(o, "xgb_reg_logistic", 14, "reg:logistic", "unit",
                                            rounds=40, depth=5)),
    ("xgb_softprob", lambda o: xgb_case(o, "xgb_softprob", 15, "multi:softprob", "multiclass",
                                        rounds=30, depth=4, klass=1,
                                        extra={"num_class": 3})),
    ("xgb_dart", lambda o: xgb_case(o, "xgb_dart", 16, "binary:logistic", "binary",
                                    rounds=40, depth=5,
                                    extra={"booster": "dart", "rate_drop": 0.1})),
    ("xgb_base_score", lambda o: xgb_case(o, "xgb_base_score", 17, "binary:logistic", "binary",
                                          rounds=30, depth=4, extra={"base_score": 0.3})),
    ("lgb_binary", lambda o: lgb_case(o, "lgb_binary", 21, "binary", "binary", rounds=40,
                                      leaves=31, categorical=True)),
    ("lgb_regression", lambda o: lgb_case(o, "lgb_regression", 22, "regression", "regression",
                                          rounds=50, leaves=31)),
    ("lgb_zero_missing", lambda o: lgb_case(o, "lgb_zero_missing", 23, "regression",
                                            "regression", rounds=40, leaves=15,
                                            extra={"zero_as_missing": True},
                                            nan_rate=0.05, zero_rate=0.25)),
    ("lgb_rf", lambda o: lgb_case(o, "lgb_rf", 24, "binary", "binary", rounds=30, leaves=31,
                                  extra={"boosting": "rf", "bagging_fraction": 0.7,
                                         "bagging_freq": 1, "feature_fraction": 0.8})),
    ("lgb_multiclass", lambda o: lgb_case(o, "lgb_multiclass", 25, "multiclass", "multiclass",
                                          rounds=30, leaves=15, klass=2,
                                          extra={"num_class": 3})),
    ("lgb_no_missing", lambda o: lgb_case(o, "lgb_no_missing", 26, "binary", "binary",
                                          rounds=40, leaves=31, extra={"use_missing": False},
                                          nan_rate=0.0)),
]


def verify(outdir, names):
    for name in names:
        with open(os.path.join(outdir, name + ".meta.json")) as f:
            meta = json.load(f)
        rows = np.fromfile(os.path.join(outdir, name + ".rows.f32"), dtype="<f4")
        expect = np.fromfile(os.path.join(outdir, name + ".expect.f64"), dtype="<f8")
        assert rows.size == meta["rows"] * meta["cols"], name
        assert expect.size == meta["rows"], name
        assert not np.isnan(expect).any(), f"{name}: NaN in expected predictions"
        ext = ".json" if meta["format"] == "xgboost" else ".txt"
        assert os.path.getsize(os.path.join(outdir, name + ext)) > 0, name


def refused_models(outdir):
    """Valid models of kinds verdict refuses to import (the tests check each error names
    what is unsupported): an XGBoost gblinear booster, a count:poisson objective, a UBJSON
    save; a LightGBM linear tree and a poisson objective. Tiny: a few rounds each."""
    X, y = training_data(7, "binary", False, nan_rate=0.0)
    dtrain = xgb.DMatrix(X, label=y)
    quiet = {"nthread": THREADS, "verbosity": 0}
    xgb.train({"booster": "gblinear", "objective": "binary:logistic", **quiet},
              dtrain, num_boost_round=3).save_model(os.path.join(outdir, "refused_gblinear.json"))
    xgb.train({"objective": "count:poisson", "max_depth": 2, **quiet},
              dtrain, num_boost_round=3).save_model(os.path.join(outdir, "refused_poisson.json"))
    xgb.train({"objective": "binary:logistic", "max_depth": 2, **quiet},
              dtrain, num_boost_round=3).save_model(os.path.join(outdir, "refused_ubjson.ubj"))
    params = {"verbose": -1, "num_threads": THREADS, "num_leaves": 4, "min_data_in_leaf": 5}
    lgb.train({**params, "objective": "binary", "linear_tree": True},
              lgb.Dataset(X, label=y), num_boost_round=3).save_model(
        os.path.join(outdir, "refused_linear.txt"))
    lgb.train({**params, "objective": "poisson"},
              lgb.Dataset(X, label=y), num_boost_round=3).save_model(
        os.path.join(outdir, "refused_poisson.txt"))


def main():
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUTDIR")
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _, run in CASES:
            run(outdir)
        refused_models(outdir)
    for w in caught:
        print(f"warning: {w.category.__name__}: {w.message}", file=sys.stderr)
    names = [name for name, _ in CASES]
    with open(os.path.join(outdir, "cases.json"), "w") as f:
        json.dump(names, f)
        f.write("\n")
    verify(outdir, names)
    print(f"{len(names)} cases in {time.monotonic() - start:.2f}s "
          f"(xgboost {xgb.__version__}, lightgbm {lgb.__version__}, numpy {np.__version__})")


if __name__ == "__main__":
    main()
