//! `verdict-load`: an open/closed-loop load generator for verdict (and, for comparison, for
//! redis-server's PING), and `verdict-load sweep`, the baseline `scripts/latency.sh` runs.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use verdict_bench::events::{EventGen, encode_events, events_for_shard, events_from_file};
use verdict_bench::load::{self, Plan, Target, Workload};
use verdict_bench::{report, sweep};

#[derive(Parser)]
#[command(about = "Load generator for verdict: closed or open loop, naive or shard-aware")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum WorkloadArg {
    Evaluate,
    Ping,
    RedisPing,
}

#[derive(Subcommand)]
enum Cmd {
    /// One run; prints a table row (and optionally JSON / .hgrm).
    Run {
        #[arg(long, default_value = "127.0.0.1:7400")]
        addr: String,
        /// Ask the engine for its topology and send each event to its owning shard's port.
        #[arg(long)]
        shard_aware: bool,
        /// Ask a cluster node for the cluster's topology (kind 0x07) and send each event to
        /// the port of the node and shard that own it.
        #[arg(long, conflicts_with = "shard_aware")]
        cluster_aware: bool,
        /// Client threads (one monoio runtime each).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Pin client threads to these CPUs (comma-separated, cycled).
        #[arg(long, value_delimiter = ',')]
        cpus: Vec<usize>,
        /// Connections per thread.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Requests in flight per connection (closed loop).
        #[arg(long, default_value_t = 1)]
        depth: usize,
        /// Open loop at this total rate, requests/s (omit for closed loop).
        #[arg(long)]
        rate: Option<f64>,
        /// Measured seconds (after the warm-up).
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Warm-up seconds, not measured.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Seconds without an answer before in-flight requests count as timeouts.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
        #[arg(long, value_enum, default_value = "evaluate")]
        workload: WorkloadArg,
        /// Events from a JSON-lines file instead of the seeded generator.
        #[arg(long)]
        events: Option<PathBuf>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Pre-encoded events per target.
        #[arg(long, default_value_t = 4096)]
        pool: usize,
        /// Stamp each event with the wall clock (ms) as it is sent, so event time moves on
        /// as in live traffic (otherwise pool events repeat their own times).
        #[arg(long)]
        stamp_now: bool,
        /// Write the run as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write the percentile distribution (.hgrm) here.
        #[arg(long)]
        hgrm: Option<PathBuf>,
        /// Speak TLS, trusting the CA certificates in FILE (PEM).
        #[arg(long, value_name = "FILE")]
        tls_ca: Option<PathBuf>,
        /// Client certificate chain (PEM) for mutual TLS.
        #[arg(long, value_name = "FILE", requires = "tls_ca")]
        tls_cert: Option<PathBuf>,
        /// The client certificate's key (PEM).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// The latency baseline: reference ceiling, engine maximum, open-loop sweep, summary.
    Sweep {
        #[arg(long, default_value = "target/release/verdict")]
        verdict: PathBuf,
        #[arg(long, default_value = "target/release/verdict-echo")]
        echo: PathBuf,
        /// Output folder (default bench/results/<timestamp>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Under a minute: shorter runs, five rates.
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value_t = 0)]
        server_cpu: usize,
        #[arg(long, default_value_t = 1)]
        client_cpu: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .with_context(|| format!("{addr} resolves to nothing"))
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Cmd::Sweep {
            verdict,
            echo,
            out,
            quick,
            server_cpu,
            client_cpu,
            seed,
        } => {
            let out = out.unwrap_or_else(|| {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                PathBuf::from(format!("bench/results/{secs}"))
            });
            sweep::Sweep {
                verdict_bin: verdict,
                echo_bin: echo,
                out,
                quick,
                server_cpu,
                client_cpu,
                seed,
            }
            .run()
        }
        Cmd::Run {
            addr,
            shard_aware,
            cluster_aware,
            threads,
            cpus,
            connections,
            depth,
            rate,
            duration,
            warmup,
            timeout,
            workload,
            events,
            seed,
            pool,
            stamp_now,
            json,
            hgrm,
            tls_ca,
            tls_cert,
            tls_key,
        } => {
            let tls = match tls_ca {
                Some(ca_file) => Some(
                    verdict_net::tls::ClientTls {
                        ca_file,
                        cert_file: tls_cert,
                        key_file: tls_key,
                    }
                    .config()?,
                ),
                None => None,
            };
            let workload = match workload {
                WorkloadArg::Evaluate => Workload::Evaluate,
                WorkloadArg::Ping => Workload::Ping,
                WorkloadArg::RedisPing => Workload::RedisPing,
            };
            let base = resolve(&addr)?;
            let mut source: Box<dyn FnMut() -> verdict_net::Event> = match &events {
                Some(path) => {
                    let all = events_from_file(path)?;
                    anyhow::ensure!(!all.is_empty(), "{} holds no events", path.display());
                    let mut i = 0;
                    Box::new(move || {
                        i += 1;
                        all[(i - 1) % all.len()].clone()
                    })
                }
                None => {
                    let mut g = EventGen::new(seed);
                    Box::new(move || g.next_event())
                }
            };
            let pool_of =
                |shard: Option<(u32, &verdict_net::routing::PartitionTable)>,
                 source: &mut dyn FnMut() -> verdict_net::Event| {
                    if workload == Workload::Evaluate {
                        Arc::new(encode_events(&events_for_shard(source, shard, pool)))
                    } else {
                        Arc::new(Vec::new())
                    }
                };
            let targets = if cluster_aware {
                let cluster = verdict_net::Client::connect_with(&base.to_string(), tls.clone())?
                    .cluster_topology()
                    .context("asking for the cluster topology")?;
                let mut targets = Vec::new();
                for (n, node) in cluster.nodes.iter().enumerate() {
                    let ip: std::net::IpAddr = node
                        .address
                        .parse()
                        .with_context(|| format!("node {:?} is not live", node.name))?;
                    for (s, port) in node.shard_ports.iter().enumerate() {
                        let owned = cluster
                            .partition_nodes
                            .iter()
                            .zip(&cluster.partition_shards)
                            .any(|(&pn, &ps)| usize::from(pn) == n && usize::from(ps) == s);
                        if !owned {
                            continue; // owns no partition: no event goes there
                        }
                        let owns = |e: &verdict_net::Event| {
                            let p = verdict_net::routing::partition_of(
                                e.account_id.as_bytes(),
                                cluster.partitions,
                            ) as usize;
                            usize::from(cluster.partition_nodes[p]) == n
                                && usize::from(cluster.partition_shards[p]) == s
                        };
                        let mut mine = Vec::with_capacity(pool);
                        while workload == Workload::Evaluate && mine.len() < pool {
                            let e = source();
                            if owns(&e) {
                                mine.push(e);
                            }
                        }
                        targets.push(Target {
                            addr: SocketAddr::new(ip, *port),
                            pool: Arc::new(if workload == Workload::Evaluate {
                                encode_events(&mine)
                            } else {
                                Vec::new()
                            }),
                        });
                    }
                }
                targets
            } else if shard_aware {
                let topo = verdict_net::Client::connect_with(&base.to_string(), tls.clone())?
                    .topology()
                    .context("asking for the topology")?;
                let table = topo
                    .partition_table()
                    .map_err(|e| anyhow::anyhow!("the engine's partition table: {e}"))?;
                topo.shard_ports
                    .iter()
                    .enumerate()
                    .map(|(i, port)| Target {
                        addr: SocketAddr::new(base.ip(), *port),
                        pool: pool_of(Some((i as u32, &table)), &mut source),
                    })
                    .collect()
            } else {
                vec![Target {
                    addr: base,
                    pool: pool_of(None, &mut source),
                }]
            };
            let cpus: Vec<Option<usize>> = (0..threads.max(1))
                .map(|t| (!cpus.is_empty()).then(|| cpus[t % cpus.len()]))
                .collect();
            let plan = Plan {
                targets,
                cpus,
                connections_per_thread: connections,
                depth,
                rate_rps: rate,
                warmup: Duration::from_secs_f64(warmup),
                duration: Duration::from_secs_f64(duration),
                timeout: Duration::from_secs_f64(timeout),
                workload,
                tls,
                stamp_now,
            };
            let outcome = load::run(&plan)?;
            print!(
                "{}{}",
                report::TABLE_HEADER,
                report::table_row(&outcome, rate)
            );
            if !outcome.errors_by_code.is_empty() {
                println!("errors by code: {:?}", outcome.errors_by_code);
            }
            if outcome.connection_failures > 0 {
                println!("connection failures: {}", outcome.connection_failures);
            }
            if let Some(p) = json {
                std::fs::write(
                    &p,
                    serde_json::to_string_pretty(&report::to_json(&outcome, rate))?,
                )?;
            }
            if let Some(p) = hgrm {
                std::fs::write(&p, report::hgrm(&outcome))?;
            }
            Ok(())
        }
    }
}
