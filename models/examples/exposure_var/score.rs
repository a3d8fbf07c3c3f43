//! Monte Carlo value-at-risk of a position, the derivatives-pricing use case. Three features
//! (order as in `manifest.toml`): the exposure (`amount`), the daily volatility
//! (`features[0]`, 0 means 2%, capped at 100%) and the horizon in days (`features[1]`,
//! 1..=10, 0 means 1).
//!
//! Per row: 256 price paths over the horizon, each day `S *= 1 + vol * Z` with `Z` a
//! standard normal (Irwin-Hall of four uniforms from a xorshift stream seeded by the row);
//! the score is the 99% VaR of the position's P&L as a fraction of the exposure (0 = no
//! risk, 1 = the whole exposure). Deterministic: the same row always scores the same.

pub const COLS: usize = 3;
pub const PATHS: usize = 256;
/// The 99% quantile of 256 outcomes: the 3rd worst.
const TAIL: usize = 3;
const SQRT_3: f64 = 1.732_050_807_568_877_2;

fn uniform(state: &mut u64) -> f64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
}

fn normal(state: &mut u64) -> f64 {
    (uniform(state) + uniform(state) + uniform(state) + uniform(state) - 2.0) * SQRT_3
}

/// Scores `rows` rows of `cols` features into `out`; -2 if `cols` is not [`COLS`].
pub fn score(rows: usize, cols: usize, input: &[f32], out: &mut [f64]) -> i32 {
    if cols != COLS {
        return -2;
    }
    for (row, o) in input.chunks_exact(COLS).take(rows).zip(out.iter_mut()) {
        let vol = match f64::from(row[1]) {
            v if v > 0.0 && v <= 1.0 => v,
            v if v > 1.0 => 1.0,
            _ => 0.02,
        };
        let days = match row[2] {
            d if (1.0..=10.0).contains(&d) => d as usize,
            d if d > 10.0 => 10,
            _ => 1,
        };
        let mut state = 0x9e37_79b9_7f4a_7c15u64
            ^ (u64::from(row[0].to_bits()) << 32)
            ^ u64::from(row[1].to_bits())
            ^ (u64::from(row[2].to_bits()) << 16);
        if state == 0 {
            state = 1;
        }
        // The TAIL worst returns, worst first.
        let mut worst = [f64::INFINITY; TAIL];
        for _ in 0..PATHS {
            let mut price = 1.0;
            for _ in 0..days {
                price *= 1.0 + vol * normal(&mut state);
            }
            let ret = price - 1.0;
            if ret < worst[TAIL - 1] {
                let mut i = TAIL - 1;
                while i > 0 && worst[i - 1] > ret {
                    worst[i] = worst[i - 1];
                    i -= 1;
                }
                worst[i] = ret;
            }
        }
        let var = -worst[TAIL - 1];
        *o = if var > 0.0 { var.min(1.0) } else { 0.0 };
    }
    0
}
