//! The native build of the imported models' scorer (`models/trees/scorer.rs`, the same file
//! the wasm template is built from): the tests compare the two, and `bench/` prices the wasm
//! boundary against it.

#[path = "../trees/scorer.rs"]
mod scorer;

pub use scorer::*;

#[cfg(test)]
mod tests {
    use super::*;

    /// The port against the C library's `expf` on this host (`f32::exp` calls it), which is
    /// what XGBoost's wheel calls: every 97th f32 from -104 to 89, every bit pattern near
    /// the table's seams, and the special values.
    #[test]
    fn expf_rounds_as_the_c_library_does() {
        let (from, to) = ((-104.0f32).to_bits(), 89.0f32.to_bits());
        let mut checked = 0u64;
        let mut wrong = Vec::new();
        let mut at = |x: f32| {
            checked += 1;
            let (got, want) = (expf(x), x.exp());
            if got.to_bits() != want.to_bits() && !(got.is_nan() && want.is_nan()) {
                wrong.push((x, got, want));
            }
        };
        // Negative floats: bits from 0x80000000 (-0) up to -104's.
        for b in (0x8000_0000..=from).step_by(97) {
            at(f32::from_bits(b));
        }
        for b in (0..=to).step_by(97) {
            at(f32::from_bits(b));
        }
        for x in [
            0.0,
            -0.0,
            88.7,
            88.72283,
            88.8,
            -103.9,
            -104.0,
            -87.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1e-30,
            -1e-30,
        ] {
            at(x);
        }
        assert!(checked > 20_000_000, "{checked}");
        assert!(
            wrong.is_empty(),
            "{} of {checked} differ: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(10)]
        );
    }

    /// The f64 `exp` (LightGBM's outputs) within 2e-16 relative of the C library's.
    #[test]
    fn exp_is_within_a_few_ulp() {
        let mut worst = 0f64;
        let mut x = -745.0;
        while x < 709.7 {
            let (got, want) = (exp(x), x.exp());
            if want > 1e-300 {
                worst = worst.max(((got - want) / want).abs());
            }
            x += 0.0137;
        }
        assert!(worst < 1e-15, "worst relative error {worst:e}");
        assert_eq!(exp(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp(800.0), f64::INFINITY);
        assert!(exp(f64::NAN).is_nan());
    }
}
