//! Where an epoch comes from and how the next one is published: the rules source (confined
//! to `rules.dir`), the models source, and the reload thread.
//!
//! Reloads run on their own thread, one at a time, never on a data core and never on the
//! control thread: compiling a large rule set or a model takes long, and the control
//! thread must keep taking the shards' stats snapshots (so `/healthz` stays green while a
//! reload works). Requests reach it through [`Reloads`], a bounded queue: the admin API's
//! `POST /v1/reload` and, only where `[admin] wire_reload` keeps it, the data port's kind
//! 0x06. Every path a request names is relative to `rules.dir`, and every file is read
//! through [`Confined`]: nothing outside that directory is read, let alone quoted back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use log::{info, warn};
use verdict_models::{ModelSet, Runtime};
use verdict_net::ReloadReply;
use verdict_rules::{Confined, EpochCell};

use crate::config::TopologyConfig;
use crate::log::published::{Recording, RuleFiles};
use crate::runtime::rules_options;
use crate::scoring::{self, ModelsSource, Published};
use crate::shard::Takeover;

/// Where the rule set comes from: a file or directory inside `rules.dir` (the path relative
/// to it), or the shipped default built in.
#[derive(Debug, Clone, PartialEq)]
pub enum RulesSource {
    Path(PathBuf),
    Default,
}

impl RulesSource {
    pub fn describe(&self) -> String {
        match self {
            RulesSource::Path(p) => p.display().to_string(),
            RulesSource::Default => format!("{} (built in)", verdict_rules::DEFAULT_RULES_PATH),
        }
    }
}

/// The rules source and `rules.dir` at start: `dir` is `rules.dir` from the file ("" = the
/// directory of `rules`, the `--rules` path), `rules` what to serve (`None`: built in).
/// A `--rules` path outside `rules.dir` is an error.
pub fn confine(dir: &str, rules: Option<&Path>) -> anyhow::Result<(RulesSource, Option<Confined>)> {
    let dir: Option<PathBuf> = match (dir, rules) {
        ("", None) => None,
        ("", Some(p)) if p.is_dir() => Some(p.to_path_buf()),
        ("", Some(p)) => Some(
            p.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
        ),
        (dir, _) => Some(PathBuf::from(dir)),
    };
    let Some(dir) = dir else {
        return Ok((RulesSource::Default, None));
    };
    let root =
        std::fs::canonicalize(&dir).with_context(|| format!("rules.dir {}", dir.display()))?;
    let confined =
        Confined::open(&root).with_context(|| format!("rules.dir {}", root.display()))?;
    let source = match rules {
        None => RulesSource::Default,
        Some(p) => {
            let full =
                std::fs::canonicalize(p).with_context(|| format!("--rules {}", p.display()))?;
            let rel = full.strip_prefix(&root).map_err(|_| {
                anyhow::anyhow!(
                    "--rules {} is outside rules.dir {} (rules are read only from there)",
                    p.display(),
                    root.display()
                )
            })?;
            RulesSource::Path(if rel.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                rel.to_path_buf()
            })
        }
    };
    Ok((source, Some(confined)))
}

/// Where an epoch comes from, and the runtime models are compiled with: the reload
/// thread's state.
pub struct Sources {
    pub rules: RulesSource,
    /// The only directory rule files are read from (`None`: built-in rules and no
    /// `rules.dir`, so only the built-in set can be published).
    pub rules_dir: Option<Confined>,
    pub models: ModelsSource,
    pub runtime: Runtime,
}

impl Sources {
    /// Loads the models, then checks and compiles the rules against them. `previous`: the
    /// models of the epoch being replaced (unchanged ones are kept, warm). Every error is
    /// rendered.
    pub fn load(
        &self,
        config: &TopologyConfig,
        rules: &RulesSource,
        previous: Option<&ModelSet>,
    ) -> Result<(Published, RuleFiles), Vec<String>> {
        let models = self
            .models
            .load(&self.runtime, previous)
            .map_err(|e| scoring::render_errors(&e))?;
        let options = rules_options(config, &models);
        // The files are recorded as they are read: the decision log keeps their texts.
        let (set, files) = match (rules, &self.rules_dir) {
            (RulesSource::Path(p), Some(dir)) => {
                let recording = Recording::new(dir);
                let set = verdict_rules::load(p, &recording, &options);
                (set, (p.display().to_string(), recording.read.take()))
            }
            (RulesSource::Path(p), None) => {
                return Err(vec![format!(
                    "{}: no rules.dir to read it from\n",
                    p.display()
                )]);
            }
            (RulesSource::Default, _) => {
                let recording = Recording::new(&verdict_rules::DEFAULT_FILES);
                let path = Path::new(verdict_rules::DEFAULT_RULES_PATH);
                let set = verdict_rules::load(path, &recording, &options);
                (set, (String::new(), recording.read.take()))
            }
        };
        let set = set.map_err(|r| r.errors.into_iter().map(|e| e.rendered).collect::<Vec<_>>())?;
        let files = RuleFiles {
            entry: files.0,
            digest: set.digest.clone(),
            files: files.1,
        };
        Ok((self.publishable(config, set, models)?, files))
    }

    /// Compiles a rule set from its kept files (`log.dir/rules`, see
    /// [`crate::log::published`]); an error unless it gives the digest they were kept under.
    pub fn load_kept(
        &self,
        config: &TopologyConfig,
        kept: &RuleFiles,
    ) -> Result<Published, Vec<String>> {
        let models = self
            .models
            .load(&self.runtime, None)
            .map_err(|e| scoring::render_errors(&e))?;
        let options = rules_options(config, &models);
        let entry = if kept.entry.is_empty() {
            verdict_rules::DEFAULT_RULES_PATH.to_string()
        } else {
            kept.entry.clone()
        };
        let memory = verdict_rules::Memory(kept.files.clone());
        let set = verdict_rules::load(Path::new(&entry), &memory, &options)
            .map_err(|r| r.errors.into_iter().map(|e| e.rendered).collect::<Vec<_>>())?;
        if set.digest != kept.digest {
            return Err(vec![format!(
                "the kept files give digest {}, not the {} they were kept under\n",
                set.digest, kept.digest
            )]);
        }
        self.publishable(config, set, models)
    }

    fn publishable(
        &self,
        config: &TopologyConfig,
        set: verdict_rules::RuleSet,
        models: ModelSet,
    ) -> Result<Published, Vec<String>> {
        let tls = crate::tls::server_config(&config.tls).map_err(|e| vec![format!("{e}\n")])?;
        let mut published = Published::new(set, Arc::new(models));
        published.tls = tls;
        Ok(published)
    }

    /// The source a reload's `rules_path` names: empty = the one being served; else a path
    /// relative to `rules.dir` (no absolute path, no `..`).
    pub fn resolve(&self, rules_path: &str) -> Result<RulesSource, String> {
        if rules_path.is_empty() {
            return Ok(self.rules.clone());
        }
        let Some(dir) = &self.rules_dir else {
            return Err(format!(
                "`{rules_path}`: this engine serves the built-in rules and has no rules.dir; \
                 set [rules] dir in shards.toml (or serve with --rules) to reload from files"
            ));
        };
        check_relative(dir.root(), rules_path).map(RulesSource::Path)
    }
}

/// With the decision log on, records what was just published beside it (a restart then
/// comes back with it). A failure is logged: it never undoes the publish.
pub fn keep_published(config: &TopologyConfig, files: &RuleFiles, epoch: u64) {
    if !config.log.enabled() {
        return;
    }
    if let Err(e) = crate::log::published::save(Path::new(&config.log.dir), files, epoch) {
        warn!(
            "decision log: could not keep the rule set of epoch {epoch} in {}: {e}",
            config.log.dir
        );
    }
}

/// A reload's path as given, if it may be joined to `root`: relative and without `..`.
/// (Symlinks are the kernel's to judge when the file is opened.)
pub fn check_relative(root: &Path, rules_path: &str) -> Result<PathBuf, String> {
    verdict_rules::join_relative(root, rules_path)
        .map(|_| PathBuf::from(rules_path))
        .map_err(|e| e.to_string())
}

/// Reloads waiting for the reload thread at most; one more is refused (busy).
pub const RELOADS_QUEUED_MAX: usize = 4;

/// One reload request and where its answer goes.
struct ReloadJob {
    rules_path: String,
    reply: flume::Sender<ReloadReply>,
}

/// The way into the reload thread (cheap to clone: each shard and the admin threads hold
/// one). The thread ends when the last one is dropped.
#[derive(Clone)]
pub struct Reloads {
    jobs: flume::Sender<ReloadJob>,
}

/// Why a reload was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// [`RELOADS_QUEUED_MAX`] reloads are already waiting.
    Busy,
    /// The reload thread has stopped (the engine is shutting down).
    Stopped,
}

impl Reloads {
    /// A way in to a reload thread that has stopped: every submit answers
    /// [`SubmitError::Stopped`] (for code that must hold a `Reloads` and never reload).
    pub fn stopped() -> Reloads {
        let (jobs, _) = flume::bounded(1);
        Reloads { jobs }
    }

    /// Queues a reload of `rules_path` (empty: the rules being served); its answer comes on
    /// the returned channel.
    pub fn submit(&self, rules_path: String) -> Result<flume::Receiver<ReloadReply>, SubmitError> {
        let (reply, answer) = flume::bounded(1);
        self.jobs
            .try_send(ReloadJob { rules_path, reply })
            .map_err(|e| match e {
                flume::TrySendError::Full(_) => SubmitError::Busy,
                flume::TrySendError::Disconnected(_) => SubmitError::Stopped,
            })?;
        Ok(answer)
    }

    /// [`Reloads::submit`], then waits up to `timeout` for the answer (for threads that
    /// may block: the admin threads).
    pub fn run_blocking(
        &self,
        rules_path: String,
        timeout: Duration,
    ) -> Result<ReloadReply, WaitError> {
        let answer = self.submit(rules_path).map_err(WaitError::Submit)?;
        answer
            .recv_timeout(timeout)
            .map_err(|_| WaitError::TimedOut)
    }
}

/// Why no reload answer came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitError {
    Submit(SubmitError),
    /// No answer within the timeout; the reload may still publish later.
    TimedOut,
}

/// Starts the reload thread, which owns `sources` from now on.
pub fn start(
    cell: Arc<EpochCell<Published>>,
    taken: Arc<Takeover>,
    mut sources: Sources,
    config: Arc<TopologyConfig>,
) -> anyhow::Result<(Reloads, JoinHandle<()>)> {
    let (jobs, queue) = flume::bounded::<ReloadJob>(RELOADS_QUEUED_MAX);
    let thread = std::thread::Builder::new()
        .name("verdict-reload".into())
        .spawn(move || {
            while let Ok(job) = queue.recv() {
                let reply = reload(&cell, &taken, &mut sources, &config, &job.rules_path);
                let _ = job.reply.send(reply);
            }
        })
        .context("starting the reload thread")?;
    Ok((Reloads { jobs }, thread))
}

/// Compiles `rules_path` (empty: the source being served) and publishes it as the next
/// epoch, which then is the source being served; on any error the current epoch stays and
/// the errors go back to the caller.
fn reload(
    cell: &EpochCell<Published>,
    taken: &Takeover,
    sources: &mut Sources,
    config: &TopologyConfig,
    rules_path: &str,
) -> ReloadReply {
    let refused = |errors: Vec<String>, shown: String| ReloadReply {
        ok: false,
        epoch: cell.epoch(),
        rules_path: shown,
        rules: 0,
        digest: String::new(),
        compile_us: 0,
        errors,
        models: Vec::new(),
        swap_us: 0,
    };
    let source = match sources.resolve(rules_path) {
        Ok(source) => source,
        Err(why) => {
            warn!("reload: refused: {why}");
            return refused(vec![format!("{why}\n")], rules_path.to_string());
        }
    };
    let started = Instant::now();
    let previous = cell.load();
    let loaded = sources.load(config, &source, Some(&previous.models));
    drop(previous);
    let compile_us = started.elapsed().as_micros() as u64;
    let rules_path = source.describe();
    match loaded {
        Ok((next, files)) => {
            let (count, digest) = (next.rules.rule_count() as u32, next.rules.digest.clone());
            let models = next.describe_models();
            let published_at = taken.now_ns();
            let epoch = cell.publish(next);
            keep_published(config, &files, epoch);
            let swap_us = wait_taken(taken, epoch, published_at);
            sources.rules = source;
            info!(
                "reload: {rules_path}: {count} rules, digest {digest}, models {}, compiled in {compile_us} us; epoch {epoch} published, on every shard after {swap_us} us",
                models.join(", ")
            );
            ReloadReply {
                ok: true,
                epoch,
                rules_path,
                rules: count,
                digest,
                compile_us,
                errors: Vec::new(),
                models,
                swap_us,
            }
        }
        Err(errors) => {
            warn!(
                "reload: {rules_path}: {} errors; epoch {} stays",
                errors.len(),
                cell.epoch()
            );
            ReloadReply {
                compile_us,
                ..refused(errors, rules_path)
            }
        }
    }
}

/// Longest the reload thread waits for every shard to take a new epoch before answering
/// (an idle shard takes it within `runtime.tick_ms`).
const SWAP_WAIT: Duration = Duration::from_secs(2);

/// Microseconds from `published_ns` until every shard had taken `epoch` (as the shards
/// stamped it); 0 if one has not within [`SWAP_WAIT`] (the epoch is published all the same).
fn wait_taken(taken: &Takeover, epoch: u64, published_ns: u64) -> u64 {
    let waiting = Instant::now();
    loop {
        if let Some(last_ns) = taken.all_took(epoch) {
            return (last_ns.saturating_sub(published_ns) / 1000).max(1);
        }
        if waiting.elapsed() > SWAP_WAIT {
            return 0;
        }
        std::thread::sleep(Duration::from_micros(20));
    }
}

/// A [`Reloads`] whose queue nobody serves (the receiver is held in the box): for tests of
/// what answers before a reload would run.
#[cfg(test)]
pub fn test_reloads() -> (Reloads, Box<dyn std::any::Any>) {
    let (jobs, queue) = flume::bounded::<ReloadJob>(RELOADS_QUEUED_MAX);
    (Reloads { jobs }, Box::new(queue))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confine_takes_the_rules_directory_and_refuses_paths_outside_it() {
        let base = std::env::temp_dir().join(format!(
            "verdict-confine-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(base.join("rules/team")).unwrap();
        std::fs::write(base.join("rules/team/a.rules"), "").unwrap();
        std::fs::write(base.join("elsewhere.rules"), "").unwrap();
        let rules = base.join("rules");
        // No dir configured: the directory of --rules.
        let (source, dir) = confine("", Some(&rules.join("team/a.rules"))).unwrap();
        assert_eq!(source, RulesSource::Path("a.rules".into()));
        assert_eq!(
            dir.unwrap().root(),
            std::fs::canonicalize(rules.join("team")).unwrap()
        );
        // A configured dir: --rules must be inside it.
        let configured = rules.display().to_string();
        let (source, _) = confine(&configured, Some(&rules.join("team/a.rules"))).unwrap();
        assert_eq!(source, RulesSource::Path("team/a.rules".into()));
        let (source, _) = confine(&configured, Some(&rules)).unwrap();
        assert_eq!(source, RulesSource::Path(".".into()));
        let e = confine(&configured, Some(&base.join("elsewhere.rules")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside rules.dir"), "{e}");
        // Built in, no dir: nothing to confine to.
        let (source, dir) = confine("", None).unwrap();
        assert_eq!(source, RulesSource::Default);
        assert!(dir.is_none());
        std::fs::remove_dir_all(base).unwrap();
    }
}
