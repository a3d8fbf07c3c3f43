//! The shipped example models: their manifests and wasm modules built into the binary (so
//! `verdict serve` needs no files), and native builds of the same scoring code, for the
//! tests that compare scores and the benches that compare cost.

/// A model built into the binary.
pub struct Embedded {
    pub name: &'static str,
    /// Where the manifest lives in the source tree (names it in errors and stats).
    pub manifest_path: &'static str,
    pub manifest: &'static str,
    pub wasm: &'static [u8],
}

macro_rules! embedded {
    ($name:literal) => {
        Embedded {
            name: $name,
            manifest_path: concat!("models/examples/", $name, "/manifest.toml"),
            manifest: include_str!(concat!("../examples/", $name, "/manifest.toml")),
            wasm: include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".wasm")),
        }
    };
}

pub static EMBEDDED: [Embedded; 3] = [
    embedded!("exposure_var"),
    embedded!("fraud_gbdt"),
    embedded!("fraud_lr"),
];

/// The directory the example manifests are in, relative to the repository root.
pub const EXAMPLES_DIR: &str = "models/examples";

#[path = "../examples/math.rs"]
mod math;

#[path = "../examples/exposure_var/score.rs"]
pub mod exposure_var;
#[path = "../examples/fraud_gbdt/score.rs"]
pub mod fraud_gbdt;
#[path = "../examples/fraud_lr/score.rs"]
pub mod fraud_lr;

/// A native scoring function, with the wasm export's signature.
pub type NativeScore = fn(usize, usize, &[f32], &mut [f64]) -> i32;

/// The native build of an example model.
pub fn native(name: &str) -> Option<NativeScore> {
    match name {
        "exposure_var" => Some(exposure_var::score),
        "fraud_gbdt" => Some(fraud_gbdt::score),
        "fraud_lr" => Some(fraud_lr::score),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::fraud_gbdt::{COLS, TREES, comparisons, exits, raw_sum, walked_leaf, walked_sum};

    /// The tree ensemble's QuickScorer tables send every row to the leaf the plain walk
    /// reaches, in every tree: rows at, just above and just below each threshold, and
    /// random ones (NaN included, which no split sends right).
    #[test]
    fn quickscorer_exits_are_the_walked_leaves() {
        let mut rng = fastrand::Rng::with_seed(11);
        let value = |rng: &mut fastrand::Rng| match rng.u8(..8) {
            0 => f32::NAN,
            1 => -1e9,
            2 => 1e9,
            3 => rng.i32(-2..40) as f32,
            4 => rng.i32(-2..40) as f32 + 0.5,
            5 => rng.f32() * 3.0 - 1.0,
            6 => [
                4829.0, 5411.0, 5732.0, 5812.0, 5999.0, 6011.0, 6051.0, 7995.0,
            ][rng.usize(..8)],
            _ => rng.f32() * 10_000.0,
        };
        for _ in 0..2000 {
            let row: [f32; COLS] = core::array::from_fn(|_| value(&mut rng));
            let (mask, exits) = (comparisons(&row), exits(&row));
            assert_eq!(exits.len(), TREES);
            for (t, exit) in exits.iter().enumerate() {
                assert_eq!(
                    exit.trailing_zeros() as usize,
                    walked_leaf(t, mask),
                    "tree {t}, row {row:?}"
                );
            }
            // The fused scoring loop adds the same leaves (in another order).
            let (fused, walked) = (raw_sum(&row), walked_sum(&row));
            assert!(
                (fused - walked).abs() < 1e-9,
                "{fused} vs {walked}, row {row:?}"
            );
        }
    }
}
