//! A gradient-boosted tree ensemble: 300 trees of depth 5 over eight features (order as in
//! `manifest.toml`): amount, hour, count(account, 1h), count(account, 24h),
//! distinct(ip, account, 24h), count(device, 10m), mcc, features[0].
//!
//! The ensemble is synthetic: built at compile time from a fixed seed, with split thresholds
//! at plausible quantiles of each feature and leaf values that lean towards risk on the
//! risky side of a split. It has the size, shape and cost of a trained model of this class
//! (300 x 31 splits), not its accuracy. Splits are evaluated as bits of one comparison word
//! per row (see [`comparisons`]).

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

/// A tree's splits as bit positions in the row's comparison mask (`feature * 8 + q`: the
/// row's feature is above its `q`-th candidate threshold), and its leaves.
pub struct Tree {
    bit: [u8; SPLITS],
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
        bit: [0; SPLITS],
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
            trees[t].bit[s] = (f * 8 + q) as u8;
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

/// Every split the ensemble can make on `row`, as one word: bit `f * 8 + q` is set when
/// feature `f` is above its `q`-th candidate threshold. (Trained ensembles split at a few
/// bin boundaries per feature too; this is how histogram-based inference walks them.)
fn comparisons(row: &[f32]) -> u64 {
    let mut mask = 0u64;
    for (f, (&x, thresholds)) in row.iter().zip(THRESHOLDS.iter()).enumerate() {
        for (q, &t) in thresholds.iter().enumerate() {
            mask |= u64::from(x > t) << (f * 8 + q);
        }
    }
    mask
}

/// Rows walked together through each tree: their paths are independent, so the processor
/// overlaps them, and the loop over trees (with its bookkeeping) runs once per group.
const GROUP: usize = 4;

/// The ensemble's raw sum for each of `N` rows, given their comparison words. Each row's
/// trees are added in ensemble order, so a row's sum does not depend on its group.
#[inline(always)]
fn walk<const N: usize>(masks: [u64; N]) -> [f64; N] {
    let mut sums = [0.0f64; N];
    for tree in ENSEMBLE.iter() {
        for (mask, sum) in masks.iter().zip(sums.iter_mut()) {
            // `node` is the split being taken, `path` the turns so far (1 = right): after
            // DEPTH turns it is the leaf's index.
            let (mut node, mut path) = (0usize, 0usize);
            for _ in 0..DEPTH {
                let right = ((mask >> (tree.bit[node] & 63)) & 1) as usize;
                path = 2 * path + right;
                node = 2 * node + 1 + right;
            }
            *sum += f64::from(tree.leaf[path & (LEAVES - 1)]);
        }
    }
    sums
}

/// Scores `rows` rows of `cols` features into `out`; -2 if `cols` is not [`COLS`].
pub fn score(rows: usize, cols: usize, input: &[f32], out: &mut [f64]) -> i32 {
    if cols != COLS {
        return -2;
    }
    let input = &input[..rows * COLS];
    let out = &mut out[..rows];
    let mut groups = input.chunks_exact(COLS * GROUP);
    let mut outs = out.chunks_exact_mut(GROUP);
    for (rows, outs) in (&mut groups).zip(&mut outs) {
        let mut masks = [0u64; GROUP];
        for (mask, row) in masks.iter_mut().zip(rows.chunks_exact(COLS)) {
            *mask = comparisons(row);
        }
        for (o, sum) in outs.iter_mut().zip(walk(masks)) {
            *o = math::sigmoid(BASE + sum);
        }
    }
    for (row, o) in groups
        .remainder()
        .chunks_exact(COLS)
        .zip(outs.into_remainder())
    {
        let [sum] = walk([comparisons(row)]);
        *o = math::sigmoid(BASE + sum);
    }
    0
}
