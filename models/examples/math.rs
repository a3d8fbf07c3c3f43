//! The few functions the example models need, written out so the same code runs natively and
//! in `no_std` wasm (core has no `exp`/`ln`): both builds then compute bit-identical scores.
#![allow(dead_code)]

// ln 2 split in two (fdlibm's constants, by their bits) for an exact range reduction.
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
const LN2: f64 = core::f64::consts::LN_2;

/// `x` rounded to the nearest integer, ties away from zero (core has no `round`).
fn round(x: f64) -> i64 {
    (x + if x >= 0.0 { 0.5 } else { -0.5 }) as i64
}

/// e^x, to within a few ulps: range reduction by ln 2, then a degree-12 Taylor polynomial.
pub fn exp(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x > 709.0 {
        return f64::INFINITY;
    }
    if x < -708.0 {
        return 0.0;
    }
    let k = round(x / LN2);
    let r = (x - k as f64 * LN2_HI) - k as f64 * LN2_LO;
    let mut term = 1.0;
    let mut sum = 1.0;
    let mut i = 1.0;
    while i <= 12.0 {
        term *= r / i;
        sum += term;
        i += 1.0;
    }
    sum * f64::from_bits(((k + 1023) as u64) << 52)
}

/// ln x for x > 0 (NaN below, -inf at 0): exponent split, then the atanh series.
pub fn ln(x: f64) -> f64 {
    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return f64::NEG_INFINITY;
    }
    if x.is_infinite() {
        return x;
    }
    let (mut x, mut e) = (x, 0i64);
    if x < f64::MIN_POSITIVE {
        x *= (1u64 << 54) as f64;
        e -= 54;
    }
    let bits = x.to_bits();
    e += ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    if m > core::f64::consts::SQRT_2 {
        m /= 2.0;
        e += 1;
    }
    let f = (m - 1.0) / (m + 1.0);
    let f2 = f * f;
    let mut power = f;
    let mut sum = 0.0;
    let mut n = 1.0;
    while n <= 19.0 {
        sum += power / n;
        power *= f2;
        n += 2.0;
    }
    e as f64 * LN2 + 2.0 * sum
}

/// ln(1 + max(x, 0)): how the models squash counts and amounts.
pub fn log1p_pos(x: f64) -> f64 {
    ln(1.0 + if x > 0.0 { x } else { 0.0 })
}

pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + exp(-z))
}
