//! Cross-shard messages over glommio's channel mesh: the only way one core asks another
//! anything. A shard asks another for its stats, sends it the events whose account it owns
//! (it decides them and answers), and asks it to record the events whose device, IP or
//! merchant it owns and to return those windows. Each request is answered exactly once, or
//! the asker stops waiting at `limits.mesh_reply_timeout_ms`.
//!
//! Nothing here waits on a full channel inside the task that drains one: every message
//! leaves through a per-peer *outbox* task, and the tasks that drain a peer's channel only
//! record, reply into the outbox or spawn, so two shards asking each other at once cannot
//! deadlock. What bounds the queues is the asker's budget of events in flight per peer
//! (`limits.mesh_events_in_flight_max`): past it, events are refused with error 8 before
//! anything is sent, so every reply has a request that was admitted.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use rkyv::util::AlignedVec;
use verdict_net::frame::FRAME_ALIGN;
use verdict_net::{ArchivedEvaluateBatch, ArchivedEvent, ErrorCode};
use verdict_rules::{Sample, VelocityKey};

use crate::decide::Decided;
use crate::scoring::Published;
use crate::stats::Snapshot;

/// Where an event's bytes are: its own evaluate frame's payload, or event `i` of an
/// evaluate-batch payload.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    Frame(&'a [u8]),
    Batch(&'a [u8], u32),
}

/// Events copied for another core: the payloads they came in (an evaluate-batch payload is
/// copied once however many of its events go), each at a 16-aligned offset as in a receive
/// buffer. The receiving core validates them again before reading them (cheap, and no
/// unchecked access on bytes that came from a socket).
#[derive(Default)]
pub struct Events {
    bytes: AlignedVec<FRAME_ALIGN>,
    /// (offset, length, holds an evaluate-batch) per payload copied.
    payloads: Vec<(u32, u32, bool)>,
    /// (payload, index in its batch) per event.
    events: Vec<(u32, u32)>,
    /// The address of the last payload copied, so a batch's events share one copy.
    last: usize,
}

impl Events {
    pub fn push(&mut self, origin: Origin<'_>) {
        let (payload, batch, index) = match origin {
            Origin::Frame(p) => (p, false, 0),
            Origin::Batch(p, i) => (p, true, i),
        };
        if !(batch && self.last == payload.as_ptr() as usize && !self.payloads.is_empty()) {
            let start = self.bytes.len();
            self.bytes.extend_from_slice(payload);
            let padded = self.bytes.len().next_multiple_of(FRAME_ALIGN);
            self.bytes.resize(padded, 0);
            self.payloads
                .push((start as u32, payload.len() as u32, batch));
            self.last = payload.as_ptr() as usize;
        }
        self.events.push((self.payloads.len() as u32 - 1, index));
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The events and where each one's bytes are, validated. `None` if a payload fails (a
    /// bug: these bytes were validated on the shard that read them).
    pub fn access(&self) -> Option<(Vec<&ArchivedEvent>, Vec<Origin<'_>>)> {
        use rkyv::rancor::Failure;
        let mut roots = Vec::with_capacity(self.payloads.len());
        for &(start, len, batch) in &self.payloads {
            let bytes = &self.bytes[start as usize..][..len as usize];
            roots.push(if batch {
                let b = rkyv::access::<ArchivedEvaluateBatch, Failure>(bytes).ok()?;
                (bytes, Some(b))
            } else {
                rkyv::access::<ArchivedEvent, Failure>(bytes).ok()?;
                (bytes, None)
            });
        }
        let mut events = Vec::with_capacity(self.events.len());
        let mut origins = Vec::with_capacity(self.events.len());
        for &(payload, index) in &self.events {
            let (bytes, batch) = roots[payload as usize];
            match batch {
                Some(b) => {
                    events.push(b.events.get(index as usize)?);
                    origins.push(Origin::Batch(bytes, index));
                }
                None => {
                    events.push(rkyv::access::<ArchivedEvent, Failure>(bytes).ok()?);
                    origins.push(Origin::Frame(bytes));
                }
            }
        }
        Some((events, origins))
    }
}

/// What a key's owner records for the deciding shard: per (event, key), the key's value,
/// the event time and the samples of the key's functions (computed by the decider, so the
/// owner reads no event).
#[derive(Default)]
pub struct Records {
    pub entries: Vec<RecordEntry>,
    /// The values' bytes.
    pub bytes: Vec<u8>,
    pub samples: Vec<Sample>,
}

pub struct RecordEntry {
    pub key: VelocityKey,
    /// `bytes[value.0..][..value.1]`.
    pub value: (u32, u32),
    pub ts_ms: u64,
    /// Where its samples start in `samples` (as many as the key has functions).
    pub samples: u32,
}

impl Records {
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes.clear();
        self.samples.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds one event's record for `key` (its samples are then pushed to `samples`).
    pub fn push(&mut self, key: VelocityKey, value: &[u8], ts_ms: u64) {
        self.entries.push(RecordEntry {
            key,
            value: (self.bytes.len() as u32, value.len() as u32),
            ts_ms,
            samples: self.samples.len() as u32,
        });
        self.bytes.extend_from_slice(value);
    }

    pub fn value(&self, e: &RecordEntry) -> &[u8] {
        &self.bytes[e.value.0 as usize..][..e.value.1 as usize]
    }

    /// The records of the events `keep` accepts; `events` says which event each run of
    /// entries is for (one entry per key of its mask, in order). Error path: allocates.
    pub fn retain(&self, events: &[(usize, KeyMask)], keep: impl Fn(usize) -> bool) -> Records {
        let mut kept = Records::default();
        let mut at = 0;
        for &(i, keys) in events {
            let n = keys.count_ones() as usize;
            if keep(i) {
                for k in at..at + n {
                    let e = &self.entries[k];
                    let end = self
                        .entries
                        .get(k + 1)
                        .map_or(self.samples.len(), |next| next.samples as usize);
                    kept.push(e.key, self.value(e), e.ts_ms);
                    kept.samples
                        .extend_from_slice(&self.samples[e.samples as usize..end]);
                }
            }
            at += n;
        }
        kept
    }
}

/// Keys, a bit per [`VelocityKey`].
pub type KeyMask = u8;

pub fn key_bit(key: VelocityKey) -> KeyMask {
    1 << key as u8
}

/// One batch's work for one peer: the events whose account it owns, to decide, and the
/// events it must record for the keys it owns.
pub struct Work {
    pub from: usize,
    /// Answered with [`Reply::Decided`] under this token (when `decide` is not empty).
    pub decide_token: u64,
    pub decide: Events,
    /// Answered with [`Reply::Recorded`] under this token (when `record` is not empty).
    pub record_token: u64,
    pub record: Records,
    /// The epoch the asker decides with: the functions to record are its functions.
    pub rules: Arc<Published>,
}

/// The windows a peer recorded: per entry of `Work::record`, the values of that key's
/// functions in function order.
pub struct Recorded {
    pub token: u64,
    pub result: Result<Vec<f64>, ErrorCode>,
}

/// A peer's decisions of the events forwarded to it, in the order they were sent.
pub struct DecidedReply {
    pub token: u64,
    pub shard: u32,
    /// The epoch that decided them (its names are the verdicts' names).
    pub rules: Arc<Published>,
    pub decided: Decided,
    /// Per event: its verdict's index in `decided`, or why it has none.
    pub answers: Vec<Result<u32, Refused>>,
}

/// Why an event got no decision: the code and a fixed explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub code: ErrorCode,
    pub why: &'static str,
}

/// A message between shards.
pub enum MeshMsg {
    /// "Send me your stats"; `from` is the asking shard's mesh peer id.
    StatsQuery {
        token: u64,
        from: usize,
    },
    Work(Box<Work>),
    Reply(Reply),
}

/// An answer, routed to whoever waits for its token.
pub enum Reply {
    Stats(u64, Box<Snapshot>),
    Recorded(Box<Recorded>),
    Decided(Box<DecidedReply>),
}

impl Reply {
    fn token(&self) -> u64 {
        match self {
            Reply::Stats(token, _) => *token,
            Reply::Recorded(r) => r.token,
            Reply::Decided(d) => d.token,
        }
    }
}

/// What a shard does with the requests its peers send.
pub trait Handler {
    /// Whether the shard can serve yet (a peer may ask before this shard has built its
    /// state: its requests then wait, in order, until it has).
    fn ready(&self) -> bool;
    /// This shard's stats now.
    fn snapshot(&self) -> Snapshot;
    /// Records `work.record` (synchronously: never awaits).
    fn record(&self, work: &Work) -> Recorded;
    /// Decides `work.decide` (may ask other shards, so it is a task of its own).
    fn decide(&self, work: Box<Work>) -> Pin<Box<dyn Future<Output = DecidedReply>>>;
}

/// Why a cross-shard request did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshError {
    /// A peer's budget of events in flight is spent.
    Overloaded,
    /// A peer did not answer in time (or has stopped).
    Timeout,
}

/// This shard's end of the mesh.
pub struct MeshPort {
    peer_id: usize,
    peers: usize,
    outboxes: Vec<Option<Rc<LocalSender<MeshMsg>>>>,
    next_token: Cell<u64>,
    pending: RefCell<HashMap<u64, Rc<LocalSender<Reply>>>>,
    /// Events this shard has waiting on each peer.
    in_flight: Vec<Cell<u32>>,
    in_flight_max: u32,
    /// Requests that arrived before the shard was ready, in arrival order.
    deferred: RefCell<std::collections::VecDeque<MeshMsg>>,
}

/// How often a shard that is not ready yet looks again, and for how long at most.
const NOT_READY_POLL: std::time::Duration = std::time::Duration::from_millis(1);
const NOT_READY_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(30);

pub type Mesh = MeshBuilder<MeshMsg, Full>;

pub fn builder(shards: usize, queue_depth: usize) -> Mesh {
    MeshBuilder::full(shards, queue_depth)
}

impl MeshPort {
    /// Joins the mesh (every shard must), starts a task per peer that sends what this shard
    /// queues for it, and one per peer that serves its requests with `handler` and routes
    /// its answers to whoever is waiting.
    pub async fn join(mesh: Mesh, in_flight_max: u32, handler: Rc<dyn Handler>) -> Rc<MeshPort> {
        let (senders, mut receivers): (Senders<MeshMsg>, Receivers<MeshMsg>) =
            mesh.join().await.expect("joining the shard mesh");
        let senders = Rc::new(senders);
        let (peer_id, peers) = (senders.peer_id(), senders.nr_consumers());
        let outboxes = (0..peers)
            .map(|peer| {
                (peer != peer_id).then(|| {
                    let (tx, rx) = local_channel::new_unbounded();
                    glommio::spawn_local(send_loop(senders.clone(), peer, rx)).detach();
                    Rc::new(tx)
                })
            })
            .collect();
        let port = Rc::new(MeshPort {
            peer_id,
            peers,
            outboxes,
            next_token: Cell::new(1),
            pending: RefCell::new(HashMap::new()),
            in_flight: (0..peers).map(|_| Cell::new(0)).collect(),
            in_flight_max,
            deferred: RefCell::new(Default::default()),
        });
        for (_peer, rx) in receivers.streams() {
            let port = Rc::downgrade(&port);
            let handler = handler.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = rx.recv().await {
                    let Some(port) = port.upgrade() else { break };
                    port.serve_or_defer(&handler, msg);
                }
            })
            .detach();
        }
        port
    }

    /// Serves `msg`, or queues it behind the others that arrived before the shard was
    /// ready (replies are always routed at once: they answer this shard's own requests).
    fn serve_or_defer(self: &Rc<Self>, handler: &Rc<dyn Handler>, msg: MeshMsg) {
        let reply = matches!(msg, MeshMsg::Reply(_));
        if reply || (handler.ready() && self.deferred.borrow().is_empty()) {
            return self.serve(handler, msg);
        }
        let first = {
            let mut deferred = self.deferred.borrow_mut();
            deferred.push_back(msg);
            deferred.len() == 1
        };
        if first {
            let (port, handler) = (self.clone(), handler.clone());
            glommio::spawn_local(async move {
                let began = std::time::Instant::now();
                while !handler.ready() && began.elapsed() < NOT_READY_WAIT_MAX {
                    glommio::timer::sleep(NOT_READY_POLL).await;
                }
                loop {
                    let next = port.deferred.borrow_mut().pop_front();
                    match next {
                        Some(msg) => port.serve(&handler, msg),
                        None => break,
                    }
                }
            })
            .detach();
        }
    }

    /// One message from a peer: answered now, or by a task of its own. Never awaits.
    fn serve(&self, handler: &Rc<dyn Handler>, msg: MeshMsg) {
        match msg {
            MeshMsg::StatsQuery { token, from } => {
                let snapshot = Box::new(handler.snapshot());
                self.send(from, MeshMsg::Reply(Reply::Stats(token, snapshot)));
            }
            MeshMsg::Work(work) => {
                let from = work.from;
                if !work.record.is_empty() {
                    let recorded = handler.record(&work);
                    self.send(from, MeshMsg::Reply(Reply::Recorded(Box::new(recorded))));
                }
                if !work.decide.is_empty() {
                    let decided = handler.decide(work);
                    let outbox = self.outboxes[from].clone();
                    glommio::spawn_local(async move {
                        let reply = Box::new(decided.await);
                        if let Some(outbox) = outbox {
                            let _ = outbox.try_send(MeshMsg::Reply(Reply::Decided(reply)));
                        }
                    })
                    .detach();
                }
            }
            MeshMsg::Reply(reply) => {
                // The asker may have stopped waiting (timeout): then nobody takes it.
                if let Some(tx) = self.pending.borrow().get(&reply.token()) {
                    let _ = tx.try_send(reply);
                }
            }
        }
    }

    /// This shard's mesh peer id (its shard index).
    pub fn peer_id(&self) -> usize {
        self.peer_id
    }

    pub fn peers(&self) -> usize {
        self.peers
    }

    /// Queues `msg` for `peer` (never blocks; the outbox task waits for room).
    pub fn send(&self, peer: usize, msg: MeshMsg) {
        if let Some(Some(outbox)) = self.outboxes.get(peer) {
            let _ = outbox.try_send(msg);
        }
    }

    /// Takes room for `events` more events waiting on `peer`; false, taking nothing, if
    /// that would pass `limits.mesh_events_in_flight_max`.
    pub fn reserve(&self, peer: usize, events: u32) -> bool {
        let cell = &self.in_flight[peer];
        match cell.get().checked_add(events) {
            Some(n) if n <= self.in_flight_max => {
                cell.set(n);
                true
            }
            _ => false,
        }
    }

    /// Gives back room taken with [`reserve`](Self::reserve).
    pub fn release(&self, peer: usize, events: u32) {
        let cell = &self.in_flight[peer];
        cell.set(cell.get() - events);
    }

    /// A fresh token whose replies go to the returned waiter (which stops taking them when
    /// dropped); `replies`: how many are expected.
    pub fn expect(self: &Rc<Self>, replies: usize) -> Waiter {
        let (tx, rx) = local_channel::new_bounded(replies.max(1));
        Waiter {
            port: self.clone(),
            tx: Rc::new(tx),
            rx,
            tokens: Vec::new(),
        }
    }

    fn token(&self) -> u64 {
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        token
    }

    /// Every other shard's snapshot.
    pub async fn gather_stats(
        self: &Rc<Self>,
        timeout: std::time::Duration,
    ) -> Result<Vec<Snapshot>, MeshError> {
        let peers: Vec<usize> = (0..self.peers).filter(|&p| p != self.peer_id).collect();
        let mut waiter = self.expect(peers.len());
        for &peer in &peers {
            let token = waiter.token();
            let from = self.peer_id;
            self.send(peer, MeshMsg::StatsQuery { token, from });
        }
        let mut out = Vec::with_capacity(peers.len());
        let deadline = std::time::Instant::now() + timeout;
        while out.len() < peers.len() {
            match waiter.next(deadline).await {
                Some(Reply::Stats(_, snapshot)) => out.push(*snapshot),
                Some(_) => {}
                None => return Err(MeshError::Timeout),
            }
        }
        Ok(out)
    }
}

/// Sends what is queued for `peer`, waiting for room in its channel.
async fn send_loop(senders: Rc<Senders<MeshMsg>>, peer: usize, rx: LocalReceiver<MeshMsg>) {
    while let Some(msg) = rx.recv().await {
        // An error: the peer has stopped (shutdown). Its askers time out.
        if senders.send_to(peer, msg).await.is_err() {
            break;
        }
    }
}

/// How long an idle shard spins for a peer's answer before it parks.
pub const REPLY_SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// Replies to the tokens it handed out, until dropped.
pub struct Waiter {
    port: Rc<MeshPort>,
    tx: Rc<LocalSender<Reply>>,
    rx: LocalReceiver<Reply>,
    tokens: Vec<u64>,
}

impl Waiter {
    /// A token whose reply this waiter receives.
    pub fn token(&mut self) -> u64 {
        let token = self.port.token();
        self.port
            .pending
            .borrow_mut()
            .insert(token, self.tx.clone());
        self.tokens.push(token);
        token
    }

    /// The next reply, or `None` at `deadline`. While it waits, an idle shard spins for up
    /// to [`REPLY_SPIN`] before it parks: a peer answers in microseconds, and a parked shard
    /// costs a sleep and a wake-up per exchange.
    pub async fn next(&mut self, deadline: std::time::Instant) -> Option<Reply> {
        let _spin = glommio::spin_for_remote(REPLY_SPIN);
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        glommio::timer::timeout(left, async { Ok(self.rx.recv().await) })
            .await
            .ok()
            .flatten()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut pending = self.port.pending.borrow_mut();
        for token in &self.tokens {
            pending.remove(token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dropping a refused event's records keeps every other event's entries, values and
    /// samples intact (what a batch sends a peer after another peer refused some events).
    #[test]
    fn records_retain_only_the_kept_events_entries() {
        let mut r = Records::default();
        let events = [
            (
                0usize,
                key_bit(VelocityKey::Device) | key_bit(VelocityKey::Ip),
            ),
            (1, key_bit(VelocityKey::Merchant)),
            (2, key_bit(VelocityKey::Device)),
        ];
        r.push(VelocityKey::Device, b"d-0", 10);
        r.samples.extend([Sample::Count, Sample::Sum(1.0)]);
        r.push(VelocityKey::Ip, &[1, 2, 3, 4], 10);
        r.samples.push(Sample::Distinct(7));
        r.push(VelocityKey::Merchant, b"m-1", 11);
        r.samples.push(Sample::Sum(2.5));
        r.push(VelocityKey::Device, b"d-2", 12);
        r.samples.extend([Sample::Count, Sample::Sum(3.0)]);
        let kept = r.retain(&events, |i| i != 1);
        let keys: Vec<_> = kept
            .entries
            .iter()
            .map(|e| (e.key, kept.value(e).to_vec(), e.ts_ms))
            .collect();
        assert_eq!(
            keys,
            [
                (VelocityKey::Device, b"d-0".to_vec(), 10),
                (VelocityKey::Ip, vec![1, 2, 3, 4], 10),
                (VelocityKey::Device, b"d-2".to_vec(), 12),
            ]
        );
        assert_eq!(kept.samples.len(), 5);
        assert!(matches!(kept.samples[4], Sample::Sum(x) if x == 3.0));
        assert_eq!(kept.entries[2].samples, 3);
    }
}
