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
