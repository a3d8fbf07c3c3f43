//! The per-core batch aggregator: decides a batch of events exactly, whichever shard they
//! arrived on.
//!
//! For each event of a batch (a run of evaluate frames, or an evaluate-batch):
//! - the owner of its account's partition decides it: an event this shard does not own is
//!   sent to its owner, which decides it and answers (`forward`);
//! - for an event this shard decides, each velocity key whose value's partition another
//!   shard owns (a device, an IP, a merchant) is recorded by that owner, which returns the
//!   windows the rules need (`record`).
//!
//! All of a batch's requests to one peer travel in one mesh message, and the batch waits
//! for every peer at once: one round trip to each, then every local event is decided with
//! the values gathered. An event that cannot get all of its state gets an error, never a
//! decision on part of it: error 8 when a peer's budget of events in flight
//! (`limits.mesh_events_in_flight_max`) is spent (checked before anything is sent, so such
//! an event was recorded nowhere), error 9 when a peer does not answer within
//! `limits.mesh_reply_timeout_ms` (it may have recorded the event).
//!
//! One epoch decides a whole batch: the one the receiving shard held when the batch began,
//! even if a shard moves on while the batch waits. (Across nodes each node numbers its own
//! epochs: an event another node decides carries that node's epoch.) The owners of its other keys record
//! that epoch's functions, and the owner of a forwarded event decides it with that epoch's
//! rules and models (every core keeps the layouts and pools of recent epochs, see
//! `VelocityState` and `CoreModels`), so the epochs a connection sees never go back.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use verdict_net::{ArchivedEvent, Decision, ErrorCode, EvaluateBatch, PeerOutcome, PeerRecord};
use verdict_rules::{Outcome, VelocityKey, key_value};

use crate::cluster::peer::{CallError, Called};
use crate::cluster::view::{Closed, ClusterView, Route};

use crate::decide::{self, Decided, HERE, Remote, Scratch, recycle};
use crate::mesh::{
    DecidedReply, Events, Handler, KeyMask, MeshPort, Origin, Recorded, Records, Refused, Reply,
    Work, key_bit,
};
use crate::scoring::Published;
use crate::shard::Shard;
use crate::stats::Snapshot;

/// Every velocity key, in key order (the order of a key mask's values).
const KEYS: [VelocityKey; 4] = [
    VelocityKey::Account,
    VelocityKey::Device,
    VelocityKey::Ip,
    VelocityKey::Merchant,
];

const OVERLOADED: Refused = Refused {
    code: ErrorCode::Overloaded,
    why: "a shard this event needs has too many events waiting on it \
          (limits.mesh_events_in_flight_max); retry",
};
const UNAVAILABLE: Refused = Refused {
    code: ErrorCode::Unavailable,
    why: "a shard this event needs did not answer in time (limits.mesh_reply_timeout_ms)",
};
const INTERNAL: Refused = Refused {
    code: ErrorCode::Internal,
    why: "an event copied between shards did not validate",
};
const MOVED: Refused = Refused {
    code: ErrorCode::Unavailable,
    why: "this event's account is no longer this node's (the partition map moved); \
          retry on its owner",
};
const HANDING_OFF: Refused = Refused {
    code: ErrorCode::Unavailable,
    why: "a device, IP or merchant of this event is in a partition another node is handing \
          off (a rebalance or drain in progress); retry shortly",
};
const CATCHING_UP: Refused = Refused {
    code: ErrorCode::Unavailable,
    why: "a partition of this event's keys has just come to this node, which is replaying its \
          history from VERDICT_EVENTS before deciding on it; retry shortly",
};
const NO_MAP: Refused = Refused {
    code: ErrorCode::Unavailable,
    why: "this cluster node has no partition map yet (starting, or NATS unreachable); retry",
};
const FENCED: Refused = Refused {
    code: ErrorCode::Unavailable,
    why: "this cluster node cannot reach NATS and may have lost its partitions \
          (cluster.node_ttl_ms); it decides nothing until it can",
};

/// Which events a shard may send elsewhere to be decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// None: every event is decided here (it was forwarded here).
    No,
    /// To the shard of this node that owns its account (it came from another node).
    Shards,
    /// To whichever node and shard owns its account (it came from a client).
    Nodes,
}

/// How one event of a batch is answered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer {
    /// Decided here: `Batch::decided.verdicts[i]`.
    Here(u32),
    /// Decided by its owner: `Batch::replies[reply]`, verdict `verdict`.
    There {
        reply: u32,
        verdict: u32,
    },
    Refused(Refused),
    /// Decided by another node: `Batch::relayed[i]`.
    Relayed(u32),
    /// Refused by (or for want of) another node: `Batch::refusals[i]`.
    RefusedThere(u32),
}

impl Answer {
    fn refused(&self) -> bool {
        matches!(self, Answer::Refused(r) if *r != INTERNAL)
            || matches!(self, Answer::RefusedThere(_))
    }
}

/// A batch's results, and the buffers deciding it reuses.
#[derive(Default)]
pub struct Batch {
    /// The epoch the local verdicts were decided with.
    pub published: Option<Arc<Published>>,
    pub decided: Decided,
    pub replies: Vec<Box<DecidedReply>>,
    /// Per event of the batch, in order.
    pub answers: Vec<Answer>,
    /// Decisions other nodes made for this batch.
    pub relayed: Vec<Decision>,
    /// Why other nodes' events were refused: code and message.
    pub refusals: Vec<(ErrorCode, String)>,
    /// Per shard of another node: the events it decides and the keys it records.
    remotes: Vec<RemotePlan>,
    scratch: Scratch,
    remote: Remote,
    /// Per peer: the events it decides, and those it records (with their keys).
    plans: Vec<Plan>,
    /// The batch positions of the events decided here.
    local: Vec<usize>,
    /// When only some of a batch's events are decided here: those events and their
    /// gathered windows, contiguous (buffers kept between batches).
    local_events: Vec<&'static ArchivedEvent>,
    local_remote: Remote,
    /// Registers of the event whose samples are being computed for other shards.
    regs: Outcome,
    /// Where the local events' bytes are, when only some are local (for the log).
    local_origins: Vec<Origin<'static>>,
    /// Each local verdict's log record (`None`: not logged).
    log_seqs: Vec<Option<u64>>,
}

/// One batch's work for one shard of another node.
struct RemotePlan {
    node: u16,
    shard: u16,
    decide: Vec<usize>,
    record: Vec<(usize, KeyMask)>,
}

#[derive(Default)]
struct Plan {
    decide: Vec<usize>,
    /// The events it records, with their keys (in key order, as in `records`).
    record: Vec<(usize, KeyMask)>,
    records: Records,
    decide_token: u64,
    record_token: u64,
    reserved: u32,
}

impl Batch {
    /// Lets go of the epochs the answers borrowed their names from (once they are encoded),
    /// so an idle connection keeps no old rule set alive.
    pub fn release(&mut self) {
        self.published = None;
        self.replies.clear();
        self.relayed.clear();
    }

    fn reset(&mut self, events: usize, peers: usize) {
        self.decided.clear();
        self.replies.clear();
        self.answers.clear();
        self.answers.resize(events, Answer::Refused(INTERNAL));
        self.relayed.clear();
        self.refusals.clear();
        self.remotes.clear();
        self.remote.clear();
        self.local.clear();
        self.plans.resize_with(peers, Plan::default);
        for p in &mut self.plans {
            p.decide.clear();
            p.record.clear();
            p.records.clear();
            p.reserved = 0;
        }
    }
}

/// Decides `events` (whose bytes `origins` locates) under `published` into `batch`: here,
/// or by the shard (and, `forward` allowing, the node) that owns each one's account, with
/// every key's windows from the shard and node that keeps them. Returns when every event
/// has an answer.
pub async fn decide_all(
    shard: &Shard,
    published: Arc<Published>,
    events: &[&ArchivedEvent],
    origins: &[Origin<'_>],
    forward: Forward,
    batch: &mut Batch,
) {
    let view = shard.node.as_ref().map(|n| n.view());
    let mesh = shard.mesh.clone();
    if mesh.is_none() && view.is_none() {
        // One shard, one node: everything is here.
        batch.reset(events.len(), 0);
        batch.local.extend(0..events.len());
        decide_local(shard, &published, events, origins, batch);
        log_wait(shard, batch).await;
        batch.published = Some(published);
        return;
    }
    batch.reset(events.len(), mesh.as_ref().map_or(0, |m| m.peers()));
    if let Some(closed) = view.as_ref().and_then(|v| v.closed) {
        let why = match closed {
            Closed::NoMap => NO_MAP,
            Closed::Fenced => FENCED,
        };
        batch.answers.fill(Answer::Refused(why));
        batch.published = Some(published);
        return;
    }
    plan(shard, &published, view.as_deref(), events, forward, batch);
    // Everything that can refuse an event before anything is sent does so now (an owner
    // not live, no connection to it, a peer shard's budget spent), and a refused event is
    // taken out of every plan: it is recorded nowhere.
    let mut slots = match (&view, &shard.node) {
        (Some(view), Some(node)) => acquire(view, &node.links, &published, batch),
        _ => Vec::new(),
    };
    prune_refused(batch);
    let mut waiter = None;
    if let Some(mesh) = &mesh {
        let expected = reserve(mesh, batch);
        prune_refused(batch);
        let mut w = mesh.expect(expected);
        send(shard, mesh, &published, origins, batch, &mut w);
        waiter = Some(w);
    }
    let calls = match &view {
        Some(view) => remote_calls(view, &published, events, batch, &mut slots),
        None => Vec::new(),
    };
    let mesh_timeout = Duration::from_millis(shard.limits.mesh_reply_timeout_ms);
    let deadline = Instant::now() + mesh_timeout;
    // Calls this one makes must end before the call it is part of: a forwarded batch's
    // within half of what its sender waits.
    let peer_timeout = shard
        .node
        .as_ref()
        .map_or(mesh_timeout, |n| n.links.timeout());
    let budget = match forward {
        Forward::Nodes => peer_timeout,
        Forward::Shards => peer_timeout / 2,
        Forward::No => (peer_timeout / 2).min(mesh_timeout / 2),
    };
    // This node's shards and the other nodes answer at once: one round trip to each.
    let here = async {
        if let Some(w) = waiter.as_mut() {
            collect(w, deadline, &published, batch).await;
        }
    };
    let there = async {
        if calls.is_empty() {
            return Vec::new();
        }
        futures_util::future::join_all(
            slots
                .drain(..)
                .flatten()
                .zip(&calls)
                .map(|(slot, c)| slot.call(c.decide.as_ref(), c.record.as_ref(), budget)),
        )
        .await
    };
    let ((), called) = futures_lite::future::zip(here, there).await;
    drop(waiter);
    if let Some(mesh) = &mesh {
        for (peer, p) in batch.plans.iter_mut().enumerate() {
            mesh.release(peer, std::mem::take(&mut p.reserved));
        }
    }
    file_remote(&calls, called, &published, batch);
    decide_local(shard, &published, events, origins, batch);
    log_wait(shard, batch).await;
    batch.published = Some(published);
}

/// Sends each peer shard of this node its part of the batch (one mesh message per peer).
fn send(
    shard: &Shard,
    mesh: &MeshPort,
    published: &Arc<Published>,
    origins: &[Origin<'_>],
    batch: &mut Batch,
    waiter: &mut crate::mesh::Waiter,
) {
    for (peer, p) in batch.plans.iter_mut().enumerate() {
        if p.reserved == 0 {
            continue;
        }
        let mut work = Box::new(Work {
            from: mesh.peer_id(),
            decide_token: 0,
            decide: Events::default(),
            record_token: 0,
            record: Records::default(),
            rules: published.clone(),
        });
        if !p.decide.is_empty() {
            p.decide_token = waiter.token();
            work.decide_token = p.decide_token;
            for &i in &p.decide {
                work.decide.push(origins[i]);
            }
        }
        if !p.record.is_empty() {
            p.record_token = waiter.token();
            work.record_token = p.record_token;
            work.record = std::mem::take(&mut p.records);
        }
        let n = (p.decide.len() + p.record.len()) as u64;
        shard.stats.borrow_mut().mesh_events_sent += n;
        mesh.send(peer, crate::mesh::MeshMsg::Work(work));
    }
}

/// Takes a connection for each remote plan, in plan order; the events of a plan whose
/// owner is not live, or to whose owner no connection is free, are refused (error 9, 8).
fn acquire<'l>(
    view: &ClusterView,
    links: &'l crate::cluster::peer::Links,
    published: &Published,
    batch: &mut Batch,
) -> Vec<Option<crate::cluster::peer::Slot<'l>>> {
    let mut slots = Vec::with_capacity(batch.remotes.len());
    let mine = published.rules.windows_digest();
    for r in &batch.remotes {
        let theirs = &view.nodes[r.node as usize].windows;
        let slot = match view.addr(r.node, r.shard) {
            // Records there would be refused: nothing is sent (a rolling reload passes).
            Some(_) if !r.record.is_empty() && !theirs.is_empty() && theirs != mine => {
                Err(CallError {
                    code: ErrorCode::Unavailable,
                    why: format!(
                        "node {:?} keeps velocity windows {theirs} and this node {mine}: \
                         every node must serve the same rules' velocity functions; retry \
                         once they do",
                        view.name(r.node)
                    ),
                })
            }
            None => Err(CallError {
                code: ErrorCode::Unavailable,
                why: format!(
                    "this event needs node {:?}, which is not live (its partitions move to \
                     the others at their next heartbeat); retry",
                    view.name(r.node)
                ),
            }),
            Some(addr) => links.acquire(addr),
        };
        match slot {
            Ok(slot) => slots.push(Some(slot)),
            Err(e) => {
                let k = batch.refusals.len() as u32;
                batch.refusals.push((e.code, e.why));
                for &i in r.decide.iter().chain(r.record.iter().map(|(i, _)| i)) {
                    batch.answers[i] = Answer::RefusedThere(k);
                }
                slots.push(None);
            }
        }
    }
    slots
}

/// Takes every refused event out of every plan (this node's shards', other nodes') and
/// out of the local ones, before anything is sent.
fn prune_refused(batch: &mut Batch) {
    let answers = &batch.answers;
    let is_refused = |i: usize| answers[i].refused();
    for p in &mut batch.plans {
        if p.record.iter().any(|&(i, _)| is_refused(i)) {
            p.records = p.records.retain(&p.record, |i| !is_refused(i));
            p.record.retain(|&(i, _)| !is_refused(i));
        }
        p.decide.retain(|&i| !is_refused(i));
    }
    for r in &mut batch.remotes {
        r.decide.retain(|&i| !is_refused(i));
        r.record.retain(|&(i, _)| !is_refused(i));
    }
    batch.local.retain(|&i| !is_refused(i));
}

/// One call to a shard of another node: the events it decides and the keys it records,
/// copied into owned messages (the cross-node path allocates; the local one does not).
struct RemoteCall {
    /// Index in `Batch::remotes`.
    plan: usize,
    addr: std::net::SocketAddr,
    decide: Option<EvaluateBatch>,
    record: Option<PeerRecord>,
}

/// Builds the calls the batch's remote plans still need, each with its slot (`slots`
/// keeps, in call order, only the slots of the calls made; the others are let go).
fn remote_calls<'l>(
    view: &ClusterView,
    published: &Published,
    events: &[&ArchivedEvent],
    batch: &mut Batch,
    slots: &mut Vec<Option<crate::cluster::peer::Slot<'l>>>,
) -> Vec<RemoteCall> {
    let owned = |e: &ArchivedEvent| {
        rkyv::deserialize::<verdict_net::Event, rkyv::rancor::Error>(e)
            .expect("a validated event deserializes")
    };
    let mut calls = Vec::with_capacity(batch.remotes.len());
    let mut kept = Vec::with_capacity(slots.len());
    for (at, (r, slot)) in batch.remotes.iter().zip(slots.drain(..)).enumerate() {
        let Some(slot) = slot else { continue };
        if r.decide.is_empty() && r.record.is_empty() {
            continue; // every event refused: the slot goes back
        }
        let addr = view.addr(r.node, r.shard).expect("acquired");
        kept.push(Some(slot));
        calls.push(RemoteCall {
            plan: at,
            addr,
            decide: (!r.decide.is_empty()).then(|| EvaluateBatch {
                events: r.decide.iter().map(|&i| owned(events[i])).collect(),
            }),
            record: (!r.record.is_empty()).then(|| PeerRecord {
                from: view.me.clone(),
                map_epoch: view.map_epoch,
                digest: published.rules.windows_digest().to_string(),
                events: r.record.iter().map(|&(i, _)| owned(events[i])).collect(),
                keys: r.record.iter().map(|&(_, keys)| keys).collect(),
            }),
        });
    }
    *slots = kept;
    calls
}

/// Files what the other nodes answered: their decisions and refusals, and the windows
/// they recorded (as the mesh's recorded windows are filed).
fn file_remote(
    calls: &[RemoteCall],
    called: Vec<Result<Called, CallError>>,
    published: &Published,
    batch: &mut Batch,
) {
    let per_key = published.rules.functions_by_key();
    let n = batch.answers.len();
    let remotes = std::mem::take(&mut batch.remotes);
    for (call, result) in calls.iter().zip(called) {
        let plan = &remotes[call.plan];
        let (decided, recorded) = match result {
            Ok(c) => (c.decided, c.recorded),
            Err(e) => (Some(Err(e.clone())), Some(Err(e))),
        };
        let mut refuse = |e: CallError, events: &mut dyn Iterator<Item = usize>| {
            let k = batch.refusals.len() as u32;
            batch.refusals.push((e.code, e.why));
            for i in events {
                batch.answers[i] = Answer::RefusedThere(k);
            }
        };
        match decided {
            None => {}
            Some(Err(e)) => refuse(e, &mut plan.decide.iter().copied()),
            Some(Ok(d)) if d.outcomes.len() != plan.decide.len() => refuse(
                CallError {
                    code: ErrorCode::Internal,
                    why: format!(
                        "node {} answered {} outcomes for {} events",
                        call.addr,
                        d.outcomes.len(),
                        plan.decide.len()
                    ),
                },
                &mut plan.decide.iter().copied(),
            ),
            Some(Ok(d)) => {
                for (&i, outcome) in plan.decide.iter().zip(d.outcomes) {
                    match outcome {
                        PeerOutcome::Decided(decision) => {
                            batch.answers[i] = Answer::Relayed(batch.relayed.len() as u32);
                            batch.relayed.push(decision);
                        }
                        PeerOutcome::Refused(e) => {
                            let code = ErrorCode::from_u16(e.code).unwrap_or(ErrorCode::Internal);
                            batch.answers[i] = Answer::RefusedThere(batch.refusals.len() as u32);
                            batch.refusals.push((code, e.message));
                        }
                    }
                }
            }
        }
        let expected: usize = plan
            .record
            .iter()
            .map(|&(_, keys)| {
                KEYS.iter()
                    .filter(|&&k| keys & key_bit(k) != 0)
                    .map(|&k| per_key[k as usize])
                    .sum::<usize>()
            })
            .sum();
        match recorded {
            None => {}
            Some(Err(e)) => {
                let k = batch.refusals.len() as u32;
                batch.refusals.push((e.code, e.why));
                for &(i, _) in &plan.record {
                    batch.answers[i] = Answer::RefusedThere(k);
                }
            }
            Some(Ok(r)) if r.values.len() != expected => {
                let k = batch.refusals.len() as u32;
                batch.refusals.push((
                    ErrorCode::Internal,
                    format!(
                        "node {} returned {} windows where {expected} were asked for",
                        call.addr,
                        r.values.len()
                    ),
                ));
                for &(i, _) in &plan.record {
                    batch.answers[i] = Answer::RefusedThere(k);
                }
            }
            Some(Ok(r)) => {
                if batch.remote.at.len() < n {
                    batch.remote.at.resize(n, [HERE; 4]);
                }
                let mut at = 0usize;
                for &(i, keys) in &plan.record {
                    for key in KEYS {
                        if keys & key_bit(key) != 0 {
                            let start = batch.remote.values.len();
                            let n = per_key[key as usize];
                            batch.remote.values.extend_from_slice(&r.values[at..at + n]);
                            batch.remote.at[i][key as usize] = start as u32;
                            at += n;
                        }
                    }
                }
            }
        }
    }
    batch.remotes = remotes;
}

const UNLOGGED: Refused = Refused {
    code: ErrorCode::Unavailable,
    why: "the decision log could not take this decision's record (log.on_write_error = \"refuse\")",
};

const UNAPPENDED: Refused = Refused {
    code: ErrorCode::Unavailable,
    why: "this decision is logged but the replicated streams did not take it within \
          cluster.append_timeout_ms (cluster.wait_for_append); it will be appended later",
};

/// How often an answer waiting for its append looks again.
const APPEND_POLL: Duration = Duration::from_micros(250);

/// Where answers wait for their records (`log.sync = "always"`, or `on_write_error =
/// "refuse"`): waits for the batch's last record; under "refuse", a decision without its
/// record written becomes error 9. With `cluster.wait_for_append`, then waits until the
/// shipper has appended that record to the replicated streams (error 9 past
/// `cluster.append_timeout_ms`).
async fn log_wait(shard: &Shard, batch: &mut Batch) {
    let Some(log) = &shard.log else { return };
    if !log.answers_wait() || batch.local.is_empty() {
        return;
    }
    let last = batch.log_seqs.iter().flatten().max().copied();
    let written = match last {
        Some(seq) => log.wait(seq).await,
        None => false,
    };
    if shard.append_wait.is_some() {
        // A decision that is not logged is never appended: not answered in this mode.
        for (v, &i) in batch.local.iter().enumerate() {
            if !written || batch.log_seqs[v].is_none() {
                batch.answers[i] = Answer::Refused(UNLOGGED);
            }
        }
    }
    if let (Some((appended, timeout)), Some(seq), true) = (&shard.append_wait, last, written) {
        let appended = &appended[shard.index as usize];
        let deadline = Instant::now() + *timeout;
        let load = || appended.load(std::sync::atomic::Ordering::Acquire);
        while load() < seq && Instant::now() < deadline {
            glommio::timer::sleep(APPEND_POLL).await;
        }
        if load() < seq {
            for &i in &batch.local {
                if !batch.answers[i].refused() {
                    batch.answers[i] = Answer::Refused(UNAPPENDED);
                }
            }
            return;
        }
    }
    if !log.refuses() {
        return;
    }
    for (v, &i) in batch.local.iter().enumerate() {
        if !written || batch.log_seqs[v].is_none() {
            batch.answers[i] = Answer::Refused(UNLOGGED);
        }
    }
}

/// The plan for one shard of another node in `remotes`, made if new.
fn remote_plan(remotes: &mut Vec<RemotePlan>, node: u16, shard: u16) -> &mut RemotePlan {
    let at = match remotes
        .iter()
        .position(|r| r.node == node && r.shard == shard)
    {
        Some(at) => at,
        None => {
            remotes.push(RemotePlan {
                node,
                shard,
                decide: Vec::new(),
                record: Vec::new(),
            });
            remotes.len() - 1
        }
    };
    &mut remotes[at]
}

/// Who decides each event (this shard, another of this node, another node), and which
/// other shards and nodes record which of its keys.
fn plan(
    shard: &Shard,
    published: &Published,
    view: Option<&ClusterView>,
    events: &[&ArchivedEvent],
    forward: Forward,
    batch: &mut Batch,
) {
    let me = shard.index;
    let rules = &published.rules;
    let per_key = rules.functions_by_key();
    let mut ip = [0u8; 16];
    let regs = &mut batch.regs;
    for (i, event) in events.iter().enumerate() {
        let account = event.account_id.as_str();
        if view.is_some_and(|v| catching_up(v, event, &per_key, &mut ip)) {
            batch.answers[i] = Answer::Refused(CATCHING_UP);
            continue;
        }
        if let Some(Route::There { node, shard: s }) = view.map(|v| v.route(account.as_bytes())) {
            if forward == Forward::Nodes {
                remote_plan(&mut batch.remotes, node, s).decide.push(i);
            } else {
                batch.answers[i] = Answer::Refused(MOVED);
            }
            continue;
        }
        let owner = shard.table.owner_of_account(account);
        if forward != Forward::No && owner != me {
            batch.plans[owner as usize].decide.push(i);
            continue;
        }
        if view.is_some_and(|v| v.any_handed() && keys_handed(v, event, &per_key, &mut ip)) {
            batch.answers[i] = Answer::Refused(HANDING_OFF);
            continue;
        }
        batch.local.push(i);
        // The keys each other shard records for this event (at most one entry per peer),
        // and those other nodes record.
        let mut masks = [(u32::MAX, 0 as KeyMask); 4];
        let mut there = [(u16::MAX, u16::MAX, 0 as KeyMask); 4];
        let mut loaded = false;
        for key in KEYS {
            if per_key[key as usize] == 0 {
                continue;
            }
            let Some(value) = key_value(event, key, &mut ip) else {
                continue;
            };
            if let Some(Route::There { node, shard: s }) = view.map(|v| v.route(value)) {
                let slot = there
                    .iter_mut()
                    .find(|(n, sh, m)| (*n == node && *sh == s) || *m == 0)
                    .expect("at most four keys");
                *slot = (node, s, slot.2 | key_bit(key));
                continue;
            }
            let owner = shard.table.owner(value);
            if owner == me {
                continue;
            }
            let slot = masks
                .iter_mut()
                .find(|(o, m)| *o == owner || *m == 0)
                .expect("at most four keys");
            *slot = (owner, slot.1 | key_bit(key));
            if !std::mem::replace(&mut loaded, true) {
                rules.load(event, regs);
            }
            let records = &mut batch.plans[owner as usize].records;
            records.push(key, value, event.timestamp_ms.to_native());
            rules.key_samples(event, key, regs, &mut records.samples);
        }
        for &(owner, keys) in masks.iter().take_while(|(_, m)| *m != 0) {
            batch.plans[owner as usize].record.push((i, keys));
        }
        for &(node, s, keys) in there.iter().take_while(|(_, _, m)| *m != 0) {
            remote_plan(&mut batch.remotes, node, s)
                .record
                .push((i, keys));
        }
    }
}

/// Whether this node decides or keeps any of `event`'s keys (its account, or a key the rules
/// count by) in a partition it is still replaying: then the event waits (error 9) rather
/// than be decided on incomplete windows.
fn catching_up(
    view: &ClusterView,
    event: &ArchivedEvent,
    per_key: &[usize; 4],
    ip: &mut [u8; 16],
) -> bool {
    if !view.any_cold() {
        return false;
    }
    view.cold(event.account_id.as_bytes())
        || KEYS.iter().any(|&key| {
            per_key[key as usize] > 0 && key_value(event, key, ip).is_some_and(|v| view.cold(v))
        })
}

/// Whether a key of `event` the rules count by is in a partition another node is handing
/// off: recorded there, it would reach the event stream only with this node's shipping,
/// which the new owner's last replay does not wait for.
fn keys_handed(
    view: &ClusterView,
    event: &ArchivedEvent,
    per_key: &[usize; 4],
    ip: &mut [u8; 16],
) -> bool {
    KEYS.iter().any(|&key| {
        per_key[key as usize] > 0
            && key_value(event, key, ip).is_some_and(|v| view.handed_elsewhere(v))
    })
}

/// Takes each peer's budget for its events; where a peer's is spent, its events are
/// refused (error 8) and taken out of every other peer's plan before anything is sent.
/// Returns the replies to expect.
fn reserve(mesh: &MeshPort, batch: &mut Batch) -> usize {
    let mut refused = false;
    for (peer, p) in batch.plans.iter_mut().enumerate() {
        let n = (p.decide.len() + p.record.len()) as u32;
        if n == 0 {
            continue;
        }
        if mesh.reserve(peer, n) {
            p.reserved = n;
        } else {
            refused = true;
            for &i in &p.decide {
                batch.answers[i] = Answer::Refused(OVERLOADED);
            }
            for &(i, _) in &p.record {
                batch.answers[i] = Answer::Refused(OVERLOADED);
            }
            p.decide.clear();
            p.record.clear();
        }
    }
    if refused {
        let answers = &batch.answers;
        let is_refused = |i: usize| answers[i].refused();
        for (peer, p) in batch.plans.iter_mut().enumerate() {
            if p.record.iter().any(|&(i, _)| is_refused(i)) {
                p.records = p.records.retain(&p.record, |i| !is_refused(i));
                p.record.retain(|&(i, _)| !is_refused(i));
            }
            let n = (p.decide.len() + p.record.len()) as u32;
            mesh.release(peer, p.reserved - n);
            p.reserved = n;
        }
        batch.local.retain(|&i| !is_refused(i));
    }
    batch
        .plans
        .iter()
        .map(|p| usize::from(!p.decide.is_empty()) + usize::from(!p.record.is_empty()))
        .sum()
}

/// Waits for every reply the plans expect (until `deadline`), and files them: recorded
/// windows into `batch.remote`, owners' decisions into `batch.replies` and the answers.
async fn collect(
    waiter: &mut crate::mesh::Waiter,
    deadline: Instant,
    published: &Published,
    batch: &mut Batch,
) {
    let per_key = published.rules.functions_by_key();
    let mut left: usize = batch
        .plans
        .iter()
        .map(|p| usize::from(!p.decide.is_empty()) + usize::from(!p.record.is_empty()))
        .sum();
    batch.remote.at.resize(batch.answers.len(), [HERE; 4]);
    while left > 0 {
        let Some(reply) = waiter.next(deadline).await else {
            break;
        };
        match reply {
            Reply::Recorded(r) => {
                let Some(p) = batch
                    .plans
                    .iter_mut()
                    .find(|p| !p.record.is_empty() && p.record_token == r.token)
                else {
                    continue;
                };
                left -= 1;
                let values = match r.result {
                    Ok(values) => values,
                    Err(_) => {
                        for &(i, _) in &p.record {
                            batch.answers[i] = Answer::Refused(UNAVAILABLE);
                        }
                        p.record.clear();
                        continue;
                    }
                };
                let mut at = 0usize;
                for &(i, keys) in &p.record {
                    for key in KEYS {
                        if keys & key_bit(key) != 0 {
                            let start = batch.remote.values.len();
                            let n = per_key[key as usize];
                            batch.remote.values.extend_from_slice(&values[at..at + n]);
                            batch.remote.at[i][key as usize] = start as u32;
                            at += n;
                        }
                    }
                }
                // Filed: an event whose record came back no longer waits on this peer.
                p.record.clear();
            }
            Reply::Decided(d) => {
                let Some(p) = batch
                    .plans
                    .iter_mut()
                    .find(|p| !p.decide.is_empty() && p.decide_token == d.token)
                else {
                    continue;
                };
                left -= 1;
                let reply = batch.replies.len() as u32;
                for (&i, answer) in p.decide.iter().zip(&d.answers) {
                    batch.answers[i] = match answer {
                        Ok(verdict) => Answer::There {
                            reply,
                            verdict: *verdict,
                        },
                        Err(refused) => Answer::Refused(*refused),
                    };
                }
                p.decide.clear();
                batch.replies.push(d);
            }
            Reply::Stats(..) => {}
        }
    }
    // Whatever is still planned got no answer in time.
    for p in &batch.plans {
        for &i in &p.decide {
            batch.answers[i] = Answer::Refused(UNAVAILABLE);
        }
        for &(i, _) in &p.record {
            batch.answers[i] = Answer::Refused(UNAVAILABLE);
        }
    }
}

/// Decides the local events that still have every value they need.
fn decide_local(
    shard: &Shard,
    published: &Published,
    events: &[&ArchivedEvent],
    origins: &[Origin<'_>],
    batch: &mut Batch,
) {
    let answers = &batch.answers;
    batch.local.retain(|&i| !answers[i].refused());
    if batch.local.is_empty() {
        return;
    }
    let decided = batch.local.len();
    let (state, models) = (
        &mut shard.velocity.borrow_mut(),
        &mut shard.models.borrow_mut(),
    );
    if decided == events.len() {
        // Every event is decided here (always, on one shard): the batch as it came.
        decide::decide(
            events,
            published,
            state,
            &batch.remote,
            models,
            &shard.clock,
            &mut batch.scratch,
            &mut batch.decided,
        );
        if let Some(log) = &shard.log {
            let seqs = &mut batch.log_seqs;
            log.append(
                published,
                shard.index,
                origins,
                &batch.decided,
                &batch.scratch,
                seqs,
            );
        }
    } else {
        // The events decided here, and their gathered windows, made contiguous.
        let mut local: Vec<&ArchivedEvent> = recycle(std::mem::take(&mut batch.local_events));
        let remote = &mut batch.local_remote;
        remote.clear();
        for &i in &batch.local {
            local.push(events[i]);
            if let Some(&at) = batch.remote.at.get(i) {
                remote.at.push(at);
            }
        }
        std::mem::swap(&mut remote.values, &mut batch.remote.values);
        decide::decide(
            &local,
            published,
            state,
            remote,
            models,
            &shard.clock,
            &mut batch.scratch,
            &mut batch.decided,
        );
        std::mem::swap(&mut remote.values, &mut batch.remote.values);
        batch.local_events = recycle(local);
        if let Some(log) = &shard.log {
            let mut local: Vec<Origin<'_>> = recycle(std::mem::take(&mut batch.local_origins));
            local.extend(batch.local.iter().map(|&i| origins[i]));
            let seqs = &mut batch.log_seqs;
            log.append(
                published,
                shard.index,
                &local,
                &batch.decided,
                &batch.scratch,
                seqs,
            );
            batch.local_origins = recycle(local);
        }
    }
    for (v, &i) in batch.local.iter().enumerate() {
        batch.answers[i] = Answer::Here(v as u32);
    }
    shard.stats.borrow_mut().events += decided as u64;
    shard
        .rule_counts
        .borrow_mut()
        .count(&published.rules, &batch.decided);
}

/// Serves the mesh's requests with a shard (once it exists: until then, and after it stops,
/// requests are refused).
pub struct PeerHandler {
    pub shard: std::cell::RefCell<Option<Rc<Shard>>>,
    /// Set when the shard has stopped: requests are refused rather than held.
    pub stopped: std::cell::Cell<bool>,
    /// Snapshot of a shard not yet built.
    pub idle: Box<dyn Fn() -> Snapshot>,
    /// Buffers for deciding forwarded batches, kept between them.
    pub batches: Rc<std::cell::RefCell<Vec<Batch>>>,
}

impl Handler for PeerHandler {
    fn ready(&self) -> bool {
        self.shard.borrow().is_some() || self.stopped.get()
    }

    fn snapshot(&self) -> Snapshot {
        match self.shard.borrow().as_ref() {
            Some(shard) => shard.snapshot(),
            None => (self.idle)(),
        }
    }

    fn record(&self, work: &Work) -> Recorded {
        let token = work.record_token;
        let Some(shard) = self.shard.borrow().clone() else {
            return Recorded {
                token,
                result: Err(ErrorCode::Unavailable),
            };
        };
        let rules = &work.rules.rules;
        let per_key = rules.functions_by_key();
        let records = &work.record;
        let mut values = Vec::with_capacity(records.samples.len());
        let mut state = shard.velocity.borrow_mut();
        for e in &records.entries {
            let samples = &records.samples[e.samples as usize..][..per_key[e.key as usize]];
            let value = records.value(e);
            rules.record_samples(e.key, value, e.ts_ms, samples, &mut state, &mut values);
        }
        shard.stats.borrow_mut().mesh_events_recorded += records.entries.len() as u64;
        Recorded {
            token,
            result: Ok(values),
        }
    }

    fn decide(
        &self,
        work: Box<Work>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = DecidedReply>>> {
        let shard = self.shard.borrow().clone();
        let pool = self.batches.clone();
        Box::pin(async move {
            let token = work.decide_token;
            let refused = |rules: Arc<Published>, why: Refused| DecidedReply {
                token,
                shard: 0,
                rules,
                decided: Decided::default(),
                answers: vec![Err(why); work.decide.len()],
            };
            let Some(shard) = shard else {
                return refused(work.rules.clone(), UNAVAILABLE);
            };
            let Some((events, origins)) = work.decide.access() else {
                return refused(work.rules.clone(), INTERNAL);
            };
            // Decided under the epoch of the batch it came in (this shard's may differ).
            let mut batch = pool.borrow_mut().pop().unwrap_or_default();
            let rules = work.rules.clone();
            decide_all(&shard, rules, &events, &origins, Forward::No, &mut batch).await;
            shard.stats.borrow_mut().mesh_events_decided += events.len() as u64;
            let answers = batch
                .answers
                .iter()
                .map(|a| match *a {
                    Answer::Here(v) => Ok(v),
                    Answer::Refused(r) => Err(r),
                    // A key kept on another node that could not be gathered.
                    Answer::RefusedThere(k) => match batch.refusals[k as usize].0 {
                        ErrorCode::Overloaded => Err(OVERLOADED),
                        _ => Err(UNAVAILABLE),
                    },
                    Answer::There { .. } | Answer::Relayed(_) => {
                        unreachable!("forwarded events are not forwarded")
                    }
                })
                .collect();
            let reply = DecidedReply {
                token,
                shard: shard.index,
                rules: batch.published.take().expect("decided"),
                decided: std::mem::take(&mut batch.decided),
                answers,
            };
            // At most as many as forwarded batches decided at once.
            pool.borrow_mut().push(batch);
            reply
        })
    }
}
