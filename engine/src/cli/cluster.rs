//! `verdict cluster status | rebalance | drain NODE`: an operator's view of a cluster and
//! changes to its partition map, straight from NATS (no node needs to answer). Changes are
//! compare-and-set on the map's revision ([`crate::cluster::apply`]).

use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;

use crate::cluster::broker::Nats;
use crate::cluster::table::PartitionMap;
use crate::cluster::{self, Change};
use crate::config::ClusterConfig;

/// What the operator asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Status { json: bool },
    Apply(Change),
}

/// How many times a change is recomputed when another writer changes the map first.
const APPLY_ATTEMPTS: u32 = 5;

pub fn run(config: &ClusterConfig, action: &Action) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        config.enabled(),
        "no cluster: give --cluster nats://HOST:PORT[,...] or a shards.toml with [cluster] urls"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime")?;
    runtime.block_on(async {
        let options = cluster::nats_options(config, "verdict cluster".into());
        let broker = Nats::connect(&options).await?;
        match action {
            Action::Status { json } => status(&broker, *json).await,
            Action::Apply(change) => {
                let applied = cluster::apply(&broker, change, APPLY_ATTEMPTS).await?;
                if applied.moved == 0 {
                    println!(
                        "no change: the map at epoch {} already is what this asks",
                        applied.map.epoch
                    );
                } else {
                    println!(
                        "epoch {}: {} partitions moved",
                        applied.map.epoch, applied.moved
                    );
                }
                print_owners(&applied.map);
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// The replicated streams verdict writes, and the messages each holds (absent: not made
/// yet). Read straight from JetStream: what consumers off the nodes can read now.
async fn stream_counts(broker: &Nats) -> Vec<(&'static str, Option<u64>)> {
    use cluster::broker::Streams;
    let streams = broker.streams();
    let mut out = Vec::new();
    for name in [
        cluster::ship::STREAM,
        cluster::ship::EVENTS,
        cluster::ingest::INPUT,
        cluster::ingest::OUTPUT,
    ] {
        let state = streams.state(name).await.ok().flatten();
        out.push((name, state.map(|s| s.messages)));
    }
    out
}

async fn status(broker: &Nats, as_json: bool) -> anyhow::Result<ExitCode> {
    let map = cluster::read_map(broker).await?;
    let expected: Vec<String> = map.as_ref().map_or(Vec::new(), |(m, _)| m.nodes.clone());
    let live = cluster::live_nodes_expecting(broker, &expected).await?;
    let streams = stream_counts(broker).await;
    let now = cluster::now_ms();
    if as_json {
        let nodes: Vec<_> = live.values().collect();
        let out = json!({
            "nodes": nodes,
            "map": map.as_ref().map(|(m, revision)| json!({
                "epoch": m.epoch,
                "revision": revision,
                "partitions": m.partitions,
                "draining": m.draining,
                "owned": m.counts(),
                "lost": m.nodes.iter().filter(|n| !live.contains_key(*n)).collect::<Vec<_>>(),
            })),
            "streams": streams
                .iter()
                .filter_map(|(name, n)| n.map(|n| (name.to_string(), json!(n))))
                .collect::<serde_json::Map<String, serde_json::Value>>(),
        });
        println!("{out:#}");
        return Ok(ExitCode::SUCCESS);
    }
    match &map {
        Some((m, revision)) => println!(
            "partition map: epoch {} (revision {revision}), {} partitions",
            m.epoch, m.partitions
        ),
        None => println!("partition map: none yet (the first node to start writes it)"),
    }
    let counts = map.as_ref().map(|(m, _)| m.counts()).unwrap_or_default();
    let mut names: Vec<&str> = live.keys().map(String::as_str).collect();
    names.extend(counts.keys().filter(|n| !live.contains_key(**n)));
    println!(
        "{:<20} {:<5} {:<22} {:>6} {:>10} {:>10} {:>10} {:>8}",
        "node", "live", "address", "shards", "partitions", "heartbeat", "unshipped", "cold"
    );
    for name in names {
        let owned = counts.get(name).copied().unwrap_or(0);
        match live.get(name) {
            Some(info) => println!(
                "{:<20} {:<5} {:<22} {:>6} {:>10} {:>8.1} s {:>10} {:>8}",
                name,
                "yes",
                format!("{}:{}", info.address, info.port),
                info.shards(),
                owned,
                now.saturating_sub(info.heartbeat_ms) as f64 / 1000.0,
                info.decisions_unshipped,
                info.cold_partitions
            ),
            None => println!(
                "{name:<20} {:<5} {:<22} {:>6} {owned:>10} {:>10}   lost: its partitions move at a live node's next heartbeat",
                "no", "-", "-", "-"
            ),
        }
    }
    if let Some((m, _)) = &map
        && !m.draining.is_empty()
    {
        println!("draining: {}", m.draining.join(", "));
    }
    let held: Vec<String> = streams
        .iter()
        .filter_map(|(name, n)| n.map(|n| format!("{name} {n}")))
        .collect();
    if !held.is_empty() {
        println!("streams (messages): {}", held.join(", "));
    }
    let moving: u32 = live.values().map(|n| n.cold_partitions).sum();
    let handed: usize = live.values().map(|n| n.handing_off.len()).sum();
    let releasing: usize = live.values().map(|n| n.releasing.len()).sum();
    let epoch = map.as_ref().map_or(0, |(m, _)| m.epoch);
    let behind: Vec<&str> = live
        .values()
        .filter(|n| n.routes_epoch < epoch)
        .map(|n| n.node.as_str())
        .collect();
    if moving > 0 || handed > 0 || releasing > 0 || !behind.is_empty() {
        println!(
            "moves in progress: {handed} partitions handed off (their old owners decide them \
             while their new owners replay their history), {releasing} released (their old \
             owners ship what they decided), {moving} cold (their new owners replay their last \
             events or whole history before serving them; their events are refused with error \
             9 meanwhile); not yet routing by epoch {epoch}: {}",
            if behind.is_empty() {
                "none".to_string()
            } else {
                behind.join(", ")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_owners(map: &PartitionMap) {
    for (node, count) in map.counts() {
        println!("  {node:<20} {count:>6} partitions");
    }
}
