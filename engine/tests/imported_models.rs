//! `verdict model import`, checked against the libraries themselves: a Python script
//! (models/tests/gbdt/train.py, xgboost-cpu / lightgbm / numpy pinned in scripts/setup.sh)
//! trains small models on generated data with NaNs and categorical columns, saves them and
//! writes the rows and the library's own `predict` for them. Each model is imported with the
//! `verdict` binary, loaded as the engine loads models, and every score is compared: XGBoost
//! bit for bit (its f32 output, widened), LightGBM within 1e-12 relative. The native build of
//! the scorer must agree with the wasm module bit for bit.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use verdict_models::import::{module, tables};
use verdict_models::{Pool, Runtime, RuntimeConfig, trees};

/// The trained cases, made once per test process.
fn cases() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("verdict-gbdt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/gbdt/train.py");
        let out = std::process::Command::new(common::venv_python())
            .arg(&script)
            .arg(&dir)
            .output()
            .expect("running train.py with the venv's python (scripts/setup.sh makes it)");
        assert!(
            out.status.success(),
            "train.py failed:\n{}{}",
            common::text(&out.stdout),
            common::text(&out.stderr)
        );
        dir
    })
}

struct Case {
    name: String,
    format: String,
    cols: usize,
    class: Option<usize>,
    rows: Vec<f32>,
    expect: Vec<f64>,
}

fn case(name: &str) -> Case {
    let dir = cases();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.meta.json"))).unwrap())
            .unwrap();
    let rows: Vec<f32> = std::fs::read(dir.join(format!("{name}.rows.f32")))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let expect: Vec<f64> = std::fs::read(dir.join(format!("{name}.expect.f64")))
        .unwrap()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let cols = meta["cols"].as_u64().unwrap() as usize;
    assert_eq!(rows.len(), cols * expect.len());
    Case {
        name: name.to_string(),
        format: meta["format"].as_str().unwrap().to_string(),
        cols,
        class: meta["class"].as_u64().map(|k| k as usize),
        rows,
        expect,
    }
}

fn model_file(c: &Case) -> PathBuf {
    let ext = if c.format == "xgboost" { "json" } else { "txt" };
    cases().join(format!("{}.{ext}", c.name))
}

/// `features[0], features[1], ...`: one per model column.
fn feature_list(cols: usize) -> String {
    (0..cols)
        .map(|i| format!("features[{i}]"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `verdict model import` for the case into `out`; returns its output.
fn import(c: &Case, out: &Path, extra: &[&str]) -> std::process::Output {
    let file = model_file(c);
    let features = feature_list(c.cols);
    let mut args = vec![
        "model",
        "import",
        file.to_str().unwrap(),
        "--format",
        &c.format,
        "--name",
        &c.name,
        "--features",
        &features,
        "--out",
        out.to_str().unwrap(),
    ];
    let class = c.class.map(|k| k.to_string());
    if let Some(k) = &class {
        args.extend(["--class", k]);
    }
    args.extend(extra);
    common::verdict(&args)
}

/// Scores every row through the imported module (batches of `batch` rows) and natively.
fn score(c: &Case, dir: &Path, batch: usize) -> (Vec<f64>, Vec<f64>) {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let model = runtime.load(&dir.join("manifest.toml")).unwrap();
    let mut pool = Pool::new(model.into());
    let n = c.expect.len();
    let mut wasm = vec![0.0; n];
    for (rows, out) in c.rows.chunks(batch * c.cols).zip(wasm.chunks_mut(batch)) {
        pool.score(out.len(), rows, out).unwrap();
    }
    let bytes = std::fs::read(dir.join(format!("{}.wasm", c.name))).unwrap();
    let (blob, _) = module::extract(&bytes).unwrap();
    let blob = tables::Aligned::new(&blob);
    let mut sums = Box::new(trees::Sums::new());
    let mut native = vec![0.0; n];
    for (rows, out) in c.rows.chunks(batch * c.cols).zip(native.chunks_mut(batch)) {
        let code = trees::score(blob.bytes(), &mut sums, out.len(), c.cols, rows, out);
        assert_eq!(code, 0);
    }
    (wasm, native)
}

/// Imports and compares one case; returns (rows, rows equal to the bit).
fn check(name: &str) -> (usize, usize) {
    let c = case(name);
    let dir = common::tempdir::Dir::new("import");
    let out = dir.0.join(name);
    let o = import(&c, &out, &[]);
    assert!(o.status.success(), "{}", common::text(&o.stderr));
    let mut exact = 0;
    for batch in [1, 64] {
        let (wasm, native) = score(&c, &out, batch);
        exact = 0;
        let mut wrong = Vec::new();
        for (i, ((&got, &nat), &want)) in wasm.iter().zip(&native).zip(&c.expect).enumerate() {
            assert_eq!(
                got.to_bits(),
                nat.to_bits(),
                "{name} row {i}: the wasm module and the native scorer disagree"
            );
            let ok = if c.format == "xgboost" {
                got.to_bits() == want.to_bits()
            } else {
                (got - want).abs() <= 1e-12 * want.abs()
            };
            exact += usize::from(got.to_bits() == want.to_bits());
            if !ok {
                wrong.push(format!(
                    "row {i} {:?}: verdict {got:e}, {} {want:e}",
                    &c.rows[i * c.cols..(i + 1) * c.cols],
                    c.format
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "{name} (batches of {batch}): {} of {} rows differ:\n{}",
            wrong.len(),
            c.expect.len(),
            wrong[..wrong.len().min(10)].join("\n")
        );
    }
    eprintln!("{name}: {} rows, {exact} equal to the bit", c.expect.len());
    (c.expect.len(), exact)
}

#[test]
fn xgboost_models_score_exactly_what_xgboost_predicts() {
    for name in [
        "xgb_logistic",
        "xgb_logitraw",
        "xgb_squarederror",
        "xgb_reg_logistic",
        "xgb_softprob",
        "xgb_dart",
        "xgb_base_score",
    ] {
        let (rows, exact) = check(name);
        assert_eq!(rows, exact);
    }
}

#[test]
fn lightgbm_models_score_what_lightgbm_predicts() {
    for name in [
        "lgb_binary",
        "lgb_regression",
        "lgb_zero_missing",
        "lgb_rf",
        "lgb_multiclass",
        "lgb_no_missing",
    ] {
        check(name);
    }
}

/// What `verdict model import` refuses, and that each error names the reason; nothing is
/// written to --out.
#[test]
fn unsupported_models_and_wrong_options_are_refused_with_the_reason() {
    let c = case("xgb_logistic");
    let dir = common::tempdir::Dir::new("refused");
    let out = dir.0.join("m");
    let run = |file: &Path, format: &str, features: &str, extra: &[&str]| {
        let mut args = vec![
            "model",
            "import",
            file.to_str().unwrap(),
            "--format",
            format,
            "--name",
            "m",
            "--features",
            features,
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = common::verdict(&args);
        assert!(!o.status.success(), "{args:?} was accepted");
        common::text(&o.stderr)
    };
    let six = feature_list(6);
    let eight = feature_list(8);
    let cases_dir = cases();
    let file = |name: &str| cases_dir.join(name);
    let expect = [
        (
            run(&file("refused_gblinear.json"), "xgboost", &six, &[]),
            "booster `gblinear` is not supported",
        ),
        (
            run(&file("refused_poisson.json"), "xgboost", &six, &[]),
            "objective `count:poisson` is not supported",
        ),
        (
            run(&file("refused_ubjson.ubj"), "xgboost", &six, &[]),
            "verdict imports JSON",
        ),
        (
            run(&file("refused_linear.txt"), "lightgbm", &six, &[]),
            "linear tree",
        ),
        (
            run(&file("refused_poisson.txt"), "lightgbm", &six, &[]),
            "objective `poisson` is not supported",
        ),
        (
            run(&model_file(&c), "xgboost", &feature_list(7), &[]),
            "the model takes 8 features; --features lists 7",
        ),
        (
            run(&file("xgb_softprob.json"), "xgboost", &six, &[]),
            "the model has 3 classes (multi:softprob): choose the one to score with --class 0..2",
        ),
        (
            run(
                &file("xgb_softprob.json"),
                "xgboost",
                &six,
                &["--class", "3"],
            ),
            "--class 3: the model has 3 classes",
        ),
        (
            run(&model_file(&c), "lightgbm", &eight, &[]),
            "not a valid lightgbm model",
        ),
        (
            run(&file("lgb_binary.txt"), "xgboost", &eight, &[]),
            "verdict imports JSON",
        ),
        (
            run(&model_file(&c), "catboost", &eight, &[]),
            "--format \"catboost\"",
        ),
        (
            run(
                &model_file(&c),
                "xgboost",
                "amount, hour, nonsense, features[3], features[4], features[5], mcc, features[7]",
                &[],
            ),
            "does not compile",
        ),
        (
            run(&model_file(&c), "xgboost", "amount,,hour", &[]),
            "an empty feature",
        ),
    ];
    for (stderr, want) in expect {
        assert!(stderr.contains(want), "{stderr:?} should say {want:?}");
    }
    // Truncated and garbage files: a parse error, no panic.
    let bytes = std::fs::read(model_file(&c)).unwrap();
    let lgb = std::fs::read(file("lgb_binary.txt")).unwrap();
    for (name, format, body) in [
        ("half.json", "xgboost", bytes[..bytes.len() / 2].to_vec()),
        ("half.txt", "lightgbm", lgb[..lgb.len() / 2].to_vec()),
        (
            "noise.json",
            "xgboost",
            (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
        ("empty.txt", "lightgbm", Vec::new()),
    ] {
        let path = dir.0.join(name);
        std::fs::write(&path, body).unwrap();
        let stderr = run(&path, format, &eight, &[]);
        assert!(
            stderr.contains(&format!("not a valid {format} model"))
                || stderr.contains("verdict imports JSON"),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(!out.exists(), "a refused import wrote {}", out.display());
}
