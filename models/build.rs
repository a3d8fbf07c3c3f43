//! Builds the example models for wasm32-unknown-unknown into OUT_DIR (with the rustc that
//! builds this crate), so `verdict serve` embeds them and the tests and benches can compare
//! them with the native build of the same scoring code. `scripts/build-models.sh` holds the
//! flags; each example is a dependency-free `no_std` file tree, so no nested cargo runs.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    println!("cargo:rerun-if-changed=examples");
    println!("cargo:rerun-if-changed=trees");
    println!("cargo:rerun-if-changed=../scripts/build-models.sh");
    let script = here.join("../scripts/build-models.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("can't find crate for `core`") {
            "\nthe wasm32-unknown-unknown target is not installed: run \
             `rustup target add wasm32-unknown-unknown` (scripts/setup.sh does)"
        } else {
            ""
        };
        panic!("building the example models for wasm32 failed:\n{stderr}{hint}");
    }
}
