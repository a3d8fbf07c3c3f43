//! `verdict serve`: the control thread. It checks the machine (io_uring, hardware, locked
//! memory), compiles the rule set (epoch 1), loads the eBPF probes, starts one pinned glommio
//! executor per shard, publishes the shard map once every shard has bound its ports, starts
//! the admin HTTP threads, prints the ready line, then serves reload and stats requests
//! (compiling off the data cores, publishing through the epoch cell) and takes the shards'
//! stats snapshots into the metrics plane until SIGINT/SIGTERM (or a shard dying), and
//! drains.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use glommio::{LocalExecutorBuilder, Placement};
use log::{error, info, warn};
use signal_hook::consts::{SIGINT, SIGTERM};
use socket2::{Domain, Protocol, Socket, Type};
use verdict_models::{ModelSet, Runtime};
use verdict_net::routing::ROUTING_NAME;
use verdict_net::{ReloadReply, StatsReply, TopologyReply};
use verdict_probes::{Group, ProbeOptions, Probes};
use verdict_rules::{EpochCell, RuleSet};

use crate::admin::Admin;
use crate::config::TopologyConfig;
use crate::hardware::Hardware;
use crate::metrics::{self, Plane};
use crate::scoring::{self, ModelsSource, Published};
use crate::shard::{self, ExitNotice, ShardContext, ShardEvent, Takeover};
use crate::stats::Snapshot;
use crate::{memlock, mesh, uring};

/// How long shards get to bind their ports at start.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks that every shard's CPU exists; returns each shard's NUMA node.
pub fn check_hardware(config: &TopologyConfig, hw: &Hardware) -> anyhow::Result<Vec<u32>> {
    config
        .shards
        .iter()
        .enumerate()
        .map(|(i, s)| match hw.cpu(s.cpu) {
            Some(cpu) => Ok(cpu.numa_node),
            None => bail!(
                "shard[{i}].cpu: cpu {} does not exist on this machine (cpus: {:?}); \
                 `verdict topology --write FILE` writes a topology that fits",
                s.cpu,
                hw.cpu_indices()
            ),
        })
        .collect()
}

/// With `port = 0`, every shard must still share one port: bind (without listening) a
/// SO_REUSEPORT socket on a free port to learn it and hold it until the shards have bound
/// theirs. A bound, non-listening socket never receives connections.
fn reserve_shared_port(config: &TopologyConfig) -> anyhow::Result<(u16, Option<Socket>)> {
    if config.listen.port != 0 {
        return Ok((config.listen.port, None));
    }
    let addr = SocketAddr::new(config.listen.address, 0);
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_port(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("reserving a free port on {addr}"))?;
    let port = socket
        .local_addr()?
        .as_socket()
        .map(|a| a.port())
        .context("reserved socket has no port")?;
    Ok((port, Some(socket)))
}

/// Where the rule set comes from: a file or directory, or the shipped default built in.
#[derive(Debug, Clone)]
pub enum RulesSource {
    Path(PathBuf),
    Default,
}

impl RulesSource {
    pub fn describe(&self) -> String {
        match self {
            RulesSource::Path(p) => p.display().to_string(),
            RulesSource::Default => format!("{} (built in)", verdict_rules::DEFAULT_RULES_PATH),
        }
    }

    /// Reads, checks and compiles the rule set.
    pub fn load(&self, options: &verdict_rules::Options) -> Result<RuleSet, verdict_rules::Report> {
        match self {
            RulesSource::Path(p) => verdict_rules::load(p, &verdict_rules::Disk, options),
            RulesSource::Default => verdict_rules::load_default(options),
        }
    }
}

/// What the rules are checked and compiled against in this engine, with `models` loaded.
pub fn rules_options(config: &TopologyConfig, models: &ModelSet) -> verdict_rules::Options {
    verdict_rules::Options {
        default_action: config.decision.default_action,
        models: scoring::model_inputs(models),
        ..Default::default()
    }
}

/// The wasm runtime for `config`, sized for every shard's pools.
pub fn model_runtime(config: &TopologyConfig) -> anyhow::Result<Runtime> {
    // Pools of every epoch a shard may briefly hold at once, with room to spare.
    let slots = (config.shards.len() as u32 * 256).max(1000);
    Runtime::new(config.models.runtime(slots)).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Where an epoch comes from, and the runtime models are compiled with: the control
/// thread's state.
pub struct Sources {
    pub rules: RulesSource,
    pub models: ModelsSource,
    pub runtime: Runtime,
}

impl Sources {
    /// Loads the models, then checks and compiles the rules against them. `previous`: the
    /// models of the epoch being replaced (unchanged ones are kept, warm). Every error is
    /// rendered.
    pub fn load(
        &self,
        config: &TopologyConfig,
        rules: &RulesSource,
        previous: Option<&ModelSet>,
    ) -> Result<Published, Vec<String>> {
        let models = self
            .models
            .load(&self.runtime, previous)
            .map_err(|e| scoring::render_errors(&e))?;
        let options = rules_options(config, &models);
        let set = rules
            .load(&options)
            .map_err(|r| r.errors.into_iter().map(|e| e.rendered).collect::<Vec<_>>())?;
        Ok(Published::new(set, Arc::new(models)))
    }
}

/// Serves until SIGINT/SIGTERM; returns after every shard has drained.
pub fn serve(
    config: TopologyConfig,
    source: &str,
    rules_source: RulesSource,
    models_source: ModelsSource,
) -> anyhow::Result<()> {
    // Install signal handlers first: a signal before this would kill the process outright.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let report = uring::probe()?;
    info!("{}", report.summary());
    let hw = Hardware::detect()?;
    let numa_nodes = check_hardware(&config, &hw)?;
    let shard_count = config.shards.len();
    let io = memlock::choose(
        config.runtime.io_memory_bytes,
        shard_count,
        memlock::has_ipc_lock(),
        memlock::memlock_limit(),
    )?;
    info!(
        "topology from {source}: {shard_count} shards on cpus {:?}; io_memory {} KiB per executor ({})",
        config.shards.iter().map(|s| s.cpu).collect::<Vec<_>>(),
        io.bytes_per_executor / 1024,
        io.reason
    );
    let runtime = model_runtime(&config)?;
    let mut sources = Sources {
        rules: rules_source,
        models: models_source,
        runtime,
    };
    let first = sources
        .load(&config, &sources.rules, None)
        .map_err(|errors| {
            anyhow::anyhow!(
                "the rule set {} with the models of {} does not load:\n{}",
                sources.rules.describe(),
                sources.models.describe(),
                errors.join("\n")
            )
        })?;
    info!(
        "models from {} ({} instances): {}",
        sources.models.describe(),
        sources.runtime.allocator,
        first.describe_models().join(", ")
    );
    info!(
        "rules from {}: {} rules, {} velocity functions, {} models called, digest {} (epoch 1)",
        sources.rules.describe(),
        first.rules.rule_count(),
        first.rules.program().velocity.len(),
        first.used.len(),
        first.rules.digest
    );
    let probes = load_probes(&config);
    let plane = Arc::new(Mutex::new(Plane::new(
        config.shards.iter().map(|s| s.cpu).collect(),
        probes,
        Duration::from_millis(config.runtime.stats_interval_ms),
    )));
    let (reports_tx, reports) = metrics::report_channel(shard_count);
    let rules = Arc::new(EpochCell::new(first));
    let taken = Arc::new(Takeover::new(shard_count));
    let (shared_port, reservation) = reserve_shared_port(&config)?;
    let config = Arc::new(config);
    let mesh = (shard_count > 1)
        .then(|| mesh::builder(shard_count, config.limits.mesh_queue_depth as usize));
    let shutdown = Arc::new(AtomicBool::new(false));
    let shard_map = Arc::new(OnceLock::new());
    let (events_tx, events) = mpsc::channel();

    let mut handles = Vec::with_capacity(shard_count);
    for (i, spec) in config.shards.iter().enumerate() {
        let ctx = ShardContext {
            index: i as u32,
            cpu: spec.cpu,
            numa_node: numa_nodes[i],
            config: config.clone(),
            shared_port,
            mesh: mesh.clone(),
            shutdown: shutdown.clone(),
            events: events_tx.clone(),
            shard_map: shard_map.clone(),
            rules: rules.clone(),
            taken: taken.clone(),
            reports: reports_tx.clone(),
            exit: ExitNotice {
                shard: i as u32,
                events: events_tx.clone(),
            },
        };
        let handle = LocalExecutorBuilder::new(Placement::Fixed(spec.cpu as usize))
            .name(&format!("verdict-shard-{i}"))
            .io_memory(io.bytes_per_executor as usize)
            .spin_before_park(Duration::from_micros(config.runtime.spin_before_park_us))
            .spawn(move || shard::run(ctx))
            .map_err(|e| anyhow::anyhow!("starting shard {i} on cpu {}: {e}", spec.cpu))?;
        handles.push(handle);
    }
    drop(events_tx);
    drop(reports_tx);

    // Sets the shutdown flag and joins every shard; false if any of them panicked.
    let stop = |handles: Vec<_>| {
        shutdown.store(true, Ordering::Relaxed);
        let mut clean = true;
        for (i, h) in handles.into_iter().enumerate() {
            if let Err(e) = glommio::ExecutorJoinHandle::join(h) {
                error!("shard {i} ended abnormally: {e}");
                clean = false;
            }
        }
        clean
    };

    // Startup: every shard reports its shard port, or why it could not bind.
    let mut shard_ports = vec![0u16; shard_count];
    let mut bound = 0;
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while bound < shard_count {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(ShardEvent::Bound { shard, shard_port }) => {
                shard_ports[shard as usize] = shard_port;
                bound += 1;
            }
            Ok(ShardEvent::Failed { shard, message }) => {
                stop(handles);
                bail!("shard {shard} could not start: {message}");
            }
            Ok(ShardEvent::Exited { shard }) => {
                stop(handles);
                bail!("shard {shard} stopped during startup");
            }
            Ok(ShardEvent::Reload { rules_path, reply }) => {
                let _ = reply.send(reload(&rules, &taken, &mut sources, &config, &rules_path));
            }
            Ok(ShardEvent::Stats { snapshots, reply }) => {
                let _ = reply.send(stats_reply(&plane, snapshots));
            }
            Err(_) => {
                stop(handles);
                bail!("shards did not start within {STARTUP_TIMEOUT:?}");
            }
        }
    }
    let address = config.listen.address.to_string();
    let _ = shard_map.set(TopologyReply {
        shard_count: shard_count as u32,
        shard: 0,
        routing: ROUTING_NAME.into(),
        address: address.clone(),
        port: shared_port,
        shard_ports: shard_ports.clone(),
        cpus: config.shards.iter().map(|s| s.cpu).collect(),
    });
    drop(reservation);
    let admin_addr = SocketAddr::new(config.listen.address, config.listen.admin_port());
    let admin = match Admin::start(admin_addr, plane.clone()) {
        Ok(a) => a,
        Err(e) => {
            stop(handles);
            return Err(e);
        }
    };
    lock(&plane).set_ready(true);
    let ports: Vec<String> = shard_ports.iter().map(|p| p.to_string()).collect();
    // The ready line: tests and scripts wait for it and read the ports from it.
    println!(
        "verdict ready: address={address} port={shared_port} shard_ports={} shards={shard_count} admin_port={}",
        ports.join(","),
        admin.port
    );
    info!(
        "serving on {address}:{shared_port} (shared) and shard ports {}; admin http://{address}:{}/metrics",
        ports.join(","),
        admin.port
    );

    let mut failed = None;
    'wait: loop {
        if let Some(sig) = signals.pending().next() {
            info!("signal {sig}: stopping accepts, draining in-flight requests");
            break 'wait;
        }
        lock(&plane).drain(&reports);
        match events.recv_timeout(Duration::from_millis(20)) {
            Ok(ShardEvent::Exited { shard }) | Ok(ShardEvent::Failed { shard, .. }) => {
                error!("shard {shard} stopped unexpectedly; shutting the engine down");
                failed = Some(shard);
                break 'wait;
            }
            Ok(ShardEvent::Reload { rules_path, reply }) => {
                let _ = reply.send(reload(&rules, &taken, &mut sources, &config, &rules_path));
            }
            Ok(ShardEvent::Stats { snapshots, reply }) => {
                let _ = reply.send(stats_reply(&plane, snapshots));
            }
            Ok(ShardEvent::Bound { .. }) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                error!("every shard has stopped unexpectedly");
                failed = Some(0);
                break 'wait;
            }
        }
    }
    lock(&plane).set_draining();
    let clean = stop(handles);
    admin.stop();
    match failed {
        Some(shard) => bail!("shard {shard} failed"),
        None if !clean => bail!("a shard failed while draining"),
        None => {
            info!("all shards drained; bye");
            Ok(())
        }
    }
}

fn lock(plane: &Mutex<Plane>) -> std::sync::MutexGuard<'_, Plane> {
    plane
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Loads the eBPF probes for this process unless the topology turned them off; logs one line
/// per group that is off, with the reason.
fn load_probes(config: &TopologyConfig) -> Option<Probes> {
    if !config.probes.enabled {
        info!("eBPF probes: off ([probes] enabled = false or --no-probes)");
        return None;
    }
    let started = Instant::now();
    let probes = Probes::load(&ProbeOptions {
        tgid: std::process::id(),
        syscalls: config.probes.syscalls,
    });
    let active: Vec<&str> = probes
        .status()
        .iter()
        .filter(|s| s.active)
        .map(|s| s.group.name())
        .collect();
    for s in probes.status().iter().filter(|s| !s.active) {
        // The opt-in group being off is the default, not a problem.
        if s.group == Group::Syscalls && !config.probes.syscalls {
            info!("eBPF probe group syscalls: {}", s.reason);
        } else {
            warn!("eBPF probe group {} is off: {}", s.group.name(), s.reason);
        }
    }
    info!(
        "eBPF probes: {} of {} groups active [{}], loaded in {} ms",
        active.len(),
        probes.status().len(),
        active.join(", "),
        started.elapsed().as_millis()
    );
    Some(probes)
}

/// A stats request's answer: the shards' fresh snapshots with the kernel columns read now.
fn stats_reply(plane: &Mutex<Plane>, snapshots: Vec<Snapshot>) -> StatsReply {
    let plane = lock(plane);
    let kernel = plane.kernel();
    plane.reply(snapshots, &kernel)
}

/// Compiles `rules_path` (empty: the source being served) and publishes it as the next
/// epoch, which then is the source being served; on any error the current epoch stays and
/// the errors go back to the caller. Runs on the control thread, never on a data core.
fn reload(
    cell: &EpochCell<Published>,
    taken: &Takeover,
    sources: &mut Sources,
    config: &TopologyConfig,
    rules_path: &str,
) -> ReloadReply {
    let source = if rules_path.is_empty() {
        sources.rules.clone()
    } else {
        RulesSource::Path(PathBuf::from(rules_path))
    };
    let started = Instant::now();
    let previous = cell.load();
    let loaded = sources.load(config, &source, Some(&previous.models));
    drop(previous);
    let compile_us = started.elapsed().as_micros() as u64;
    let rules_path = source.describe();
    match loaded {
        Ok(next) => {
            let (count, digest) = (next.rules.rule_count() as u32, next.rules.digest.clone());
            let models = next.describe_models();
            let published_at = taken.now_ns();
            let epoch = cell.publish(next);
            let swap_us = wait_taken(taken, epoch, published_at);
            sources.rules = source;
            info!(
                "reload: {rules_path}: {count} rules, digest {digest}, models {}, compiled in {compile_us} us; epoch {epoch} published, on every shard after {swap_us} us",
                models.join(", ")
            );
            ReloadReply {
                ok: true,
                epoch,
                rules_path,
                rules: count,
                digest,
                compile_us,
                errors: Vec::new(),
                models,
                swap_us,
            }
        }
        Err(errors) => {
            let epoch = cell.epoch();
            warn!(
                "reload: {rules_path}: {} errors; epoch {epoch} stays",
                errors.len()
            );
            ReloadReply {
                ok: false,
                epoch,
                rules_path,
                rules: 0,
                digest: String::new(),
                compile_us,
                errors,
                models: Vec::new(),
                swap_us: 0,
            }
        }
    }
}

/// Longest the control thread waits for every shard to take a new epoch before answering a
/// reload (an idle shard takes it within `runtime.tick_ms`).
const SWAP_WAIT: Duration = Duration::from_secs(2);

/// Microseconds from `published_ns` until every shard had taken `epoch` (as the shards
/// stamped it); 0 if one has not within [`SWAP_WAIT`] (the epoch is published all the same).
fn wait_taken(taken: &Takeover, epoch: u64, published_ns: u64) -> u64 {
    let waiting = Instant::now();
    loop {
        if let Some(last_ns) = taken.all_took(epoch) {
            return (last_ns.saturating_sub(published_ns) / 1000).max(1);
        }
        if waiting.elapsed() > SWAP_WAIT {
            return 0;
        }
        std::thread::sleep(Duration::from_micros(20));
    }
}
