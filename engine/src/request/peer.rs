//! Kind 0x07, the cluster's topology for clients, and kinds 0x10 and 0x11, node to node in
//! a cluster (the sending side is
//! [`crate::cluster::peer`]); an engine that is not a cluster node refuses both (error 11).
//! - peer-decide: an evaluate-batch of events whose accounts this node owns, decided as a
//!   client's batch would be (forwarded to this node's owning shard, keys gathered from
//!   wherever they live), except that an event this node no longer owns is refused (error
//!   9), never sent on: an event crosses at most one node boundary. Answered per event.
//! - peer-record: keys whose partitions this shard owns, recorded for events another node
//!   decides; all or none, only under the same rule set (by digest) and only when every key
//!   is this shard's by this node's map.

use rkyv::rancor;
use verdict_net::validate::validate_event;
use verdict_net::{
    ArchivedEvent, ArchivedPeerRecord, Decision, DecisionView, ErrorCode, ErrorReply, Kind,
    ModelScore, PeerDecided, PeerOutcome, PeerRecorded,
};
use verdict_rules::{Outcome, VelocityKey, key_value};

use super::evaluate::{Evaluator, checked_batch, place};
use super::{Responder, explain_invalid};
use crate::aggregator::{self, Answer, Forward};
use crate::cluster::view::Route;
use crate::decide::Names;
use crate::mesh::{Origin, key_bit};
use crate::shard::Shard;

const KEYS: [VelocityKey; 4] = [
    VelocityKey::Account,
    VelocityKey::Device,
    VelocityKey::Ip,
    VelocityKey::Merchant,
];

fn not_a_node(kind: Kind, out: &mut Responder) -> ErrorCode {
    out.say(format_args!(
        "{kind:?} is served only by a cluster node ([cluster] urls)"
    ));
    ErrorCode::Forbidden
}

/// Whether this node routes at all (it holds a map and is not fenced).
fn open(
    shard: &Shard,
    out: &mut Responder,
) -> Result<std::sync::Arc<crate::cluster::view::ClusterView>, ErrorCode> {
    let view = shard.node.as_ref().expect("checked").view();
    if let Some(closed) = view.closed {
        out.say(format_args!(
            "this node routes nothing now ({closed:?}): no partition map, or NATS unreachable"
        ));
        return Err(ErrorCode::Unavailable);
    }
    Ok(view)
}

/// Kind 0x07: the cluster as this node routes it (its current view of the map).
pub fn topology(shard: &Shard, id: u64, out: &mut Responder) -> Result<(), ErrorCode> {
    if shard.node.is_none() {
        return Err(not_a_node(Kind::ClusterTopology, out));
    }
    let view = open(shard, out)?;
    let reply = view.topology();
    out.push(
        Kind::ClusterTopology.response_byte(),
        id,
        &reply,
        "cluster topology",
    )
}

/// Kind 0x10: decides another node's forwarded events; one outcome per event.
pub async fn decide(
    shard: &Shard,
    evaluator: &mut Evaluator,
    payload: &[u8],
    id: u64,
    out: &mut Responder,
    read_at: u64,
) -> Result<(), ErrorCode> {
    if shard.node.is_none() {
        return Err(not_a_node(Kind::PeerDecide, out));
    }
    let batch = checked_batch(payload, peer_events_max(shard), out)?;
    let n = batch.events.len();
    open(shard, out)?;
    let events: Vec<&ArchivedEvent> = batch.events.iter().collect();
    let origins: Vec<Origin<'_>> = (0..n as u32).map(|i| Origin::Batch(payload, i)).collect();
    let published = shard.rules.borrow().clone();
    let b = &mut evaluator.batch;
    aggregator::decide_all(shard, published, &events, &origins, Forward::Shards, b).await;
    let server_ns = shard.clock.delta_as_nanos(read_at, shard.clock.raw());
    let mut names: Names<'_> = recycle_names(&mut evaluator.names);
    let mut outcomes = Vec::with_capacity(n);
    for (k, event) in events.iter().enumerate() {
        outcomes.push(match place(b, k, shard.index, &mut names) {
            Some((placed, decider)) => {
                PeerOutcome::Decided(owned(&names.view(&placed, event, decider, server_ns)))
            }
            None => {
                let (code, message) = match b.answers[k] {
                    Answer::Refused(r) => (r.code, r.why.to_string()),
                    Answer::RefusedThere(at) => b.refusals[at as usize].clone(),
                    _ => unreachable!("placed otherwise"),
                };
                PeerOutcome::Refused(ErrorReply {
                    code: code as u16,
                    message,
                })
            }
        });
        names.clear();
    }
    evaluator.names = names.recycle();
    b.release();
    // Those decided on this shard (the others were counted by the shard that decided them).
    let decided = b
        .answers
        .iter()
        .filter(|a| matches!(a, Answer::Here(_)))
        .count();
    shard.stats.borrow_mut().mesh_events_decided += decided as u64;
    let reply = PeerDecided { outcomes };
    out.push(Kind::PeerDecide.response_byte(), id, &reply, "peer decided")
}

/// What [`record_keys`] reuses from one event to the next.
#[derive(Default)]
pub struct Scratch {
    regs: Outcome,
    samples: Vec<verdict_rules::Sample>,
    ip: [u8; 16],
}

/// Records `event` in `rules`' velocity functions of the keys in `keys` (a mask of
/// [`key_bit`]s; an empty key, or one the rules count nothing by, is skipped), appending each function's window value to
/// `values`: for another node's event (peer-record) and for an event replayed into a
/// partition this node has just taken over ([`crate::cluster::replay`]).
pub fn record_keys(
    rules: &verdict_rules::RuleSet,
    event: &ArchivedEvent,
    keys: crate::mesh::KeyMask,
    state: &mut verdict_rules::VelocityState,
    scratch: &mut Scratch,
    values: &mut Vec<f64>,
) {
    rules.load(event, &mut scratch.regs);
    let per_key = rules.functions_by_key();
    for key in KEYS {
        // A key these rules keep no window by (the rules changed since it was asked) has
        // nothing to record.
        if keys & key_bit(key) == 0 || per_key[key as usize] == 0 {
            continue;
        }
        let Some(value) = key_value(event, key, &mut scratch.ip) else {
            continue;
        };
        scratch.samples.clear();
        rules.key_samples(event, key, &scratch.regs, &mut scratch.samples);
        let ts = event.timestamp_ms.to_native();
        rules.record_samples(key, value, ts, &scratch.samples, state, values);
    }
}

fn recycle_names<'b>(names: &mut Names<'static>) -> Names<'b> {
    std::mem::take(names).recycle()
}

/// The most events one peer call may carry: a batch of either kind a client may send.
fn peer_events_max(shard: &Shard) -> usize {
    (shard.limits.batch_events_max as usize).max(shard.limits.pipeline_depth_max as usize)
}

/// An owned decision from the view this node would have sent its own client.
fn owned(view: &DecisionView<'_>) -> Decision {
    Decision {
        event_id: view.event_id.0.to_string(),
        action: view.action,
        score: view.score,
        rules: view.rules.0.iter().map(|r| r.0.to_string()).collect(),
        shadow_rules: view
            .shadow_rules
            .0
            .iter()
            .map(|r| r.0.to_string())
            .collect(),
        models: view
            .models
            .0
            .iter()
            .map(|m| ModelScore {
                name: m.name.0.to_string(),
                score: m.score,
                error: m.error,
            })
            .collect(),
        epoch: view.epoch,
        shard: view.shard,
        server_ns: view.server_ns,
    }
}

/// Kind 0x11: records another node's events' keys that this shard keeps; all or none.
pub fn record(
    shard: &Shard,
    payload: &[u8],
    id: u64,
    out: &mut Responder,
) -> Result<(), ErrorCode> {
    if shard.node.is_none() {
        return Err(not_a_node(Kind::PeerRecord, out));
    }
    let Ok(request) = rkyv::access::<ArchivedPeerRecord, rancor::Failure>(payload) else {
        return Err(explain_invalid::<ArchivedPeerRecord>(
            payload,
            out,
            "PeerRecord",
        ));
    };
    let n = request.events.len();
    let max = peer_events_max(shard);
    if n == 0 || n > max || request.keys.len() != n {
        out.say(format_args!(
            "peer-record carries {n} events and {} key masks; it needs 1..={max} of each",
            request.keys.len()
        ));
        return Err(ErrorCode::BatchTooLarge);
    }
    for (i, event) in request.events.iter().enumerate() {
        if let Err(e) = validate_event(event) {
            out.say(format_args!("event {i}: {e}"));
            return Err(ErrorCode::BadField);
        }
    }
    let view = open(shard, out)?;
    let published = shard.rules.borrow().clone();
    let rules = &published.rules;
    let windows = rules.windows_digest();
    if windows != request.digest.as_str() {
        // Not a passing state: retrying cannot help until the rules agree.
        out.say(format_args!(
            "node {:?} keeps velocity windows {} and this node {}: windows are kept only \
             for the same rule set's velocity functions (reload every node with the same rules)",
            request.from.as_str(),
            request.digest.as_str(),
            windows
        ));
        return Err(ErrorCode::Unavailable);
    }
    let per_key = rules.functions_by_key();
    let mut ip = [0u8; 16];
    // Every key is checked before any is recorded: all or none.
    for (i, (event, &keys)) in request.events.iter().zip(request.keys.iter()).enumerate() {
        for key in KEYS {
            if keys & key_bit(key) == 0 {
                continue;
            }
            let Some(value) = key_value(event, key, &mut ip) else {
                out.say(format_args!("event {i}: its {key:?} is empty"));
                return Err(ErrorCode::BadField);
            };
            if per_key[key as usize] == 0 {
                out.say(format_args!(
                    "event {i}: the rules keep no window by {key:?}"
                ));
                return Err(ErrorCode::BadField);
            }
            let mine = view.route(value) == Route::Here && shard.table.owner(value) == shard.index;
            if mine && view.cold(value) {
                out.say(format_args!(
                    "event {i}: its {key:?}'s partition has just come to node {:?}, which is \
                     replaying its history before keeping it; retry shortly",
                    view.me
                ));
                return Err(ErrorCode::Unavailable);
            }
            if !mine {
                out.say(format_args!(
                    "event {i}: its {key:?} is not this shard's (node {:?}, map epoch {} here, \
                     {} at the sender); retry",
                    view.me, view.map_epoch, request.map_epoch
                ));
                return Err(ErrorCode::Unavailable);
            }
        }
    }
    let mut values = Vec::new();
    {
        let mut state = shard.velocity.borrow_mut();
        let mut scratch = Scratch::default();
        for (event, &keys) in request.events.iter().zip(request.keys.iter()) {
            record_keys(rules, event, keys, &mut state, &mut scratch, &mut values);
        }
    }
    shard.stats.borrow_mut().mesh_events_recorded += n as u64;
    let reply = PeerRecorded { values };
    out.push(
        Kind::PeerRecord.response_byte(),
        id,
        &reply,
        "peer recorded",
    )
}
