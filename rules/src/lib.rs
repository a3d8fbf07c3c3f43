//! verdict-rules owns the rule language: from rules files on disk to a compiled, immutable
//! [`RuleSet`] that decides an archived event without allocating, plus the per-core
//! velocity state it reads and the epoch cell the engine publishes rule sets through.
//!
//! The data flows top-down through the modules:
//! - [`lexer`]: source -> tokens with spans; [`parser`]: tokens -> [`ast`], recovering after
//!   each error so a file's errors are all reported; [`diag`]: `file:line:col` + a caret;
//! - [`check`]: syntax trees -> a typed [`ir::Program`] (names resolved, lists loaded,
//!   policy reachability proven), or every error;
//! - [`compile`]: program -> [`RuleSet`] of closures (constants folded); [`event`] is how a
//!   rule reads an archived event; [`velocity`] is one core's count/sum/distinct windows;
//! - [`interp`]: the reference interpreter (tests and benches only);
//! - [`epoch`]: the one shared, atomically swapped pointer to the current rule set;
//! - [`confined`]: the [`Loader`] a running engine reads through: one directory, regular
//!   files only, bounded reads, nothing outside it (the kernel's `openat2` judges links).
//!
//! The language is documented in `rules/README.md`.
//!
//! `fuzzing` (hidden) holds the bodies of the fuzz targets in `rules/fuzz/`, which
//! `tests/fuzz_corpus.rs` also runs over the committed corpus.

pub mod ast;
mod atoms;
mod branch;
pub mod check;
pub mod compile;
pub mod confined;
pub mod diag;
mod entity_index;
pub mod epoch;
pub mod event;
#[doc(hidden)]
pub mod fuzzing;
pub mod interp;
pub mod ir;
pub mod lexer;
mod masks;
pub mod parser;
mod sets;
pub mod velocity;

use std::io;
use std::path::{Path, PathBuf};

pub use compile::{Outcome, RuleSet, Shape, key_value};
pub use confined::{Confined, join_relative};
pub use diag::{Diagnostic, Report, RuleError, Source, Span};
pub use epoch::{Epoch, EpochCell};
pub use ir::VelocityKey;
pub use parser::parse;
pub use velocity::{Sample, VelocityState};
use verdict_net::Action;

/// Bounds on what a rule set may hold. Defaults are the documented limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Rules in one rule set (`RULES_MAX`).
    pub rules_max: usize,
    /// Largest `score` of one rule, either sign.
    pub rule_score_abs_max: i64,
    /// `features[i]` takes `i < features_max` (the wire allows this many features).
    pub features_max: usize,
    pub window_ms_min: u64,
    pub window_ms_max: u64,
    /// Distinct velocity functions in one rule set (`VELOCITY_FUNCTIONS_MAX`).
    pub velocity_functions_max: usize,
    /// Entries in one list (`LIST_ENTRIES_MAX`).
    pub list_entries_max: usize,
    /// Size of one list file, and of one rules file.
    pub list_file_bytes_max: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            rules_max: 10_000,
            rule_score_abs_max: 1_000_000,
            features_max: verdict_net::validate::FEATURES_MAX,
            window_ms_min: 1_000,
            window_ms_max: 30 * 86_400_000,
            velocity_functions_max: 64,
            list_entries_max: 1_000_000,
            list_file_bytes_max: 64 << 20,
        }
    }
}

/// Where rules and list files are read from.
pub trait Loader {
    /// The file's text; an error if it is larger than `bytes_max`.
    fn read(&self, path: &Path, bytes_max: u64) -> io::Result<String>;
    /// The `.rules` files of a directory, sorted; `None` if `path` is not a directory.
    fn rules_in(&self, path: &Path) -> io::Result<Option<Vec<PathBuf>>>;
}

/// Reads from the file system.
pub struct Disk;

impl Loader for Disk {
    fn read(&self, path: &Path, bytes_max: u64) -> io::Result<String> {
        let len = std::fs::metadata(path)?.len();
        if len > bytes_max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{len} bytes; the limit is {bytes_max}"),
            ));
        }
        std::fs::read_to_string(path)
    }

    fn rules_in(&self, path: &Path) -> io::Result<Option<Vec<PathBuf>>> {
        if !std::fs::metadata(path)?.is_dir() {
            return Ok(None);
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rules") && p.is_file())
            .collect();
        files.sort();
        Ok(Some(files))
    }
}

/// Files held in memory, by path: rules kept somewhere other than a file system (tests,
/// benches, a database).
pub struct Memory(pub Vec<(PathBuf, String)>);

impl Loader for Memory {
    fn read(&self, path: &Path, _bytes_max: u64) -> io::Result<String> {
        self.0
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, text)| text.clone())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not among the files in memory"))
    }

    fn rules_in(&self, _path: &Path) -> io::Result<Option<Vec<PathBuf>>> {
        Ok(None)
    }
}

/// Files built into the binary, by path.
pub struct Embedded(pub &'static [(&'static str, &'static str)]);

impl Loader for Embedded {
    fn read(&self, path: &Path, _bytes_max: u64) -> io::Result<String> {
        self.0
            .iter()
            .find(|(p, _)| Path::new(p) == path)
            .map(|(_, text)| text.to_string())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not among the embedded files"))
    }

    fn rules_in(&self, _path: &Path) -> io::Result<Option<Vec<PathBuf>>> {
        Ok(None)
    }
}

/// The shipped rule set, `rules/default.rules` and its lists, as embedded in the binary.
pub const DEFAULT_RULES_PATH: &str = "rules/default.rules";
/// The models the shipped rule set calls (verdict-models ships them). Without models, pass
/// these by name ([`ModelInput::named`]) to check the shipped rules.
pub const DEFAULT_RULES_MODELS: [&str; 1] = ["fraud_lr"];
pub static DEFAULT_FILES: Embedded = Embedded(&[
    ("rules/default.rules", include_str!("../default.rules")),
    (
        "rules/lists/blocked_devices.txt",
        include_str!("../lists/blocked_devices.txt"),
    ),
    (
        "rules/lists/risky_networks.txt",
        include_str!("../lists/risky_networks.txt"),
    ),
    (
        "rules/lists/high_risk_mcc.txt",
        include_str!("../lists/high_risk_mcc.txt"),
    ),
]);

/// A model the rules may call, as its manifest describes it.
#[derive(Debug, Clone)]
pub struct ModelInput {
    pub name: String,
    /// The manifest (path and text): errors in a feature point into it.
    pub manifest: Option<Source>,
    /// The features the engine computes for each event the model scores.
    pub features: Vec<FeatureInput>,
    /// The manifest's `absent_features = "missing"`: a feature written exactly
    /// `features[i]` is NaN (the model's "missing") for an event carrying fewer than i + 1
    /// features, instead of the language's 0.
    pub absent_features_missing: bool,
}

/// One feature: a rules-language expression (a number or a bool).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureInput {
    pub expr: String,
    /// Byte offset of `expr` in the manifest's text, when written there verbatim.
    pub offset: Option<usize>,
}

impl ModelInput {
    /// A model known by name only (no features): scores come from the caller.
    pub fn named(name: &str) -> ModelInput {
        ModelInput {
            name: name.to_string(),
            manifest: None,
            features: Vec::new(),
            absent_features_missing: false,
        }
    }
}

/// What a rule set is checked and compiled against.
#[derive(Debug, Clone)]
pub struct Options {
    /// The models `model("...")` may use.
    pub models: Vec<ModelInput>,
    /// The action when there is no policy and no fired rule has one.
    pub default_action: Action,
    pub limits: Limits,
}

impl Options {
    /// The default options, with the models the shipped rule set calls known by name.
    pub fn shipped() -> Options {
        Options {
            models: DEFAULT_RULES_MODELS.map(ModelInput::named).to_vec(),
            ..Options::default()
        }
    }
}

impl Default for Options {
    fn default() -> Options {
        Options {
            models: Vec::new(),
            default_action: Action::Allow,
            limits: Limits::default(),
        }
    }
}

/// Reads, parses and checks the rule set at `path` (a `.rules` file, or a directory whose
/// `.rules` files form one rule set). Returns the program and every file it read.
pub fn check_path(
    path: &Path,
    loader: &dyn Loader,
    options: &Options,
) -> Result<(ir::Program, Vec<Source>), Report> {
    let shown = path.display().to_string();
    let fail = |message: String| Report {
        errors: vec![RuleError::whole_file(&shown, message)],
    };
    let paths = match loader.rules_in(path) {
        Ok(Some(files)) if files.is_empty() => {
            return Err(fail("the directory holds no .rules files".into()));
        }
        Ok(Some(files)) => files,
        Ok(None) => vec![path.to_path_buf()],
        Err(e) => return Err(fail(format!("cannot read: {e}"))),
    };
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for p in &paths {
        let text = match loader.read(p, options.limits.list_file_bytes_max) {
            Ok(text) => text,
            Err(e) => {
                errors.push(RuleError::whole_file(
                    &p.display().to_string(),
                    format!("cannot read: {e}"),
                ));
                continue;
            }
        };
        let source = Source::new(p.display().to_string(), text);
        let (ast, parse_errors) = parse(&source.text);
        errors.extend(parse_errors.iter().map(|d| RuleError::new(&source, d)));
        files.push(check::ParsedFile {
            dir: p.parent().map(Path::to_path_buf).unwrap_or_default(),
            source,
            ast,
        });
    }
    // Check what parsed even when something did not, so one run reports every error.
    let checked = check::check(&files, loader, &options.models, &options.limits);
    match checked {
        Ok(done) if errors.is_empty() => Ok(done),
        Ok(_) => Err(Report { errors }),
        Err(more) => {
            errors.extend(more);
            // File order as given (list files after the rules files), then position.
            let order = |file: &str| paths.iter().position(|p| p.display().to_string() == file);
            errors.sort_by_key(|e| (order(&e.file).unwrap_or(usize::MAX), e.line, e.column));
            errors.dedup();
            Err(Report { errors })
        }
    }
}

/// [`check_path`], then compile. The rule set's `digest` covers every file it read: its
/// text, and its path relative to the first file's directory (so the same rules installed
/// in different places, say on two nodes of a cluster, have the same digest).
pub fn load(path: &Path, loader: &dyn Loader, options: &Options) -> Result<RuleSet, Report> {
    let (program, sources) = check_path(path, loader, options)?;
    let root = path.parent().unwrap_or(Path::new(""));
    let mut all = Vec::new();
    for s in &sources {
        let relative = Path::new(&s.path)
            .strip_prefix(root)
            .map_or(s.path.as_str(), |p| p.to_str().unwrap_or(&s.path));
        all.extend_from_slice(relative.as_bytes());
        all.push(0);
        all.extend_from_slice(s.text.as_bytes());
        all.push(0);
    }
    let mut set = RuleSet::compile(program, options.default_action);
    set.digest = format!("{:016x}", verdict_net::routing::fnv1a64(&all));
    set.files = sources.into_iter().map(|s| s.path).collect();
    Ok(set)
}

/// The shipped default rule set, from the embedded copy.
pub fn load_default(options: &Options) -> Result<RuleSet, Report> {
    load(Path::new(DEFAULT_RULES_PATH), &DEFAULT_FILES, options)
}
