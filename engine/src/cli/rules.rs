//! `verdict check` (a rule set, before it ships) and `verdict reload` (to a running engine).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use verdict_rules::ir::Agg;
use verdict_rules::{Disk, VelocityState};

use super::connect;
use crate::config::TopologyConfig;
use crate::runtime::{model_runtime, rules_options};
use crate::scoring::{ModelsSource, render_errors};

/// `verdict check PATH`: every error with file:line:col and a caret (in the rules, the
/// model manifests and modules), exit 1 if any; else a summary of what the rule set holds.
pub fn check(
    path: &Path,
    config: &TopologyConfig,
    models: &ModelsSource,
) -> anyhow::Result<ExitCode> {
    let runtime = model_runtime(config)?;
    let models = match models.load(&runtime, None) {
        Ok(set) => set,
        Err(errors) => {
            for e in render_errors(&errors) {
                eprintln!("{e}");
            }
            eprintln!("{} model errors in {}", errors.len(), models.describe());
            return Ok(ExitCode::FAILURE);
        }
    };
    let options = rules_options(config, &models);
    let set = match verdict_rules::load(path, &Disk, &options) {
        Ok(set) => set,
        Err(report) => {
            eprintln!("{report}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let p = set.program();
    let shadow = p.rules.iter().filter(|r| r.shadow).count();
    println!("{}: ok (digest {})", path.display(), set.digest);
    println!(
        "  rules: {} ({} shadow), in evaluation order: {}",
        p.rules.len(),
        shadow,
        p.rules
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for list in &p.lists {
        println!(
            "  list {}: {} entries ({})",
            list.name,
            list.values.len(),
            list.origin
        );
    }
    for a in &p.attributes {
        println!("  attribute {}: {}", a.name, a.ty.name());
    }
    let entities = config.limits.velocity_entities_max as usize;
    for v in &p.velocity {
        let kind = match v.agg {
            Agg::Count => "count",
            Agg::Sum => "sum",
            Agg::Distinct => "distinct",
        };
        println!("  velocity {} ({kind})", v.id);
    }
    if !p.velocity.is_empty() {
        let bytes = VelocityState::memory_bound_bytes(&p.velocity, entities);
        println!(
            "  velocity memory: at most {:.1} MiB per shard ({entities} entities per key, limits.velocity_entities_max)",
            bytes as f64 / (1 << 20) as f64
        );
    }
    for m in &models.models {
        let used = if p.models.contains(&m.manifest.name) {
            "called"
        } else {
            "not called"
        };
        println!(
            "  model {} ({used}): {} features, deadline {} us, {} instances per core, {} ({} us{})",
            m.describe(),
            m.cols(),
            m.manifest.deadline_us,
            m.manifest.instances_per_core,
            m.manifest.path.display(),
            m.load_us,
            if m.cached { ", from the cache" } else { "" }
        );
    }
    println!("  compiled: {}", set.shape());
    match &p.policy {
        Some(policy) => println!(
            "  policy: {} arms, otherwise {}",
            policy.arms.len(),
            policy.otherwise.unwrap_or(set.default_action()).as_str()
        ),
        None => println!(
            "  policy: none (the strongest fired action decides, else {})",
            set.default_action().as_str()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `verdict reload`: asks the engine at `addr` to compile `rules` (a path on this machine,
/// made absolute here; none: the path the engine serves) and publish it.
pub fn reload(addr: &str, rules: Option<&Path>) -> anyhow::Result<ExitCode> {
    let rules_path = match rules {
        None => String::new(),
        Some(p) => std::fs::canonicalize(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string(),
    };
    let reply = connect(addr)?
        .reload(&rules_path)
        .with_context(|| format!("reload {addr}"))?;
    if reply.ok {
        println!(
            "epoch {} published: {} rules from {} (digest {}, compiled in {} us); every shard deciding with it {} us after publishing",
            reply.epoch,
            reply.rules,
            reply.rules_path,
            reply.digest,
            reply.compile_us,
            reply.swap_us
        );
        if !reply.models.is_empty() {
            println!("  models: {}", reply.models.join(", "));
        }
        Ok(ExitCode::SUCCESS)
    } else {
        for e in &reply.errors {
            eprint!("{e}");
        }
        eprintln!(
            "reload of {} failed with {} errors; epoch {} stays",
            reply.rules_path,
            reply.errors.len(),
            reply.epoch
        );
        Ok(ExitCode::FAILURE)
    }
}
