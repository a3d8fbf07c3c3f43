//! The fuzz corpus as an ordinary test (CI runs no fuzzer). Every file under
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes through
//! `verdict_models::fuzzing::<target>`, the same body `cargo fuzz` runs. Proves that manifest
//! parsing holds its properties on every seed and every crash found so far (no panic, values
//! within their bounds, features located where the text writes them, errors naming the
//! file), so a fixed crash stays fixed.
//!
//! The seeds are the example models' manifests and variants of them, written by
//! `write_seeds` (ignored here): `cargo test -p verdict-models --test fuzz_corpus -- --ignored`.

use std::path::Path;

use verdict_models::fuzzing;
use verdict_net::fuzzing::Target;

const TARGETS: [Target; 2] = [
    ("manifest", fuzzing::manifest),
    ("import_model", fuzzing::import_model),
];

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn corpus_and_regressions_replay_without_a_panic() {
    verdict_net::fuzzing::assert_replays(&crate_dir().join("fuzz"), &TARGETS);
}

#[test]
#[ignore = "rewrites the committed seeds; run after changing the example manifests"]
fn write_seeds() {
    let dir = crate_dir().join("fuzz/corpus/manifest");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["fraud_lr", "fraud_gbdt", "exposure_var"] {
        let text =
            std::fs::read_to_string(crate_dir().join(format!("examples/{name}/manifest.toml")))
                .unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), text).unwrap();
    }
    let variants = [
        // Defaults, a literal string, an escape (not verbatim), a multi-line string.
        (
            "defaults_and_strings",
            "name = \"m\"\nversion = \"1\"\nwasm = \"m.wasm\"\nfeatures = [\"amount\", 'count(account, 1h)', \"a\\u0062\", \"\"\"hour\"\"\"]\n",
        ),
        (
            "out_of_bounds",
            "name = \"M-1\"\nversion = \"\"\nwasm = \"/abs/m.wasm\"\nfeatures = []\ndeadline_us = 0\ninstances_per_core = 65\n",
        ),
        (
            "unknown_key",
            "name = \"m\"\nversion = \"1\"\nwasm = \"m.wasm\"\nfeatures = [\"amount\"]\nthreads = 2\n",
        ),
        (
            "inline_table",
            "name = \"m\"\nversion = \"1\"\nwasm = \"m.wasm\"\nfeatures = [\"amount\"]\n[extra]\nx = { y = [1, 2.5, true, 1979-05-27T07:32:00Z] }\n",
        ),
    ];
    for (name, text) in variants {
        std::fs::write(dir.join(format!("seed-{name}")), text).unwrap();
    }
}
