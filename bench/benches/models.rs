//! Model cost, wasm beside native in the same run: for each shipped example model, one event
//! per call and 64 events per call (per-event time via criterion's element throughput), the
//! same scoring code compiled natively and for wasm32 (run under wasmtime with its epoch
//! deadline armed, through the engine's `Pool`). Then what a hot swap costs a core: loading a
//! cached, precompiled module and making a pool of one instance from it (instantiation, which
//! is also what replacing a broken instance costs).
//!
//! `cargo bench -p verdict-bench --bench models`

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use verdict_bench::events::model_rows as rows;
use verdict_models::examples::{EMBEDDED, native};
use verdict_models::{Manifest, Pool, Runtime, RuntimeConfig};

fn bench(c: &mut Criterion) {
    let runtime = Runtime::new(RuntimeConfig::default()).expect("a wasm engine");
    let set = runtime.load_examples().expect("the shipped models load");
    for model in &set.models {
        let name = model.name();
        let score = native(name).expect("a native build");
        let cols = model.cols();
        let mut pool = Pool::new(model.clone());
        let mut g = c.benchmark_group(format!("model/{name}"));
        for n in [1usize, 64] {
            let input = rows(name, cols, n);
            let mut out = vec![0.0; n];
            g.throughput(Throughput::Elements(n as u64));
            g.bench_function(format!("native x{n}"), |b| {
                b.iter(|| black_box(score(n, cols, black_box(&input), &mut out)))
            });
            g.bench_function(format!("wasm x{n}"), |b| {
                b.iter(|| pool.score(n, black_box(&input), &mut out).unwrap())
            });
        }
        g.finish();
    }

    // A hot swap on one core: the control thread has compiled and cached the module; the core
    // maps it and instantiates. Cache in a private temporary directory.
    let dir = std::env::temp_dir().join(format!("verdict-bench-cache-{}", std::process::id()));
    let cached = Runtime::new(RuntimeConfig {
        cache_dir: Some(dir.clone()),
        ..RuntimeConfig::default()
    })
    .expect("a wasm engine");
    let mut g = c.benchmark_group("swap");
    for e in EMBEDDED.iter().filter(|e| e.name != "exposure_var") {
        let mut manifest = Manifest::parse(Path::new(e.manifest_path), e.manifest).unwrap();
        manifest.instances_per_core = 1;
        let first = cached.compile(manifest.clone(), e.wasm).unwrap();
        assert!(!first.cached);
        g.bench_function(format!("{}: load the cached module", e.name), |b| {
            b.iter(|| black_box(cached.compile(manifest.clone(), e.wasm).unwrap()))
        });
        let model = Arc::new(first);
        g.bench_function(format!("{}: instantiate (a pool of one)", e.name), |b| {
            b.iter(|| black_box(Pool::new(model.clone())))
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
