//! The model runtime against real wasm: ABI checks at load, deadlines, traps, pool
//! exhaustion and replacement, the precompiled cache, and native vs wasm agreement of the
//! example models.

use std::path::Path;

use verdict_models::examples::{self, EMBEDDED};
use verdict_models::{CallError, Manifest, ModelError, Pool, Runtime, RuntimeConfig};

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig::default()).expect("a wasm engine")
}

fn manifest(cols: usize, deadline_us: u64, instances: u32) -> Manifest {
    let features: Vec<String> = (0..cols).map(|i| format!("\"features[{i}]\"")).collect();
    let text = format!(
        "name = \"t\"\nversion = \"1\"\nwasm = \"t.wasm\"\nfeatures = [{}]\ndeadline_us = {deadline_us}\ninstances_per_core = {instances}\n",
        features.join(", ")
    );
    Manifest::parse(Path::new("t/manifest.toml"), &text).unwrap()
}

/// A well-formed model: input at 1024, scores at 40960; score = the row's sum. `extra` is
/// spliced into `verdict_score` before the sum: it may trap, loop or return early.
fn model_wat(extra: &str) -> String {
    format!(
        r#"(module
  (memory (export "memory") 1)
  (func (export "verdict_abi") (result i32) i32.const 1)
  (func (export "verdict_input") (param i32 i32) (result i32) i32.const 1024)
  (func (export "verdict_score") (param $rows i32) (param $cols i32) (result i32)
    (local $r i32) (local $c i32) (local $sum f64)
    {extra}
    (block $done (loop $rows_loop
      (br_if $done (i32.ge_u (local.get $r) (local.get $rows)))
      (local.set $sum (f64.const 0))
      (local.set $c (i32.const 0))
      (block $cols_done (loop $cols_loop
        (br_if $cols_done (i32.ge_u (local.get $c) (local.get $cols)))
        (local.set $sum (f64.add (local.get $sum) (f64.promote_f32 (f32.load
          (i32.add (i32.const 1024) (i32.shl (i32.add (i32.mul (local.get $r) (local.get $cols)) (local.get $c)) (i32.const 2)))))))
        (local.set $c (i32.add (local.get $c) (i32.const 1)))
        (br $cols_loop)))
      (f64.store (i32.add (i32.const 40960) (i32.shl (local.get $r) (i32.const 3))) (local.get $sum))
      (local.set $r (i32.add (local.get $r) (i32.const 1)))
      (br $rows_loop)))
    i32.const 40960))"#
    )
}

/// `extra` that runs `then` when the first feature of the first row is above 0.
fn when_first_positive(then: &str) -> String {
    format!("(if (f32.gt (f32.load (i32.const 1024)) (f32.const 0)) (then {then}))")
}

fn load(rt: &Runtime, m: Manifest, wat: &str) -> Result<verdict_models::Model, ModelError> {
    rt.compile(m, &wat::parse_str(wat).unwrap())
}

fn abi_problems(wat: &str) -> String {
    match load(&runtime(), manifest(2, 1000, 1), wat) {
        Err(e @ ModelError::Abi { .. }) => e.to_string(),
        Err(other) => panic!("expected an ABI error, got {other}"),
        Ok(_) => panic!("loaded a module that breaks the ABI:\n{wat}"),
    }
}

#[test]
fn a_well_formed_model_scores_rows() {
    let rt = runtime();
    let model = load(&rt, manifest(2, 1000, 1), &model_wat("")).unwrap();
    let mut pool = Pool::new(model.into());
    let mut out = [0.0; 3];
    pool.score(3, &[1.0, 2.0, 3.0, 4.0, -5.0, 0.5], &mut out)
        .unwrap();
    assert_eq!(out, [3.0, 7.0, -4.5]);
    assert_eq!((pool.counters.calls, pool.counters.rows), (1, 3));
}

#[test]
fn every_abi_violation_is_named_at_load() {
    let cases = [
        (
            r#"(module (import "env" "now" (func)) (memory (export "memory") 1)
              (func (export "verdict_abi") (result i32) i32.const 1)
              (func (export "verdict_input") (param i32 i32) (result i32) i32.const 0)
              (func (export "verdict_score") (param i32 i32) (result i32) i32.const 0))"#
                .to_string(),
            "it imports `env.now` (a function); a model imports nothing",
        ),
        (
            r#"(module (memory 1)
              (func (export "verdict_abi") (result i32) i32.const 1)
              (func (export "verdict_input") (param i32 i32) (result i32) i32.const 0)
              (func (export "verdict_score") (param i32 i32) (result i32) i32.const 0))"#
                .to_string(),
            "no `memory` export",
        ),
        (
            r#"(module (memory (export "memory") 1)
              (func (export "verdict_input") (param i32 i32) (result i32) i32.const 0)
              (func (export "verdict_score") (param i32) (result i32) i32.const 0))"#
                .to_string(),
            "no `verdict_abi` export (want verdict_abi() -> i32); `verdict_score` has type (i32) -> (i32); want (i32, i32) -> i32",
        ),
        (
            r#"(module (memory (export "memory") 1) (global (export "verdict_abi") i32 (i32.const 1))
              (func (export "verdict_input") (param i32 i32) (result i64) i64.const 0)
              (func (export "verdict_score") (param i32 i32) (result i32) i32.const 0))"#
                .to_string(),
            "`verdict_abi` is a global, not a function; `verdict_input` has type (i32, i32) -> (i64)",
        ),
        (
            model_wat("").replace("(result i32) i32.const 1)", "(result i32) i32.const 2)"),
            "verdict_abi() returned 2; this engine speaks ABI 1",
        ),
        (
            // 64 rows x 2 cols of f32 from 65100 end past one 64 KiB page: memory too small.
            model_wat("").replace("i32.const 1024)\n", "i32.const 65100)\n"),
            "verdict_input(64, 2): input at address 65100: 512 bytes from there end past the memory's 65536 bytes",
        ),
        (
            model_wat("").replace("i32.const 1024)\n", "i32.const -1)\n"),
            "verdict_input(64, 2) refused the largest batch (code -1)",
        ),
        (
            model_wat("unreachable"),
            "scoring one row of zero features (the load-time probe): wasm trap: wasm `unreachable` instruction executed",
        ),
    ];
    for (wat, want) in cases {
        let got = abi_problems(&wat);
        assert!(got.contains(want), "{got}\n  should contain\n{want}");
        assert!(
            got.starts_with("t/t.wasm: not a verdict ABI v1 model: "),
            "{got}"
        );
    }
    let rt = runtime();
    let got = rt.compile(manifest(1, 1000, 1), b"not wasm").err().unwrap();
    assert!(matches!(got, ModelError::Compile { .. }), "{got}");
}

#[test]
fn a_runaway_model_is_cut_by_its_deadline_and_its_instance_replaced() {
    let rt = runtime();
    let wat = model_wat(&when_first_positive("(loop $forever (br $forever))"));
    let model = load(&rt, manifest(1, 2000, 2), &wat).unwrap();
    let mut pool = Pool::new(model.into());
    let mut out = [0.0; 1];
    // A loop that were never cut would hang the test here (no time is asserted).
    assert_eq!(pool.score(1, &[1.0], &mut out), Err(CallError::Timeout));
    assert_eq!(pool.ready(), 1, "the interrupted instance is discarded");
    // The other instance answers at once; the pool refills between batches.
    pool.score(1, &[-1.0], &mut out).unwrap();
    assert_eq!(out, [-1.0]);
    assert_eq!(pool.refill(), 1);
    assert_eq!(pool.ready(), 2);
    assert_eq!((pool.counters.timeouts, pool.counters.instantiated), (1, 3));
}

#[test]
fn traps_bad_addresses_and_codes_are_call_errors() {
    let rt = runtime();
    let trap = model_wat(&when_first_positive("unreachable"));
    let mut pool = Pool::new(load(&rt, manifest(1, 1000, 2), &trap).unwrap().into());
    let mut out = [0.0; 1];
    let err = pool.score(1, &[1.0], &mut out).unwrap_err();
    assert!(
        matches!(&err, CallError::Trap(m) if m.contains("unreachable")),
        "{err}"
    );
    assert_eq!(pool.counters.traps, 1);

    let code = model_wat(&when_first_positive("(return (i32.const -7))"));
    let mut pool = Pool::new(load(&rt, manifest(1, 1000, 1), &code).unwrap().into());
    assert_eq!(pool.score(1, &[1.0], &mut out), Err(CallError::Code(-7)));
    assert_eq!(pool.ready(), 1, "a clean refusal keeps the instance");

    let far = model_wat(&when_first_positive("(return (i32.const 65530))"));
    let mut pool = Pool::new(load(&rt, manifest(1, 1000, 1), &far).unwrap().into());
    let err = pool.score(1, &[1.0], &mut out).unwrap_err();
    assert_eq!(
        err.to_string(),
        "scores at address 65530: 8 bytes from there end past the memory's 65536 bytes"
    );
    assert_eq!(
        pool.ready(),
        0,
        "an instance that writes out of bounds is discarded"
    );

    let nan = model_wat(&when_first_positive(
        "(f64.store (i32.const 40960) (f64.const nan)) (return (i32.const 40960))",
    ));
    let mut pool = Pool::new(load(&rt, manifest(1, 1000, 1), &nan).unwrap().into());
    let err = pool.score(1, &[1.0], &mut out).unwrap_err();
    assert!(matches!(err, CallError::NotFinite { row: 0, .. }), "{err}");
}

#[test]
fn an_exhausted_pool_answers_with_an_error_until_refilled() {
    let rt = runtime();
    let trap = model_wat(&when_first_positive("unreachable"));
    let mut pool = Pool::new(load(&rt, manifest(1, 1000, 2), &trap).unwrap().into());
    let mut out = [0.0; 2];
    assert!(matches!(
        pool.score(1, &[1.0], &mut out),
        Err(CallError::Trap(_))
    ));
    assert!(matches!(
        pool.score(1, &[1.0], &mut out),
        Err(CallError::Trap(_))
    ));
    assert_eq!(
        pool.score(2, &[-1.0, -2.0], &mut out),
        Err(CallError::Exhausted)
    );
    assert_eq!(pool.counters.exhausted_rows, 2);
    assert_eq!(pool.counters.calls, 2, "an exhausted pool makes no call");
    assert_eq!(pool.refill(), 2);
    pool.score(2, &[-1.0, -2.0], &mut out).unwrap();
    assert_eq!(out, [-1.0, -2.0]);
}

#[test]
fn a_model_cannot_grow_memory_past_the_limit() {
    let rt = Runtime::new(RuntimeConfig {
        memory_bytes_max: 4 << 16,
        ..RuntimeConfig::default()
    })
    .unwrap();
    // memory.grow returns -1 past the limit; the model then traps on purpose.
    let grow = model_wat(&when_first_positive(
        "(if (i32.lt_s (memory.grow (i32.const 16)) (i32.const 0)) (then unreachable))",
    ));
    let mut pool = Pool::new(load(&rt, manifest(1, 1000, 1), &grow).unwrap().into());
    let mut out = [0.0; 1];
    assert!(matches!(
        pool.score(1, &[1.0], &mut out),
        Err(CallError::Trap(_))
    ));
}

#[test]
fn the_precompiled_cache_is_used_on_the_second_load() {
    let dir = std::env::temp_dir().join(format!("verdict-model-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = Runtime::new(RuntimeConfig {
        cache_dir: Some(dir.clone()),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let e = &EMBEDDED[2];
    let m = Manifest::parse(Path::new(e.manifest_path), e.manifest).unwrap();
    let first = rt.compile(m.clone(), e.wasm).unwrap();
    let second = rt.compile(m, e.wasm).unwrap();
    assert!(!first.cached && second.cached);
    assert_eq!(first.sha256, second.sha256);
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(files.len(), 1, "one artifact per module and engine");
    // A corrupt artifact is replaced, not trusted. (Written beside and renamed over, as the
    // cache itself writes: truncating a file that is mapped would fault its readers.)
    let path = files[0].as_ref().unwrap().path();
    std::fs::write(dir.join("garbage"), b"garbage").unwrap();
    std::fs::rename(dir.join("garbage"), &path).unwrap();
    let m = Manifest::parse(Path::new(e.manifest_path), e.manifest).unwrap();
    let third = rt.compile(m, e.wasm).unwrap();
    assert!(!third.cached);
    let mut out = [0.0; 1];
    Pool::new(third.into())
        .score(1, &[100.0, 3.0, 1.0, 100.0, 1.0, 1.0, 0.0, 0.0], &mut out)
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn example_models_score_the_same_natively_and_in_wasm() {
    let rt = runtime();
    let set = rt.load_examples().unwrap();
    assert_eq!(set.names(), ["exposure_var", "fraud_gbdt", "fraud_lr"]);
    let mut rng = fastrand::Rng::with_seed(7);
    for model in &set.models {
        let native = examples::native(model.name()).unwrap();
        let cols = model.cols();
        let rows = model.rows_per_call_max();
        let input: Vec<f32> = (0..rows * cols)
            .map(|i| match i % cols {
                0 => rng.f32() * 5000.0,
                1 if model.name() == "exposure_var" => rng.f32() * 0.1,
                1 => (rng.u32(0..24)) as f32,
                _ => rng.u32(0..40) as f32 * if rng.bool() { 1.0 } else { 0.05 },
            })
            .collect();
        let mut want = vec![0.0; rows];
        assert_eq!(native(rows, cols, &input, &mut want), 0);
        let mut got = vec![0.0; rows];
        let mut pool = Pool::new(model.clone());
        pool.score(rows, &input, &mut got).unwrap();
        assert_eq!(got, want, "{}: wasm and native differ", model.name());
        assert!(
            want.iter().all(|s| (0.0..=1.0).contains(s)),
            "{}: {want:?}",
            model.name()
        );
        let spread = want.iter().cloned().fold(f64::MIN, f64::max)
            - want.iter().cloned().fold(f64::MAX, f64::min);
        assert!(
            spread > 0.01,
            "{}: scores barely move: {want:?}",
            model.name()
        );
    }
}
