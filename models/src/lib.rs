//! verdict-models owns the model side of a decision: the wasm ABI v1 and its load-time
//! checks, the manifest, the wasmtime engine (with its epoch ticker for deadlines), the
//! precompiled-module cache, and the per-core instance pools that score batches of rows.
//!
//! Data flows one way: manifest + module bytes -> [`Runtime::compile`] (control thread: checks,
//! compile or map a cached artifact, build the `InstancePre`) -> [`Model`], shared by every
//! core in a [`ModelSet`] -> [`Pool`] (one per model per core: ready instances) ->
//! [`Pool::score`] (rows of f32 features in, one f64 score per row out).
//!
//! [`import`] turns an XGBoost or LightGBM model file into such a model: the tree scorer
//! of `models/trees` (built for wasm32 once, with verdict; natively as [`trees`]) plus the
//! model's tables.
//!
//! The engine computes the features (they are rules-language expressions, compiled by
//! verdict-rules); this crate never sees an event. The ABI is documented in
//! `models/README.md`.
//!
//! `fuzzing` (hidden) holds the bodies of the fuzz targets in `models/fuzz/`, which
//! `tests/fuzz_corpus.rs` also runs over the committed corpus.

mod abi;
mod cache;
pub mod examples;
#[doc(hidden)]
pub mod fuzzing;
pub mod import;
pub mod manifest;
mod pool;
pub mod trees;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use abi::ABI_VERSION;
pub use manifest::{Feature, Manifest};
pub use pool::{CallError, Pool, PoolCounters};

/// Why a model could not be loaded. Each names the file it is about.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {message}")]
    Manifest { path: String, message: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    /// The module breaks ABI v1 (every violation found is listed).
    #[error("{path}: not a verdict ABI v1 model: {}", .problems.join("; "))]
    Abi { path: String, problems: Vec<String> },
    #[error("{path}: {message}")]
    Compile { path: String, message: String },
    #[error("model `{name}` is defined twice: {first} and {second}")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
    #[error("the wasm engine: {0}")]
    Engine(String),
}

/// How the wasm runtime is set up (from `[models]` in shards.toml).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where precompiled modules are kept; `None`: compile every time.
    pub cache_dir: Option<PathBuf>,
    /// How often the epoch ticker advances; a call is cut between its deadline and its
    /// deadline plus one tick.
    pub epoch_tick_us: u64,
    /// Largest linear memory one instance may grow to.
    pub memory_bytes_max: u64,
    /// Most rows one call scores; larger batches are split.
    pub rows_per_call_max: u32,
    /// Instance slots the pooling allocator reserves (every core's pools together).
    pub instance_slots: u32,
}

impl RuntimeConfig {
    /// The epoch ticks that give a call at least `deadline_us`: it is cut between the
    /// deadline and one tick later.
    pub fn deadline_ticks(&self, deadline_us: u64) -> u64 {
        deadline_us.div_ceil(self.epoch_tick_us.max(1)) + 1
    }
}

impl Default for RuntimeConfig {
    fn default() -> RuntimeConfig {
        RuntimeConfig {
            cache_dir: None,
            epoch_tick_us: 1000,
            memory_bytes_max: 64 << 20,
            rows_per_call_max: 64,
            instance_slots: 1000,
        }
    }
}

/// The wasmtime engine every model of this process is compiled for, and its epoch ticker.
/// Cheap to clone; the ticker stops when the last clone is dropped.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    config: RuntimeConfig,
    /// How the instances are allocated, for logs.
    pub allocator: &'static str,
    _ticker: Arc<Ticker>,
}

/// Advances the engine's epoch every tick on its own thread: the clock every deadline reads.
struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn engine_config(config: &RuntimeConfig, pooling: bool) -> Config {
    let mut c = Config::new();
    c.epoch_interruption(true);
    c.cranelift_opt_level(wasmtime::OptLevel::Speed);
    if pooling {
        let mut p = PoolingAllocationConfig::default();
        p.total_core_instances(config.instance_slots)
            .total_memories(config.instance_slots)
            .total_tables(config.instance_slots)
            .max_memory_size(config.memory_bytes_max as usize);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    }
    c
}

impl Runtime {
    /// Builds the engine (pooling allocator if the machine allows its reservations, else
    /// on-demand) and starts the epoch ticker.
    pub fn new(config: RuntimeConfig) -> Result<Runtime, ModelError> {
        let (engine, allocator) = match Engine::new(&engine_config(&config, true)) {
            Ok(e) => (e, "pooling"),
            Err(pooled) => {
                let e = Engine::new(&engine_config(&config, false)).map_err(|e| {
                    ModelError::Engine(format!("{e:#} (pooling allocator: {pooled:#})"))
                })?;
                (e, "on-demand")
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (ticking, flag) = (engine.clone(), stop.clone());
        let tick = Duration::from_micros(config.epoch_tick_us.max(1));
        std::thread::Builder::new()
            .name("verdict-epoch-tick".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    ticking.increment_epoch();
                }
            })
            .map_err(|e| ModelError::Engine(format!("starting the epoch ticker: {e}")))?;
        Ok(Runtime {
            engine,
            config,
            allocator,
            _ticker: Arc::new(Ticker { stop }),
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Checks `wasm` against ABI v1 and compiles it (or maps its cached artifact), off the
    /// data cores. The result is shared by every core.
    pub fn compile(&self, manifest: Manifest, wasm: &[u8]) -> Result<Model, ModelError> {
        let started = Instant::now();
        let shown = manifest.wasm.display().to_string();
        let sha256 = cache::sha256_hex(wasm);
        let (module, cached) = cache::module(
            &self.engine,
            self.config.cache_dir.as_deref(),
            &sha256,
            wasm,
        )
        .map_err(|message| ModelError::Compile {
            path: shown.clone(),
            message,
        })?;
        let checked = abi::check(self, &module, &manifest).map_err(|problems| ModelError::Abi {
            path: shown.clone(),
            problems,
        })?;
        Ok(Model {
            deadline_ticks: self.config.deadline_ticks(manifest.deadline_us),
            manifest,
            sha256,
            pre: checked,
            cached,
            load_us: started.elapsed().as_micros() as u64,
            rows_per_call_max: self.config.rows_per_call_max,
            memory_bytes_max: self.config.memory_bytes_max,
        })
    }

    /// Reads and compiles the model whose manifest is at `path`.
    pub fn load(&self, path: &Path) -> Result<Model, ModelError> {
        let manifest = Manifest::read(path)?;
        let wasm = manifest::read_bounded(&manifest.wasm, manifest::WASM_BYTES_MAX)?;
        self.compile(manifest, &wasm)
    }

    /// Every model of a directory (see [`manifest::manifests_in`]), or every error.
    pub fn load_dir(&self, dir: &Path) -> Result<ModelSet, Vec<ModelError>> {
        let paths = manifest::manifests_in(dir).map_err(|e| vec![e])?;
        if paths.is_empty() {
            return Err(vec![ModelError::Io {
                path: dir.display().to_string(),
                message: "no model manifests (*.toml or */manifest.toml)".into(),
            }]);
        }
        ModelSet::new(paths.iter().map(|p| self.load(p)).collect())
    }

    /// The shipped example models, from the copies built into the binary.
    pub fn load_examples(&self) -> Result<ModelSet, Vec<ModelError>> {
        ModelSet::new(
            examples::EMBEDDED
                .iter()
                .map(|e| {
                    let manifest = Manifest::parse(Path::new(e.manifest_path), e.manifest)?;
                    self.compile(manifest, e.wasm)
                })
                .collect(),
        )
    }
}

/// A compiled, checked model: shared by every core (`Arc<Model>`); each core makes its own
/// [`Pool`] of instances from it.
pub struct Model {
    pub manifest: Manifest,
    /// SHA-256 of the module's bytes (hex): its identity in the cache, stats and reloads.
    pub sha256: String,
    /// Whether the compiled code came from the on-disk cache.
    pub cached: bool,
    /// Time to check and compile (or map) it, microseconds.
    pub load_us: u64,
    pre: wasmtime::InstancePre<pool::StoreState>,
    deadline_ticks: u64,
    rows_per_call_max: u32,
    memory_bytes_max: u64,
}

impl Model {
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// Features per row.
    pub fn cols(&self) -> usize {
        self.manifest.features.len()
    }

    /// Most rows one call scores.
    pub fn rows_per_call_max(&self) -> usize {
        self.rows_per_call_max as usize
    }

    /// `name@version (sha256 prefix)`, for logs and stats.
    pub fn describe(&self) -> String {
        format!(
            "{}@{} ({})",
            self.manifest.name,
            self.manifest.version,
            &self.sha256[..12]
        )
    }
}

/// The models one epoch scores with, sorted by name; shared by every core.
#[derive(Default)]
pub struct ModelSet {
    pub models: Vec<Arc<Model>>,
    /// A digest over every model's name, version and module hash.
    pub digest: String,
}

impl ModelSet {
    /// Collects loaded models; every error, including a name defined twice.
    pub fn new(loaded: Vec<Result<Model, ModelError>>) -> Result<ModelSet, Vec<ModelError>> {
        let mut errors = Vec::new();
        let mut models: Vec<Arc<Model>> = Vec::new();
        for m in loaded {
            match m {
                Ok(m) => {
                    if let Some(first) = models.iter().find(|x| x.name() == m.name()) {
                        errors.push(ModelError::Duplicate {
                            name: m.name().to_string(),
                            first: first.manifest.path.display().to_string(),
                            second: m.manifest.path.display().to_string(),
                        });
                    } else {
                        models.push(Arc::new(m));
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        models.sort_by(|a, b| a.name().cmp(b.name()));
        let mut all = String::new();
        for m in &models {
            all.push_str(&format!(
                "{}@{}:{}\n",
                m.name(),
                m.manifest.version,
                m.sha256
            ));
        }
        let digest = cache::sha256_hex(all.as_bytes())[..16].to_string();
        Ok(ModelSet { models, digest })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Model>> {
        self.models.iter().find(|m| m.name() == name)
    }

    pub fn names(&self) -> Vec<String> {
        self.models.iter().map(|m| m.name().to_string()).collect()
    }
}
