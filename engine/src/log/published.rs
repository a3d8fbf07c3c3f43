//! The rule set last published, kept beside the decision log, so an engine that restarts
//! (after `kill -9`, a crash, a reboot) comes back deciding with it instead of the rules it
//! was first started with.
//!
//! On every publish (at start and on each reload) the reload thread writes, under
//! `log.dir/rules/`: `<digest>.json` (the rule files' exact texts, read while compiling)
//! and then `current.json` (which digest, which epoch, when), each with a write to a
//! temporary file and a rename. At start, a shard-less check: the copy is compiled from
//! memory and must give the same digest, or it is not used.

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use verdict_rules::Loader;

/// The texts of the files a rule set was compiled from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RuleFiles {
    /// The path compiled (relative to `rules.dir`), or `""` for the built-in set.
    pub entry: String,
    pub digest: String,
    /// (path as the loader was asked for it, text).
    pub files: Vec<(PathBuf, String)>,
}

/// `current.json`: what was last published.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Current {
    pub digest: String,
    pub epoch: u64,
    pub published_at_ms: u64,
}

/// A loader that keeps what it read (the rule files of one compile).
pub struct Recording<'a> {
    pub inner: &'a dyn Loader,
    pub read: RefCell<Vec<(PathBuf, String)>>,
}

impl<'a> Recording<'a> {
    pub fn new(inner: &'a dyn Loader) -> Recording<'a> {
        Recording {
            inner,
            read: RefCell::new(Vec::new()),
        }
    }
}

impl Loader for Recording<'_> {
    fn read(&self, path: &Path, bytes_max: u64) -> io::Result<String> {
        let text = self.inner.read(path, bytes_max)?;
        self.read
            .borrow_mut()
            .push((path.to_path_buf(), text.clone()));
        Ok(text)
    }

    fn rules_in(&self, path: &Path) -> io::Result<Option<Vec<PathBuf>>> {
        self.inner.rules_in(path)
    }
}

fn rules_dir(log_dir: &Path) -> PathBuf {
    log_dir.join("rules")
}

/// Writes `bytes` to `path` through a temporary file and a rename (never half a file).
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Records a publish: the files (once per digest), then `current.json`.
pub fn save(log_dir: &Path, files: &RuleFiles, epoch: u64) -> io::Result<()> {
    let dir = rules_dir(log_dir);
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join(format!("{}.json", files.digest));
    if !copy.exists() {
        write_atomically(&copy, &serde_json::to_vec(files)?)?;
    }
    let current = Current {
        digest: files.digest.clone(),
        epoch,
        published_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    write_atomically(&dir.join("current.json"), &serde_json::to_vec(&current)?)
}

/// What was last published, if a log directory holds it (errors: unreadable or damaged).
pub fn load(log_dir: &Path) -> Result<Option<(Current, RuleFiles)>, String> {
    let dir = rules_dir(log_dir);
    let current = match std::fs::read(dir.join("current.json")) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", dir.join("current.json").display())),
    };
    let current: Current = serde_json::from_slice(&current)
        .map_err(|e| format!("{}: {e}", dir.join("current.json").display()))?;
    let path = dir.join(format!("{}.json", current.digest));
    let files = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let files: RuleFiles =
        serde_json::from_slice(&files).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some((current, files)))
}
