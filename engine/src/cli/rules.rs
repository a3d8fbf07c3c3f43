//! `verdict check` (a rule set, before it ships) and `verdict reload` (to a running engine).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use verdict_net::ReloadReply;
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

/// `verdict reload`: asks the engine's control API at `admin` (its admin port) to compile
/// `rules` (relative to the engine's rules.dir; "": the rules it serves) and publish them.
pub fn reload(
    admin: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    token_file: Option<&Path>,
    rules: &str,
) -> anyhow::Result<ExitCode> {
    let token = match token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("--token-file {}", path.display()))?
            .trim()
            .to_string(),
        None => String::new(),
    };
    let authorization = format!("Bearer {token}");
    let mut headers = vec![("Content-Type", "application/json")];
    if token_file.is_some() {
        headers.push(("Authorization", authorization.as_str()));
    }
    let body = serde_json::json!({ "rules_path": rules }).to_string();
    let (status, text) = crate::http::call(
        admin,
        tls,
        "POST",
        "/v1/reload",
        &headers,
        body.as_bytes(),
        RELOAD_CALL_TIMEOUT,
    )
    .with_context(|| format!("reload through the admin port {admin}"))?;
    let reply: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(_) => {
            // 401, 403 and the like answer in plain text.
            eprint!("{text}");
            anyhow::bail!("reload through {admin}: HTTP {status}");
        }
    };
    let strings = |key: &str| -> Vec<String> {
        reply[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let reply = ReloadReply {
        ok: reply["ok"].as_bool().unwrap_or(false),
        epoch: reply["epoch"].as_u64().unwrap_or(0),
        rules_path: reply["rules_path"].as_str().unwrap_or(rules).to_string(),
        rules: reply["rules"].as_u64().unwrap_or(0) as u32,
        digest: reply["digest"].as_str().unwrap_or("").to_string(),
        compile_us: reply["compile_us"].as_u64().unwrap_or(0),
        errors: strings("errors"),
        models: strings("models"),
        swap_us: reply["swap_us"].as_u64().unwrap_or(0),
    };
    print_reload(&reply)
}

/// How long `verdict reload` waits for the admin port's answer (a big rule set or model
/// compiles for a while; the engine's own bound is limits.reload_timeout_ms).
const RELOAD_CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// `verdict reload --addr`: the same over the data port (kind 0x06), for engines that keep
/// `[admin] wire_reload = true`.
pub fn reload_wire(
    addr: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    rules: &str,
) -> anyhow::Result<ExitCode> {
    let reply = connect(addr, tls)?
        .reload(rules)
        .with_context(|| format!("reload {addr}"))?;
    print_reload(&reply)
}

fn print_reload(reply: &ReloadReply) -> anyhow::Result<ExitCode> {
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
            if !e.ends_with('\n') {
                eprintln!();
            }
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
