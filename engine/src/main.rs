//! The `verdict` binary: parses flags into validated config once, then hands off.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use verdict_engine::cli;
use verdict_engine::config::TopologyConfig;
use verdict_engine::scoring::ModelsSource;

#[derive(Parser)]
#[command(name = "verdict", version, about = "Real-time risk decision engine")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the engine: one pinned shard per [[shard]] in the topology.
    Serve {
        /// Topology file. Default: ./shards.toml if present, else one shard per CPU.
        #[arg(long)]
        shards: Option<PathBuf>,
        /// Override [listen] address.
        #[arg(long)]
        address: Option<std::net::IpAddr>,
        /// Override [listen] port (0 = pick a free one; see the ready line). `--port 0` also
        /// picks a free admin port unless --admin-port says otherwise.
        #[arg(long)]
        port: Option<u16>,
        /// Override [listen] admin_port (0 = pick a free one; see the ready line).
        #[arg(long)]
        admin_port: Option<u16>,
        /// Override [listen] http_port: HTTP/JSON decisions on every shard (0 = off).
        #[arg(long)]
        http_port: Option<u16>,
        /// Override [cluster] urls: serve as a cluster node, membership and partition map in
        /// NATS JetStream at these servers (comma-separated nats://HOST:PORT).
        #[arg(long, value_name = "URLS", requires = "node")]
        cluster: Option<String>,
        /// Override [cluster] node: this node's name in the cluster.
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        /// Serve without the eBPF probes ([probes] enabled = false).
        #[arg(long)]
        no_probes: bool,
        /// Also load the opt-in syscall latency probe ([probes] syscalls = true).
        #[arg(long)]
        syscall_probes: bool,
        /// Override [listen] shard_port_base (0 = every shard picks a free port).
        #[arg(long)]
        shard_port_base: Option<u16>,
        /// Rules file, or a directory whose .rules files form one rule set. Default: the
        /// shipped rules/default.rules and its lists, built into the binary.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Directory of model manifests (*.toml, */manifest.toml). Default: the shipped
        /// example models (models/examples), built into the binary.
        #[arg(long)]
        models: Option<PathBuf>,
        /// Override [admin] token_file: the control API's bearer token (owner-only file).
        #[arg(long, value_name = "FILE")]
        admin_token_file: Option<PathBuf>,
        /// Override [log] dir: keep the decision log (every decision, per shard) in DIR.
        #[arg(long, value_name = "DIR")]
        log_dir: Option<PathBuf>,
    },
    /// Check a rules file or directory (and the models it calls): every error with
    /// file:line:col; exit 1 if any.
    Check {
        path: PathBuf,
        /// Topology whose [decision], [limits] and [models] apply (default as for `serve`).
        #[arg(long)]
        shards: Option<PathBuf>,
        /// Directory of model manifests to check with the rules (default as for `serve`).
        #[arg(long)]
        models: Option<PathBuf>,
    },
    /// Ask a running engine to recompile its rules and publish them as the next epoch,
    /// through the admin port's control API (POST /v1/reload with the bearer token).
    Reload {
        /// The engine's admin port.
        #[arg(long, default_value = cli::DEFAULT_ADMIN_ADDR)]
        admin: String,
        /// File holding the control API's token (the engine's admin.token_file).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Rules file or directory to publish instead of the one being served, relative to
        /// the engine's rules.dir.
        #[arg(long)]
        rules: Option<String>,
        /// Send the reload on this data port instead (kind 0x06): only engines that keep
        /// [admin] wire_reload = true serve it.
        #[arg(long, value_name = "ADDR", conflicts_with = "token_file")]
        addr: Option<String>,
        #[command(flatten)]
        tls: cli::TlsArgs,
    },
    /// Print this machine's hardware and the shard map, or write a topology for it.
    Topology {
        #[arg(long)]
        shards: Option<PathBuf>,
        /// Write a commented topology file for this machine (one shard per CPU) to FILE.
        #[arg(long, value_name = "FILE")]
        write: Option<PathBuf>,
    },
    /// Send JSON-lines events (stdin by default); print one JSON decision per line.
    Send {
        #[arg(long, default_value = cli::DEFAULT_ADDR)]
        addr: String,
        /// Read events from FILE instead of stdin.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Requests in flight at once (pipelining).
        #[arg(long, default_value_t = 64)]
        depth: usize,
        /// Ask for the topology and send each event straight to the shard that owns its
        /// account (one connection per shard; saves the hop a shard makes to forward it).
        #[arg(long)]
        shard_aware: bool,
        /// Against a cluster node: ask for the cluster's topology and send each event
        /// straight to the node and shard that own its account.
        #[arg(long, conflicts_with = "shard_aware")]
        cluster_aware: bool,
        #[command(flatten)]
        tls: cli::TlsArgs,
    },
    /// Print per-core stats and the total.
    Stats {
        #[arg(long, default_value = cli::DEFAULT_ADDR)]
        addr: String,
        /// Print the raw stats as JSON.
        #[arg(long)]
        json: bool,
        /// Print again every second (until interrupted, or COUNT times).
        #[arg(long, value_name = "COUNT", num_args = 0..=1, default_missing_value = "0")]
        watch: Option<u64>,
        #[command(flatten)]
        tls: cli::TlsArgs,
    },
    /// Read a decision log: check it, or export its decisions.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Backtest: decide a decision log's events again under another rule set, in event-time
    /// order with fresh velocity state, and report what would change.
    Replay {
        /// The decision log directory (`log.dir`).
        dir: PathBuf,
        /// Rules file, or a directory whose .rules files form one rule set.
        #[arg(long)]
        rules: PathBuf,
        /// Directory of model manifests the rules may call (default: the built-in examples).
        #[arg(long)]
        models: Option<PathBuf>,
        /// CSV of `event_id,label` (1 = fraud, 0 = legitimate): precision and recall of deny
        /// and review, before and after.
        #[arg(long, value_name = "FILE")]
        labels: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Topology whose [decision] and [limits] apply (default as for `serve`).
        #[arg(long)]
        shards: Option<PathBuf>,
        /// Threads to replay with (default: every CPU).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// A cluster's nodes and partition map (status), and changes to the map (rebalance,
    /// drain), read and written in NATS JetStream.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
        /// NATS servers (comma-separated nats://HOST:PORT). Default: [cluster] urls of
        /// --shards (or ./shards.toml).
        #[arg(long, global = true, value_name = "URLS")]
        cluster: Option<String>,
        /// Topology file whose [cluster] section to use.
        #[arg(long, global = true, value_name = "FILE")]
        shards: Option<PathBuf>,
    },
    /// Import a model trained with XGBoost or LightGBM, or inspect an imported one.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Measure the round trip of a ping.
    Ping {
        #[arg(long, default_value = cli::DEFAULT_ADDR)]
        addr: String,
        /// Number of pings.
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[command(flatten)]
        tls: cli::TlsArgs,
    },
}

#[derive(clap::Subcommand, Debug)]
enum LogCommand {
    /// Check every segment: torn tails and bad records with their offsets; exit 1 if
    /// anything is wrong beyond a torn tail.
    Verify { dir: PathBuf },
    /// One row per decision, flat columns (event fields, action, score, rules, models...).
    Export {
        dir: PathBuf,
        #[arg(long, default_value = "jsonl")]
        format: String,
        #[arg(long)]
        out: PathBuf,
        /// Only events at or after this event time (ms since the Unix epoch).
        #[arg(long)]
        from: Option<u64>,
        /// Only events at or before this event time (ms since the Unix epoch).
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(clap::Subcommand, Debug)]
enum ClusterCommand {
    /// The live nodes (address, shards, partitions owned, heartbeat age), lost owners, the
    /// map's epoch and the draining nodes.
    Status {
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Spread the partitions over the live, not draining nodes by their shards, moving as
    /// few as it can (nothing, if they are spread already).
    Rebalance,
    /// Move every partition off NODE and give it none until `drain --undo NODE`.
    Drain {
        node: String,
        /// Take NODE back: it gets its share again.
        #[arg(long)]
        undo: bool,
    },
}

#[derive(clap::Subcommand, Debug)]
enum ModelCommand {
    /// Turn a saved XGBoost (JSON) or LightGBM (text) model into a verdict model directory:
    /// OUT/manifest.toml and OUT/NAME.wasm (ABI v1), scoring what the library predicts.
    Import {
        /// The model file: XGBoost's `save_model("m.json")`, LightGBM's `save_model("m.txt")`.
        file: PathBuf,
        /// `xgboost` or `lightgbm`.
        #[arg(long)]
        format: String,
        /// The model's name, as rules call it: model("NAME").
        #[arg(long)]
        name: String,
        /// The model's features in its training column order, comma-separated
        /// rules-language expressions: 'amount, count(account, 1h), features[0]'.
        #[arg(long)]
        features: String,
        /// For a multi-class model: the class whose probability is the score.
        #[arg(long)]
        class: Option<usize>,
        /// The manifest's version (default: format, library version, file hash).
        #[arg(long = "version")]
        model_version: Option<String>,
        /// The model's per-call deadline, microseconds.
        #[arg(long, default_value_t = 5000)]
        deadline_us: u64,
        /// Instances each core keeps ready.
        #[arg(long, default_value_t = 2)]
        instances_per_core: u32,
        /// The directory to write (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Topology whose [models] limits the module is checked under (default as for `serve`).
        #[arg(long)]
        shards: Option<PathBuf>,
    },
    /// Print an imported model: provenance, objective, trees, depth and features.
    Inspect {
        /// The model's directory (or its manifest).
        dir: PathBuf,
    },
}

/// The topology: `--shards`, else ./shards.toml, else one shard per CPU.
/// `nats://a:4222,nats://b:4222` as a list.
fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

fn load_topology(shards: Option<PathBuf>) -> anyhow::Result<(TopologyConfig, String)> {
    if let Some(path) = shards {
        return Ok((TopologyConfig::load(&path)?, path.display().to_string()));
    }
    let local = PathBuf::from("shards.toml");
    if local.exists() {
        return Ok((TopologyConfig::load(&local)?, "./shards.toml".into()));
    }
    let hw = verdict_engine::hardware::Hardware::detect()?;
    Ok((
        TopologyConfig::for_cpus(&hw.cpu_indices()),
        "defaults (one shard per cpu)".into(),
    ))
}

fn models_source(dir: Option<PathBuf>) -> ModelsSource {
    match dir {
        Some(dir) => ModelsSource::Dir(dir),
        None => ModelsSource::Default,
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Serve {
            shards,
            address,
            port,
            admin_port,
            http_port,
            cluster,
            node,
            no_probes,
            syscall_probes,
            shard_port_base,
            rules,
            models,
            admin_token_file,
            log_dir,
        } => {
            let (mut config, source) = load_topology(shards)?;
            if let Some(d) = log_dir {
                config.log.dir = d.display().to_string();
            }
            if let Some(f) = admin_token_file {
                config.admin.token_file = f.display().to_string();
            }
            if let Some(a) = address {
                config.listen.address = a;
            }
            if let Some(p) = port {
                config.listen.port = p;
                if p == 0 {
                    config.listen.admin_port = Some(0);
                }
            }
            if let Some(p) = admin_port {
                config.listen.admin_port = Some(p);
            }
            if let Some(p) = http_port {
                config.listen.http_port = p;
            }
            if let Some(urls) = cluster {
                config.cluster.urls = split_urls(&urls);
            }
            if let Some(n) = node {
                config.cluster.node = n;
            }
            if no_probes {
                config.probes.enabled = false;
            }
            if syscall_probes {
                config.probes.syscalls = true;
            }
            if let Some(b) = shard_port_base {
                config.listen.shard_port_base = b;
            }
            config
                .check()
                .context("after applying command-line overrides")?;
            verdict_engine::runtime::serve(
                config,
                &source,
                rules.as_deref(),
                models_source(models),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Topology { shards, write } => {
            let (config, source) = load_topology(shards)?;
            cli::topology::run(&config, &source, write.as_deref())
        }
        Command::Check {
            path,
            shards,
            models,
        } => {
            let (config, _) = load_topology(shards)?;
            cli::rules::check(&path, &config, &models_source(models))
        }
        Command::Reload {
            admin,
            token_file,
            rules,
            addr,
            tls,
        } => {
            let rules = rules.unwrap_or_default();
            match addr {
                Some(addr) => cli::rules::reload_wire(&addr, tls.config()?, &rules),
                None => cli::rules::reload(&admin, tls.config()?, token_file.as_deref(), &rules),
            }
        }
        Command::Send {
            addr,
            file,
            depth,
            shard_aware,
            cluster_aware,
            tls,
        } => {
            let route = match (shard_aware, cluster_aware) {
                (_, true) => cli::send::Route::Cluster,
                (true, _) => cli::send::Route::Shards,
                _ => cli::send::Route::Naive,
            };
            cli::send::run(&addr, tls.config()?, file.as_deref(), depth, route)
        }
        Command::Stats {
            addr,
            json,
            watch,
            tls,
        } => cli::stats::run(&addr, tls.config()?, json, watch),
        Command::Ping { addr, count, tls } => cli::ping(&addr, tls.config()?, count),
        Command::Replay {
            dir,
            rules,
            models,
            labels,
            json,
            shards,
            threads,
        } => {
            let (config, _) = load_topology(shards)?;
            let models = models_source(models);
            let args = cli::replay::Args {
                dir: &dir,
                rules: &rules,
                models: &models,
                labels: labels.as_deref(),
                json,
                threads,
            };
            cli::replay::run(&args, &config)
        }
        Command::Cluster {
            command,
            cluster,
            shards,
        } => {
            let mut config = match (&cluster, shards) {
                (Some(_), None) => verdict_engine::config::ClusterConfig::default(),
                (_, shards) => load_topology(shards)?.0.cluster,
            };
            if let Some(urls) = cluster {
                config.urls = split_urls(&urls);
            }
            let action = match command {
                ClusterCommand::Status { json } => cli::cluster::Action::Status { json },
                ClusterCommand::Rebalance => {
                    cli::cluster::Action::Apply(verdict_engine::cluster::Change::Rebalance)
                }
                ClusterCommand::Drain { node, undo } => {
                    cli::cluster::Action::Apply(verdict_engine::cluster::Change::Drain {
                        node,
                        undo,
                    })
                }
            };
            cli::cluster::run(&config, &action)
        }
        Command::Model { command } => match command {
            ModelCommand::Import {
                file,
                format,
                name,
                features,
                class,
                model_version,
                deadline_us,
                instances_per_core,
                out,
                shards,
            } => {
                let (config, _) = load_topology(shards)?;
                let args = cli::model::ImportArgs {
                    format: &format,
                    file: &file,
                    name: &name,
                    features: &features,
                    class,
                    version: model_version,
                    deadline_us,
                    instances_per_core,
                    out: &out,
                };
                cli::model::import(&args, &config)
            }
            ModelCommand::Inspect { dir } => cli::model::inspect(&dir),
        },
        Command::Log { command } => match command {
            LogCommand::Verify { dir } => cli::log::verify(&dir),
            LogCommand::Export {
                dir,
                format,
                out,
                from,
                to,
            } => cli::log::export(&dir, &format, &out, from, to),
        },
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let level = if matches!(args.command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .init();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("verdict: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
