//! One shard: everything a data core owns. It runs inside one pinned glommio executor and
//! shares nothing with other shards but the read-only topology and the shutdown flag; it
//! talks to them only through the mesh.
//!
//! Life: join the mesh -> bind the shared and the shard port -> report the ports to the
//! control thread -> wait for the full shard map -> accept and serve -> on shutdown stop
//! accepting, let connections drain (bounded by `shutdown_drain_ms`) -> return.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::net::{TcpListener, TcpStream};
use log::{info, warn};
use verdict_net::{ErrorCode, LoopStats, StatsReply, TopologyReply};
use verdict_rules::{EpochCell, VelocityState};

use crate::buffers::Buffers;
use crate::config::{Limits, TopologyConfig};
use crate::conn;
use crate::drain::Drain;
use crate::loop_time::Accounted;
use crate::mesh::{Mesh, MeshPort};
use crate::metrics::ReportSender;
use crate::reload::Reloads;
use crate::scoring::{CoreModels, Published};
use crate::stats::{CoreStats, Snapshot};
use crate::watch;

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
    /// When each shard took which epoch (written once per swap, never per request).
    pub taken: Arc<Takeover>,
    /// Where this shard's stats snapshots go (the control thread's metrics plane).
    pub reports: ReportSender,
    /// The reload thread's queue (used only where `[admin] wire_reload` keeps kind 0x06).
    pub reloads: Reloads,
    /// Tells the control thread when this shard is gone, however that happens, including an
    /// executor that never started (the context is then dropped without `run` running).
    pub exit: ExitNotice,
}

/// What a shard tells the control thread.
#[derive(Debug)]
pub enum ShardEvent {
    Bound {
        shard: u32,
        shard_port: u16,
    },
    Failed {
        shard: u32,
        message: String,
    },
    Exited {
        shard: u32,
    },
    /// A client asked for stats: add the kernel columns to these fresh snapshots (every
    /// shard's) and answer on `reply`.
    Stats {
        snapshots: Vec<Snapshot>,
        reply: flume::Sender<StatsReply>,
    },
}

/// When each shard took which epoch, on one monotonic clock: a shard writes its slot once per
/// swap; the control thread reads them to time a reload to the last core, so its own
/// wake-ups (on a machine whose cores the shards keep busy) do not count.
pub struct Takeover {
    base: Instant,
    /// Per shard: (epoch taken, ns after `base` it was taken).
    shards: Vec<(AtomicU64, AtomicU64)>,
}

impl Takeover {
    pub fn new(shards: usize) -> Takeover {
        Takeover {
            base: Instant::now(),
            shards: (0..shards)
                .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
                .collect(),
        }
    }

    /// Now, in ns after the base.
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    pub fn took(&self, shard: u32, epoch: u64) {
        let (e, at) = &self.shards[shard as usize];
        at.store(self.now_ns(), Ordering::Relaxed);
        e.store(epoch, Ordering::Release);
    }

    /// When the last shard took `epoch` (or a later one); `None` while one has not.
    pub fn all_took(&self, epoch: u64) -> Option<u64> {
        let mut last = 0;
        for (e, at) in &self.shards {
            if e.load(Ordering::Acquire) < epoch {
                return None;
            }
            last = last.max(at.load(Ordering::Relaxed));
        }
        Some(last)
    }
}

/// Sends `ShardEvent::Exited` when dropped.
pub struct ExitNotice {
    pub shard: u32,
    pub events: Sender<ShardEvent>,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.events.send(ShardEvent::Exited { shard: self.shard });
    }
}

/// A shard's state, owned by its executor (hence `Rc`/`Cell`/`RefCell`, never locks).
pub struct Shard {
    pub index: u32,
    pub cpu: u32,
    pub limits: Limits,
    /// The epoch of `rules`.
    pub epoch: Cell<u64>,
    /// The shared epoch cell, checked once per batch and every tick.
    pub epochs: Arc<EpochCell<Published>>,
    pub taken: Arc<Takeover>,
    /// The rules and models this shard decides with: its own handle on the current epoch.
    pub rules: RefCell<Arc<Published>>,
    /// This shard's model instance pools (per-core, never shared).
    pub models: RefCell<CoreModels>,
    /// This shard's velocity windows (per-core, never shared).
    pub velocity: RefCell<VelocityState>,
    /// Where stats requests go (the control thread).
    pub control: Sender<ShardEvent>,
    /// Where reload requests go, when the data port serves them at all (`wire_reload`).
    pub reloads: Option<Reloads>,
    pub stats: RefCell<CoreStats>,
    /// Connection buffers: the budget, and response buffers for reuse.
    pub buffers: Buffers,
    /// Refused connections still being told why (bounded by `REFUSALS_IN_FLIGHT_MAX`).
    pub refusals_in_flight: Cell<u32>,
    pub clock: quanta::Clock,
    pub mesh: Option<Rc<MeshPort>>,
    /// The topology reply, with `shard` = this shard.
    pub topology: TopologyReply,
    pub drain: Rc<Drain>,
}

impl Shard {
    /// Takes the current rule set if the epoch moved: between batches, never inside one.
    /// One atomic load when nothing changed.
    pub fn refresh_rules(&self) {
        if self.epochs.epoch() == self.epoch.get() {
            return;
        }
        let next = self.epochs.load();
        self.velocity
            .borrow_mut()
            .prepare(next.rules.uid(), &next.rules.program().velocity);
        self.models.borrow_mut().swap(&next);
        self.epoch.set(next.rules.epoch);
        self.taken.took(self.index, next.rules.epoch);
        // The previous set is freed here if this was the last shard holding it.
        *self.rules.borrow_mut() = next;
    }

    /// This shard's stats now, with its executor's time split. Runs on the shard's thread.
    pub fn snapshot(&self) -> Snapshot {
        let runtime = {
            let mut s = self.stats.borrow_mut();
            s.loop_time.add(Accounted::read());
            s.loop_time.split()
        };
        self.stats.borrow().snapshot(
            self.index,
            self.cpu,
            self.epoch.get(),
            self.models.borrow().stats(),
            runtime,
        )
    }
}

/// One open connection's claim on `connections_per_shard_max` and on the shard's
/// connection memory (its base buffers, and what it grows by): taken at accept time, before
/// the connection's task is spawned, so a burst of accepts cannot overshoot either;
/// released when the connection ends.
pub struct ConnectionSlot {
    shard: Rc<Shard>,
    /// Bytes this connection holds beyond its base buffers.
    grown_bytes: Cell<u64>,
}

/// Why a connection was refused at accept.
enum Refusal {
    Connections,
    Memory,
}

impl ConnectionSlot {
    fn take(shard: &Rc<Shard>) -> Result<ConnectionSlot, Refusal> {
        let mut s = shard.stats.borrow_mut();
        if s.connections_open >= u64::from(shard.limits.connections_per_shard_max) {
            s.connections_rejected += 1;
            return Err(Refusal::Connections);
        }
        if !shard.buffers.admit() {
            s.connections_rejected += 1;
            return Err(Refusal::Memory);
        }
        s.connections_open += 1;
        s.connections_accepted += 1;
        Ok(ConnectionSlot {
            shard: shard.clone(),
            grown_bytes: Cell::new(0),
        })
    }

    /// Sets what the connection holds beyond its base to `bytes`; false, changing nothing,
    /// if that would pass the shard's `connection_memory_bytes_max`.
    pub fn hold_grown(&self, bytes: u64) -> bool {
        let mut grown = self.grown_bytes.get();
        let ok = self.shard.buffers.regrow(&mut grown, bytes);
        self.grown_bytes.set(grown);
        ok
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.shard.buffers.release(self.grown_bytes.get());
        self.shard.stats.borrow_mut().connections_open -= 1;
    }
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
pub async fn run(ctx: ShardContext) {
    let config = ctx.config.clone();
    let tick = Duration::from_millis(config.runtime.tick_ms);
    if config.runtime.bind_memory
        && let Err(e) = crate::hardware::bind_thread_memory(ctx.numa_node)
    {
        warn!("shard {}: {e}; memory stays unbound", ctx.index);
    }
    // Every shard joins before any binds, so a failed bind cannot leave a peer waiting; a
    // peer that never starts at all is covered by racing the join against shutdown.
    let stats_for_mesh: Rc<RefCell<Option<Rc<Shard>>>> = Rc::new(RefCell::new(None));
    let mesh = match ctx.mesh {
        Some(ref m) => {
            let cell = stats_for_mesh.clone();
            let (index, cpu) = (ctx.index, ctx.cpu);
            let join = MeshPort::join(m.clone(), move || match cell.borrow().as_ref() {
                Some(shard) => shard.snapshot(),
                None => CoreStats::new().snapshot(index, cpu, 0, Vec::new(), LoopStats::default()),
            });
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
    let rules = ctx.rules.load();
    let mut velocity = VelocityState::new(config.limits.velocity_entities_max as usize);
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
        topology,
        drain: Drain::new(),
    });
    *stats_for_mesh.borrow_mut() = Some(shard.clone());

    watch::spawn(&shard, accept_loop(shard.clone(), shared));
    watch::spawn(&shard, accept_loop(shard.clone(), own));

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
    *stats_for_mesh.borrow_mut() = None;
    info!("shard {} stopped", shard.index);
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
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
            Ok(slot) => watch::spawn(&shard, conn::serve(shard.clone(), stream, slot)),
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
                watch::spawn(&shard, reject(shard.clone(), stream, why));
            }
            Err(_) => drop(stream),
        }
    }
    // Dropping the listener closes it: new connections are refused from here on.
}

/// Refused connections being told why at once, per shard; past it they are just closed.
const REFUSALS_IN_FLIGHT_MAX: u32 = 64;

/// Tells a connection over a limit why it is refused, then closes it.
async fn reject(shard: Rc<Shard>, stream: TcpStream, why: Refusal) {
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
    conn::send_error_and_close(&shard, stream, 0, ErrorCode::Overloaded, &message).await;
    shard
        .refusals_in_flight
        .set(shard.refusals_in_flight.get() - 1);
}
