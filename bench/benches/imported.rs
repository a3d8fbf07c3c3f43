//! Imported tree ensembles at production size (`verdict model import` of an XGBoost and a
//! LightGBM fraud model, 300 trees each), wasm beside native in the same run: the same scorer
//! (`models/trees/scorer.rs`) compiled natively and for wasm32 (run under wasmtime through
//! the engine's `Pool`, epoch deadline armed), one event per call and 64 per call (per-event
//! time via criterion's element throughput). The ratio is what the wasm boundary and
//! wasmtime's code cost a tree walk, which is where a deep ensemble spends its time.
//!
//! Each iteration takes the next row (or the next 64) of 4,096 evaluation rows: scoring one
//! row over and over would let the branch predictor learn its 300 paths, which no stream of
//! real events allows.
//!
//! The models come from outside the workspace (Python's xgboost and lightgbm), so the bench
//! needs them made first; without `VERDICT_BENCH_IMPORTED` it says how and benchmarks
//! nothing. `bench/imported-ratio.sh` trains, imports, runs this and sets the numbers
//! against the libraries' own `predict`:
//!
//! `VERDICT_BENCH_IMPORTED=DIR cargo bench -p verdict-bench --bench imported`
//! (DIR holds `xgb/manifest.toml`, `lgb/manifest.toml` and `rows.f32`)

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use verdict_models::import::{module, tables};
use verdict_models::trees::{self, Sums};
use verdict_models::{Pool, Runtime, RuntimeConfig};

const ENV: &str = "VERDICT_BENCH_IMPORTED";
const BATCH: usize = 64;

fn read_f32s(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The library's own `predict` for the rows, if the training script left it beside them
/// (`NAME.expect.f64`).
fn read_expect(path: &Path) -> Option<Vec<f64>> {
    let bytes = std::fs::read(path).ok()?;
    Some(
        bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
    )
}

/// Every row scored four ways (native and wasm, one per call and 64 per call) must give the
/// same bits: otherwise the two sides are not the same scorer and the ratio means nothing.
/// Against the library: XGBoost bit for bit, LightGBM within 1e-12 relative (its `exp`), as
/// `engine/tests/imported_models.rs` checks; a model imported wrong would be timed wrong.
fn check(name: &str, dir: &Path, rows: &[f32], cols: usize, blob: &[u8], pool: &mut Pool) {
    let n = rows.len() / cols;
    let mut sums = Box::new(Sums::new());
    let mut ways = [vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]];
    let [native1, wasm1, native64, wasm64] = &mut ways;
    for (r, x) in rows.chunks_exact(cols).enumerate() {
        let out = &mut native1[r..r + 1];
        assert_eq!(trees::score(blob, &mut sums, 1, cols, x, out), 0);
        pool.score(1, x, &mut wasm1[r..r + 1]).unwrap();
    }
    for (b, x) in rows.chunks_exact(BATCH * cols).enumerate() {
        let at = b * BATCH..(b + 1) * BATCH;
        let code = trees::score(blob, &mut sums, BATCH, cols, x, &mut native64[at.clone()]);
        assert_eq!(code, 0);
        pool.score(BATCH, x, &mut wasm64[at]).unwrap();
    }
    for (way, scores) in ["wasm x1", "native x64", "wasm x64"].iter().zip(&ways[1..]) {
        for (r, (a, b)) in ways[0].iter().zip(scores).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{name} row {r}: native x1 {a} != {way} {b}"
            );
        }
    }
    if let Some(expect) = read_expect(&dir.join(format!("{name}.expect.f64"))) {
        assert_eq!(expect.len(), n, "{name}.expect.f64: one score per row");
        let exact = name == "xgb";
        for (r, (got, want)) in ways[0].iter().zip(&expect).enumerate() {
            assert!(
                got.to_bits() == want.to_bits()
                    || (!exact && (got - want).abs() <= 1e-12 * want.abs()),
                "{name} row {r}: verdict {got} != the library's {want}"
            );
        }
    }
}

fn bench(c: &mut Criterion) {
    let Some(dir) = std::env::var_os(ENV).map(PathBuf::from) else {
        eprintln!(
            "imported: {ENV} is not set, nothing to measure. `bench/imported-ratio.sh` trains \
             the models, imports them and runs this bench (or set {ENV} to a directory holding \
             xgb/manifest.toml, lgb/manifest.toml and rows.f32)"
        );
        return;
    };
    let runtime = Runtime::new(RuntimeConfig::default()).expect("a wasm engine");
    let all = read_f32s(&dir.join("rows.f32"));
    for name in ["xgb", "lgb"] {
        let model = runtime
            .load(&dir.join(name).join("manifest.toml"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let cols = model.cols();
        assert!(
            all.len().is_multiple_of(BATCH * cols) && !all.is_empty(),
            "rows.f32: a multiple of {BATCH} rows of {cols} f32s"
        );
        let wasm = std::fs::read(&model.manifest.wasm).expect("the model's module");
        let (blob, _) = module::extract(&wasm).expect("an imported module");
        let aligned = tables::Aligned::new(&blob);
        let blob = aligned.bytes();
        let mut pool = Pool::new(model.into());
        check(name, &dir, &all, cols, blob, &mut pool);

        let mut sums = Box::new(Sums::new());
        // Checked once, as each wasm instance checks its tables on its first call.
        let checked = trees::Tables::read(blob)
            .and_then(trees::Tables::check)
            .expect("the imported tables check");
        let mut g = c.benchmark_group(format!("imported/{name}"));
        for n in [1, BATCH] {
            let calls = all.len() / (n * cols);
            let input = |i: usize| &all[i * n * cols..(i + 1) * n * cols];
            let mut out = vec![0.0; n];
            g.throughput(Throughput::Elements(n as u64));
            let mut i = 0;
            g.bench_function(format!("native x{n}"), |b| {
                b.iter(|| {
                    i = (i + 1) % calls;
                    black_box(checked.score(&mut sums, n, cols, input(i), &mut out))
                })
            });
            g.bench_function(format!("wasm x{n}"), |b| {
                b.iter(|| {
                    i = (i + 1) % calls;
                    pool.score(n, input(i), &mut out).unwrap()
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
