//! A gradient-boosted tree ensemble: 300 trees of depth 5 over eight features (order as in
//! `manifest.toml`): amount, hour, count(account, 1h), count(account, 24h),
//! distinct(ip, account, 24h), count(device, 10m), mcc, features[0].
//!
//! The ensemble is synthetic: built at compile time from a fixed seed, with split thresholds
//! at plausible quantiles of each feature and leaf values that lean towards risk on the
//! risky side of a split. It has the size, shape and cost of a trained model of this class
//! (300 x 31 splits, 85 KB of data), not its accuracy.

use super::math;

pub const COLS: usize = 8;
pub const TREES: usize = 300;
const DEPTH: usize = 5;
const SPLITS: usize = (1 << DEPTH) - 1;
const LEAVES: usize = 1 << DEPTH;
const BASE: f64 = -3.5;

/// Split candidates per feature, roughly its deciles.
const THRESHOLDS: [[f32; 8]; COLS] = [
    [5.0, 20.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0],
    [2.0, 4.0, 6.0, 8.0, 12.0, 18.0, 20.0, 22.0],
    [1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0],
    [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
    [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0],
    [1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0],
    [
        4829.0, 5411.0, 5732.0, 5812.0, 5999.0, 6011.0, 6051.0, 7995.0,
    ],
    [-1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 2.0],
];

pub struct Tree {
    feature: [u8; SPLITS],
    threshold: [f32; SPLITS],
    leaf: [f32; LEAVES],
}

const fn next(state: u64) -> u64 {
    // xorshift64*
    let mut x = state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x
}

const fn build() -> [Tree; TREES] {
    const EMPTY: Tree = Tree {
        feature: [0; SPLITS],
        threshold: [0.0; SPLITS],
        leaf: [0.0; LEAVES],
    };
    let mut trees = [EMPTY; TREES];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut t = 0;
    while t < TREES {
        let mut s = 0;
        while s < SPLITS {
            state = next(state);
            let f = (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % COLS;
            let q = (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 45) as usize % 8;
            trees[t].feature[s] = f as u8;
            trees[t].threshold[s] = THRESHOLDS[f][q];
            s += 1;
        }
        let mut l = 0;
        while l < LEAVES {
            state = next(state);
            let noise = ((state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32)
                / (1u64 << 24) as f32
                - 0.5;
            // The leaf's index bits are the path: a 1 went right (above the threshold).
            let rights = (l as u32).count_ones() as f32;
            trees[t].leaf[l] = 0.04 * (rights - DEPTH as f32 / 2.0) + 0.05 * noise;
            l += 1;
        }
        t += 1;
    }
    trees
}

pub static ENSEMBLE: [Tree; TREES] = build();

/// Scores `rows` rows of `cols` features into `out`; -2 if `cols` is not [`COLS`].
pub fn score(rows: usize, cols: usize, input: &[f32], out: &mut [f64]) -> i32 {
    if cols != COLS {
        return -2;
    }
    let out = &mut out[..rows];
    for o in out.iter_mut() {
        *o = 0.0;
    }
    // Tree-major: each tree stays in cache while every row walks it.
    for tree in ENSEMBLE.iter() {
        for (row, o) in input.chunks_exact(COLS).zip(out.iter_mut()) {
            let mut i = 0;
            for _ in 0..DEPTH {
                let right = row[tree.feature[i] as usize] > tree.threshold[i];
                i = 2 * i + 1 + right as usize;
            }
            *o += f64::from(tree.leaf[i - SPLITS]);
        }
    }
    for o in out.iter_mut() {
        *o = math::sigmoid(BASE + *o);
    }
    0
}
