//! `verdict model import`: a tree ensemble saved by XGBoost (JSON) or LightGBM (text) becomes
//! a verdict model under ABI v1, with no compiler on the user's machine.
//!
//! The model file is parsed into a [`Forest`] (the library's trees, splits and output
//! transform, checked), laid out as a table blob ([`tables`]), and written into a copy of
//! the scorer template built with verdict (`models/trees`, embedded) as a data segment at
//! its heap base ([`module`]). The module also carries a `verdict.model` custom section
//! describing where it came from, which `verdict model inspect` prints.
//!
//! The scorer reproduces each library's own prediction arithmetic (see `models/trees/scorer.rs`):
//! XGBoost bit for bit in f32, LightGBM in f64.

mod lightgbm;
pub mod module;
pub mod tables;
mod xgboost;

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::manifest::{DEADLINE_US_MAX, FEATURES_MAX, INSTANCES_PER_CORE_MAX, NAME_BYTES_MAX};

/// Limits on what an import accepts.
pub const MODEL_BYTES_MAX: u64 = 512 << 20;
pub const TREES_MAX: usize = 100_000;
/// Splits and leaves over all trees (a node is 24 bytes of tables, a leaf 8).
pub const NODES_MAX: usize = 2_000_000;
/// The largest category a categorical split may name (XGBoost's own bound is 2^24).
pub const CATEGORY_MAX: u32 = (1 << 24) - 1;
/// Words of categorical bitsets over all splits (16 MiB).
pub const CATEGORY_WORDS_MAX: usize = 4 << 20;
/// Categories named by all categorical splits together, as parsed (16 MiB of them).
pub const CATEGORY_ENTRIES_MAX: usize = 4 << 20;
/// Output groups (classes) a model may have.
pub const GROUPS_MAX: usize = crate::trees::GROUPS_MAX;

/// Why a model file could not be imported.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImportError {
    /// The file is not a model of the format (with where, when the parser knows).
    #[error("not a valid {format} model: {message}")]
    Parse {
        format: &'static str,
        message: String,
    },
    /// A valid model that uses something verdict does not import.
    #[error("{0}")]
    Unsupported(String),
    /// The model and the options disagree (feature count, class).
    #[error("{0}")]
    Mismatch(String),
    /// Beyond a limit of the import.
    #[error("{0}")]
    Limit(String),
    /// The options themselves.
    #[error("{0}")]
    Options(String),
}

/// The file formats `verdict model import --format` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Xgboost,
    Lightgbm,
}

impl Format {
    pub fn parse(name: &str) -> Result<Format, ImportError> {
        match name {
            "xgboost" => Ok(Format::Xgboost),
            "lightgbm" => Ok(Format::Lightgbm),
            other => Err(ImportError::Options(format!(
                "--format {other:?}: verdict imports `xgboost` (JSON) and `lightgbm` (text)"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Xgboost => "xgboost",
            Format::Lightgbm => "lightgbm",
        }
    }
}

/// One split's test.
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// XGBoost: left iff `x < threshold` (f32, stored widened). LightGBM: left iff
    /// `x <= threshold` (f64) after its missing-type handling.
    Numerical { threshold: f64 },
    /// The categories of the split's set (XGBoost: they go right; LightGBM: left).
    Categorical { set: Vec<u32> },
}

/// A node as the library numbers it: a split, or a leaf.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Split {
        feature: usize,
        test: Test,
        default_left: bool,
        /// LightGBM's missing type (`scorer::MISSING_*`); 0 for XGBoost.
        missing: u32,
        left: usize,
        right: usize,
    },
    Leaf(f64),
}

/// One tree: its nodes (root first) and the output group it adds to.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    pub group: usize,
    pub nodes: Vec<Node>,
}

/// A parsed, checked ensemble: everything the scorer needs and `inspect` prints.
#[derive(Debug, Clone, PartialEq)]
pub struct Forest {
    pub format: Format,
    /// The library version that wrote the file, as the file says it.
    pub library_version: String,
    /// `gbtree`, `dart` (XGBoost); `gbdt`, `rf` (LightGBM).
    pub booster: String,
    /// As the library names it (`binary:logistic`, `binary sigmoid:1`, ...).
    pub objective: String,
    /// One of `scorer::OUT_*`.
    pub output: u32,
    /// LightGBM's sigmoid scale (1 elsewhere).
    pub sigmoid: f64,
    pub features: usize,
    pub feature_names: Vec<String>,
    /// As the library types them (XGBoost `q`/`c`/...; LightGBM from its splits).
    pub feature_types: Vec<String>,
    pub groups: usize,
    /// The group the score is taken from.
    pub class: usize,
    /// Each group's starting margin (XGBoost's base score in margin space; 0 for LightGBM).
    pub base: Vec<f64>,
    /// The base score as the file writes it (for `inspect`).
    pub base_text: String,
    /// LightGBM's `average_output` (random forest): the sum is divided by the iterations.
    pub average: bool,
    pub trees: Vec<Tree>,
}

/// What `verdict model import` is asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub format: Format,
    pub name: String,
    /// The manifest's features: one rules-language expression per model feature, in order.
    pub features: Vec<String>,
    /// For multi-class models, the class whose probability is the score.
    pub class: Option<usize>,
    /// The manifest's version (default: the format, the library version and the model
    /// file's SHA-256 prefix, so a retrained model shows as a new version on reload).
    pub version: Option<String>,
    pub deadline_us: u64,
    pub instances_per_core: u32,
    /// The model file's name, recorded in the module.
    pub source: String,
}

/// The `verdict.model` custom section: where the module came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub format: Format,
    pub source: String,
    pub source_sha256: String,
    pub library_version: String,
    pub booster: String,
    pub objective: String,
    pub class: usize,
    pub groups: usize,
    pub base_score: String,
    pub average_output: bool,
    pub feature_names: Vec<String>,
    pub feature_types: Vec<String>,
    pub imported_by: String,
}

/// An imported model: the manifest's text and the module's bytes.
#[derive(Debug, Clone)]
pub struct Imported {
    pub forest: Forest,
    pub manifest: String,
    pub wasm: Vec<u8>,
}

/// Parses a model file of `options.format`, checks it against the options and builds the
/// manifest and module.
pub fn import(bytes: &[u8], options: &Options) -> Result<Imported, ImportError> {
    check_options(options)?;
    let forest = parse(bytes, options.format, options.class)?;
    if forest.features != options.features.len() {
        return Err(ImportError::Mismatch(format!(
            "the model takes {} features; --features lists {}",
            forest.features,
            options.features.len()
        )));
    }
    let blob = tables::encode(&forest)?;
    let sha = crate::cache::sha256_hex(bytes);
    let provenance = Provenance {
        format: forest.format,
        source: options.source.clone(),
        source_sha256: sha.clone(),
        library_version: forest.library_version.clone(),
        booster: forest.booster.clone(),
        objective: forest.objective.clone(),
        class: forest.class,
        groups: forest.groups,
        base_score: forest.base_text.clone(),
        average_output: forest.average,
        feature_names: forest.feature_names.clone(),
        feature_types: forest.feature_types.clone(),
        imported_by: concat!("verdict ", env!("CARGO_PKG_VERSION")).to_string(),
    };
    let wasm = module::assemble(&blob, &provenance)?;
    let version = options.version.clone().unwrap_or_else(|| {
        format!(
            "{}-{}+{}",
            forest.format.name(),
            forest.library_version,
            &sha[..12]
        )
    });
    let manifest = manifest_text(options, &forest, &version);
    Ok(Imported {
        forest,
        manifest,
        wasm,
    })
}

/// The model file parsed and checked, without building anything.
pub fn parse(bytes: &[u8], format: Format, class: Option<usize>) -> Result<Forest, ImportError> {
    if bytes.len() as u64 > MODEL_BYTES_MAX {
        return Err(ImportError::Limit(format!(
            "the model file is {} bytes; the limit is {MODEL_BYTES_MAX}",
            bytes.len()
        )));
    }
    let mut forest = match format {
        Format::Xgboost => xgboost::parse(bytes)?,
        Format::Lightgbm => lightgbm::parse(bytes)?,
    };
    forest.class = match (forest.groups, class) {
        (1, None | Some(0)) => 0,
        (1, Some(k)) => {
            return Err(ImportError::Mismatch(format!(
                "--class {k}: the model has one output ({}), not classes",
                forest.objective
            )));
        }
        (n, None) => {
            return Err(ImportError::Mismatch(format!(
                "the model has {n} classes ({}): choose the one to score with --class 0..{}",
                forest.objective,
                n - 1
            )));
        }
        (n, Some(k)) if k >= n => {
            return Err(ImportError::Mismatch(format!(
                "--class {k}: the model has {n} classes (0..{})",
                n - 1
            )));
        }
        (_, Some(k)) => k,
    };
    check(&forest)?;
    Ok(forest)
}

fn check_options(o: &Options) -> Result<(), ImportError> {
    let bad = |m: String| Err(ImportError::Options(m));
    let name_ok = !o.name.is_empty()
        && o.name.len() <= NAME_BYTES_MAX
        && o.name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !name_ok {
        return bad(format!(
            "--name {:?}: use 1 to {NAME_BYTES_MAX} of a-z, 0-9 and _",
            o.name
        ));
    }
    if o.features.is_empty() || o.features.len() > FEATURES_MAX {
        return bad(format!(
            "--features lists {}; a model takes 1 to {FEATURES_MAX}",
            o.features.len()
        ));
    }
    if !(1..=DEADLINE_US_MAX).contains(&o.deadline_us) {
        return bad(format!(
            "--deadline-us {} is not in 1..={DEADLINE_US_MAX}",
            o.deadline_us
        ));
    }
    if !(1..=INSTANCES_PER_CORE_MAX).contains(&o.instances_per_core) {
        return bad(format!(
            "--instances-per-core {} is not in 1..={INSTANCES_PER_CORE_MAX}",
            o.instances_per_core
        ));
    }
    if o.version.as_deref() == Some("") {
        return bad("--version: empty".into());
    }
    Ok(())
}

/// The structural checks every parsed forest passes, whatever its format.
fn check(f: &Forest) -> Result<(), ImportError> {
    if f.trees.is_empty() {
        return Err(ImportError::Unsupported("the model has no trees".into()));
    }
    if f.trees.len() > TREES_MAX {
        return Err(ImportError::Limit(format!(
            "the model has {} trees; the limit is {TREES_MAX}",
            f.trees.len()
        )));
    }
    let nodes: usize = f.trees.iter().map(|t| t.nodes.len()).sum();
    if nodes > NODES_MAX {
        return Err(ImportError::Limit(format!(
            "the model has {nodes} nodes; the limit is {NODES_MAX}"
        )));
    }
    if f.features == 0 || f.features > FEATURES_MAX {
        return Err(ImportError::Limit(format!(
            "the model takes {} features; a verdict model takes 1 to {FEATURES_MAX}",
            f.features
        )));
    }
    if f.groups == 0 || f.groups > GROUPS_MAX {
        return Err(ImportError::Limit(format!(
            "the model has {} output groups; the limit is {GROUPS_MAX}",
            f.groups
        )));
    }
    if f.base.len() != f.groups {
        return Err(ImportError::Mismatch(format!(
            "the base score has {} values for {} output groups",
            f.base.len(),
            f.groups
        )));
    }
    for (t, tree) in f.trees.iter().enumerate() {
        if tree.group >= f.groups {
            return Err(ImportError::Mismatch(format!(
                "tree {t} adds to output group {} of {}",
                tree.group, f.groups
            )));
        }
        for (i, node) in tree.nodes.iter().enumerate() {
            if let Node::Split {
                feature,
                left,
                right,
                test,
                ..
            } = node
            {
                if *feature >= f.features {
                    return Err(ImportError::Mismatch(format!(
                        "tree {t} node {i} splits on feature {feature}; the model declares {}",
                        f.features
                    )));
                }
                if *left >= tree.nodes.len() || *right >= tree.nodes.len() {
                    return Err(ImportError::Parse {
                        format: f.format.name(),
                        message: format!("tree {t} node {i}: a child is out of the tree"),
                    });
                }
                if let Test::Categorical { set } = test
                    && let Some(c) = set.iter().find(|&&c| c > CATEGORY_MAX)
                {
                    return Err(ImportError::Limit(format!(
                        "tree {t} node {i}: category {c} is over {CATEGORY_MAX}"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The header's counts, checked before anything is sized by them.
fn header_counts(features: usize, groups: usize) -> Result<(), ImportError> {
    if features == 0 || features > FEATURES_MAX {
        return Err(ImportError::Limit(format!(
            "the model takes {features} features; a verdict model takes 1 to {FEATURES_MAX}"
        )));
    }
    if groups == 0 || groups > GROUPS_MAX {
        return Err(ImportError::Limit(format!(
            "the model has {groups} output groups; the limit is {GROUPS_MAX}"
        )));
    }
    Ok(())
}

/// What the categorical splits of one model may name in all, counted as they are parsed
/// (a small file could otherwise name huge sets many times over).
struct CategoryBudget(usize);

impl CategoryBudget {
    fn new() -> CategoryBudget {
        CategoryBudget(CATEGORY_ENTRIES_MAX)
    }

    fn take(&mut self, entries: usize) -> Result<(), ImportError> {
        self.0 = self.0.checked_sub(entries).ok_or_else(|| {
            ImportError::Limit(format!(
                "the categorical splits name over {CATEGORY_ENTRIES_MAX} categories in all"
            ))
        })?;
        Ok(())
    }
}

/// Splits a `--features` list at its top-level commas: commas inside parentheses, brackets
/// and quotes belong to an expression (`count(account, 1h)`, `country in ["NG", "RO"]`).
pub fn split_features(list: &str) -> Result<Vec<String>, ImportError> {
    let mut out = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None, 0);
    let push = |piece: &str, out: &mut Vec<String>| {
        let piece = piece.trim();
        if piece.is_empty() {
            return Err(ImportError::Options(format!(
                "--features: an empty feature at position {} (two commas, or a trailing one)",
                out.len()
            )));
        }
        out.push(piece.to_string());
        Ok(())
    };
    for (i, c) in list.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '(' | '[') => depth += 1,
            (None, ')' | ']') => depth -= 1,
            (None, ',') if depth == 0 => {
                push(&list[start..i], &mut out)?;
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(ImportError::Options(format!(
                "--features: an unopened `{c}` at byte {i}"
            )));
        }
    }
    if quote.is_some() || depth != 0 {
        return Err(ImportError::Options(
            "--features: a quote or parenthesis is not closed".into(),
        ));
    }
    push(&list[start..], &mut out)?;
    Ok(out)
}

/// A TOML string for `s`: a literal string when it can be one (what a person would write).
fn toml_string(s: &str) -> String {
    if !s.contains('\'') && !s.chars().any(char::is_control) {
        format!("'{s}'")
    } else {
        toml::Value::String(s.to_string()).to_string()
    }
}

fn manifest_text(o: &Options, f: &Forest, version: &str) -> String {
    let mut m = String::new();
    let _ = writeln!(
        m,
        "# Imported by `verdict model import` from {} ({} {}, {} {}, {} trees).",
        o.source,
        f.format.name(),
        f.library_version,
        f.booster,
        f.objective,
        f.trees.len()
    );
    let _ = writeln!(
        m,
        "# `verdict model inspect` on this directory prints the trees; import again to change it."
    );
    let _ = writeln!(m, "name = {}", toml_string(&o.name));
    let _ = writeln!(m, "version = {}", toml_string(version));
    let _ = writeln!(m, "wasm = {}", toml_string(&format!("{}.wasm", o.name)));
    let _ = writeln!(m, "features = [");
    for (i, expr) in o.features.iter().enumerate() {
        let named = f
            .feature_names
            .get(i)
            .map(|n| format!("  # {n}"))
            .unwrap_or_default();
        let _ = writeln!(m, "    {},{named}", toml_string(expr));
    }
    let _ = writeln!(m, "]");
    let _ = writeln!(m, "deadline_us = {}", o.deadline_us);
    let _ = writeln!(m, "instances_per_core = {}", o.instances_per_core);
    let _ = writeln!(
        m,
        "# An event without features[i] gives the model NaN there: missing, as in training."
    );
    let _ = writeln!(m, "absent_features = \"missing\"");
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_lists_split_at_top_level_commas_only() {
        let got = split_features(
            "amount, count(account, 1h),sum(amount, account, 24h), country in [\"NG\", 'R,O'], features[0]",
        )
        .unwrap();
        assert_eq!(
            got,
            [
                "amount",
                "count(account, 1h)",
                "sum(amount, account, 24h)",
                "country in [\"NG\", 'R,O']",
                "features[0]"
            ]
        );
        for bad in ["amount,,hour", "amount,", "count(account, 1h", "a)", "\"x"] {
            assert!(split_features(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn manifest_strings_round_trip_through_toml() {
        for s in ["amount", "country in [\"NG\"]", "it's", "a\\b"] {
            let text = format!("v = {}", toml_string(s));
            let v: toml::Table = toml::from_str(&text).unwrap();
            assert_eq!(v["v"].as_str(), Some(s), "{text}");
        }
    }
}
