//! A gradient-boosted tree ensemble: 300 trees of depth 5 over eight features (order as in
//! `manifest.toml`): amount, hour, count(account, 1h), count(account, 24h),
//! distinct(ip, account, 24h), count(device, 10m), mcc, features[0].
//!
//! The ensemble is synthetic: built at compile time from a fixed seed, with split thresholds
//! at plausible quantiles of each feature and leaf values that lean towards risk on the
//! risky side of a split. It has the size, shape and cost of a trained model of this class
//! (300 x 31 splits), not its accuracy. It is scored QuickScorer-style (see [`LEAF_MASKS`]):
//! each feature's bin selects one precomputed leaf mask per tree, and the exit leaves fall
//! out of ANDs, with no tree walk; [`walked_leaf`] is the plain walk it is tested against.

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

/// The ensemble, built by the compiler (the QuickScorer tables below are derived from it).
pub static ENSEMBLE: [Tree; TREES] = build();

/// Bins per feature: a value is in bin `b` when it is above exactly its first `b` candidate
/// thresholds (they ascend), so a split `(f, q)` goes right exactly when `f`'s bin is above `q`.
const BINS: usize = 9;

/// QuickScorer tables (Lucchese et al., SIGIR 2015): bit `l` of `LEAF_MASKS[f][b][t]` is clear
/// when a row whose feature `f` is in bin `b` cannot exit tree `t` at leaf `l` because of a
/// split on `f`: it is in the left subtree of a split on `f` that the row goes right at.
/// ANDing a row's eight masks per tree leaves the exit leaf as the lowest bit still set
/// (every leaf left of the exit is in the left subtree of a split on the path that went
/// right; the exit leaf is in no such subtree). Feature-major, so a row reads eight
/// contiguous runs of `TREES` words.
static LEAF_MASKS: [[[u32; TREES]; BINS]; COLS] = leaf_masks(&ENSEMBLE);

const fn leaf_masks(trees: &[Tree; TREES]) -> [[[u32; TREES]; BINS]; COLS] {
    let mut masks = [[[u32::MAX; TREES]; BINS]; COLS];
    let mut t = 0;
    while t < TREES {
        let mut s = 0;
        while s < SPLITS {
            let (f, q) = (trees[t].bit[s] as usize / 8, trees[t].bit[s] as usize % 8);
            // Split `s` sits at depth `d`, `p`-th from the left; it spans `width` leaves, the
            // first half of them in its left subtree.
            let mut d = 0;
            while (1 << (d + 1)) - 1 <= s {
                d += 1;
            }
            let p = s - ((1 << d) - 1);
            let width = 1 << (DEPTH - d);
            let left = (((1u64 << (width / 2)) - 1) << (p * width)) as u32;
            let mut b = q + 1;
            while b < BINS {
                masks[f][b][t] &= !left;
                b += 1;
            }
            s += 1;
        }
        t += 1;
    }
    masks
}

/// Each feature's bin for `row`.
fn bins(row: &[f32]) -> [usize; COLS] {
    let mut bins = [0; COLS];
    for ((bin, &x), thresholds) in bins.iter_mut().zip(row).zip(THRESHOLDS.iter()) {
        for &t in thresholds {
            *bin += usize::from(x > t);
        }
    }
    bins
}

/// Trees whose exit leaves come from one 4-lane AND of each feature's masks.
const LANES: usize = 4;
const _: () = assert!(
    TREES.is_multiple_of(LANES),
    "every tree is in a group of LANES"
);

/// Per tree, the leaves `row` may still exit at after every split it goes right at: the
/// exit leaf is the lowest bit set. No branch and no chain of dependent loads: per group of
/// [`LANES`] trees, one AND of the eight features' masks.
pub fn exits(row: &[f32]) -> [u32; TREES] {
    let bins = bins(row);
    let masks: [&[u32; TREES]; COLS] = core::array::from_fn(|f| &LEAF_MASKS[f][bins[f]]);
    let mut exits = [u32::MAX; TREES];
    for (g, exits) in exits.chunks_exact_mut(LANES).enumerate() {
        let mut group = [u32::MAX; LANES];
        for masks in &masks {
            for (exit, &mask) in group.iter_mut().zip(&masks[g * LANES..(g + 1) * LANES]) {
                *exit &= mask;
            }
        }
        exits.copy_from_slice(&group);
    }
    exits
}

/// The ensemble's raw sum for `row`: its exit leaves' values, added in [`LANES`] interleaved
/// lanes (tree `t` into lane `t % LANES`) so the additions overlap, then the lanes pairwise.
fn raw_sum(row: &[f32]) -> f64 {
    let exits = exits(row);
    let mut lanes = [0.0f64; LANES];
    for (trees, exits) in ENSEMBLE.chunks_exact(LANES).zip(exits.chunks_exact(LANES)) {
        for ((lane, tree), &exit) in lanes.iter_mut().zip(trees).zip(exits) {
            // The rightmost leaf is never cleared (it is in no left subtree), so `exit` is
            // never 0; the mask keeps the index in bounds without a check.
            debug_assert_ne!(exit, 0);
            *lane += f64::from(tree.leaf[exit.trailing_zeros() as usize & (LEAVES - 1)]);
        }
    }
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
}

/// Scores `rows` rows of `cols` features into `out`; -2 if `cols` is not [`COLS`].
pub fn score(rows: usize, cols: usize, input: &[f32], out: &mut [f64]) -> i32 {
    if cols != COLS {
        return -2;
    }
    for (row, o) in input.chunks_exact(COLS).take(rows).zip(out.iter_mut()) {
        *o = math::sigmoid(BASE + raw_sum(row));
    }
    0
}

/// The plain walk, kept as the reference the QuickScorer tables are tested against: every
/// split the ensemble can make on `row` as one word (bit `f * 8 + q`: feature `f` is above
/// its `q`-th threshold) ...
pub fn comparisons(row: &[f32]) -> u64 {
    let mut mask = 0u64;
    for (f, (&x, thresholds)) in row.iter().zip(THRESHOLDS.iter()).enumerate() {
        for (q, &t) in thresholds.iter().enumerate() {
            mask |= u64::from(x > t) << (f * 8 + q);
        }
    }
    mask
}

/// ... and the leaf tree `t` sends it to, split by split from the root.
pub fn walked_leaf(t: usize, mask: u64) -> usize {
    let tree = &ENSEMBLE[t];
    let (mut node, mut path) = (0usize, 0usize);
    for _ in 0..DEPTH {
        let right = ((mask >> (tree.bit[node] & 63)) & 1) as usize;
        path = 2 * path + right;
        node = 2 * node + 1 + right;
    }
    path
}
