//! The subcommands that talk to a running engine as clients, plus `verdict topology` and
//! `verdict check`.

pub mod rules;
pub mod send;
pub mod stats;
pub mod topology;

use std::process::ExitCode;

use anyhow::Context;
use verdict_net::Client;

/// Where client commands connect by default: the shipped shards.toml's shared port.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7400";
/// Where admin commands connect by default: the shipped shards.toml's admin port.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:7480";

pub fn connect(addr: &str) -> anyhow::Result<Client> {
    Client::connect(addr).with_context(|| format!("connecting to {addr}"))
}

/// `verdict ping`: round trips, one line each, then min/avg/max.
pub fn ping(addr: &str, count: u32) -> anyhow::Result<ExitCode> {
    let mut client = connect(addr)?;
    let mut times = Vec::with_capacity(count as usize);
    for seq in 0..count.max(1) {
        let rtt = client.ping().with_context(|| format!("ping {addr}"))?;
        println!(
            "pong from {addr}: seq={seq} time={:.1} us",
            rtt.as_secs_f64() * 1e6
        );
        times.push(rtt.as_secs_f64() * 1e6);
    }
    if times.len() > 1 {
        let min = times.iter().cloned().fold(f64::MAX, f64::min);
        let max = times.iter().cloned().fold(0.0, f64::max);
        let avg = times.iter().sum::<f64>() / times.len() as f64;
        println!(
            "{} pings: min {min:.1} us, avg {avg:.1} us, max {max:.1} us",
            times.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
