//! One shard's state: everything a data core owns. It lives inside one pinned glommio
//! executor and shares nothing with other shards but the read-only topology, the rule
//! epoch and the shutdown flag; it talks to them only through the mesh. Its life (bind,
//! accept, drain) is [`crate::listen`]'s.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::time::Instant;

use verdict_net::routing::PartitionTable;
use verdict_net::{StatsReply, TopologyReply};
use verdict_rules::{EpochCell, VelocityState};

use crate::buffers::Buffers;
use crate::config::Limits;
use crate::drain::Drain;
use crate::loop_time::Accounted;
use crate::mesh::MeshPort;
use crate::reload::Reloads;
use crate::scoring::{CoreModels, Published};
use crate::stats::{CoreStats, Snapshot};

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
    /// Which shard owns each partition of key values.
    pub table: PartitionTable,
    /// As a cluster node (`[cluster]`): the view of which node owns each partition, and the
    /// connections to the other nodes.
    pub node: Option<crate::cluster::peer::NodeSide>,
    /// With `cluster.wait_for_append`: the shipper's appended records per shard, and how
    /// long an answer waits for its own.
    pub append_wait: Option<(crate::cluster::Appended, std::time::Duration)>,
    /// This shard's decision log (`[log] dir` set).
    pub log: Option<Rc<crate::log::writer::Log>>,
    /// How often each rule fired here.
    pub rule_counts: RefCell<crate::stats::RuleCounts>,
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
        let mut snapshot = self.stats.borrow().snapshot(
            self.index,
            self.cpu,
            self.epoch.get(),
            self.models.borrow().stats(),
            runtime,
        );
        snapshot.stats.rules = self.rule_counts.borrow().snapshot();
        if let Some(log) = &self.log {
            let l = *log.stats.borrow();
            let s = &mut snapshot.stats;
            s.log_records = l.records;
            s.log_bytes_written = l.bytes_written;
            s.log_fsyncs = l.fsyncs;
            s.log_fsync_ns_total = l.fsync_ns_total;
            s.log_unlogged = l.unlogged;
            s.log_refused = l.refused;
            s.log_write_errors = l.write_errors;
            s.log_segments = l.segments;
        }
        snapshot
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
pub(crate) enum Refusal {
    Connections,
    Memory,
}

impl ConnectionSlot {
    pub(crate) fn take(shard: &Rc<Shard>) -> Result<ConnectionSlot, Refusal> {
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
