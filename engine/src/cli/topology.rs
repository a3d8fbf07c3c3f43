//! `verdict topology`: the hardware hwloc sees and the shard map of a topology, or
//! `--write FILE`: a commented topology with one shard per CPU of this machine.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::{self, TopologyConfig};
use crate::hardware::Hardware;

pub fn run(
    config: &TopologyConfig,
    source: &str,
    write: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let hw = Hardware::detect()?;
    if let Some(path) = write {
        let mine = TopologyConfig::for_cpus(&hw.cpu_indices());
        std::fs::write(path, config::render(&mine, config::FILE_HEADER))
            .with_context(|| format!("writing {}", path.display()))?;
        println!(
            "wrote {} ({} shards, cpus {:?})",
            path.display(),
            mine.shards.len(),
            hw.cpu_indices()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("hardware (hwloc)");
    println!("  cpu model   {}", hw.cpu_model);
    println!("  packages    {}", hw.packages);
    println!("  cores       {}", hw.cores);
    println!("  cpus (PUs)  {}", hw.cpus.len());
    for node in &hw.numa_nodes {
        let cpus: Vec<u32> = hw
            .cpus
            .iter()
            .filter(|c| c.numa_node == node.os_index)
            .map(|c| c.os_index)
            .collect();
        println!(
            "  numa node {}: {:.1} GiB, cpus {:?}",
            node.os_index,
            node.memory_bytes as f64 / (1u64 << 30) as f64,
            cpus
        );
    }
    println!();
    println!("shard map (from {source})");
    println!(
        "  listen {}:{} (shared, SO_REUSEPORT); shard ports from {}",
        config.listen.address,
        config.listen.port,
        match config.listen.shard_port_base {
            0 => "ephemeral".to_string(),
            b => b.to_string(),
        }
    );
    println!(
        "  routing {}: {} partitions, partition p -> shard p % {}",
        verdict_net::routing::ROUTING_NAME,
        config.routing.partitions,
        config.shards.len()
    );
    println!(
        "  {:>5} {:>4} {:>5} {:>5} {:>6}",
        "shard", "cpu", "core", "numa", "port"
    );
    let mut problems = 0;
    for (i, s) in config.shards.iter().enumerate() {
        let port = match config.listen.shard_port_base {
            0 => "auto".to_string(),
            b => (u32::from(b) + i as u32).to_string(),
        };
        match hw.cpu(s.cpu) {
            Some(c) => println!(
                "  {i:>5} {:>4} {:>5} {:>5} {port:>6}",
                s.cpu, c.core, c.numa_node
            ),
            None => {
                problems += 1;
                println!("  {i:>5} {:>4}  <- no such cpu on this machine", s.cpu);
            }
        }
    }
    Ok(if problems > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
