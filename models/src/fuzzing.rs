//! The body of each fuzz target (`models/fuzz/fuzz_targets/<name>.rs` calls
//! `fuzzing::<name>`) and of the corpus replay test (`tests/fuzz_corpus.rs` runs every file
//! under `fuzz/corpus/<name>/` and `fuzz/regressions/<name>/` through the same function). Not
//! an API: each function takes arbitrary bytes, drives the real code path, and panics when a
//! property that must hold for any input does not.
//!
//! - [`manifest`]: a manifest's text (invalid UTF-8 is refused before parsing, as
//!   [`Manifest::read`] does). A manifest that parses holds only values inside the documented
//!   bounds, resolves its module beside itself, and locates each feature it says is written
//!   verbatim at that very text; one that does not parse gets an error naming the file.
//! - [`import_model`]: an XGBoost or LightGBM model file through `verdict model import`'s
//!   parser and table layout, then the native scorer.

use std::path::Path;

use crate::ModelError;
use crate::manifest::{
    DEADLINE_US_MAX, FEATURES_MAX, INSTANCES_PER_CORE_MAX, Manifest, NAME_BYTES_MAX,
};

/// Where the fuzzed manifest claims to live.
const PATH: &str = "models/fuzz/manifest.toml";

/// Fuzz target `manifest`: [`Manifest::parse`].
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new(PATH);
    let m = match Manifest::parse(path, text) {
        Ok(m) => m,
        Err(ModelError::Manifest { path, message }) => {
            assert_eq!(path, PATH, "the error names the file");
            assert!(!message.is_empty());
            return;
        }
        Err(other) => panic!("parsing reads nothing, yet: {other}"),
    };
    assert!(
        !m.name.is_empty() && m.name.len() <= NAME_BYTES_MAX,
        "{:?}",
        m.name
    );
    assert!(
        m.name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "{:?}",
        m.name
    );
    assert!(!m.version.is_empty());
    assert!((1..=FEATURES_MAX).contains(&m.features.len()));
    assert!((1..=DEADLINE_US_MAX).contains(&m.deadline_us));
    assert!((1..=INSTANCES_PER_CORE_MAX).contains(&m.instances_per_core));
    assert_eq!((m.path.as_path(), m.text.as_str()), (path, text));
    if m.wasm.is_relative() {
        assert!(m.wasm.starts_with("models/fuzz"), "{}", m.wasm.display());
    }
    for f in &m.features {
        if let Some(at) = f.offset {
            assert_eq!(
                text.get(at..at + f.expr.len()),
                Some(f.expr.as_str()),
                "a feature said to be verbatim is not at its offset"
            );
        }
    }
}

/// Fuzz target `import_model`: the first byte picks the format (even: XGBoost JSON, odd:
/// LightGBM text) and the class, the rest is the model file. Parsing refuses with a typed
/// error or yields a forest that lays out into tables the scorer reads back tree for tree,
/// and scores a row of zeros and a row of NaN without a walk error.
pub fn import_model(data: &[u8]) {
    use crate::import::{self, Format, tables};
    use crate::trees;
    let Some((&selector, model)) = data.split_first() else {
        return;
    };
    let format = if selector & 1 == 0 {
        Format::Xgboost
    } else {
        Format::Lightgbm
    };
    let class = (selector & 0x80 != 0).then_some(usize::from(selector >> 1 & 3));
    let Ok(forest) = import::parse(model, format, class) else {
        return;
    };
    let Ok(blob) = tables::encode(&forest) else {
        return;
    };
    let shape = tables::shape(&blob).expect("encoded tables read back");
    assert_eq!(shape.trees, forest.trees.len());
    assert_eq!(shape.cols, forest.features);
    let aligned = tables::Aligned::new(&blob);
    let mut sums = Box::new(trees::Sums::new());
    let mut out = [0.0; 2];
    let mut rows = vec![0f32; forest.features];
    rows.extend(std::iter::repeat_n(f32::NAN, forest.features));
    let code = trees::score(
        aligned.bytes(),
        &mut sums,
        2,
        forest.features,
        &rows,
        &mut out,
    );
    assert_eq!(code, 0, "scoring a parsed model failed");
}
