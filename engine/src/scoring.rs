//! Models in the decision: what an epoch publishes (rules plus the models they call), and
//! each core's side of scoring: its instance pools, the feature rows it fills, its call
//! statistics.
//!
//! Per batch of events (a run of pipelined evaluate frames read together, or every event of an
//! evaluate-batch): every event is
//! prepared (velocity recorded), then each model the rules call scores all of them in one
//! call per `rows_per_call_max` rows, then every event is decided with its scores. A model
//! that fails (trap, deadline, error, no ready instance) gives its events the rule set's
//! fallback score and flags them in the decision; its broken instance is replaced from the
//! `InstancePre` after the batch, off the failed events' path.

use std::path::PathBuf;
use std::sync::Arc;

use hdrhistogram::Histogram;
use verdict_models::{Model, ModelError, ModelSet, Pool, Runtime};
use verdict_net::{ArchivedEvent, ModelStats};
use verdict_rules::{Epoch, FeatureInput, ModelInput, Outcome, RuleSet, Source};

use crate::stats::percentiles;

/// Highest call time the histograms track, ns.
const CALL_NS_MAX: u64 = 60_000_000_000;

/// What one epoch decides with: the rule set and the models it calls.
pub struct Published {
    pub rules: RuleSet,
    /// Every model loaded (the rules may call some of them).
    pub models: Arc<ModelSet>,
    /// `used[i]` is the model behind `rules.models()[i]`.
    pub used: Vec<Arc<Model>>,
    /// TLS for new connections (`None`: plaintext), read from `[tls]` with the rest of the
    /// epoch, so a reload serves a renewed certificate.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Epoch for Published {
    fn set_epoch(&mut self, epoch: u64) {
        self.rules.epoch = epoch;
    }
}

impl Published {
    /// Ties a rule set to the models it was checked against.
    pub fn new(rules: RuleSet, models: Arc<ModelSet>) -> Published {
        let used = rules
            .models()
            .iter()
            .map(|name| {
                models
                    .get(name)
                    .cloned()
                    .expect("the rules were checked against these models")
            })
            .collect();
        Published {
            rules,
            models,
            used,
            tls: None,
        }
    }

    /// Each velocity function's canonical text (`count(account, 1h)`), in the order
    /// decisions report their values.
    pub fn velocity_ids(&self) -> Vec<&str> {
        self.rules
            .program()
            .velocity
            .iter()
            .map(|v| v.id.as_str())
            .collect()
    }

    /// `name@version (sha)` of every loaded model.
    pub fn describe_models(&self) -> Vec<String> {
        self.models.models.iter().map(|m| m.describe()).collect()
    }
}

/// What the rules are checked against for a model set: each model's name and features,
/// located in its manifest.
pub fn model_inputs(set: &ModelSet) -> Vec<ModelInput> {
    set.models
        .iter()
        .map(|m| ModelInput {
            name: m.name().to_string(),
            manifest: Some(Source::new(
                m.manifest.path.display().to_string(),
                m.manifest.text.clone(),
            )),
            features: m
                .manifest
                .features
                .iter()
                .map(|f| FeatureInput {
                    expr: f.expr.clone(),
                    offset: f.offset,
                })
                .collect(),
            absent_features_missing: m.manifest.absent_features
                == verdict_models::manifest::Absent::Missing,
        })
        .collect()
}

/// Where the models come from: a directory, or the shipped examples built in.
#[derive(Debug, Clone)]
pub enum ModelsSource {
    Dir(PathBuf),
    Default,
}

impl ModelsSource {
    pub fn describe(&self) -> String {
        match self {
            ModelsSource::Dir(d) => d.display().to_string(),
            ModelsSource::Default => {
                format!("{} (built in)", verdict_models::examples::EXAMPLES_DIR)
            }
        }
    }

    /// Loads every model, reusing a model of `previous` whose module and manifest are
    /// unchanged (so cores keep its warm instances across a reload).
    pub fn load(
        &self,
        runtime: &Runtime,
        previous: Option<&ModelSet>,
    ) -> Result<ModelSet, Vec<ModelError>> {
        let mut set = match self {
            ModelsSource::Dir(d) => runtime.load_dir(d)?,
            ModelsSource::Default => runtime.load_examples()?,
        };
        if let Some(previous) = previous {
            for m in &mut set.models {
                if let Some(old) = previous.get(m.name())
                    && old.sha256 == m.sha256
                    && old.manifest == m.manifest
                {
                    *m = old.clone();
                }
            }
        }
        Ok(set)
    }
}

/// Renders model errors one per line.
pub fn render_errors(errors: &[ModelError]) -> Vec<String> {
    errors.iter().map(|e| format!("error: {e}")).collect()
}

/// One model's calls on this core.
struct CallStats {
    call_ns: Histogram<u64>,
}

/// A core's pools: those of the models the current epoch uses, and of the previous epoch's
/// (a batch that began under it may still be scoring: it took its epoch at its start and
/// then waited for other shards).
pub struct CoreModels {
    pools: Vec<(Pool, CallStats)>,
    /// `pools[current[m]]` is the pool of the current epoch's model `m`.
    current: Vec<usize>,
    /// One call's rows of features, and its scores.
    rows: Vec<f32>,
    out: Vec<f64>,
    /// Which pool scores each model of the epoch being scored (scratch).
    resolved: Vec<usize>,
}

impl CoreModels {
    pub fn new(published: &Published) -> CoreModels {
        let mut core = CoreModels {
            pools: Vec::new(),
            current: Vec::new(),
            rows: Vec::new(),
            out: Vec::new(),
            resolved: Vec::new(),
        };
        core.swap(published);
        core
    }

    /// Takes the pools of a new epoch: a model that did not change keeps its pool (and its
    /// ready instances and stats); a new one gets a fresh pool. Pools neither this epoch
    /// nor the one before uses are dropped.
    pub fn swap(&mut self, published: &Published) {
        let previous: Vec<Arc<Model>> = self
            .current
            .iter()
            .map(|&i| self.pools[i].0.model().clone())
            .collect();
        self.pools.retain(|(p, _)| {
            let keep = |m: &Arc<Model>| Arc::ptr_eq(p.model(), m);
            published.used.iter().any(keep) || previous.iter().any(keep)
        });
        self.current = published
            .used
            .iter()
            .map(|model| self.pool_of(model))
            .collect();
    }

    /// The index of `model`'s pool, made if it has none.
    fn pool_of(&mut self, model: &Arc<Model>) -> usize {
        match self
            .pools
            .iter()
            .position(|(p, _)| Arc::ptr_eq(p.model(), model))
        {
            Some(i) => i,
            None => {
                self.pools.push((
                    Pool::new(model.clone()),
                    CallStats {
                        call_ns: Histogram::new_with_bounds(1, CALL_NS_MAX, 3)
                            .expect("valid bounds"),
                    },
                ));
                self.pools.len() - 1
            }
        }
    }

    /// Replaces instances lost in the last batch. Cheap when none were.
    pub fn refill(&mut self) {
        for (pool, _) in &mut self.pools {
            if pool.ready() < pool.model().manifest.instances_per_core as usize {
                pool.refill();
            }
        }
    }

    /// Scores `events` (already prepared into `outcomes`) with every model the rules call:
    /// `scores[e * models + m]`, and `failed` alike. `clock` times the calls.
    pub fn score(
        &mut self,
        published: &Published,
        clock: &quanta::Clock,
        events: &[&ArchivedEvent],
        outcomes: &[Outcome],
        scores: &mut Vec<f64>,
        failed: &mut Vec<bool>,
    ) {
        let (n, models) = (events.len(), published.used.len());
        scores.clear();
        scores.resize(n * models, 0.0);
        failed.clear();
        failed.resize(n * models, false);
        // The current epoch's pools, looked up (no allocation once `resolved` has grown);
        // an older epoch's batch finds its pools kept, or gets a fresh one (rare: an epoch
        // two reloads old).
        self.resolved.clear();
        for model in &published.used {
            let i = self.pool_of(model);
            self.resolved.push(i);
        }
        for m in 0..models {
            let (pool, stats) = &mut self.pools[self.resolved[m]];
            let cols = pool.model().cols();
            let chunk = pool.model().rows_per_call_max();
            let fallback = published.rules.model_fallback(m);
            let mut start = 0;
            while start < n {
                let rows = chunk.min(n - start);
                self.rows.resize(rows * cols, 0.0);
                for (r, row) in self.rows.chunks_exact_mut(cols).enumerate() {
                    published
                        .rules
                        .features(events[start + r], m, &outcomes[start + r], row);
                }
                self.out.resize(rows, 0.0);
                let began = clock.raw();
                let result = pool.score(rows, &self.rows, &mut self.out[..rows]);
                stats
                    .call_ns
                    .saturating_record(clock.delta_as_nanos(began, clock.raw()).max(1));
                for r in 0..rows {
                    let at = (start + r) * models + m;
                    match result {
                        Ok(()) => scores[at] = self.out[r],
                        Err(_) => {
                            scores[at] = fallback;
                            failed[at] = true;
                        }
                    }
                }
                start += rows;
            }
        }
    }

    /// Each model of the current epoch's stats, for a snapshot.
    pub fn stats(&self) -> Vec<(ModelStats, Histogram<u64>)> {
        self.current
            .iter()
            .map(|&i| &self.pools[i])
            .map(|(pool, stats)| {
                let c = pool.counters;
                let m = &pool.model().manifest;
                (
                    ModelStats {
                        name: m.name.clone(),
                        version: m.version.clone(),
                        calls: c.calls,
                        rows: c.rows,
                        traps: c.traps,
                        timeouts: c.timeouts,
                        errors: c.errors,
                        exhausted_rows: c.exhausted_rows,
                        instances_ready: pool.ready() as u64,
                        call_ns: percentiles(&stats.call_ns),
                    },
                    stats.call_ns.clone(),
                )
            })
            .collect()
    }
}
