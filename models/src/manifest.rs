//! The manifest: a TOML file beside a model's wasm module that names it, lists the features
//! the engine computes for each row (rules-language expressions) and bounds its execution.
//!
//! ```toml
//! name = "fraud_lr"
//! version = "1.0.0"
//! wasm = "fraud_lr.wasm"          # relative to this file
//! features = ["amount", "count(account, 1h)", "features[0]"]
//! deadline_us = 500               # default 1000
//! instances_per_core = 2          # default 2
//! absent_features = "missing"     # default "zero"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ModelError;

/// Bounds on a manifest's values.
pub const NAME_BYTES_MAX: usize = 64;
pub const FEATURES_MAX: usize = 64;
pub const DEADLINE_US_MAX: u64 = 1_000_000;
pub const INSTANCES_PER_CORE_MAX: u32 = 64;
/// Size of one manifest file, and of one module.
pub const MANIFEST_BYTES_MAX: u64 = 1 << 20;
pub const WASM_BYTES_MAX: u64 = 64 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    version: String,
    wasm: String,
    features: Vec<toml::Spanned<String>>,
    #[serde(default = "default_deadline_us")]
    deadline_us: u64,
    #[serde(default = "default_instances")]
    instances_per_core: u32,
    #[serde(default)]
    absent_features: Absent,
}

/// What a feature written `features[i]` is for an event that carries fewer than i + 1.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Absent {
    /// 0, as everywhere in the rules language.
    #[default]
    Zero,
    /// NaN: the model's own "missing" (tree models take each split's default direction).
    Missing,
}

fn default_deadline_us() -> u64 {
    1000
}

fn default_instances() -> u32 {
    2
}

/// One feature: a rules-language expression, and where it is written in the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    pub expr: String,
    /// Byte offset of `expr` in the manifest's text, when it is written there verbatim (a
    /// string without escapes), so an error in it points at its line and column.
    pub offset: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    /// The module, resolved against the manifest's directory.
    pub wasm: PathBuf,
    pub features: Vec<Feature>,
    pub deadline_us: u64,
    pub instances_per_core: u32,
    pub absent_features: Absent,
    /// Where the manifest was read from, and its text (for error positions).
    pub path: PathBuf,
    pub text: String,
}

impl Manifest {
    /// Parses and checks a manifest read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Manifest, ModelError> {
        let shown = path.display().to_string();
        let err = |message: String| ModelError::Manifest {
            path: shown.clone(),
            message,
        };
        let raw: Raw = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let name_ok = !raw.name.is_empty()
            && raw.name.len() <= NAME_BYTES_MAX
            && raw
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            return Err(err(format!(
                "name {:?}: use 1 to {NAME_BYTES_MAX} of a-z, 0-9 and _",
                raw.name
            )));
        }
        if raw.version.is_empty() {
            return Err(err("version: empty".into()));
        }
        if raw.features.is_empty() || raw.features.len() > FEATURES_MAX {
            return Err(err(format!(
                "features: {} given; a model takes 1 to {FEATURES_MAX}",
                raw.features.len()
            )));
        }
        if !(1..=DEADLINE_US_MAX).contains(&raw.deadline_us) {
            return Err(err(format!(
                "deadline_us: {} is not in 1..={DEADLINE_US_MAX}",
                raw.deadline_us
            )));
        }
        if !(1..=INSTANCES_PER_CORE_MAX).contains(&raw.instances_per_core) {
            return Err(err(format!(
                "instances_per_core: {} is not in 1..={INSTANCES_PER_CORE_MAX}",
                raw.instances_per_core
            )));
        }
        let features = raw
            .features
            .into_iter()
            .map(|f| {
                // The span covers the quotes; verbatim when the text between them is the value.
                let span = f.span();
                let inner = span.start + 1..span.end.saturating_sub(1);
                let verbatim = text.get(inner.clone()) == Some(f.get_ref().as_str());
                Feature {
                    offset: verbatim.then_some(inner.start),
                    expr: f.into_inner(),
                }
            })
            .collect();
        let dir = path.parent().unwrap_or(Path::new(""));
        Ok(Manifest {
            name: raw.name,
            version: raw.version,
            wasm: dir.join(raw.wasm),
            features,
            deadline_us: raw.deadline_us,
            instances_per_core: raw.instances_per_core,
            absent_features: raw.absent_features,
            path: path.to_path_buf(),
            text: text.to_string(),
        })
    }

    /// Reads and parses the manifest at `path`.
    pub fn read(path: &Path) -> Result<Manifest, ModelError> {
        let text = read_bounded(path, MANIFEST_BYTES_MAX)?;
        let text = String::from_utf8(text).map_err(|_| ModelError::Manifest {
            path: path.display().to_string(),
            message: "not UTF-8".into(),
        })?;
        Manifest::parse(path, &text)
    }
}

/// The file's bytes; an error if it is larger than `bytes_max`.
pub fn read_bounded(path: &Path, bytes_max: u64) -> Result<Vec<u8>, ModelError> {
    let io = |e: std::io::Error| ModelError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > bytes_max {
        return Err(ModelError::Io {
            path: path.display().to_string(),
            message: format!("{len} bytes; the limit is {bytes_max}"),
        });
    }
    std::fs::read(path).map_err(io)
}

/// The manifests of a models directory: every `*.toml` in it and every `*/manifest.toml`,
/// sorted by path.
pub fn manifests_in(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let io = |e: std::io::Error| ModelError::Io {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            let m = path.join("manifest.toml");
            if m.is_file() {
                found.push(m);
            }
        } else if path.extension().is_some_and(|x| x == "toml") {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, String> {
        Manifest::parse(Path::new("m/manifest.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_manifest_resolves_its_module_and_locates_its_features() {
        let text = "name = \"m\"\nversion = \"1\"\nwasm = \"m.wasm\"\nfeatures = [\"amount\", 'count(account, 1h)', \"a\\u0062\"]\n";
        let m = parse(text).unwrap();
        assert_eq!(m.wasm, Path::new("m/m.wasm"));
        assert_eq!((m.deadline_us, m.instances_per_core), (1000, 2));
        assert_eq!(m.features[0].offset, Some(text.find("amount").unwrap()));
        assert_eq!(
            m.features[1].offset,
            Some(text.find("count(").unwrap()),
            "a literal string is verbatim"
        );
        assert_eq!(m.features[2].expr, "ab");
        assert_eq!(m.features[2].offset, None, "an escape is not verbatim");
    }

    #[test]
    fn bad_manifests_say_what_is_wrong() {
        let base = "version = \"1\"\nwasm = \"m.wasm\"\n";
        let cases = [
            (
                format!("name = \"M-1\"\n{base}features = [\"amount\"]"),
                "name \"M-1\"",
            ),
            (
                format!("name = \"m\"\n{base}features = []"),
                "features: 0 given",
            ),
            (
                format!("name = \"m\"\n{base}features = [\"amount\"]\ndeadline_us = 0"),
                "deadline_us: 0 is not in",
            ),
            (
                format!("name = \"m\"\n{base}features = [\"amount\"]\ninstances_per_core = 65"),
                "instances_per_core: 65",
            ),
            (
                format!("name = \"m\"\n{base}features = [\"amount\"]\nthreads = 2"),
                "unknown field `threads`",
            ),
            (format!("name = \"m\"\n{base}"), "missing field `features`"),
            (
                format!("name = \"m\"\n{base}features = [\"amount\"]\nabsent_features = \"nan\""),
                "unknown variant `nan`",
            ),
        ];
        for (text, want) in cases {
            let got = parse(&text).unwrap_err();
            assert!(got.contains(want), "{got:?} should contain {want:?}");
            assert!(got.starts_with("m/manifest.toml: "), "{got}");
        }
    }
}
