//! wasm against native for each shipped example model, measured *interleaved*: every round
//! times the native build and then the wasm build on the same rows, and the ratio of that
//! round is kept, so a noisy neighbour slows both sides of a round instead of one side of a
//! whole criterion run. Prints the median per-event times and the median ratio.
//!
//! `taskset -c 1 target/release/verdict-model-ratio [ROUNDS]` (default 400)

use std::hint::black_box;
use std::time::{Duration, Instant};

use verdict_bench::events::model_rows as rows;
use verdict_models::examples::native;
use verdict_models::{Pool, Runtime, RuntimeConfig};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Calls `f` until about `budget` has passed (at least once); the time per call.
fn per_call(budget: Duration, mut f: impl FnMut()) -> f64 {
    let started = Instant::now();
    let mut calls = 0u32;
    while calls == 0 || started.elapsed() < budget {
        f();
        calls += 1;
    }
    started.elapsed().as_secs_f64() / f64::from(calls)
}

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args().nth(1).map_or(Ok(400), |r| r.parse())?;
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let set = runtime
        .load_examples()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    println!(
        "| model | events per call | native ns/event | wasm ns/event | wasm / native (median of {rounds} interleaved rounds) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for model in &set.models {
        let name = model.name();
        let score = native(name).expect("every example has a native build");
        let cols = model.cols();
        let mut pool = Pool::new(model.clone());
        for n in [1usize, 64] {
            let input = rows(name, cols, n);
            let mut out = vec![0.0; n];
            let budget = Duration::from_micros(200);
            let (mut nat, mut wasm, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..rounds + 20 {
                let a = per_call(budget, || {
                    black_box(score(n, cols, black_box(&input), &mut out));
                });
                let b = per_call(budget, || {
                    pool.score(n, black_box(&input), &mut out).expect("scores");
                });
                // The first rounds warm caches and the branch predictors.
                if round >= 20 {
                    nat.push(a * 1e9 / n as f64);
                    wasm.push(b * 1e9 / n as f64);
                    ratio.push(b / a);
                }
            }
            println!(
                "| {name} | {n} | {:.0} | {:.0} | {:.2}x |",
                median(&mut nat),
                median(&mut wasm),
                median(&mut ratio)
            );
        }
    }
    Ok(())
}
