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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use verdict_models::import::{module, tables};
use verdict_models::{Pool, Runtime, RuntimeConfig, trees};

/// The trained cases, made once per test process.
fn cases() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // One fixed place under cargo's target dir, made afresh by each test run.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("imported-models");
        let _ = std::fs::remove_dir_all(&dir);
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

/// Runs `verdict model import` for the case into `out`, named `name`; returns its output.
fn import(c: &Case, name: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let file = model_file(c);
    let features = feature_list(c.cols);
    let mut args = vec![
        "model",
        "import",
        file.to_str().unwrap(),
        "--format",
        &c.format,
        "--name",
        name,
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
    let o = import(&c, name, &out, &[]);
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
    // Small files that name huge things are refused before anything is sized by them.
    let lgb_model = |header: &str, tree: &str| {
        format!(
            "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\n{header}\nobjective=regression\n\nTree=0\n{tree}\n\nend of trees\n"
        )
    };
    let one_cat_split = |threshold: &str| {
        format!(
            "num_leaves=2\nnum_cat=1\nsplit_feature=0\nthreshold={threshold}\ndecision_type=1\n\
             left_child=-1\nright_child=-2\nleaf_value=0 1\ncat_boundaries=0 1\ncat_threshold=1"
        )
    };
    // 500 splits sharing one 10,000-word set of every category: 160 M categories named.
    let splits = 500;
    let shared = format!(
        "num_leaves={}\nnum_cat=1\nsplit_feature={}\nthreshold={}\ndecision_type={}\n\
         left_child={}\nright_child={}\nleaf_value={}\ncat_boundaries=0 10000\ncat_threshold={}",
        splits + 1,
        vec!["0"; splits].join(" "),
        vec!["0"; splits].join(" "),
        vec!["1"; splits].join(" "),
        (0..splits)
            .map(|i| (!(i as i64)).to_string())
            .collect::<Vec<_>>()
            .join(" "),
        (0..splits)
            .map(|i| if i + 1 < splits {
                (i + 1).to_string()
            } else {
                (!(splits as i64)).to_string()
            })
            .collect::<Vec<_>>()
            .join(" "),
        vec!["0"; splits + 1].join(" "),
        vec!["4294967295"; 10_000].join(" "),
    );
    let huge = [
        (
            "features.txt",
            "lightgbm",
            lgb_model("max_feature_idx=100000000000", &one_cat_split("0")),
            "the model takes 100000000001 features",
        ),
        (
            "overflow.txt",
            "lightgbm",
            lgb_model("max_feature_idx=18446744073709551615", &one_cat_split("0")),
            "max_feature_idx is too large",
        ),
        (
            "threshold.txt",
            "lightgbm",
            lgb_model("max_feature_idx=0", &one_cat_split("1e300")),
            "categorical threshold 1e300 names no set",
        ),
        (
            "shared_set.txt",
            "lightgbm",
            lgb_model("max_feature_idx=0", &shared),
            "categories in all",
        ),
        (
            "features.json",
            "xgboost",
            r#"{"version":[3,2,0],"learner":{"learner_model_param":{"base_score":"5E-1","num_feature":"100000000000","num_class":"0","num_target":"1"},"objective":{"name":"reg:squarederror"},"gradient_booster":{"name":"gbtree","model":{"tree_info":[0],"trees":[{"left_children":[-1],"right_children":[-1],"split_indices":[0],"split_conditions":[1.0],"default_left":[0]}]}}}}"#.to_string(),
            "the model takes 100000000000 features",
        ),
    ];
    for (name, format, body, want) in huge {
        let path = dir.0.join(name);
        std::fs::write(&path, body).unwrap();
        let stderr = run(&path, format, "features[0]", &[]);
        assert!(
            stderr.contains(want),
            "{name}: {stderr:?} should say {want:?}"
        );
    }
    assert!(!out.exists(), "a refused import wrote {}", out.display());
}

/// Events carrying the case's rows as `features`, as `verdict send` JSON lines, and each
/// one's reference. The wire refuses NaN: a row whose NaNs all come last is sent without
/// them (the manifest's `absent_features = "missing"` gives the model NaN there); other
/// rows with a NaN are left out. Also returns how many events lack trailing features.
fn events(c: &Case, tag: &str) -> (String, Vec<f64>, usize) {
    let mut lines = String::new();
    let mut expect = Vec::new();
    let mut short = 0;
    for (i, row) in c.rows.chunks(c.cols).enumerate() {
        let carried = row.iter().position(|v| v.is_nan()).unwrap_or(row.len());
        if row[carried..].iter().any(|v| !v.is_nan()) || row.iter().any(|v| v.is_infinite()) {
            continue;
        }
        short += usize::from(carried < row.len());
        let features: Vec<f64> = row[..carried].iter().map(|&v| f64::from(v)).collect();
        let event = serde_json::json!({
            "event_id": format!("{tag}-{i}"), "timestamp_ms": common::T0 + i as u64,
            "account_id": format!("acct-{i}"), "merchant_id": "m-1", "amount_minor": 1000,
            "currency": "USD", "country": "US", "channel": "web", "device_id": "d-1",
            "ip": "203.0.113.9", "mcc": 5411, "features": features,
        });
        lines.push_str(&event.to_string());
        lines.push('\n');
        expect.push(c.expect[i]);
    }
    (lines, expect, short)
}

/// `verdict send` over `lines`; each decision's score from `model`, and whether it failed.
fn send(server: &common::Server, dir: &Path, lines: &str, model: &str) -> Vec<(f64, bool)> {
    let file = dir.join("events.jsonl");
    std::fs::write(&file, lines).unwrap();
    let out = common::verdict(&[
        "send",
        "--addr",
        &server.addr(),
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    common::text(&out.stdout)
        .lines()
        .map(|l| {
            let d: serde_json::Value = serde_json::from_str(l).unwrap();
            let score = d["models"][model]
                .as_f64()
                .unwrap_or_else(|| panic!("no {model} score in {l}"));
            let failed = d["model_errors"]
                .as_array()
                .is_some_and(|e| e.iter().any(|n| n == model));
            (score, failed)
        })
        .collect()
}

/// A deadline no scheduler delay on a loaded test machine reaches (1 s): these tests
/// compare every score, and a delayed call would score its fallback.
const PATIENT: &[&str] = &["--deadline-us", "1000000"];

/// An imported model served as any other: `verdict send` decisions carry exactly the
/// library's predictions (events without trailing features score as rows missing them); then a retrained model (here LightGBM's, same features) is imported
/// over it and `verdict reload` swaps it in while a client streams: every event is answered
/// by one model or the other, none by a fallback, and afterwards scores are the new model's.
#[test]
fn an_imported_model_serves_decisions_and_a_retrained_one_reloads_under_load() {
    let (xgb, lgb) = (case("xgb_logistic"), case("lgb_binary"));
    let dir = common::tempdir::Dir::new("served");
    let models = dir.0.join("models");
    let o = import(&xgb, "card_fraud", &models.join("card_fraud"), PATIENT);
    assert!(o.status.success(), "{}", common::text(&o.stderr));
    let token = common::token_file(&dir.0);
    let rules = "fallback model(\"card_fraud\") = -1\n\
                 rule model_says_fraud { when model(\"card_fraud\") > 0.5  score 50 }\n";
    let server = common::Server::launch_with(
        &[],
        &common::topology(&[0, 1], ""),
        &[("fraud.rules", rules)],
        &[
            "--models",
            models.to_str().unwrap(),
            "--admin-token-file",
            token.to_str().unwrap(),
        ],
    );
    let (lines, expect, short) = events(&xgb, "x");
    assert!(expect.len() > 400, "{} rows to send", expect.len());
    assert!(short >= 3, "{short} events without trailing features");
    let got = send(&server, &dir.0, &lines, "card_fraud");
    assert_eq!(got.len(), expect.len());
    for (i, ((score, failed), want)) in got.iter().zip(&expect).enumerate() {
        assert!(!failed, "event {i}: the model failed");
        assert_eq!(
            score.to_bits(),
            want.to_bits(),
            "event {i}: {score} vs xgboost {want}"
        );
    }

    // Under load: a client streams the XGBoost events until the reload is done.
    let stop = Arc::new(AtomicBool::new(false));
    let streamer = {
        let (stop, addr) = (stop.clone(), server.addr());
        let events: Vec<verdict_net::Event> = lines
            .lines()
            .map(|l| verdict_net::json::event_from_json(l).unwrap())
            .collect();
        std::thread::spawn(move || {
            let mut c = common::client(&addr);
            let (mut answered, mut failed) = (0usize, 0usize);
            while !stop.load(Ordering::Relaxed) {
                for chunk in events.chunks(64) {
                    for d in common::pipelined(&mut c, chunk) {
                        answered += 1;
                        failed += d.models.iter().filter(|m| m.error).count();
                    }
                }
            }
            (answered, failed)
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let o = import(&lgb, "card_fraud", &models.join("card_fraud"), PATIENT);
    assert!(o.status.success(), "{}", common::text(&o.stderr));
    let admin = format!("127.0.0.1:{}", server.admin_port);
    let o = common::verdict(&[
        "reload",
        "--admin",
        &admin,
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "{}{}",
        common::text(&o.stdout),
        common::text(&o.stderr)
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let (answered, failed) = streamer.join().unwrap();
    assert!(
        answered >= 1000,
        "{answered} events answered while reloading"
    );
    assert_eq!(
        failed, 0,
        "{failed} of {answered} decisions fell back during the reload"
    );

    let (lines, expect, _) = events(&lgb, "l");
    let got = send(&server, &dir.0, &lines, "card_fraud");
    assert_eq!(got.len(), expect.len());
    for (i, ((score, failed), want)) in got.iter().zip(&expect).enumerate() {
        assert!(!failed, "event {i}: the model failed");
        assert!(
            (score - want).abs() <= 1e-12 * want.abs(),
            "event {i}: {score} vs lightgbm {want}"
        );
    }
}
