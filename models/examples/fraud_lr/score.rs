//! Logistic regression over eight features (order as in `manifest.toml`):
//! amount, hour, count(account, 1h), sum(amount, account, 24h),
//! distinct(device, account, 24h), count(device, 10m), features[0], features[1].
//!
//! The weights are illustrative, not trained on real traffic: large amounts, night hours,
//! bursts per account and device, and many devices per account raise the score.

use super::math;

pub const COLS: usize = 8;
const BIAS: f64 = -6.0;
const WEIGHTS: [f64; 9] = [0.55, 0.9, 0.8, 0.25, 0.7, 0.6, 1.2, 0.8, 0.0];

/// Scores `rows` rows of `cols` features into `out`; -2 if `cols` is not [`COLS`].
pub fn score(rows: usize, cols: usize, input: &[f32], out: &mut [f64]) -> i32 {
    if cols != COLS {
        return -2;
    }
    for (row, o) in input.chunks_exact(COLS).take(rows).zip(out.iter_mut()) {
        let x = |i: usize| f64::from(row[i]);
        let night = if x(1) < 6.0 { 1.0 } else { 0.0 };
        let z = BIAS
            + WEIGHTS[0] * math::log1p_pos(x(0))
            + WEIGHTS[1] * night
            + WEIGHTS[2] * math::log1p_pos(x(2) - 1.0)
            + WEIGHTS[3] * math::log1p_pos(x(3))
            + WEIGHTS[4] * math::log1p_pos(x(4) - 1.0)
            + WEIGHTS[5] * math::log1p_pos(x(5) - 1.0)
            + WEIGHTS[6] * x(6)
            + WEIGHTS[7] * x(7);
        *o = math::sigmoid(z);
    }
    0
}
