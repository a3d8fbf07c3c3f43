//! A shard's life on its thread: join the mesh -> bind the shared and the shard port ->
//! report the ports to the control thread -> wait for the full shard map -> accept and
//! serve -> on shutdown stop accepting, let connections drain (bounded by
//! `shutdown_drain_ms`) -> return.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::net::{TcpListener, TcpStream};
use log::{info, warn};
use verdict_net::{ErrorCode, LoopStats, TopologyReply};
use verdict_rules::{EpochCell, VelocityState};

use crate::aggregator::PeerHandler;
use crate::buffers::Buffers;
use crate::config::TopologyConfig;
use crate::drain::Drain;
use crate::mesh::{Mesh, MeshPort};
use crate::metrics::ReportSender;
use crate::reload::Reloads;
use crate::scoring::{CoreModels, Published};
use crate::shard::{ConnectionSlot, ExitNotice, Refusal, Shard, ShardEvent, Takeover};
use crate::stats::CoreStats;
use crate::watch;
use crate::{connection, http_api};

/// What the control thread hands a shard thread (all `Send`).
pub struct ShardContext {
    pub index: u32,
    pub cpu: u32,
    pub numa_node: u32,
    pub config: Arc<TopologyConfig>,
    /// The port every shard shares (already resolved if the file said 0).
    pub shared_port: u16,
    pub mesh: Option<Mesh>,
    pub shutdown: Arc<AtomicBool>,
    pub events: Sender<ShardEvent>,
    /// Set by the control thread once every shard has bound its ports.
    pub shard_map: Arc<OnceLock<TopologyReply>>,
    /// The rule epoch: the one pointer shared by every shard.
    pub rules: Arc<EpochCell<Published>>,
    /// As a cluster node: the view of the partition map, published by the cluster thread.
    pub view: Option<crate::cluster::view::ViewCell>,
    /// With `cluster.wait_for_append`: what the shipper has appended, per shard.
    pub appended: Option<crate::cluster::Appended>,
    /// As a cluster node with a decision log: the last record each shard's log has written
    /// (what the shipper is behind by).
    pub logged: Option<crate::cluster::Appended>,
    /// As a cluster node: this shard's share of the history replayed into partitions the
    /// node takes over.
    pub replay: Option<flume::Receiver<crate::cluster::replay::Job>>,
    /// When each shard took which epoch (written once per swap, never per request).
    pub taken: Arc<Takeover>,
    /// Where this shard's stats snapshots go (the control thread's metrics plane).
    pub reports: ReportSender,
    /// The reload thread's queue (used only where `[admin] wire_reload` keeps kind 0x06).
    pub reloads: Reloads,
    /// Shards whose connections are not yet drained: a shard keeps serving its peers'
    /// forwarded events and records until every shard's connections are done.
    pub draining: Arc<std::sync::atomic::AtomicUsize>,
    /// Tells the control thread when this shard is gone, however that happens, including an
    /// executor that never started (the context is then dropped without `run` running).
    pub exit: ExitNotice,
}

fn fail(ctx: &ShardContext, message: String) {
    let _ = ctx.events.send(ShardEvent::Failed {
        shard: ctx.index,
        message,
    });
}

/// Resolves once the control thread has asked for shutdown.
async fn shutdown_requested(flag: &AtomicBool, tick: Duration) {
    while !flag.load(Ordering::Relaxed) {
        glommio::timer::sleep(tick).await;
    }
}

/// The shard thread's main future.
pub async fn run(mut ctx: ShardContext) {
    let config = ctx.config.clone();
    let tick = Duration::from_millis(config.runtime.tick_ms);
    if config.runtime.bind_memory
        && let Err(e) = crate::hardware::bind_thread_memory(ctx.numa_node)
    {
        warn!("shard {}: {e}; memory stays unbound", ctx.index);
    }
    // Every shard joins before any binds, so a failed bind cannot leave a peer waiting; a
    // peer that never starts at all is covered by racing the join against shutdown.
    let (index, cpu) = (ctx.index, ctx.cpu);
    let handler = Rc::new(PeerHandler {
        shard: RefCell::new(None),
        stopped: Cell::new(false),
        batches: Default::default(),
        idle: Box::new(move || {
            CoreStats::new().snapshot(index, cpu, 0, Vec::new(), LoopStats::default())
        }),
    });
    let mesh = match ctx.mesh {
        Some(ref m) => {
            let in_flight_max = config.limits.mesh_events_in_flight_max;
            let join = MeshPort::join(m.clone(), in_flight_max, handler.clone());
            let joined = future::or(async { Some(join.await) }, async {
                shutdown_requested(&ctx.shutdown, tick).await;
                None
            })
            .await;
            match joined {
                Some(port) => Some(port),
                None => return,
            }
        }
        None => None,
    };
    let address = config.listen.address;
    let shared = match TcpListener::bind(SocketAddr::new(address, ctx.shared_port)) {
        Ok(l) => l,
        Err(e) => {
            let port = ctx.shared_port;
            return fail(&ctx, format!("bind {address}:{port} (shared port): {e}"));
        }
    };
    let want = match config.listen.shard_port_base {
        0 => 0,
        base => base + ctx.index as u16,
    };
    let own = match TcpListener::bind(SocketAddr::new(address, want)) {
        Ok(l) => l,
        Err(e) => return fail(&ctx, format!("bind {address}:{want} (shard port): {e}")),
    };
    let http = match config.listen.http_port {
        0 => None,
        port => match TcpListener::bind(SocketAddr::new(address, port)) {
            Ok(l) => Some(l),
            Err(e) => {
                return fail(
                    &ctx,
                    format!("bind {address}:{port} (listen.http_port): {e}"),
                );
            }
        },
    };
    let shard_port = own.local_addr().map(|a| a.port()).unwrap_or(want);
    let _ = ctx.events.send(ShardEvent::Bound {
        shard: ctx.index,
        shard_port,
    });

    let mut topology = loop {
        if let Some(t) = ctx.shard_map.get() {
            break t.clone();
        }
        if ctx.shutdown.load(Ordering::Relaxed) {
            return;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    };
    topology.shard = ctx.index;
    let table = topology
        .partition_table()
        .expect("the control thread builds a valid partition table");
    let log = if config.log.enabled() {
        let header = crate::log::format::SegmentHeader {
            shard: ctx.index as u16,
            shard_count: topology.shard_count as u16,
            partitions: topology.partitions,
            first_seq: 0,
            created_ms: 0,
        };
        match crate::log::writer::Log::open(&config.log, header, ctx.logged.clone()).await {
            Ok(log) => Some(log),
            Err(e) => {
                let dir = &config.log.dir;
                return fail(&ctx, format!("decision log in {dir}: {e}"));
            }
        }
    } else {
        None
    };
    let rules = ctx.rules.load();
    let mut velocity = VelocityState::new(config.limits.velocity_entities_max as usize);
    if ctx.view.is_some() {
        // A cluster node forgets the windows of a partition it takes back before replaying it.
        velocity.set_partitions(config.routing.partitions);
    }
    velocity.prepare(rules.rules.uid(), &rules.rules.program().velocity);
    ctx.taken.took(ctx.index, rules.rules.epoch);
    let mut stats = CoreStats::new();
    stats.stall_threshold_ns = config.runtime.stall_threshold_us * 1000;
    let shard = Rc::new(Shard {
        index: ctx.index,
        cpu: ctx.cpu,
        limits: config.limits.clone(),
        epoch: Cell::new(rules.rules.epoch),
        epochs: ctx.rules.clone(),
        taken: ctx.taken.clone(),
        models: RefCell::new(CoreModels::new(&rules)),
        rules: RefCell::new(rules),
        velocity: RefCell::new(velocity),
        control: ctx.events.clone(),
        reloads: config.admin.wire_reload.then(|| ctx.reloads.clone()),
        stats: RefCell::new(stats),
        buffers: Buffers::new(
            config.limits.connection_memory_bytes_max,
            // A TLS connection also holds rustls' buffers and ours for ciphertext.
            u64::from(config.limits.read_buffer_bytes)
                + if config.tls.enabled() {
                    crate::tls::TLS_CONNECTION_BYTES
                } else {
                    0
                },
            config.limits.write_buffer_bytes as usize,
        ),
        refusals_in_flight: Cell::new(0),
        clock: quanta::Clock::new(),
        mesh,
        table,
        node: ctx.view.clone().map(|cell| {
            let links = crate::cluster::peer::Links::new(
                Duration::from_millis(config.cluster.peer_reply_timeout_ms),
                config.cluster.peer_connections_max,
            );
            crate::cluster::peer::NodeSide::new(cell, links)
        }),
        append_wait: ctx
            .appended
            .clone()
            .map(|a| (a, Duration::from_millis(config.cluster.append_timeout_ms))),
        log,
        rule_counts: Default::default(),
        topology,
        drain: Drain::new(),
    });
    *handler.shard.borrow_mut() = Some(shard.clone());

    watch::spawn(&shard, accept_loop(shard.clone(), shared, Protocol::Frames));
    watch::spawn(&shard, accept_loop(shard.clone(), own, Protocol::Frames));
    if let Some(http) = http {
        watch::spawn(&shard, accept_loop(shard.clone(), http, Protocol::Http));
    }
    if let Some(jobs) = ctx.replay.take() {
        watch::spawn(&shard, crate::cluster::replay::serve(shard.clone(), jobs));
    }

    // Idle or not, a shard takes a new epoch within a tick, so stats show it everywhere; and
    // it reports its stats to the control thread every `stats_interval_ms`.
    let report_every = Duration::from_millis(config.runtime.stats_interval_ms);
    let mut reported = None::<Instant>;
    while !ctx.shutdown.load(Ordering::Relaxed) {
        if reported.is_none_or(|at| at.elapsed() >= report_every) {
            // Never blocks: when the channel is full this report is dropped (the next one
            // carries the same counters, later).
            let _ = ctx.reports.try_send(Some(Box::new(shard.snapshot())));
            reported = Some(Instant::now());
        }
        glommio::timer::sleep(tick).await;
        shard.refresh_rules();
    }
    shard.drain.start();
    let deadline = Instant::now() + Duration::from_millis(shard.limits.shutdown_drain_ms);
    while shard.stats.borrow().connections_open > 0 && Instant::now() < deadline {
        glommio::timer::sleep(tick).await;
    }
    let left = shard.stats.borrow().connections_open;
    if left > 0 {
        warn!(
            "shard {}: drain deadline reached with {left} connections still open",
            shard.index
        );
    }
    // The other shards' connections may still need this one (their events it owns): serve
    // the mesh until they are drained too, within the same deadline plus one reply time.
    ctx.draining.fetch_sub(1, Ordering::AcqRel);
    let last_call = deadline + Duration::from_millis(shard.limits.mesh_reply_timeout_ms);
    while ctx.draining.load(Ordering::Acquire) > 0 && Instant::now() < last_call {
        glommio::timer::sleep(tick).await;
    }
    if let Some(log) = &shard.log {
        let quiet = Duration::from_millis(shard.limits.shutdown_drain_ms);
        let closed = glommio::timer::timeout(quiet, async {
            log.close().await;
            Ok(())
        });
        if closed.await.is_err() {
            warn!(
                "shard {}: the decision log did not close in time",
                shard.index
            );
        }
    }
    *handler.shard.borrow_mut() = None;
    handler.stopped.set(true);
    info!("shard {} stopped", shard.index);
}

/// What a listener's connections speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// verdict's binary frames (net/PROTOCOL.md).
    Frames,
    /// HTTP/1.1 with JSON bodies ([`crate::http_api`]).
    Http,
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, protocol: Protocol) {
    let waiter = shard.drain.waiter();
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            waiter.drained().await;
            None
        })
        .await;
        let stream = match accepted {
            None => break,
            Some(Ok(stream)) => stream,
            Some(Err(e)) => {
                // EMFILE and friends: back off instead of spinning.
                warn!("shard {}: accept failed: {e}", shard.index);
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        match ConnectionSlot::take(&shard) {
            Ok(slot) if protocol == Protocol::Frames => {
                watch::spawn(&shard, connection::serve(shard.clone(), stream, slot))
            }
            Ok(slot) => watch::spawn(&shard, http_api::serve(shard.clone(), stream, slot)),
            // Telling a refused client why costs a task and a few hundred ms of lingering:
            // bounded, and never a TLS handshake (a flood past the cap must stay cheap). Past
            // the bound, and on TLS ports, the refusal is the close itself.
            Err(why)
                if shard.refusals_in_flight.get() < REFUSALS_IN_FLIGHT_MAX
                    && shard.rules.borrow().tls.is_none() =>
            {
                shard
                    .refusals_in_flight
                    .set(shard.refusals_in_flight.get() + 1);
                watch::spawn(&shard, reject(shard.clone(), stream, why, protocol));
            }
            Err(_) => drop(stream),
        }
    }
    // Dropping the listener closes it: new connections are refused from here on.
}

/// Refused connections being told why at once, per shard; past it they are just closed.
const REFUSALS_IN_FLIGHT_MAX: u32 = 64;

/// Tells a connection over a limit why it is refused, then closes it.
async fn reject(shard: Rc<Shard>, stream: TcpStream, why: Refusal, protocol: Protocol) {
    let message = match why {
        Refusal::Connections => format!(
            "shard {} is at its limit of {} connections (limits.connections_per_shard_max)",
            shard.index, shard.limits.connections_per_shard_max
        ),
        Refusal::Memory => format!(
            "shard {} has no room for another connection's buffers: {} of {} bytes in use \
             (limits.connection_memory_bytes_max)",
            shard.index,
            shard.buffers.in_use_bytes(),
            shard.buffers.budget_bytes()
        ),
    };
    // A refusal gets a short write timeout: it is owed a try, not the patience a served
    // connection gets.
    let _ = stream.set_write_timeout(Some(Duration::from_millis(shard.limits.shutdown_quiet_ms)));
    match protocol {
        Protocol::Frames => {
            connection::send_error_and_close(&shard, stream, 0, ErrorCode::Overloaded, &message)
                .await
        }
        Protocol::Http => {
            http_api::send_error_and_close(&shard, stream, ErrorCode::Overloaded, &message).await
        }
    }
    shard
        .refusals_in_flight
        .set(shard.refusals_in_flight.get() - 1);
}
