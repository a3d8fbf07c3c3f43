//! `verdict serve`: the control thread. It reads the admin token, confines the rules to
//! `rules.dir`, checks the machine (io_uring, hardware, locked memory), compiles the rule set
//! (epoch 1), loads the eBPF probes, starts the reload thread ([`crate::reload`]) and one
//! pinned glommio executor per shard, publishes the shard map once every shard has bound its
//! ports, starts the admin HTTP threads, prints the ready line, then answers stats requests
//! and takes the shards' stats snapshots into the metrics plane until SIGINT/SIGTERM (or a
//! shard dying), and drains. It never compiles a reload itself, so it never waits on one.

use std::net::SocketAddr;
use std::path::Path;
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
use verdict_net::routing::{PartitionTable, ROUTING_NAME};
use verdict_net::{StatsReply, TopologyReply};
use verdict_probes::{Group, ProbeOptions, Probes};
use verdict_rules::EpochCell;

use crate::admin::{Admin, Token};
use crate::buffers;
use crate::config::TopologyConfig;
use crate::hardware::Hardware;
use crate::listen::{self, ShardContext};
use crate::metrics::{self, Plane};
use crate::reload::{self, Sources};
use crate::scoring::{self, ModelsSource};
use crate::shard::{ExitNotice, ShardEvent, Takeover};
use crate::stats::Snapshot;
use crate::{memlock, mesh, uring};

/// While connections are closing, how often the control thread hands free heap pages back to
/// the system, and for how long after the last close it keeps doing so.
const HEAP_TRIM_EVERY: Duration = Duration::from_secs(1);
const HEAP_TRIM_AFTER_CHURN: Duration = Duration::from_secs(3);

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

/// The rule set to start with: with the decision log on, the one last published before the
/// engine stopped (kept beside the log, checked by digest), if there is one; else the one
/// `sources` names. Returns it, and what to add to the start-up line when it was restored.
fn first_epoch(
    config: &TopologyConfig,
    sources: &mut Sources,
) -> anyhow::Result<(crate::scoring::Published, String)> {
    if config.log.enabled() {
        match crate::log::published::load(Path::new(&config.log.dir)) {
            Ok(Some((current, kept))) => match sources.load_kept(config, &kept) {
                Ok(first) => {
                    sources.rules = if kept.entry.is_empty() {
                        reload::RulesSource::Default
                    } else {
                        reload::RulesSource::Path(kept.entry.clone().into())
                    };
                    reload::keep_published(config, &kept, 1);
                    return Ok((
                        first,
                        format!(
                            " (restored from the decision log: the rule set last published, as epoch {}, digest {}; not --rules)",
                            current.epoch, current.digest
                        ),
                    ));
                }
                Err(errors) => warn!(
                    "decision log: the rule set last published (digest {}) does not load, serving the one given instead:\n{}",
                    current.digest,
                    errors.join("\n")
                ),
            },
            Ok(None) => {}
            Err(e) => warn!(
                "decision log: the rule set last published is unreadable ({e}); serving the one given"
            ),
        }
    }
    let (first, files) = sources
        .load(config, &sources.rules, None)
        .map_err(|errors| {
            anyhow::anyhow!(
                "the rule set {} with the models of {} does not load:\n{}",
                sources.rules.describe(),
                sources.models.describe(),
                errors.join("\n")
            )
        })?;
    reload::keep_published(config, &files, 1);
    Ok((first, String::new()))
}

/// Serves until SIGINT/SIGTERM; returns after every shard has drained.
pub fn serve(
    config: TopologyConfig,
    source: &str,
    rules: Option<&Path>,
    models_source: ModelsSource,
) -> anyhow::Result<()> {
    // Install signal handlers first: a signal before this would kill the process outright.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    // The token first: a control API whose token others can read must not start at all.
    let token = match config.admin.token_file.as_str() {
        "" => None,
        file => Some(Token::load(Path::new(file)).map_err(|e| anyhow::anyhow!("{e}"))?),
    };
    let (rules_source, rules_dir) = reload::confine(&config.rules.dir, rules)?;
    buffers::pin_malloc_mmap_threshold();
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
        rules_dir,
        models: models_source,
        runtime,
    };
    let (first, restored) = first_epoch(&config, &mut sources)?;
    info!(
        "models from {} ({} instances): {}",
        sources.models.describe(),
        sources.runtime.allocator,
        first.describe_models().join(", ")
    );
    info!(
        "rules from {}{restored}: {} rules, {} velocity functions, {} models called, digest {} (epoch 1)",
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
    // Reloads compile on their own thread from here on (it owns the sources).
    let (reloads, reload_thread) =
        reload::start(rules.clone(), taken.clone(), sources, config.clone())?;
    let mesh = (shard_count > 1)
        .then(|| mesh::builder(shard_count, config.limits.mesh_queue_depth as usize));
    let shutdown = Arc::new(AtomicBool::new(false));
    let draining = Arc::new(std::sync::atomic::AtomicUsize::new(shard_count));
    let shard_map = Arc::new(OnceLock::new());
    // As a cluster node, the shards route by the view the cluster thread publishes here.
    let view = config.cluster.enabled().then(|| {
        use crate::cluster::view::{Closed, ClusterView};
        Arc::new(EpochCell::new(ClusterView::closed(
            &config.cluster.node,
            Closed::NoMap,
        )))
    });
    if config.cluster.wait_for_append && !(config.cluster.enabled() && config.log.enabled()) {
        return Err(anyhow::anyhow!(
            "cluster.wait_for_append: needs a cluster node ([cluster] urls) with a decision \
             log ([log] dir or --log-dir)"
        ));
    }
    // Answers that wait for their append read what the shipper has appended here.
    let appended: Option<crate::cluster::Appended> = config.cluster.wait_for_append.then(|| {
        Arc::new(
            (0..shard_count)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        )
    });
    // What each shard's log has written, for the decision stream's lag.
    let logged: Option<crate::cluster::Appended> =
        (config.cluster.enabled() && config.log.enabled()).then(|| {
            Arc::new(
                (0..shard_count)
                    .map(|_| std::sync::atomic::AtomicU64::new(0))
                    .collect(),
            )
        });
    let (events_tx, events) = mpsc::channel();
    // A cluster node's catch-ups hand each shard its share of a partition's history.
    let (feeds, mut replays) = if config.cluster.enabled() {
        let (tx, rx) = crate::cluster::replay::feeds(shard_count);
        (tx, rx.into_iter().map(Some).collect())
    } else {
        (Vec::new(), vec![None; shard_count])
    };

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
            view: view.clone(),
            appended: appended.clone(),
            logged: logged.clone(),
            replay: replays[i].take(),
            taken: taken.clone(),
            reports: reports_tx.clone(),
            reloads: reloads.clone(),
            draining: draining.clone(),
            exit: ExitNotice {
                shard: i as u32,
                events: events_tx.clone(),
            },
        };
        let handle = LocalExecutorBuilder::new(Placement::Fixed(spec.cpu as usize))
            .name(&format!("verdict-shard-{i}"))
            .io_memory(io.bytes_per_executor as usize)
            .spin_before_park(Duration::from_micros(config.runtime.spin_before_park_us))
            .spawn(move || listen::run(ctx))
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
        partitions: config.routing.partitions,
        partition_shards: PartitionTable::modulo(config.routing.partitions, shard_count as u32)
            .expect("routing.partitions was checked against the shard count")
            .owners()
            .to_vec(),
    });
    drop(reservation);
    let admin_addr = SocketAddr::new(config.listen.address, config.listen.admin_port());
    let admin = match Admin::start(
        admin_addr,
        &config.admin,
        rules.clone(),
        plane.clone(),
        reloads,
        token,
        Duration::from_millis(config.limits.reload_timeout_ms),
    ) {
        Ok(a) => a,
        Err(e) => {
            stop(handles);
            return Err(e);
        }
    };
    lock(&plane).set_ready(true);
    // Cluster membership starts once this node's ports are bound (its record says where to
    // reach it), and the ready line waits (bounded) for its first view of the map, so a
    // node that says ready routes at once; without NATS it says ready and refuses (error 9)
    // until a view arrives.
    let member = if config.cluster.enabled() {
        let c = &config.cluster;
        let advertised = if c.advertise_address.is_empty() {
            &address
        } else {
            &c.advertise_address
        };
        let mut me = crate::cluster::table::NodeInfo::starting(
            &c.node,
            advertised,
            shared_port,
            shard_ports.clone(),
        );
        me.http_port = config.listen.http_port;
        let log_dir = (c.decision_stream && config.log.enabled())
            .then(|| std::path::PathBuf::from(&config.log.dir));
        if c.decision_stream && log_dir.is_none() {
            warn!(
                "cluster: no decision stream: it ships the decision log, and [log] dir is not set"
            );
        }
        let view = view.clone().expect("made for a cluster node");
        let cell = view.clone();
        let partitions = config.routing.partitions;
        let shipping = crate::cluster::Shipping {
            log_dir,
            logged,
            appended,
            rules: rules.clone(),
            feeds,
            settle: Duration::from_millis(c.peer_reply_timeout_ms + config.log.sync_interval_ms),
        };
        let member = crate::cluster::Member::start(c, me, partitions, view, shipping);
        match member {
            Ok(m) => {
                lock(&plane).set_cluster(m.view.clone());
                let bound = Duration::from_millis(c.request_timeout_ms + c.heartbeat_ms);
                let deadline = Instant::now() + bound;
                while cell.epoch() <= 1 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if cell.epoch() <= 1 {
                    warn!(
                        "cluster: no partition map within {} ms: refusing events until one arrives",
                        bound.as_millis()
                    );
                }
                Some(m)
            }
            Err(e) => {
                stop(handles);
                admin.stop();
                return Err(anyhow::anyhow!("starting the cluster thread: {e}"));
            }
        }
    } else {
        None
    };
    let ports: Vec<String> = shard_ports.iter().map(|p| p.to_string()).collect();
    // The ready line: tests and scripts wait for it and read the ports from it.
    println!(
        "verdict ready: address={address} port={shared_port} shard_ports={} shards={shard_count} admin_port={} http_port={}",
        ports.join(","),
        admin.port,
        config.listen.http_port
    );
    info!(
        "serving on {address}:{shared_port} (shared) and shard ports {}; admin http://{address}:{}/metrics",
        ports.join(","),
        admin.port
    );

    let mut failed = None;
    let (mut closed_seen, mut churn_at, mut trimmed) = (0, None::<Instant>, Instant::now());
    'wait: loop {
        if let Some(sig) = signals.pending().next() {
            info!("signal {sig}: stopping accepts, draining in-flight requests");
            break 'wait;
        }
        lock(&plane).drain(&reports);
        // Memory the shards freed (closed connections' buffers) goes back to the system
        // rather than staying resident until reused: once a second for a few seconds after
        // connections closed (a closed connection's buffers are freed a little after it is
        // counted), never otherwise (a trim locks each malloc arena in turn).
        let closed = lock(&plane).connections_closed();
        if closed != closed_seen {
            (closed_seen, churn_at) = (closed, Some(Instant::now()));
        }
        if let Some(at) = churn_at {
            if trimmed.elapsed() >= HEAP_TRIM_EVERY {
                buffers::trim_heap();
                trimmed = Instant::now();
            }
            if at.elapsed() > HEAP_TRIM_AFTER_CHURN {
                churn_at = None;
            }
        }
        match events.recv_timeout(Duration::from_millis(20)) {
            Ok(ShardEvent::Exited { shard }) | Ok(ShardEvent::Failed { shard, .. }) => {
                error!("shard {shard} stopped unexpectedly; shutting the engine down");
                failed = Some(shard);
                break 'wait;
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
    // Leave the cluster first: the other nodes take this one's partitions at their next beat.
    if let Some(member) = member {
        member.stop();
    }
    let clean = stop(handles);
    admin.stop();
    // Every holder of the reload queue is gone now, so the thread ends after the reload it
    // may be running (not joined: a long compile must not hold up the exit).
    drop(reload_thread);
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
