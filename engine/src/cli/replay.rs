//! `verdict replay DIR --rules PATH`: a backtest of a decision log under another rule set
//! (see [`crate::replay`]).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use verdict_models::Runtime;
use verdict_rules::Disk;

use crate::config::TopologyConfig;
use crate::replay::report::Labels;
use crate::replay::{Log, Options, replay};
use crate::runtime::rules_options;
use crate::scoring::{ModelsSource, Published, render_errors};

/// The epoch tick of a replay's model runtime, µs: a call gets at least its manifest's
/// deadline in these ticks (a `deadline_us` of 2,000 is 100 ms or more), so a call that
/// the scheduler delays is not cut, and the same log replays to the same scores. A model
/// that does exceed it is reported under `model_failures`.
const REPLAY_EPOCH_TICK_US: u64 = 100_000;

/// What `verdict replay` was given.
pub struct Args<'a> {
    pub dir: &'a Path,
    pub rules: &'a Path,
    pub models: &'a ModelsSource,
    pub labels: Option<&'a Path>,
    pub json: bool,
    /// Threads; `None`: every CPU.
    pub threads: Option<usize>,
}

/// Loads the rule set and its models as `verdict check` does, replays the log under them
/// and prints the report (text, or JSON with `--json`).
pub fn run(args: &Args<'_>, config: &TopologyConfig) -> anyhow::Result<ExitCode> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // A backtest must not depend on how busy the machine is: a model call is cut only
    // after its deadline in ticks of REPLAY_EPOCH_TICK_US, not of `models.epoch_tick_us`.
    let mut runtime = config.models.runtime((threads as u32 * 256).max(1000));
    runtime.epoch_tick_us = REPLAY_EPOCH_TICK_US;
    let runtime = Runtime::new(runtime).map_err(|e| anyhow::anyhow!("{e}"))?;
    let models = args.models.load(&runtime, None).map_err(|errors| {
        anyhow::anyhow!(
            "the models of {} do not load:\n{}",
            args.models.describe(),
            render_errors(&errors).join("\n")
        )
    })?;
    let options = rules_options(config, &models);
    let set = verdict_rules::load(args.rules, &Disk, &options).map_err(|report| {
        anyhow::anyhow!(
            "the rule set {} does not load:\n{report}",
            args.rules.display()
        )
    })?;
    let published = Published::new(set, Arc::new(models));
    let labels = args.labels.map(Labels::read).transpose()?;
    let began = Instant::now();
    let log = Log::open(args.dir)?;
    let mapped_ms = began.elapsed().as_millis() as u64;
    let options = Options {
        threads,
        entities_max: config.limits.velocity_entities_max as usize,
        labels,
    };
    let mut report = replay(&log, &published, &options)?;
    // Mapping (and faulting in) the segments is part of reading them.
    report.timing.read_ms += mapped_ms;
    report.log.dir = args.dir.display().to_string();
    report.timing.events_per_s = report.events as f64 / began.elapsed().as_secs_f64().max(1e-9);
    let skipped = &report.log.skipped;
    if skipped.decisions() + skipped.corrupt_stretches + skipped.bad_segments > 0 {
        eprintln!(
            "verdict replay: WARNING: {} decisions, {} corrupt stretches and {} segments with a bad header could not be read and were skipped (see \"skipped\"; `verdict log verify {}` says where)",
            skipped.decisions(),
            skipped.corrupt_stretches,
            skipped.bad_segments,
            args.dir.display()
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(ExitCode::SUCCESS)
}
